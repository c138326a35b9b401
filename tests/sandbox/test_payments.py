"""Payments and credits: exact Decimal balance math through the API and the control API."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from halosandbox import SandboxError, Store


def _invoice(session, server, invoice_id):
    # parse_float=Decimal: amounts arrive as JSON numbers with 2 decimals
    return json.loads(session.get(f"{server.url}/api/Invoice/{invoice_id}").text, parse_float=Decimal)


def _assert_balanced(invoice):
    paid = sum((p["amount"] for p in invoice["payments"]), Decimal("0"))
    assert invoice["amountpaid"] == paid
    assert invoice["amountdue"] == invoice["total"] - paid == invoice["amount_remaining"]


def test_amounts_have_two_decimals_on_the_wire(halo_sandbox, halo_session):
    text = halo_session.get(f"{halo_sandbox.url}/api/Invoice/1").text
    assert '"amountpaid":0.00' in text
    assert '"total":8950.37' in text


def test_create_and_delete_payment_restores_balance_exactly(halo_sandbox, halo_session):
    url = halo_sandbox.url
    before = _invoice(halo_session, halo_sandbox, 1)
    response = halo_session.post(
        f"{url}/api/InvoicePayment",
        json=[
            {
                "invoice_id": 1,
                "amount": "100.10",
                "date": "2026-11-01",
                "reference": "Stripe ch_1",
                "thirdpartyid": "ALT-42",
                "payment_method_name": "Card",
                "method": 1,
            }
        ],
    )
    assert response.status_code == 201
    created = json.loads(response.text, parse_float=Decimal)
    assert isinstance(created, list) and len(created) == 1
    payment = created[0]
    assert payment["amount"] == Decimal("100.10") and payment["date"] == "2026-11-01T00:00:00"
    assert payment["thirdpartyid"] == "ALT-42" and payment["type"] == 0
    after = _invoice(halo_session, halo_sandbox, 1)
    _assert_balanced(after)
    assert after["amountdue"] == before["amountdue"] - Decimal("100.10")
    assert after["paymentstatus"] == 1
    assert after["last_modified"] > before["last_modified"]
    assert after["pdf_attachment_id"] != before["pdf_attachment_id"]
    assert halo_session.get(f"{url}/api/InvoicePayment/{payment['id']}").json()["invoice_id"] == 1

    assert halo_session.delete(f"{url}/api/InvoicePayment/{payment['id']}").status_code == 200
    restored = _invoice(halo_session, halo_sandbox, 1)
    _assert_balanced(restored)
    assert restored["amountdue"] == before["amountdue"] and restored["paymentstatus"] == 0
    assert halo_session.get(f"{url}/api/InvoicePayment/{payment['id']}").status_code == 404
    assert halo_session.delete(f"{url}/api/InvoicePayment/{payment['id']}").status_code == 404


def test_paying_the_rest_marks_paid(halo_sandbox, halo_session):
    invoice = _invoice(halo_session, halo_sandbox, 2)
    assert invoice["paymentstatus"] == 1
    halo_session.post(
        f"{halo_sandbox.url}/api/InvoicePayment", json=[{"invoice_id": 2, "amount": str(invoice["amountdue"])}]
    )
    paid = _invoice(halo_session, halo_sandbox, 2)
    assert paid["amountdue"] == 0 and paid["paymentstatus"] == 2
    _assert_balanced(paid)


@pytest.mark.parametrize(
    "row,message",
    [
        ({"invoice_id": 1, "amount": 0}, "greater than zero"),
        ({"invoice_id": 1, "amount": -3}, "greater than zero"),
        ({"invoice_id": 1, "amount": "9999999"}, "exceeds"),
        ({"invoice_id": 1, "amount": "abc"}, "not an amount"),
        ({"invoice_id": 999, "amount": 1}, "not found"),
        ({"invoice_id": 7, "amount": 1}, "voided"),
        ({"invoice_id": 5, "amount": 1}, "credit note"),
    ],
)
def test_invalid_payments_refused_with_400_and_nothing_changes(halo_sandbox, halo_session, row, message):
    before = halo_sandbox.store.ground_truth()
    response = halo_session.post(f"{halo_sandbox.url}/api/InvoicePayment", json=[row])
    assert response.status_code in (400, 404)
    assert message in response.json()["Message"]
    assert halo_sandbox.store.ground_truth() == before


def test_batch_is_all_or_nothing(halo_sandbox, halo_session):
    due = _invoice(halo_session, halo_sandbox, 1)["amountdue"]
    response = halo_session.post(
        f"{halo_sandbox.url}/api/InvoicePayment",
        json=[{"invoice_id": 1, "amount": str(due - 1)}, {"invoice_id": 1, "amount": "2.00"}],
    )
    assert response.status_code == 400
    assert _invoice(halo_session, halo_sandbox, 1)["amountpaid"] == 0


def test_payment_list_filters(halo_sandbox, halo_session):
    url = halo_sandbox.url
    all_rows = halo_session.get(f"{url}/api/InvoicePayment").json()
    assert all_rows["record_count"] == 4 and len(all_rows["invoicepayments"]) == 4
    for_invoice = halo_session.get(f"{url}/api/InvoicePayment", params={"invoice_id": 2}).json()
    assert {p["invoice_id"] for p in for_invoice["invoicepayments"]} == {2}
    for_client = halo_session.get(f"{url}/api/InvoicePayment", params={"client_id": 2}).json()
    assert {p["client_id"] for p in for_client["invoicepayments"]} == {2}
    paged = halo_session.get(
        f"{url}/api/InvoicePayment", params={"pageinate": "true", "page_size": 3, "page_no": 2}
    ).json()
    assert paged["record_count"] == 4 and len(paged["invoicepayments"]) == 1


def test_payment_applied_in_halopsa_via_control_api(halo_sandbox, halo_session):
    url = halo_sandbox.url
    response = requests.post(
        f"{url}/_sandbox/invoices/1/payments", json={"amount": "0.01", "date": "2026-11-02"}, timeout=10
    )
    assert response.status_code == 201
    invoice = _invoice(halo_session, halo_sandbox, 1)
    assert invoice["amountpaid"] == Decimal("0.01") and invoice["paymentstatus"] == 1


def test_credit_note_applied_reduces_balance(halo_sandbox, halo_session):
    url = halo_sandbox.url
    before = _invoice(halo_session, halo_sandbox, 8)
    result = requests.post(f"{url}/_sandbox/invoices/8/credits", json={"amount": "93.69"}, timeout=10).json()
    note = result["credit_note"]
    assert note["creditlinkedtoinvoiceid"] == 8 and note["total"] == -93.69 and note["amountdue"] == 0
    after = _invoice(halo_session, halo_sandbox, 8)
    _assert_balanced(after)
    assert after["amountdue"] == before["amountdue"] - Decimal("93.69")
    credit_rows = [p for p in after["payments"] if p["type"] == 1]
    assert [p["credit_note_id"] for p in credit_rows] == [note["id"]]
    credits = halo_session.get(
        f"{url}/api/Invoice", params={"includecredits": "true", "includeinvoices": "false"}
    ).json()
    assert note["id"] in [i["id"] for i in credits["invoices"]]
    # removing the credit application restores the balance and un-applies the note
    halo_session.delete(f"{url}/api/InvoicePayment/{credit_rows[0]['id']}")
    assert _invoice(halo_session, halo_sandbox, 8)["amountdue"] == before["amountdue"]
    assert _invoice(halo_session, halo_sandbox, note["id"])["amountdue"] == Decimal("-93.69")


def test_invoice_updates_through_api(halo_sandbox, halo_session):
    url = halo_sandbox.url
    response = halo_session.post(f"{url}/api/Invoice", json=[{"id": 1, "duedate": "2027-02-01T00:00:00"}])
    assert response.status_code == 200 and response.json()["duedate"] == "2027-02-01T00:00:00"
    voided = halo_session.post(f"{url}/api/Invoice/8/void")
    assert voided.status_code == 200 and voided.json()["voided"] is True
    paid = json.loads(
        halo_session.post(f"{url}/api/Invoice", json=[{"id": 1, "markaspaid": True}]).text, parse_float=Decimal
    )
    assert paid["paymentstatus"] == 2 and paid["amountdue"] == 0
    _assert_balanced(paid)


def test_edit_unpaid_invoice_amount_and_due_date(halo_sandbox, halo_session):
    url = halo_sandbox.url
    response = requests.patch(
        f"{url}/_sandbox/invoices/1", json={"amount": "1234.56", "duedate": "2027-03-01"}, timeout=10
    )
    assert response.status_code == 200
    invoice = json.loads(
        halo_session.get(f"{url}/api/Invoice/1", params={"includedetails": "true"}).text, parse_float=Decimal
    )
    assert invoice["total"] == Decimal("1234.56") and invoice["amountdue"] == Decimal("1234.56")
    assert sum(line["total_price"] for line in invoice["lines"]) == Decimal("1234.56")
    assert invoice["duedate"] == "2027-03-01T00:00:00"
    # cannot go below what is already paid
    assert requests.patch(f"{url}/_sandbox/invoices/2", json={"amount": "1"}, timeout=10).status_code == 400


def test_create_invoice_without_customer_and_delete(halo_sandbox, halo_session):
    url = halo_sandbox.url
    created = requests.post(
        f"{url}/_sandbox/invoices",
        json={"lines": [{"description": "Consulting", "qty": "1.5", "unit_price": "100.00", "tax_rate": "20"}]},
        timeout=10,
    ).json()
    assert created["client_id"] == 0 and created["client_name"] == ""
    assert created["total"] == 180.0 and created["tax_total"] == 30.0
    listed = halo_session.get(f"{url}/api/Invoice").json()["invoices"]
    assert created["id"] in [i["id"] for i in listed]
    assert requests.delete(f"{url}/_sandbox/invoices/{created['id']}", timeout=10).status_code == 200
    assert halo_session.get(f"{url}/api/Invoice/{created['id']}").status_code == 404
    assert created["id"] not in [i["id"] for i in halo_session.get(f"{url}/api/Invoice").json()["invoices"]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=8))
def test_payment_math_property(cents):
    """Whatever sequence of payments is attempted, balance = total - sum(payments) exactly and
    over-payments are refused."""
    store = Store("tiny", seed=3)
    invoice_id = 1
    total = store.get_invoice(invoice_id).total
    accepted = Decimal("0")
    for amount in (Decimal(c) / 100 for c in cents):
        try:
            store.add_payment(invoice_id, amount)
            accepted += amount
        except SandboxError:
            assert amount > total - accepted
    invoice = store.get_invoice(invoice_id)
    assert invoice.amountpaid == accepted and invoice.amountdue == total - accepted >= 0
    expected_status = 0 if accepted == 0 else (2 if accepted == total else 1)
    assert invoice.paymentstatus == expected_status
