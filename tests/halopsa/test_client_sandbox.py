"""The client against the HaloPSA sandbox over real HTTP: auth, paging, filters, records, writes."""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from halosandbox import SANDBOX_CLIENT_SECRET
from halosandbox.shapes import WEBHOOK_EVENTNOS
from integrations.halopsa.client import PAGE_SIZE, HaloClient, RequestStats
from integrations.halopsa.exceptions import (
    HaloAuthError,
    HaloNotFound,
    HaloRequestRejected,
)

PAGING_DATASET = {"customers": 120, "contacts": 250, "billing_contacts": 60, "invoices": 230, "max_lines": 3}


def _halo_time(text: str) -> datetime:
    return datetime.fromisoformat(text[:19]).replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------
# Auth


def test_authenticates_and_reads_the_version(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    assert client.version() == "2.130.1"
    assert client.instance_info()["app_version"] == "2.130.1"
    assert halo_sandbox.count_requests("/auth/token", "POST") == 1
    token_call = next(e for e in halo_sandbox.request_log if e["path"] == "/auth/token")
    assert token_call["status"] == 200


def test_bad_secret_is_an_actionable_auth_error(halo_sandbox, make_client):
    client = make_client(halo_sandbox, client_secret="wrong-secret")
    with pytest.raises(HaloAuthError) as caught:
        client.version()
    assert caught.value.permanent
    assert caught.value.status == 401
    assert "client ID or secret" in caught.value.message
    assert "wrong-secret" not in caught.value.message
    assert halo_sandbox.count_requests("/api") == 0  # no API call without a token
    assert halo_sandbox.count_requests("/auth/token") == 1  # a refusal is not retried


@pytest.mark.sandbox(tenant="acme")
def test_tenant_is_sent_to_the_token_endpoint(halo_sandbox, make_client):
    with pytest.raises(HaloAuthError):
        make_client(halo_sandbox, tenant="").version()
    assert make_client(halo_sandbox, tenant="acme").version() == "2.130.1"
    token_calls = [e for e in halo_sandbox.request_log if e["path"] == "/auth/token"]
    assert [e["query"].get("tenant") for e in token_calls] == [None, "acme"]


def test_separate_authorisation_server_url(halo_sandbox, make_client):
    client = make_client(halo_sandbox, auth_url=f"{halo_sandbox.url}/auth/")
    assert client.token_url == f"{halo_sandbox.url}/auth/token"
    assert client.version() == "2.130.1"


def test_token_is_cached_per_client_and_shared_in_the_process(halo_sandbox, make_client):
    first = make_client(halo_sandbox)
    first.version()
    list(first.iter_clients())
    first.get_invoice(1)
    second = make_client(halo_sandbox)
    second.version()
    assert halo_sandbox.count_requests("/auth/token") == 1
    # A different secret is never served the cached token.
    with pytest.raises(HaloAuthError):
        make_client(halo_sandbox, client_secret="other").version()
    assert halo_sandbox.count_requests("/auth/token") == 2


def test_token_expired_on_the_server_mid_iteration_reauthenticates_once(halo_sandbox_factory, make_client):
    sandbox = halo_sandbox_factory(dataset=PAGING_DATASET)
    client = make_client(sandbox)
    expected = len(sandbox.store.query_invoice_ids())
    ids = []
    for page in client.invoice_pages():
        ids.extend(r["id"] for r in page.records)
        if page.page_no == 1:
            sandbox.expire_tokens()
    assert len(ids) == expected == len(set(ids))
    assert sandbox.count_requests("/auth/token") == 2
    assert [e["status"] for e in sandbox.request_log if e["path"] == "/api/Invoice"].count(401) == 1
    assert client.stats.retries == 1


def test_short_token_lifetime_is_renewed_before_it_expires(halo_sandbox_factory, make_client):
    sandbox = halo_sandbox_factory(token_lifetime=1)
    client = make_client(sandbox)
    client.version()
    import time

    time.sleep(1.0)  # the token's whole lifetime: the next call must not present it
    client.version()
    assert sandbox.count_requests("/auth/token") == 2
    assert all(e["status"] == 200 for e in sandbox.request_log)


def test_a_token_refused_twice_is_an_auth_error(halo_sandbox, make_client):
    halo_sandbox.add_fault("expire_token", path="/api/InstanceInfo", count=2)
    client = make_client(halo_sandbox)
    with pytest.raises(HaloAuthError) as caught:
        client.version()
    assert "freshly issued token" in caught.value.message
    assert halo_sandbox.count_requests("/auth/token") == 2
    assert halo_sandbox.count_requests("/api/InstanceInfo") == 2


# --------------------------------------------------------------------------------------------
# Paging


def test_pages_stream_every_record_once_with_the_fewest_requests(halo_sandbox_factory, make_client):
    sandbox = halo_sandbox_factory(dataset=PAGING_DATASET)
    client = make_client(sandbox)
    store = sandbox.store
    cases = [
        ("/api/Invoice", client.invoice_pages(), len(store.query_invoice_ids())),
        ("/api/Client", client.client_pages(), len(store.query_clients(include_inactive=True))),
        ("/api/Users", client.user_pages(), len(store.query_users(include_inactive=True))),
    ]
    for path, pages, expected in cases:
        sandbox.clear_request_log()
        ids: list[int] = []
        for page in pages:
            assert page.record_count == expected
            assert len(page.records) <= PAGE_SIZE
            ids.extend(r["id"] for r in page.records)
        assert len(ids) == expected == len(set(ids)), path
        calls = [e for e in sandbox.request_log if e["path"] == path]
        assert len(calls) == math.ceil(expected / PAGE_SIZE), path
        assert [e["query"]["page_no"] for e in calls] == [str(n) for n in range(1, len(calls) + 1)]
        assert all(e["query"]["page_size"] == "100" and e["query"]["pageinate"] == "true" for e in calls)


@pytest.mark.sandbox(dataset="demo")
def test_demo_dataset_counts_match_the_sandbox(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    store = halo_sandbox.store
    invoices = list(client.iter_invoices())
    assert len(invoices) == len(store.query_invoice_ids())
    assert all("lines" in i for i in invoices)
    assert len(list(client.iter_clients())) == len(store.query_clients(include_inactive=True))
    assert len(list(client.iter_users())) == len(store.query_users(include_inactive=True))
    credits = list(client.iter_invoices(include_credits=True, include_lines=False))
    assert len(credits) == len(store.query_invoice_ids(include_credits=True))
    assert all("lines" not in i for i in credits)
    assert isinstance(invoices[0]["total"], Decimal)


def test_exact_multiple_of_the_page_size_needs_no_extra_request(halo_sandbox_factory, make_client):
    sandbox = halo_sandbox_factory(dataset={"customers": 200, "contacts": 10, "invoices": 5, "max_lines": 1})
    client = make_client(sandbox)
    assert len(list(client.iter_clients())) == 200
    assert sandbox.count_requests("/api/Client") == 2


@pytest.mark.default_wire_shape(reason="a far-future datesearch that the sandbox honours by default")
def test_empty_list_is_one_request(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    future = datetime.now(timezone.utc) + timedelta(days=3650)
    assert list(client.invoice_pages(changed_since=future)) == []
    assert halo_sandbox.count_requests("/api/Invoice") == 1


@pytest.mark.default_wire_shape(reason="the default profile's datesearch and lastupdatefromdate filters")
def test_changed_since_filters(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    store = halo_sandbox.store
    newest_client = max(_halo_time(c["alastupdate"]) for c in client.iter_clients())
    newest_user = max(_halo_time(u["ulastupdate"]) for u in client.iter_users())
    newest_invoice = max(_halo_time(i["last_modified"]) for i in client.iter_invoices())
    cutoff = max(newest_client, newest_user, newest_invoice) + timedelta(seconds=1)

    store.update_client(1, name="Acme Dental Group (renamed)")
    user_id = next(u.id for u in store.users.values() if u.client_id == 2)
    store.update_user(user_id, surname="Changed")
    store.add_payment(1, Decimal("1.00"), reference="seen-by-incremental")
    # The sandbox stamps changes with its own clock; query from just before the newest generated record.
    assert [c["id"] for c in client.iter_clients(changed_since=cutoff)] == [1]
    assert [u["id"] for u in client.iter_users(changed_since=cutoff)] == [user_id]
    assert [i["id"] for i in client.iter_invoices(changed_since=cutoff)] == [1]

    invoice_call = [e for e in halo_sandbox.request_log if e["path"] == "/api/Invoice"][-1]
    assert invoice_call["query"]["datesearch"] == "last_modified"
    assert invoice_call["query"]["start_date"] == cutoff.strftime("%Y-%m-%dT%H:%M:%S")
    assert invoice_call["query"]["includelines"] == "true"
    client_call = [e for e in halo_sandbox.request_log if e["path"] == "/api/Client"][-1]
    assert client_call["query"]["lastupdatefromdate"] == cutoff.strftime("%Y-%m-%dT%H:%M:%S")


def test_inactive_users_and_clients_are_listed(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    users = list(client.iter_users())
    assert any(u["inactive"] for u in users)  # a contact turning inactive must reach the sync
    assert any(c["inactive"] for c in client.iter_clients())
    assert not any(c["inactive"] for c in client.iter_clients(include_inactive=False))
    assert {u["client_id"] for u in client.iter_users(client_id=2)} == {2}


@pytest.mark.default_wire_shape(reason="the default profile's paymentstatus codes and filters")
def test_invoice_filters(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    unpaid = list(client.iter_invoices(payment_statuses=[0]))
    assert unpaid and all(i["paymentstatus"] == 0 for i in unpaid)
    assert {i["client_id"] for i in client.iter_invoices(client_id=2)} == {2}


# --------------------------------------------------------------------------------------------
# Single records, PDFs, writes


def test_single_records_and_not_found(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    assert client.get_client(1)["name"] == "Acme Dental Group"
    invoice = client.get_invoice(1)
    assert invoice["lines"] and isinstance(invoice["total"], Decimal)
    assert "lines" not in client.get_invoice(1, include_lines=False)
    with pytest.raises(HaloNotFound) as caught:
        client.get_invoice(99999)
    assert caught.value.permanent and caught.value.status == 404
    assert "99999" in caught.value.message
    with pytest.raises(HaloNotFound):
        client.get_client(99999)


def test_invoice_pdf_by_generation_and_by_attachment_id(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    invoice = client.get_invoice(1)
    generated = client.get_invoice_pdf(1)
    assert generated.startswith(b"%PDF")
    direct = client.get_invoice_pdf(1, attachment_id=invoice["pdf_attachment_id"])
    assert direct == generated
    assert halo_sandbox.count_requests("/api/Invoice/PDF", "POST") == 1
    with pytest.raises(HaloNotFound):
        client.get_invoice_pdf(1, attachment_id=424242)


def _payments_with_reference(sandbox, reference: str) -> list:
    return [
        p
        for inv in (sandbox.store.get_invoice(i) for i in sandbox.store.query_invoice_ids())
        for p in inv.payments
        if p.reference == reference
    ]


def test_create_find_and_delete_payment(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    created = client.create_payment(
        invoice_id=1,
        amount=Decimal("12.34"),
        paid_on=date(2026, 11, 2),
        reference="ap-pay-1",
        method_name="Alternative Payments",
    )
    assert created["amount"] == Decimal("12.34")
    assert created["reference"] == created["thirdpartyid"] == "ap-pay-1"
    assert created["date"].startswith("2026-11-02")
    assert created["payment_method_name"] == "Alternative Payments"
    assert client.find_payment_by_reference(invoice_id=1, reference="ap-pay-1")["id"] == created["id"]
    assert client.find_payment_by_reference(invoice_id=1, reference="ap-pay") is None  # exact match only
    # Calling again (a task that ran twice) returns the same payment and posts nothing.
    posts = halo_sandbox.count_requests("/api/InvoicePayment", "POST")
    assert (
        client.create_payment(invoice_id=1, amount=Decimal("12.34"), paid_on=date(2026, 11, 2), reference="ap-pay-1")[
            "id"
        ]
        == created["id"]
    )
    assert halo_sandbox.count_requests("/api/InvoicePayment", "POST") == posts
    assert len(_payments_with_reference(halo_sandbox, "ap-pay-1")) == 1
    assert client.delete_payment(created["id"]) is True
    assert client.delete_payment(created["id"]) is False
    assert _payments_with_reference(halo_sandbox, "ap-pay-1") == []


def test_refused_payment_carries_halos_message(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    with pytest.raises(HaloRequestRejected) as caught:
        client.create_payment(
            invoice_id=1, amount=Decimal("999999.00"), paid_on=date(2026, 11, 2), reference="too-much"
        )
    assert caught.value.permanent and caught.value.status == 400
    assert "exceeds the amount due" in caught.value.message
    assert halo_sandbox.count_requests("/api/InvoicePayment", "POST") == 1


def test_update_and_void_invoice(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    updated = client.update_invoice(1, {"duedate": "2026-12-31T00:00:00"})
    assert updated["id"] == 1 and updated["duedate"].startswith("2026-12-31")
    voided = client.void_invoice(8)
    assert voided["voided"] is True
    assert client.get_invoice(8)["voided"] is True


def test_webhook_subscriptions(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    assert client.list_webhooks() == []
    created = client.create_webhook(
        {
            "name": "syncportal",
            "url": "https://portal.example.com/hooks/abc",
            "events": [{"eventno": WEBHOOK_EVENTNOS["invoice updated"]}],
        }
    )
    assert created["id"]
    assert [w["id"] for w in client.list_webhooks()] == [created["id"]]
    assert client.delete_webhook(created["id"]) is True
    assert client.list_webhooks() == []


# --------------------------------------------------------------------------------------------
# Connections, stats, logging


def test_for_connection_uses_the_decrypted_secret_and_a_per_connection_budget(halo_sandbox, make_connection, partner):
    connection = make_connection(partner, halo_sandbox)
    stats = RequestStats()
    client = HaloClient.for_connection(connection, stats=stats)
    assert client.budget.key == f"conn:{connection.pk}"
    assert client.version() == "2.130.1"
    assert stats.as_dict()["requests"] == 2
    assert "client_secret" not in repr(client) and SANDBOX_CLIENT_SECRET not in repr(client)


def test_stats_count_every_attempt_and_can_be_shared(halo_sandbox, make_client):
    stats = RequestStats()
    first = make_client(halo_sandbox, stats=stats)
    second = make_client(halo_sandbox, stats=stats)
    halo_sandbox.add_fault("status", status=503, path="/api/InstanceInfo", count=1)
    first.version()
    list(second.iter_clients())
    data = stats.as_dict()
    assert data["requests"] == len(halo_sandbox.request_log) == 4  # token, 503, retry, clients
    assert data["retries"] == 1
    assert data["errors"] == 1
    assert data["bytes"] > 1000


def test_one_log_line_per_request(halo_sandbox, make_client, caplog):
    caplog.set_level(logging.INFO, logger="integrations.halopsa.client")
    client = make_client(halo_sandbox)
    list(client.iter_invoices())
    lines = [r.getMessage() for r in caplog.records if r.name == "integrations.halopsa.client"]
    assert len(lines) == 2
    where = f"connection=- host={halo_sandbox.url.split('://')[1]}"  # a client made without a connection
    assert lines[0].startswith(f"halopsa {where} POST /auth/token status=200 duration_ms=")
    assert lines[1].startswith(f"halopsa {where} GET /api/Invoice status=200 duration_ms=")
    assert lines[1].endswith("attempt=1")
    assert "page_no" not in lines[1] and "?" not in lines[1]


def test_every_request_log_line_names_the_connection_and_host(halo_sandbox, make_connection, partner, sleeps, caplog):
    caplog.set_level(logging.INFO, logger="integrations.halopsa.client")
    connection = make_connection(partner, halo_sandbox)
    halo_sandbox.add_fault("status", status=503, path="/api/InstanceInfo", count=1)  # a retry line too
    halo_sandbox.add_fault("expire_token", path="/api/Invoice", count=1)  # and a second token request
    with HaloClient.for_connection(connection, sleep=sleeps, retry_base_delay=0.001) as client:
        assert client.connection_id == connection.pk
        client.version()
        list(client.iter_invoices())
        client.list_invoice_payments(2)  # says which list key HaloPSA used
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "integrations.halopsa.client" and r.module in ("client", "transport")
    ]
    where = f"halopsa connection={connection.pk} host={halo_sandbox.url.split('://')[1]} "
    assert [line for line in lines if not line.startswith(where)] == []
    assert sum(" status=" in line for line in lines) == len(halo_sandbox.request_log) >= 6
    assert any(" retrying GET /api/InstanceInfo " in line for line in lines)
    assert any("lists its rows" in line for line in lines)
    assert all(SANDBOX_CLIENT_SECRET not in line and "Bearer" not in line for line in lines)
