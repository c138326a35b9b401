"""Sandbox profiles (issue 16): each variant's behaviour over real HTTP, the control call, the CLI
flag, the pytest option, and that no profile changes the data (the ground truth)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from django.core.management import CommandError, call_command

from halosandbox import SandboxServer
from halosandbox.shapes import (
    PAYMENTSTATUS_PARTIALLY_PAID,
    PROFILE_VARIANTS,
    format_date,
    format_timestamp,
    parse_profile,
)
from tests.plugins.sandbox import halo_session_for

ROOT = Path(__file__).resolve().parents[2]

# The tiny dataset (halosandbox/dataset.py): invoice 1 unpaid, 2 partly paid, 3 paid,
# 4 paid by credit note 5, 6 unpaid without a customer, 7 voided, 8 unpaid (inactive customer).
UNPAID, PARTLY_PAID, PAID, NO_CUSTOMER = 1, 2, 3, 6


def _get(session, server, path, **params):
    response = session.get(f"{server.url}{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


def _control(server, method, path, **body):
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, f"{server.url}/_sandbox/{path}", json=body, timeout=10)


@pytest.fixture
def pair(halo_sandbox_factory):
    """Make a sandbox with `profile` and a default one with the same data, each with a session."""
    sessions = []

    def make(profile, **kwargs):
        servers = (
            halo_sandbox_factory(profile=profile, rate_limit=0, **kwargs),
            halo_sandbox_factory(profile="default", rate_limit=0, **kwargs),
        )
        for server in servers:
            sessions.append(halo_session_for(server))
        return servers[0], sessions[-2], servers[1], sessions[-1]

    yield make
    for session in sessions:
        session.close()


def _walk(value):
    """Every dict inside an API answer, depth first."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _after(timestamp: str, **delta) -> str:
    return (datetime.fromisoformat(timestamp) + timedelta(**delta)).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------
# Profile names


def test_profile_names_parse_and_unknown_names_are_refused():
    assert parse_profile(None).name == parse_profile("").name == parse_profile("default").name == "default"
    assert parse_profile("all").variants == frozenset(PROFILE_VARIANTS)
    assert parse_profile(" Local_Clock , nulls_omitted").name == "nulls_omitted,local_clock"
    assert parse_profile(",".join(PROFILE_VARIANTS)).name == "all"
    with pytest.raises(ValueError, match=r"unknown HaloPSA profile 'nulls_ommitted'.*nulls_omitted"):
        parse_profile("nulls_omitted,nulls_ommitted")
    for offset in (True, 1.5, "soon", 60 * 24 * 31):
        with pytest.raises(ValueError, match="clock_offset_minutes"):
            parse_profile("local_clock", offset)
    with pytest.raises(ValueError, match="unknown HaloPSA profile"):
        SandboxServer(profile="bogus")


# ---------------------------------------------------------------------------------------------
# Billing flag on /Users


def test_flag_on_detail_lists_users_without_the_flag_and_details_have_it(pair):
    server, session, _, _ = pair("flag_on_detail")
    for params in ({}, {"includebillinginfo": "true"}):
        rows = _get(session, server, "/api/Users", **params)["users"]
        assert rows and all("canaccessinvoices" not in row for row in rows)
    for row in rows:
        detail = _get(session, server, f"/api/Users/{row['id']}")
        assert detail["canaccessinvoices"] is server.store.get_user(row["id"]).canaccessinvoices
    assert any(server.store.get_user(row["id"]).canaccessinvoices for row in rows)


def test_flag_with_billinginfo_lists_the_flag_only_when_asked(pair):
    server, session, default, default_session = pair("flag_with_billinginfo")
    assert all("canaccessinvoices" not in row for row in _get(session, server, "/api/Users")["users"])
    with_info = _get(session, server, "/api/Users", includebillinginfo="true")["users"]
    assert with_info == _get(default_session, default, "/api/Users")["users"]
    assert {row["canaccessinvoices"] for row in with_info} == {True, False}
    assert _get(session, server, "/api/Users/2")["canaccessinvoices"] is False
    assert _get(session, server, "/api/Users/1")["canaccessinvoices"] is True


def test_flag_on_detail_wins_over_flag_with_billinginfo(pair):
    server, session, _, _ = pair("flag_on_detail,flag_with_billinginfo")
    rows = _get(session, server, "/api/Users", includebillinginfo="true")["users"]
    assert rows and all("canaccessinvoices" not in row for row in rows)


# ---------------------------------------------------------------------------------------------
# GET /InvoicePayment


def test_payments_bare_array_ignores_paging_and_has_no_envelope(pair):
    server, session, default, default_session = pair("payments_bare_array")
    expected = _get(default_session, default, "/api/InvoicePayment")["invoicepayments"]
    assert len(expected) >= 3
    body = _get(session, server, "/api/InvoicePayment", pageinate="true", page_size=1, page_no=2)
    assert body == expected
    assert (
        _get(session, server, "/api/InvoicePayment", invoice_id=PARTLY_PAID)
        == _get(default_session, default, "/api/InvoicePayment", invoice_id=PARTLY_PAID)["invoicepayments"]
    )


def test_payments_key_payments_renames_the_envelope_key(pair):
    server, session, default, default_session = pair("payments_key_payments")
    body = _get(session, server, "/api/InvoicePayment", pageinate="true", page_size=2, page_no=1)
    expected = _get(default_session, default, "/api/InvoicePayment", pageinate="true", page_size=2, page_no=1)
    assert "invoicepayments" not in body
    assert body["payments"] == expected["invoicepayments"]
    assert body["record_count"] == expected["record_count"] > 2


def test_bare_array_wins_over_key_payments(pair):
    server, session, _, _ = pair("payments_key_payments,payments_bare_array")
    assert isinstance(_get(session, server, "/api/InvoicePayment"), list)


def test_search_ignores_reference_finds_by_invoice_number_and_client_only(pair):
    server, session, default, default_session = pair("search_ignores_reference")
    for srv, sess in ((server, session), (default, default_session)):
        posted = sess.post(
            f"{srv.url}/api/InvoicePayment",
            json=[{"invoice_id": UNPAID, "amount": "10.00", "reference": "PLAT-7f3a", "thirdpartyid": "ALT-7f3a"}],
        )
        assert posted.status_code == 201, posted.text
    for needle in ("PLAT-7f3a", "ALT-7f3a"):
        assert _get(session, server, "/api/InvoicePayment", search=needle)["invoicepayments"] == []
        found = _get(default_session, default, "/api/InvoicePayment", search=needle)["invoicepayments"]
        assert [row["reference"] for row in found] == ["PLAT-7f3a"]
    number = server.store.get_invoice(PARTLY_PAID).invoicenumber
    by_number = _get(session, server, "/api/InvoicePayment", search=number)["invoicepayments"]
    assert by_number and {row["invoice_id"] for row in by_number} == {PARTLY_PAID}
    client_name = server.store.client_name(server.store.get_invoice(PAID).client_id)
    by_client = _get(session, server, "/api/InvoicePayment", search=client_name)["invoicepayments"]
    assert PAID in {row["invoice_id"] for row in by_client}
    assert all(row["client_name"] == client_name for row in by_client)


def test_payment_invoice_filter_ignored_answers_every_payment(pair):
    server, session, default, default_session = pair("payment_invoice_filter_ignored")
    every = _get(default_session, default, "/api/InvoicePayment")["invoicepayments"]
    filtered = _get(default_session, default, "/api/InvoicePayment", invoice_id=PARTLY_PAID)["invoicepayments"]
    assert 0 < len(filtered) < len(every)
    assert _get(session, server, "/api/InvoicePayment", invoice_id=PARTLY_PAID)["invoicepayments"] == every


# ---------------------------------------------------------------------------------------------
# Records


def test_nulls_omitted_leaves_out_empty_keys_everywhere(pair):
    server, session, default, default_session = pair("nulls_omitted")
    answers = [
        _get(session, server, "/api/Client", includeinactive="true"),
        _get(session, server, "/api/Users"),
        _get(session, server, "/api/Invoice", includelines="true", includecredits="true"),
        _get(session, server, f"/api/Invoice/{NO_CUSTOMER}", includedetails="true"),
        _get(session, server, "/api/InvoicePayment"),
    ]
    posted = session.post(f"{server.url}/api/InvoicePayment", json=[{"invoice_id": UNPAID, "amount": "1.00"}])
    assert posted.status_code == 201
    answers.append(posted.json())
    records = [d for answer in answers for d in _walk(answer)]
    assert len(records) > 40
    assert all(value is not None and value != "" for record in records for value in record.values())
    assert "reference" not in posted.json()[0]
    # The default shape has those keys, empty: the variant removed them, it did not lose data.
    assert _get(default_session, default, f"/api/Invoice/{NO_CUSTOMER}")["client_name"] == ""
    assert "client_name" not in answers[3]
    default_lines = _get(default_session, default, f"/api/Invoice/{NO_CUSTOMER}", includedetails="true")["lines"]
    assert answers[3]["lines"] == [{k: v for k, v in line.items() if v != ""} for line in default_lines]


def test_unpaid_minus_one_marks_only_unpaid_invoices_and_filters_on_minus_one(pair):
    server, session, default, default_session = pair("unpaid_minus_one")
    unpaid = _get(session, server, f"/api/Invoice/{UNPAID}")
    assert unpaid["paymentstatus"] == -1 and unpaid["amountdue"] == Decimal("0.00")
    assert "amount_remaining" not in unpaid
    assert unpaid["total"] > 0 and unpaid["amountpaid"] == Decimal("0.00")
    partly = _get(session, server, f"/api/Invoice/{PARTLY_PAID}")
    assert partly == _get(default_session, default, f"/api/Invoice/{PARTLY_PAID}")
    assert partly["paymentstatus"] == PAYMENTSTATUS_PARTIALLY_PAID

    default_unpaid = {i["id"] for i in _get(default_session, default, "/api/Invoice", paymentstatuses="0")["invoices"]}
    assert {UNPAID, NO_CUSTOMER} <= default_unpaid
    minus_one = _get(session, server, "/api/Invoice", paymentstatuses="-1")["invoices"]
    assert {i["id"] for i in minus_one} == default_unpaid
    assert all(i["paymentstatus"] == -1 for i in minus_one)
    assert _get(session, server, "/api/Invoice", paymentstatuses="0")["record_count"] == 0
    assert {
        i["id"] for i in _get(session, server, "/api/Invoice", paymentstatuses="0,-1")["invoices"]
    } == default_unpaid
    # Paying part of it: computed from then on, as today.
    session.post(f"{server.url}/api/InvoicePayment", json=[{"invoice_id": UNPAID, "amount": "1.00"}])
    assert _get(session, server, f"/api/Invoice/{UNPAID}")["paymentstatus"] == PAYMENTSTATUS_PARTIALLY_PAID


def test_no_datesearch_ignores_the_date_filter_but_orders_by_last_modified(pair):
    server, session, default, default_session = pair("no_datesearch")
    future = "2099-01-01T00:00:00"
    assert (
        _get(default_session, default, "/api/Invoice", datesearch="last_modified", start_date=future)["record_count"]
        == 0
    )
    every = _get(session, server, "/api/Invoice")
    filtered = _get(
        session, server, "/api/Invoice", datesearch="last_modified", start_date=future, end_date="2099-12-31"
    )
    assert filtered["record_count"] == every["record_count"] > 0
    ordered = _get(session, server, "/api/Invoice", order="last_modified", orderdesc="true")["invoices"]
    stamps = [i["last_modified"] for i in ordered]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) > 1


def test_no_lastupdate_filter_lists_every_client_and_user(pair):
    server, session, default, default_session = pair("no_lastupdate_filter")
    future = {"lastupdatefromdate": "2099-01-01T00:00:00"}
    for path, key in (("/api/Client", "clients"), ("/api/Users", "users")):
        assert _get(default_session, default, path, **future)["record_count"] == 0
        assert _get(session, server, path, **future)[key] == _get(session, server, path)[key] != []
        assert _get(session, server, path, lastupdatetodate="2000-01-01")["record_count"] > 0


# ---------------------------------------------------------------------------------------------
# local_clock


@pytest.mark.parametrize("offset_minutes", [None, -4320, 150])
def test_local_clock_moves_every_timestamp_and_no_calendar_date(pair, offset_minutes):
    server, session, default, default_session = pair("local_clock", clock_offset_minutes=offset_minutes)
    shift = timedelta(minutes=-420 if offset_minutes is None else offset_minutes)
    moved = lambda text: datetime.fromisoformat(text) + shift  # noqa: E731
    pairs = [
        (
            _get(session, server, "/api/Client", includeinactive="true")["clients"],
            _get(default_session, default, "/api/Client", includeinactive="true")["clients"],
        ),
        (_get(session, server, "/api/Users")["users"], _get(default_session, default, "/api/Users")["users"]),
        (
            _get(session, server, "/api/Invoice", includelines="true", includecredits="true")["invoices"],
            _get(default_session, default, "/api/Invoice", includelines="true", includecredits="true")["invoices"],
        ),
    ]
    timestamp_keys = {
        "datecreated",
        "alastupdate",
        "ulastupdate",
        "date_created",
        "last_modified",
        "pdf_attachment_date_created",
    }
    seen = set()
    for local_rows, utc_rows in pairs:
        for local, utc in zip(local_rows, utc_rows, strict=True):
            for key, value in utc.items():
                if key in timestamp_keys:
                    assert datetime.fromisoformat(local[key]) == moved(value), key
                    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", local[key])
                    seen.add(key)
                else:  # invoice_date, duedate, payments' date and everything else as today
                    assert local[key] == value, key
    assert seen == timestamp_keys


def test_local_clock_reads_query_dates_in_its_own_frame(pair):
    server, session, _, _ = pair("local_clock", clock_offset_minutes=-4320)
    offset = timedelta(minutes=-4320)
    changed = session.post(f"{server.url}/api/Invoice", json=[{"id": UNPAID, "duedate": "2027-01-31"}]).json()
    local = changed["last_modified"]
    assert (
        datetime.fromisoformat(local)
        == datetime.fromisoformat(format_timestamp(server.store.get_invoice(UNPAID).last_modified_ms)) + offset
    )
    for start in (local, local + "Z", _after(local, hours=-1)):
        ids = [
            i["id"]
            for i in _get(session, server, "/api/Invoice", datesearch="last_modified", start_date=start)["invoices"]
        ]
        assert ids == [UNPAID], start
    utc_value = _after(local, minutes=4320)  # our clock's reading of the same moment
    assert _get(session, server, "/api/Invoice", datesearch="last_modified", start_date=utc_value)["record_count"] == 0

    client = session.post(f"{server.url}/api/Client", json=[{"id": 2, "website": "https://bluebird.example"}]).json()
    assert [
        c["id"] for c in _get(session, server, "/api/Client", lastupdatefromdate=client["alastupdate"])["clients"]
    ] == [2]
    assert (
        _get(session, server, "/api/Client", lastupdatefromdate=_after(client["alastupdate"], days=3))["record_count"]
        == 0
    )
    assert [
        c["id"]
        for c in _get(session, server, "/api/Client", lastupdatetodate=_after(client["alastupdate"], milliseconds=-1))[
            "clients"
        ]
    ] == [1]


def test_local_clock_leaves_payment_dates_and_invoice_dates_alone(pair):
    server, session, _, _ = pair("local_clock")
    posted = session.post(
        f"{server.url}/api/InvoicePayment", json=[{"invoice_id": UNPAID, "amount": "5.00", "date": "2026-11-02"}]
    ).json()[0]
    assert posted["date"] == "2026-11-02T00:00:00"
    invoice = server.store.get_invoice(UNPAID)
    body = _get(session, server, f"/api/Invoice/{UNPAID}")
    assert body["invoice_date"] == format_date(invoice.invoice_date_ms)
    assert body["duedate"] == format_date(invoice.duedate_ms)


# ---------------------------------------------------------------------------------------------
# Control call, Python API, CLI


def test_control_call_sets_and_reports_the_profile(halo_sandbox):
    assert _control(halo_sandbox, "GET", "profile").json() == {
        "profile": "default",
        "variants": [],
        "clock_offset_minutes": -420,
    }
    answer = _control(halo_sandbox, "PUT", "profile", profile="local_clock,nulls_omitted", clock_offset_minutes=-4320)
    assert answer.status_code == 200
    assert answer.json() == {
        "profile": "nulls_omitted,local_clock",
        "variants": ["nulls_omitted", "local_clock"],
        "clock_offset_minutes": -4320,
    }
    described = _control(halo_sandbox, "GET", "").json()
    assert (described["profile"], described["clock_offset_minutes"]) == ("nulls_omitted,local_clock", -4320)
    # Served from the next request on.
    with halo_session_for(halo_sandbox) as session:
        assert "client_name" not in _get(session, halo_sandbox, f"/api/Invoice/{NO_CUSTOMER}")
        _control(halo_sandbox, "POST", "reset")
        assert _control(halo_sandbox, "GET", "profile").json()["profile"] == "nulls_omitted,local_clock"
        assert _control(halo_sandbox, "PUT", "profile", profile="all").json()["clock_offset_minutes"] == -420
        assert isinstance(_get(session, halo_sandbox, "/api/InvoicePayment"), list)
        assert _control(halo_sandbox, "PUT", "profile", profile="default").json()["variants"] == []
        assert _get(session, halo_sandbox, f"/api/Invoice/{NO_CUSTOMER}")["client_name"] == ""


@pytest.mark.parametrize(
    "body, message",
    [
        ({"profile": "flag_on_details"}, "unknown HaloPSA profile 'flag_on_details'"),
        ({"profile": 3}, "profile must be a string"),
        ({"profile": "local_clock", "clock_offset_minutes": "soon"}, "clock_offset_minutes"),
        ({"clock_offset_minutes": 60}, "profile is required"),
    ],
)
def test_control_call_refuses_bad_profiles_and_keeps_the_current_one(halo_sandbox, body, message):
    halo_sandbox.set_profile("no_datesearch")
    answer = _control(halo_sandbox, "PUT", "profile", **body)
    assert answer.status_code == 400
    assert message in answer.json()["error"]
    assert halo_sandbox.profile.name == "no_datesearch"


def test_python_api_sets_the_profile(halo_sandbox, halo_session):
    assert halo_sandbox.set_profile("payments_key_payments").name == "payments_key_payments"
    assert "payments" in _get(halo_session, halo_sandbox, "/api/InvoicePayment")
    with pytest.raises(ValueError, match="unknown HaloPSA profile"):
        halo_sandbox.set_profile("payments_key")
    assert halo_sandbox.profile.name == "payments_key_payments"


def test_cli_refuses_unknown_profiles_and_bad_offsets():
    with pytest.raises(CommandError, match="unknown HaloPSA profile 'nope'"):
        call_command("halopsa_sandbox", "--port", "0", "--profile", "nope")
    with pytest.raises(CommandError, match="clock_offset_minutes must be within"):
        call_command("halopsa_sandbox", "--port", "0", "--profile", "local_clock", "--clock-offset-minutes", "99999")


def test_cli_serves_the_profile_it_was_given():
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "halopsa_sandbox",
            "--port",
            "0",
            "--dataset",
            "tiny",
            "--profile",
            "flag_on_detail,local_clock",
            "--clock-offset-minutes",
            "-4320",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )
    try:
        output, url = [], None
        for line in process.stdout:
            output.append(line)
            match = re.search(r"running at (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else url
            if line.startswith("control API"):
                break
        assert url, "".join(output)
        assert "profile: flag_on_detail,local_clock (clock offset -4320 min)" in "".join(output)
        with requests.Session() as session:
            session.trust_env = False
            assert session.get(f"{url}/_sandbox/profile", timeout=5).json() == {
                "profile": "flag_on_detail,local_clock",
                "variants": ["flag_on_detail", "local_clock"],
                "clock_offset_minutes": -4320,
            }
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------
# The data is the same under every profile


def test_ground_truth_is_the_same_under_all(halo_sandbox_factory):
    truths = []
    for profile in ("default", "all"):
        server = halo_sandbox_factory(profile=profile, dataset="demo", seed=4, rate_limit=0)
        with halo_session_for(server) as session:
            # The same changes through the API under each profile.
            unpaid = _get(
                session,
                server,
                "/api/Invoice",
                paymentstatuses="-1" if profile == "all" else "0",
                pageinate="true",
                page_size=3,
            )["invoices"]
            for invoice in unpaid:
                answer = session.post(
                    f"{server.url}/api/InvoicePayment",
                    json=[{"invoice_id": invoice["id"], "amount": "12.34", "date": "2026-11-03", "reference": "R"}],
                )
                assert answer.status_code == 201, answer.text
            truth = _control(server, "GET", "ground_truth").json()
        assert truth == server.store.ground_truth()
        truths.append(truth)
    assert len(truths[0]["invoices"]) > 50
    assert truths[0] == truths[1]


# ---------------------------------------------------------------------------------------------
# The pytest option and markers (tests/plugins/sandbox.py)


@pytest.mark.sandbox(profile="nulls_omitted")
def test_a_profile_named_by_the_test_wins(halo_sandbox, halo_sandbox_factory):
    assert halo_sandbox.profile.name == "nulls_omitted"
    assert halo_sandbox_factory(profile="local_clock").profile.name == "local_clock"


@pytest.mark.default_wire_shape(reason="checks that the marker pins the default profile")
def test_default_wire_shape_pins_the_default_profile(halo_sandbox, halo_sandbox_factory):
    assert halo_sandbox.profile.name == "default"
    assert halo_sandbox_factory().profile.name == "default"


def test_fixtures_follow_the_option(request, halo_sandbox, halo_sandbox_factory):
    assert halo_sandbox.profile.name == request.config.halo_profile
    assert halo_sandbox_factory().profile.name == request.config.halo_profile


def _run_pytest(*args, env=None):
    selection = [
        f"tests/sandbox/test_profiles.py::{name}"
        for name in (
            "test_a_profile_named_by_the_test_wins",
            "test_default_wire_shape_pins_the_default_profile",
            "test_fixtures_follow_the_option",
        )
    ]
    environment = {k: v for k, v in os.environ.items() if k != "HALO_PROFILE"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *selection, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**environment, **(env or {})},
        timeout=120,
    )


def test_option_and_environment_set_the_profile_of_the_fixtures():
    by_option = _run_pytest("--halo-profile", "no_datesearch,nulls_omitted", env={"HALO_PROFILE": "all"})
    assert by_option.returncode == 0, by_option.stdout + by_option.stderr
    assert "HaloPSA sandbox profile: nulls_omitted,no_datesearch" in by_option.stdout
    assert "3 passed" in by_option.stdout
    by_env = _run_pytest(env={"HALO_PROFILE": "all"})
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr
    assert "HaloPSA sandbox profile: all" in by_env.stdout
    unknown = _run_pytest("--halo-profile", "everything")
    assert unknown.returncode != 0
    assert "unknown HaloPSA profile 'everything'" in unknown.stdout + unknown.stderr
