"""List filters: incremental (last_modified / lastupdatefromdate), statuses, customer, lines, credits."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from halosandbox.shapes import PAYMENTSTATUS_PAID, PAYMENTSTATUS_PARTIALLY_PAID, PAYMENTSTATUS_UNPAID


def _after(timestamp: str) -> str:
    """One millisecond after a Halo timestamp (the filters are inclusive)."""
    return (datetime.fromisoformat(timestamp) + timedelta(milliseconds=1)).isoformat(timespec="milliseconds")


def _get(session, url, path, **params):
    response = session.get(f"{url}{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_datesearch_last_modified_returns_only_changed_invoices(halo_sandbox, halo_session):
    url = halo_sandbox.url
    everything = _get(halo_session, url, "/api/Invoice")["invoices"]
    cursor = max(i["last_modified"] for i in everything)
    assert (
        _get(halo_session, url, "/api/Invoice", datesearch="last_modified", start_date=_after(cursor))["record_count"]
        == 0
    )
    changed = halo_sandbox.store.update_invoice(1, duedate="2027-01-31")
    assert changed["last_modified"] > cursor
    body = _get(halo_session, url, "/api/Invoice", datesearch="last_modified", start_date=_after(cursor))
    assert [i["id"] for i in body["invoices"]] == [1]
    assert body["invoices"][0]["duedate"] == "2027-01-31T00:00:00"
    # ISO with Z is accepted too (Halo's web UI sends it)
    body = _get(
        halo_session, url, "/api/Invoice", datesearch="last_modified", start_date=changed["last_modified"] + "Z"
    )
    assert [i["id"] for i in body["invoices"]] == [1]


def test_datesearch_invoice_date_window(halo_sandbox, halo_session):
    url = halo_sandbox.url
    invoices = _get(halo_session, url, "/api/Invoice", includecredits="true")["invoices"]
    dates = sorted(i["invoice_date"] for i in invoices)
    low, high = dates[1], dates[-2]
    body = _get(
        halo_session,
        url,
        "/api/Invoice",
        includecredits="true",
        datesearch="invoice_date",
        start_date=low,
        end_date=high,
    )
    expected = [i["id"] for i in invoices if low <= i["invoice_date"] <= high]
    assert sorted(i["id"] for i in body["invoices"]) == sorted(expected)
    assert 0 < len(expected) < len(invoices)


def test_paymentstatuses_filter(halo_sandbox, halo_session):
    url = halo_sandbox.url
    every = _get(halo_session, url, "/api/Invoice")["invoices"]
    statuses = {i["paymentstatus"] for i in every}
    assert {PAYMENTSTATUS_UNPAID, PAYMENTSTATUS_PARTIALLY_PAID, PAYMENTSTATUS_PAID} <= statuses
    unpaid = _get(halo_session, url, "/api/Invoice", paymentstatuses="0,-1")["invoices"]
    assert unpaid and all(i["paymentstatus"] == 0 for i in unpaid)
    assert len(unpaid) == sum(1 for i in every if i["paymentstatus"] == 0)
    mixed = _get(halo_session, url, "/api/Invoice", paymentstatuses="1,2")["invoices"]
    assert len(unpaid) + len(mixed) == len(every)


def test_client_id_and_includelines(halo_sandbox, halo_session):
    url = halo_sandbox.url
    body = _get(halo_session, url, "/api/Invoice", client_id=1)
    assert body["record_count"] > 0 and all(i["client_id"] == 1 for i in body["invoices"])
    assert all("lines" not in i for i in body["invoices"])
    with_lines = _get(halo_session, url, "/api/Invoice", client_id=1, includelines="true")["invoices"]
    for invoice in with_lines:
        assert invoice["lines"], invoice
        assert all(line["ihid"] == invoice["id"] for line in invoice["lines"])
        assert sum(Decimal(str(line["total_price"])) for line in invoice["lines"]) == Decimal(str(invoice["total"]))


def test_credit_notes_only_with_includecredits(halo_sandbox, halo_session):
    url = halo_sandbox.url
    default = _get(halo_session, url, "/api/Invoice")["invoices"]
    assert all(Decimal(str(i["total"])) >= 0 for i in default)
    credits = _get(halo_session, url, "/api/Invoice", includecredits="true", includeinvoices="false")["invoices"]
    assert len(credits) == 1
    note = credits[0]
    assert Decimal(str(note["total"])) < 0 and note["creditlinkedtoinvoiceid"] == 4
    credited = _get(halo_session, url, "/api/Invoice/4")
    credit_rows = [p for p in credited["payments"] if p["credit_note_id"] == note["id"]]
    assert len(credit_rows) == 1 and credit_rows[0]["type"] == 1
    assert Decimal(str(credit_rows[0]["amount"])) == -Decimal(str(note["total"]))


def test_invoice_without_customer(halo_sandbox, halo_session):
    invoices = _get(halo_session, halo_sandbox.url, "/api/Invoice")["invoices"]
    orphans = [i for i in invoices if i["client_id"] == 0]
    assert len(orphans) == 1 and orphans[0]["client_name"] == ""


def test_clients_active_flags_and_lastupdate(halo_sandbox, halo_session):
    url = halo_sandbox.url
    active = _get(halo_session, url, "/api/Client")["clients"]
    assert [c["id"] for c in active] == [1, 2]
    both = _get(halo_session, url, "/api/Client", includeinactive="true")["clients"]
    assert [c["id"] for c in both] == [1, 2, 3] and both[2]["inactive"] is True
    assert [c["id"] for c in _get(halo_session, url, "/api/Client", activeinactive="false,true")["clients"]] == [3]
    cursor = max(c["alastupdate"] for c in both)
    assert (
        _get(halo_session, url, "/api/Client", includeinactive="true", lastupdatefromdate=_after(cursor))["clients"]
        == []
    )
    halo_sandbox.store.update_client(2, name="Bluebird Freight")
    changed = _get(halo_session, url, "/api/Client", includeinactive="true", lastupdatefromdate=_after(cursor))[
        "clients"
    ]
    assert [(c["id"], c["name"]) for c in changed] == [(2, "Bluebird Freight")]
    assert _get(halo_session, url, "/api/Client", search="cobalt", includeinactive="true")["clients"][0]["id"] == 3


def test_users_filters_and_billing_flag(halo_sandbox, halo_session):
    url = halo_sandbox.url
    users = _get(halo_session, url, "/api/Users", client_id=2)["users"]
    assert [u["id"] for u in users] == [4, 5]  # user 6 is inactive
    assert all(u["client_id"] == 2 and isinstance(u["site_id"], float) for u in users)
    assert len(_get(halo_session, url, "/api/Users", client_id=2, includeinactive="true")["users"]) == 3
    cursor = max(u["ulastupdate"] for u in _get(halo_session, url, "/api/Users")["users"])
    halo_sandbox.store.update_user(2, canaccessinvoices=True)
    changed = _get(halo_session, url, "/api/Users", lastupdatefromdate=_after(cursor))["users"]
    assert [(u["id"], u["canaccessinvoices"]) for u in changed] == [(2, True)]


@pytest.mark.sandbox(dataset="demo")
def test_most_contacts_are_not_billing_contacts(halo_sandbox, halo_session):
    users = _get(halo_session, halo_sandbox.url, "/api/Users", includeinactive="true")["users"]
    share = sum(u["canaccessinvoices"] for u in users) / len(users)
    assert 0.2 <= share <= 0.4


def test_get_by_id_and_404(halo_sandbox, halo_session):
    url = halo_sandbox.url
    assert halo_session.get(f"{url}/api/Invoice/1").json()["id"] == 1
    assert "lines" in halo_session.get(f"{url}/api/Invoice/1", params={"includedetails": "true"}).json()
    for path in (
        "/api/Invoice/999",
        "/api/Client/999",
        "/api/Users/999",
        "/api/InvoicePayment/999999",
        "/api/Attachment/5",
        "/api/NoSuchThing",
    ):
        response = halo_session.get(f"{url}{path}")
        assert response.status_code == 404, path
        assert "Message" in response.json()
    halo_sandbox.store.delete_client(2)
    assert halo_session.get(f"{url}/api/Client/2").status_code == 404


def test_client_create_and_update_through_api(halo_sandbox, halo_session):
    url = halo_sandbox.url
    created = halo_session.post(
        f"{url}/api/Client", json=[{"name": "Echo Vets", "accountsemailaddress": "ap@echo.example"}]
    )
    assert created.status_code == 201 and created.json()["name"] == "Echo Vets"
    updated = halo_session.post(f"{url}/api/Client", json=[{"id": created.json()["id"], "inactive": True}])
    assert updated.status_code == 200 and updated.json()["inactive"] is True
