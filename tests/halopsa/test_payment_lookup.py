"""The exact payments lookup behind exactly-once payment pushes (client.py "Payments").

It never rests on `search` (what it matches on /InvoicePayment is undocumented, docs/halopsa-facts.md §2, §5):
it lists one invoice's payments exactly, from the invoice's own `payments` or from GET
/InvoicePayment?invoice_id=N checked row by row, and matches the reference on our side. It
accepts any list key GET /InvoicePayment may use (halopsa-facts §2, §11.7) and refuses to answer rather than
guess (HaloPaymentsUnlistable), so a caller never posts blind.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from decimal import Decimal

import pytest

from halosandbox.shapes import ALL_PROFILE, DEFAULT_PROFILE_NAME, PROFILE_VARIANTS
from integrations.halopsa.exceptions import HaloBadResponse, HaloError, HaloPaymentsUnlistable
from integrations.halopsa.shape import BARE_ARRAY, PAYMENTS_VIA_INVOICE, PAYMENTS_VIA_LIST, UNKNOWN

EVERY_PROFILE = [DEFAULT_PROFILE_NAME, *PROFILE_VARIANTS, ALL_PROFILE]


def _stored(sandbox, invoice_id: int, reference: str) -> list:
    return [p for p in sandbox.store.get_invoice(invoice_id).payments if p.reference == reference]


def _searched(sandbox) -> list[dict]:
    return [entry for entry in sandbox.request_log if "search" in entry["query"]]


@pytest.mark.parametrize("lookup", [UNKNOWN, PAYMENTS_VIA_LIST, PAYMENTS_VIA_INVOICE])
@pytest.mark.parametrize("profile", EVERY_PROFILE)
def test_a_lost_response_ends_as_exactly_one_payment_under_every_profile(
    halo_sandbox_factory, make_client, profile, lookup
):
    sandbox = halo_sandbox_factory(profile=profile)
    sandbox.add_fault("lost_response", path="/api/InvoicePayment", method="POST", count=1)
    client = make_client(sandbox)
    created = client.create_payment(
        invoice_id=2, amount=Decimal("5.00"), paid_on=date(2026, 11, 3), reference="SP-LOST-1", lookup=lookup
    )
    stored = _stored(sandbox, 2, "SP-LOST-1")
    assert len(stored) == 1 and created["id"] == stored[0].id
    assert sandbox.count_requests("/api/InvoicePayment", "POST") == 1
    assert _searched(sandbox) == []
    # Calling again (a retried job) finds it and posts nothing.
    again = client.create_payment(
        invoice_id=2, amount=Decimal("5.00"), paid_on=date(2026, 11, 3), reference="SP-LOST-1", lookup=lookup
    )
    assert again["id"] == created["id"] and sandbox.count_requests("/api/InvoicePayment", "POST") == 1


def test_search_is_what_would_have_posted_twice(halo_sandbox_factory):
    """The profile the lookup must survive: `search` does not match references there."""
    from tests.plugins.sandbox import halo_session_for

    sandbox = halo_sandbox_factory(profile="search_ignores_reference")
    sandbox.store.add_payment(2, "1.00", reference="SP-SEARCH-1")
    with halo_session_for(sandbox) as session:
        answer = session.get(
            f"{sandbox.url}/api/InvoicePayment", params={"invoice_id": 2, "search": "SP-SEARCH-1"}
        ).json()
    assert answer["record_count"] == 0  # a search-based lookup would say "not there" and post again


def test_the_lookup_reads_the_invoice_once_and_uses_an_answer_in_hand(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    invoice = client.get_invoice(2, include_lines=True)
    halo_sandbox.clear_request_log()
    found = client.find_payment_by_reference(invoice_id=2, reference="PMT-2-2", invoice=invoice)
    assert found["id"] == 22 and client.payments_lookup_used == PAYMENTS_VIA_INVOICE
    assert halo_sandbox.request_log == []  # the invoice in hand answered
    assert client.find_payment_by_reference(invoice_id=2, reference="PMT-2-9") is None
    assert halo_sandbox.count_requests("/api/Invoice/2", "GET") == 1
    assert halo_sandbox.count_requests("/api/InvoicePayment") == 0


@pytest.mark.sandbox(profile=DEFAULT_PROFILE_NAME)  # GET /InvoicePayment's filter must work for the last check
def test_matching_is_exact_on_our_side(halo_sandbox, make_client):
    halo_sandbox.store.add_payment(2, "1.00", reference="SP-10")
    client = make_client(halo_sandbox)
    assert client.find_payment_by_reference(invoice_id=2, reference="SP-1") is None
    assert client.find_payment_by_reference(invoice_id=2, reference="SP-10")["reference"] == "SP-10"
    assert (
        client.find_payment_by_reference(invoice_id=2, reference="SP-10", lookup=PAYMENTS_VIA_LIST)["reference"]
        == "SP-10"
    )
    assert client.payments_lookup_used == PAYMENTS_VIA_LIST


@pytest.mark.parametrize(
    ("profile", "key"),
    [
        (DEFAULT_PROFILE_NAME, "invoicepayments"),
        ("payments_key_payments", "payments"),
        ("payments_bare_array", BARE_ARRAY),
    ],
)
def test_every_list_key_is_read_and_named(halo_sandbox_factory, make_client, caplog, profile, key):
    caplog.set_level(logging.INFO, logger="integrations.halopsa.client")
    sandbox = halo_sandbox_factory(profile=profile)
    client = make_client(sandbox)
    rows = client.list_invoice_payments(2)
    assert sorted(row["id"] for row in rows) == [21, 22]
    assert client.payments_list_key == key
    said = [r.getMessage() for r in caplog.records if "lists its rows" in r.getMessage()]
    assert len(said) == 1 and ("bare array" if key == BARE_ARRAY else repr(key)) in said[0]
    assert "search" not in sandbox.request_log[-1]["query"]


@pytest.mark.parametrize("profile", ["payment_invoice_filter_ignored", ALL_PROFILE])
def test_an_ignored_invoice_filter_makes_the_list_unusable_at_once(halo_sandbox_factory, make_client, profile):
    sandbox = halo_sandbox_factory(profile=profile)
    client = make_client(sandbox)
    with pytest.raises(HaloPaymentsUnlistable) as caught:
        client.list_invoice_payments(2)
    assert "ignores the invoice_id filter" in caught.value.message and caught.value.permanent
    assert sandbox.count_requests("/api/InvoicePayment", "GET") == 1  # no paging through the whole instance
    # The lookup falls back to the invoice's own payments, which are exact.
    assert client.find_payment_by_reference(invoice_id=2, reference="PMT-2-1", lookup=PAYMENTS_VIA_LIST)["id"] == 21
    assert client.payments_lookup_used == PAYMENTS_VIA_INVOICE


# --------------------------------------------------------------------------------------------
# Answers the sandbox never gives (stub server)


def _json(status: int, body) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def test_an_invoice_without_payments_is_not_read_as_none(stub_halo, make_client):
    stub_halo.route("GET", "/api/Invoice/7", 200, {"id": 7, "total": 10})  # no `payments` key at all
    stub_halo.route(
        "GET",
        "/api/InvoicePayment",
        200,
        {"record_count": 1, "invoicepayments": [{"id": 70, "invoice_id": 7, "amount": 10, "reference": "SP-7"}]},
    )
    client = make_client(base_url=stub_halo.url)
    assert client.find_payment_by_reference(invoice_id=7, reference="SP-7")["id"] == 70
    assert client.payments_lookup_used == PAYMENTS_VIA_LIST


def test_no_trustworthy_list_means_no_post(stub_halo, make_client):
    stub_halo.route("GET", "/api/Invoice/7", 200, {"id": 7, "total": 10})
    stub_halo.route("GET", "/api/InvoicePayment", 200, [{"id": 80, "invoice_id": 8, "amount": 3, "reference": "x"}])
    client = make_client(base_url=stub_halo.url)
    with pytest.raises(HaloPaymentsUnlistable) as caught:
        client.create_payment(invoice_id=7, amount=Decimal("1.00"), paid_on=date(2026, 11, 3), reference="SP-7")
    assert "no trustworthy list of invoice 7's payments" in caught.value.message
    assert "nothing was posted" in caught.value.message and caught.value.permanent
    assert ("POST", "/api/InvoicePayment") not in stub_halo.requests


def test_rows_without_their_invoice_id_cannot_be_trusted(stub_halo, make_client):
    stub_halo.route("GET", "/api/InvoicePayment", 200, {"payments": [{"id": 1, "amount": 3, "reference": "SP-7"}]})
    with pytest.raises(HaloPaymentsUnlistable, match="without their invoice id"):
        make_client(base_url=stub_halo.url).list_invoice_payments(7)


def test_a_bare_array_that_ignores_paging_is_read_once(stub_halo, make_client):
    rows = [{"id": i, "invoice_id": 7, "amount": 1, "reference": f"R{i}"} for i in range(1, 101)]
    stub_halo.routes[("GET", "/api/InvoicePayment")] = lambda query: _json(200, rows)  # same 100 rows on every page
    client = make_client(base_url=stub_halo.url)
    assert len(client.list_invoice_payments(7)) == 100
    assert stub_halo.requests.count(("GET", "/api/InvoicePayment")) == 2  # page 2 brought nothing new


def test_an_envelope_is_paged_to_the_end(stub_halo, make_client):
    def page(query):
        number = int(query["page_no"])
        ids = range((number - 1) * 100 + 1, min(number * 100, 130) + 1)
        return _json(
            200,
            {
                "page_size": 100,
                "record_count": 130,
                "invoicepayments": [{"id": i, "invoice_id": 7, "reference": f"R{i}"} for i in ids],
            },
        )

    stub_halo.routes[("GET", "/api/InvoicePayment")] = page
    client = make_client(base_url=stub_halo.url)
    assert client.find_payment_by_reference(invoice_id=7, reference="R130", lookup=PAYMENTS_VIA_LIST)["id"] == 130
    assert stub_halo.requests.count(("GET", "/api/InvoicePayment")) == 2


def test_two_payments_under_our_reference_need_a_person(stub_halo, make_client):
    stub_halo.route(
        "GET",
        "/api/Invoice/7",
        200,
        {
            "id": 7,
            "payments": [
                {"id": 1, "invoice_id": 7, "reference": "SP-7"},
                {"id": 2, "invoice_id": 7, "thirdpartyid": "SP-7"},
            ],
        },
    )
    with pytest.raises(HaloError) as caught:
        make_client(base_url=stub_halo.url).find_payment_by_reference(invoice_id=7, reference="SP-7")
    assert caught.value.permanent and "2 payments carrying reference SP-7" in caught.value.message


@pytest.mark.parametrize(
    ("body", "rows", "count", "key"),
    [
        ([{"id": 1}], [{"id": 1}], None, BARE_ARRAY),
        ({"record_count": 1, "invoicepayments": [{"id": 1}]}, [{"id": 1}], 1, "invoicepayments"),
        ({"record_count": 1, "payments": [{"id": 1}]}, [{"id": 1}], 1, "payments"),
        ({"record_count": 1, "columns": [{"x": 1}], "records": [{"id": 1}]}, [{"id": 1}], 1, "records"),
        ({"page_no": 1, "record_count": 0}, [], 0, UNKNOWN),
    ],
)
def test_payment_rows_accept_every_plausible_envelope(make_client, body, rows, count, key):
    assert make_client().payment_rows(body) == (rows, count, key)


@pytest.mark.parametrize(
    "body",
    [
        {"record_count": 2, "a": [{"id": 1}], "b": [{"id": 2}]},  # which one?
        {"record_count": 2},  # rows announced, none given
        "InvoicePayment",
        None,
    ],
)
def test_payment_rows_refuse_to_guess(make_client, body):
    with pytest.raises(HaloBadResponse):
        make_client().payment_rows(body)
