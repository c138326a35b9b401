"""The shape probe (integrations/halopsa/probe.py) and its service (`connection_probe`): what it
learns under every sandbox profile, what it costs in calls, and that a failing call is recorded
instead of raised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from halosandbox.shapes import ALL_PROFILE, DEFAULT_PROFILE_NAME
from integrations.halopsa.exceptions import HaloAuthError, HaloBadResponse
from integrations.halopsa.probe import probe_shape
from integrations.halopsa.shape import (
    BARE_ARRAY,
    FEATURE_BILLING_CONTACTS,
    FEATURE_PAYMENT_PUSH,
    FILTER_IGNORED,
    FILTER_WORKS,
    FLAG_NOWHERE,
    FLAG_ON_DETAIL,
    FLAG_ON_LIST,
    FLAG_ON_LIST_WITH_BILLINGINFO,
    PAYMENTS_NOWHERE,
    PAYMENTS_VIA_INVOICE,
    PAYMENTS_VIA_LIST,
    UNKNOWN,
    HaloShape,
)

# What the probe learns from the tiny dataset under the default profile, in 11 requests: token,
# InstanceInfo, Client + its filter check, Users + its filter check, Invoice + its datesearch
# check, Invoice/{id}, InvoicePayment, Webhook.
DEFAULT_FACTS: dict[str, Any] = {
    "version": "2.130.1",
    "invoice_datesearch": FILTER_WORKS,
    "invoice_order_by_modified": FILTER_WORKS,
    "client_updated_filter": FILTER_WORKS,
    "user_updated_filter": FILTER_WORKS,
    "client_order_by_updated": FILTER_WORKS,
    "user_order_by_updated": FILTER_WORKS,
    "billing_flag_source": FLAG_ON_LIST,
    "billing_flag_field": "canaccessinvoices",
    "payments_lookup": PAYMENTS_VIA_INVOICE,
    "payments_list_key": "invoicepayments",
    "payments_list_filter": FILTER_WORKS,
    "missing_fields": {},
    "problems": [],
    "probe_errors": [],
    "clock_offset_seconds": None,
}
DEFAULT_CODES = {
    "0": {"seen": 4, "unpaid": 3, "paid": 0, "partial": 0},  # one of the four is void
    "1": {"seen": 2, "unpaid": 2, "paid": 0, "partial": 2},
    "2": {"seen": 1, "unpaid": 0, "paid": 1, "partial": 0},
}
ALL_CHANGES: dict[str, Any] = {
    "invoice_datesearch": FILTER_IGNORED,
    "client_updated_filter": FILTER_IGNORED,
    "user_updated_filter": FILTER_IGNORED,
    "billing_flag_source": FLAG_ON_DETAIL,
    "payments_list_key": BARE_ARRAY,
    "payments_list_filter": FILTER_IGNORED,
}
# profile -> (facts that differ from the default, requests)
EXPECTED: dict[str, tuple[dict[str, Any], int]] = {
    DEFAULT_PROFILE_NAME: ({}, 11),
    "flag_on_detail": ({"billing_flag_source": FLAG_ON_DETAIL}, 13),  # + Users?includebillinginfo, Users/{id}
    "flag_with_billinginfo": ({"billing_flag_source": FLAG_ON_LIST_WITH_BILLINGINFO}, 12),
    "payments_bare_array": ({"payments_list_key": BARE_ARRAY}, 11),
    "payments_key_payments": ({"payments_list_key": "payments"}, 11),
    "search_ignores_reference": ({}, 11),  # the probe never relies on search
    "payment_invoice_filter_ignored": ({"payments_list_filter": FILTER_IGNORED}, 11),
    "nulls_omitted": ({"missing_fields": {"payment": ["thirdpartyid"]}}, 11),  # none of the sample's payments has one
    "unpaid_minus_one": ({}, 11),
    "no_datesearch": ({"invoice_datesearch": FILTER_IGNORED}, 11),
    "no_lastupdate_filter": ({"client_updated_filter": FILTER_IGNORED, "user_updated_filter": FILTER_IGNORED}, 11),
    "local_clock": ({}, 11),  # a read-only probe cannot measure the clock (pushes do)
    ALL_PROFILE: (ALL_CHANGES, 13),
}


@pytest.mark.parametrize("profile", list(EXPECTED))
def test_what_the_probe_learns_under_every_profile(halo_sandbox_factory, make_client, profile):
    sandbox = halo_sandbox_factory(profile=profile)
    changes, requests = EXPECTED[profile]
    result = probe_shape(make_client(sandbox))
    learned = result.shape.as_dict()
    assert {name: learned[name] for name in DEFAULT_FACTS} == {**DEFAULT_FACTS, **changes}
    minus_one = profile in ("unpaid_minus_one", ALL_PROFILE)
    codes = {("-1" if minus_one and code == "0" else code): counts for code, counts in DEFAULT_CODES.items()}
    assert learned["paymentstatus_codes"] == codes
    assert (-1 in result.shape.unpaid_codes) and (0 in result.shape.unpaid_codes)
    assert learned["checked_at"]
    # The calls, counted twice: by the client and by HaloPSA. All reads but the token.
    assert result.requests == requests == len(sandbox.request_log)
    assert {(e["method"], e["path"].lower()) for e in sandbox.request_log if e["method"] != "GET"} == {
        ("POST", "/auth/token")
    }
    assert not any("search" in entry["query"] for entry in sandbox.request_log)


def test_a_local_clock_hours_or_days_away_does_not_change_the_filter_checks(halo_sandbox_factory, make_client):
    for minutes in (-420, -4320, 4320):
        sandbox = halo_sandbox_factory(profile="local_clock", clock_offset_minutes=minutes)
        shape = probe_shape(make_client(sandbox)).shape
        assert (shape.invoice_datesearch, shape.client_updated_filter, shape.user_updated_filter) == (FILTER_WORKS,) * 3


@pytest.mark.sandbox(profile=DEFAULT_PROFILE_NAME)
def test_a_failing_call_is_recorded_and_the_probe_goes_on(halo_sandbox, make_client):
    halo_sandbox.add_fault("status", status=403, path="/api/Webhook", count=5)
    halo_sandbox.add_fault("status", status=503, path="/api/Users", count=50)
    shape = probe_shape(make_client(halo_sandbox, max_retries=1)).shape
    calls = {error["call"]: error["message"] for error in shape.probe_errors}
    assert set(calls) == {"GET /api/Webhook", "GET /api/Users"}
    assert "lacks permission" in calls["GET /api/Webhook"]
    # What depended on the failed call stays unknown (never "no"); the rest was learned.
    assert (shape.billing_flag_source, shape.user_updated_filter) == (UNKNOWN, UNKNOWN)
    assert (shape.payments_lookup, shape.invoice_datesearch) == (PAYMENTS_VIA_INVOICE, FILTER_WORKS)
    assert shape.problems == []


def test_token_and_instance_info_failures_raise(halo_sandbox, make_client):
    with pytest.raises(HaloAuthError):
        probe_shape(make_client(halo_sandbox, client_secret="wrong"))
    halo_sandbox.add_fault("malformed_json", path="/api/InstanceInfo", count=10)
    with pytest.raises(HaloBadResponse):
        probe_shape(make_client(halo_sandbox, max_retries=1))


# --------------------------------------------------------------------------------------------
# Instances the sandbox does not simulate (stub server)


def _answer(body: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _stub_instance(
    stub,
    *,
    users=None,
    billinginfo_users=None,
    user_detail=None,
    invoices=None,
    invoice_detail=None,
    payments=None,
    clients=None,
) -> None:
    """A small instance on the stub server; each list honours its far-future filter."""
    clients = [{"id": 1, "name": "Acme", "alastupdate": "2026-10-02T10:00:00"}] if clients is None else clients
    users = (
        [{"id": 5, "name": "Ann", "client_id": 1, "emailaddress": "a@x", "ulastupdate": "2026-10-02T10:00:00"}]
        if users is None
        else users
    )
    invoices = (
        [
            {"id": 7, "total": 100, "amountpaid": 0, "paymentstatus": 0, "last_modified": "2026-10-03T10:00:00"},
            {"id": 8, "total": 50, "amountpaid": 50, "paymentstatus": 2, "last_modified": "2026-10-01T10:00:00"},
        ]
        if invoices is None
        else invoices
    )

    def listing(key, rows, filter_param, alternative_rows=None, alternative_param=None):
        def answer(query):
            chosen = [] if filter_param in query else rows
            if alternative_param and query.get(alternative_param) == "true" and filter_param not in query:
                chosen = alternative_rows
            return _answer({"record_count": len(chosen), key: chosen})

        return answer

    stub.route("GET", "/api/InstanceInfo", 200, {"app_version": "2.99.1"})
    stub.routes[("GET", "/api/Client")] = listing("clients", clients, "lastupdatefromdate")
    stub.routes[("GET", "/api/Users")] = listing(
        "users",
        users,
        "lastupdatefromdate",
        billinginfo_users if billinginfo_users is not None else users,
        "includebillinginfo",
    )
    stub.route("GET", "/api/Users/5", 200, user_detail if user_detail is not None else users[0] if users else {})
    stub.routes[("GET", "/api/Invoice")] = listing("invoices", invoices, "datesearch")
    stub.route(
        "GET", "/api/Invoice/8", 200, invoice_detail if invoice_detail is not None else {"id": 8, "payments": []}
    )
    stub.route(
        "GET", "/api/InvoicePayment", 200, payments if payments is not None else {"record_count": 0, "payments": []}
    )
    stub.route("GET", "/api/Webhook", 200, [])


def test_no_billing_flag_anywhere_blocks_user_billing_contacts_only(stub_halo, make_client):
    _stub_instance(stub_halo)  # no canaccessinvoices on list rows, with billing info, or on the detail
    shape = probe_shape(make_client(base_url=stub_halo.url)).shape
    assert shape.billing_flag_source == FLAG_NOWHERE
    assert [p["feature"] for p in shape.problems] == [FEATURE_BILLING_CONTACTS]
    assert "accounts contact still is" in shape.blocked(FEATURE_BILLING_CONTACTS)
    assert shape.payments_lookup == PAYMENTS_VIA_INVOICE and not shape.blocked(FEATURE_PAYMENT_PUSH)
    assert {("GET", "/api/Users/5")} <= set(stub_halo.requests)


def test_an_alternative_flag_is_found_and_named(stub_halo, make_client):
    user = {"id": 5, "name": "Ann", "client_id": 1, "emailaddress": "a@x"}
    _stub_instance(stub_halo, users=[user], user_detail={**user, "sendaccountsemails": True})
    shape = probe_shape(make_client(base_url=stub_halo.url)).shape
    assert (shape.billing_flag_source, shape.billing_flag_field) == (FLAG_ON_DETAIL, "sendaccountsemails")
    assert shape.problems == []


def test_the_flag_with_billing_info_is_preferred_to_the_detail(stub_halo, make_client):
    user = {"id": 5, "name": "Ann", "client_id": 1, "emailaddress": "a@x"}
    _stub_instance(stub_halo, users=[user], billinginfo_users=[{**user, "canaccessinvoices": False}])
    shape = probe_shape(make_client(base_url=stub_halo.url)).shape
    assert (shape.billing_flag_source, shape.billing_flag_field) == (FLAG_ON_LIST_WITH_BILLINGINFO, "canaccessinvoices")
    assert ("GET", "/api/Users/5") not in stub_halo.requests


def test_no_exact_payments_list_blocks_payment_pushes(stub_halo, make_client):
    # another invoice's row: filter ignored
    _stub_instance(
        stub_halo,
        invoice_detail={"id": 8, "total": 50},  # no `payments`: says nothing
        payments=[{"id": 1, "invoice_id": 99, "amount": 3}],
    )
    shape = probe_shape(make_client(base_url=stub_halo.url)).shape
    assert (shape.payments_lookup, shape.payments_list_filter, shape.payments_list_key) == (
        PAYMENTS_NOWHERE,
        FILTER_IGNORED,
        BARE_ARRAY,
    )
    assert "not posted to HaloPSA" in shape.blocked(FEATURE_PAYMENT_PUSH)


def test_the_list_is_used_when_the_invoice_does_not_carry_its_payments(stub_halo, make_client):
    _stub_instance(
        stub_halo,
        invoice_detail={"id": 8, "total": 50},
        payments={"record_count": 1, "rows": [{"id": 1, "invoice_id": 8, "amount": 50, "date": "2026-10-01"}]},
    )
    shape = probe_shape(make_client(base_url=stub_halo.url)).shape
    assert (shape.payments_lookup, shape.payments_list_key) == (PAYMENTS_VIA_LIST, "rows")
    assert shape.missing_fields["payment"] == ["type", "reference", "thirdpartyid", "payment_method_name"]


def test_an_order_that_is_not_newest_first_is_ignored(stub_halo, make_client):
    _stub_instance(
        stub_halo,
        invoices=[
            {"id": 8, "total": 50, "amountpaid": 50, "paymentstatus": 2, "last_modified": "2026-10-01T10:00:00"},
            {"id": 9, "total": 10, "amountpaid": 0, "paymentstatus": 0, "last_modified": "2026-10-03T10:00:00"},
        ],
    )
    assert probe_shape(make_client(base_url=stub_halo.url)).shape.invoice_order_by_modified == FILTER_IGNORED


def test_an_empty_instance_leaves_the_filters_unknown(stub_halo, make_client):
    _stub_instance(stub_halo, clients=[], users=[], invoices=[])
    result = probe_shape(make_client(base_url=stub_halo.url))
    shape = result.shape
    assert (shape.client_updated_filter, shape.user_updated_filter, shape.invoice_datesearch) == (UNKNOWN,) * 3
    assert (shape.billing_flag_source, shape.payments_lookup, shape.invoice_order_by_modified) == (UNKNOWN,) * 3
    assert shape.problems == [] and result.requests == 6  # token, InstanceInfo, Client, Users, Invoice, Webhook


def test_junk_answers_are_recorded_never_raised(stub_halo, make_client):
    _stub_instance(stub_halo)
    stub_halo.route("GET", "/api/Client", 200, "not a list")
    stub_halo.route(
        "GET",
        "/api/Invoice",
        200,
        {
            "invoices": [
                {"id": 8, "total": "abc", "paymentstatus": {"x": 1}, "last_modified": "yesterday", "lines": "none"}
            ]
        },
    )
    shape = probe_shape(make_client(base_url=stub_halo.url)).shape
    assert "GET /api/Client" in {error["call"] for error in shape.probe_errors}
    assert shape.paymentstatus_codes == {"missing": {"seen": 1, "unpaid": 0, "paid": 0, "partial": 0}}
    assert shape.invoice_order_by_modified == UNKNOWN


# --------------------------------------------------------------------------------------------
# The service: stored on the connection


def test_connection_probe_stores_the_shape_and_keeps_the_measured_clock(halo_sandbox, partner, make_connection):
    from integrations.models import Connection
    from integrations.services.connections import connection_probe, connection_shape_update

    connection = make_connection(partner, halo_sandbox)
    connection_shape_update(
        connection=connection, clock_offset_seconds=-25200.0, clock_offset_measured_at="2026-12-01T10:00:00+00:00"
    )
    result = connection_probe(connection=connection)
    stored = Connection.objects.get(pk=connection.pk)
    assert stored.shape_checked_at is not None and stored.halopsa_version == "2.130.1"
    shape = HaloShape.of(stored)
    assert shape.payments_lookup == result.shape.payments_lookup == PAYMENTS_VIA_INVOICE
    assert shape.clock_offset_seconds == -25200.0  # measured by a push, not forgotten by the read-only probe


def test_connection_test_runs_the_probe(halo_sandbox, partner, make_connection):
    from integrations.models import Connection
    from integrations.services.connections import connection_test

    connection = make_connection(partner, halo_sandbox)
    result = connection_test(connection=connection)
    assert result.ok and result.problems == []
    stored = Connection.objects.get(pk=connection.pk)
    assert stored.shape_checked_at is not None and HaloShape.of(stored).version == "2.130.1"
    # A refused invoice list fails the test as before, and what was learned is still stored.
    halo_sandbox.add_fault("status", status=403, path="/api/Invoice", count=50)
    failed = connection_test(connection=connection)
    assert (failed.ok, failed.failure) == (False, "permission")
    assert "GET /api/Invoice" in {
        e["call"] for e in HaloShape.of(Connection.objects.get(pk=connection.pk)).probe_errors
    }


def test_connection_test_names_blocked_features(stub_halo, partner, make_connection):
    from integrations.services.connections import connection_test

    _stub_instance(stub_halo)
    result = connection_test(connection=make_connection(partner, base_url=stub_halo.url))
    assert result.ok and "1 feature(s) blocked" in result.message
    assert [p["feature"] for p in result.problems] == [FEATURE_BILLING_CONTACTS]


def test_a_damaged_stored_shape_reads_as_unknown():
    shape = HaloShape.from_dict(
        {
            "payments_lookup": ["invoice"],
            "paymentstatus_codes": [1],
            "clock_offset_seconds": "soon",
            "problems": ["junk", {"feature": FEATURE_PAYMENT_PUSH, "message": "m"}],
            "version": 2,
            "billing_flag_source": FLAG_ON_DETAIL,
            "not_a_field": 1,
        }
    )
    assert (shape.payments_lookup, shape.paymentstatus_codes, shape.clock_offset_seconds, shape.version) == (
        UNKNOWN,
        {},
        None,
        UNKNOWN,
    )
    assert shape.billing_flag_source == FLAG_ON_DETAIL and shape.blocked(FEATURE_PAYMENT_PUSH) == "m"
    assert HaloShape.from_dict({"clock_offset_seconds": float("nan")}).clock_offset_seconds is None
    assert HaloShape.from_dict({"clock_offset_seconds": -25200}).halo_time_on_our_clock(None) is None
