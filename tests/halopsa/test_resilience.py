"""Faults from the sandbox: every mode recovers or ends in the right error; payments stay exactly-once;
the request budget keeps the client under the server's limit."""

from __future__ import annotations

import json
import socket
import time
from datetime import date
from decimal import Decimal

import pytest

from integrations.halopsa.exceptions import (
    HaloAmbiguousWrite,
    HaloBadResponse,
    HaloConnectionError,
    HaloPermissionError,
    HaloRateLimited,
    HaloServerError,
    HaloTimeout,
)

# --------------------------------------------------------------------------------------------
# Status faults


def test_429_with_retry_after_waits_at_least_that_long_and_recovers(halo_sandbox, make_client, sleeps):
    halo_sandbox.add_fault("status", status=429, retry_after=3, path="/api/InstanceInfo", count=1)
    client = make_client(halo_sandbox)
    assert client.version() == "2.130.1"
    assert [e["status"] for e in halo_sandbox.request_log if e["path"] == "/api/InstanceInfo"] == [429, 200]
    assert len(sleeps.calls) == 1 and sleeps.calls[0] >= 3
    assert client.stats.retries == 1


def test_long_retry_after_is_handed_to_the_caller(halo_sandbox, make_client, sleeps):
    halo_sandbox.add_fault("status", status=429, retry_after=900, path="/api/InstanceInfo", count=1)
    with pytest.raises(HaloRateLimited) as caught:
        make_client(halo_sandbox).version()
    assert caught.value.retry_after == 900
    assert not caught.value.permanent
    assert sleeps.calls == []  # never sleeps past a task timeout


def test_429_without_retry_after_backs_off_then_gives_up(halo_sandbox, make_client, sleeps):
    halo_sandbox.add_fault("status", status=429, path="/api/InstanceInfo", count=10)
    client = make_client(halo_sandbox, max_retries=3, retry_base_delay=0.01)
    with pytest.raises(HaloRateLimited) as caught:
        client.version()
    assert caught.value.status == 429
    assert "Rate Limit Reached" in caught.value.message
    assert halo_sandbox.count_requests("/api/InstanceInfo") == 4
    # Full jitter: each wait is within the exponential cap for its attempt.
    assert len(sleeps.calls) == 3
    assert all(0 <= d <= 0.01 * 2**i for i, d in enumerate(sleeps.calls))


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_recover(halo_sandbox, make_client, status):
    halo_sandbox.add_fault("status", status=status, path="/api/Invoice", count=2)
    client = make_client(halo_sandbox)
    assert len(list(client.iter_invoices())) == len(halo_sandbox.store.query_invoice_ids())
    assert [e["status"] for e in halo_sandbox.request_log if e["path"] == "/api/Invoice"] == [status, status, 200]


def test_500_is_retried_twice_at_most(halo_sandbox, make_client):
    halo_sandbox.add_fault("status", status=500, path="/api/Client/1", count=2)
    client = make_client(halo_sandbox)
    assert client.get_client(1)["id"] == 1
    halo_sandbox.add_fault("status", status=500, path="/api/Client/1", count=5)
    halo_sandbox.clear_request_log()
    with pytest.raises(HaloServerError) as caught:
        client.get_client(1)
    assert caught.value.status == 500 and not caught.value.permanent
    assert "An error has occurred." in caught.value.message
    assert halo_sandbox.count_requests("/api/Client/1") == 3


def test_persistent_503_ends_in_a_server_error(halo_sandbox, make_client):
    halo_sandbox.add_fault("status", status=503, path="/api/InstanceInfo", count=20)
    client = make_client(halo_sandbox, max_retries=2)
    with pytest.raises(HaloServerError) as caught:
        client.version()
    assert caught.value.status == 503
    assert "503 Service Unavailable" in caught.value.message  # the HTML page's text, not its markup
    assert halo_sandbox.count_requests("/api/InstanceInfo") == 3


def test_token_endpoint_outage_is_retried(halo_sandbox, make_client):
    halo_sandbox.add_fault("status", status=503, path="/auth/token", count=1)
    assert make_client(halo_sandbox).version() == "2.130.1"
    assert halo_sandbox.count_requests("/auth/token") == 2


# --------------------------------------------------------------------------------------------
# Connection-level faults


def test_dropped_connection_recovers_for_get(halo_sandbox, make_client):
    halo_sandbox.add_fault("drop", path="/api/Users", count=2)
    client = make_client(halo_sandbox)
    assert len(list(client.iter_users())) == len(halo_sandbox.store.query_users(include_inactive=True))
    assert client.stats.retries == 2 and client.stats.errors == 2


def test_malformed_json_once_recovers(halo_sandbox, make_client):
    halo_sandbox.add_fault("malformed_json", path="/api/Invoice", count=1)
    client = make_client(halo_sandbox)
    assert len(list(client.iter_invoices())) == len(halo_sandbox.store.query_invoice_ids())


def test_malformed_json_every_time_is_a_bad_response(halo_sandbox, make_client):
    halo_sandbox.add_fault("malformed_json", path="/api/Invoice", count=10)
    client = make_client(halo_sandbox, max_retries=2)
    with pytest.raises(HaloBadResponse) as caught:
        list(client.iter_invoices())
    assert "malformed JSON" in caught.value.message
    assert "starts:" in caught.value.message
    assert halo_sandbox.count_requests("/api/Invoice") == 3


def test_a_malformed_record_is_left_to_the_mapping(halo_sandbox, make_client):
    halo_sandbox.add_fault("malformed_record", path="/api/Invoice", count=1)
    client = make_client(halo_sandbox)
    invoices = list(client.iter_invoices())
    assert len(invoices) == len(halo_sandbox.store.query_invoice_ids())
    assert sum(1 for i in invoices if "id" not in i or i.get("total") == "abc") == 1


def test_slow_answer_beyond_the_read_timeout(halo_sandbox, make_client):
    halo_sandbox.add_fault("slow", delay=1.0, path="/api/InstanceInfo", count=5)
    client = make_client(halo_sandbox, read_timeout=0.2, max_retries=1)
    with pytest.raises(HaloTimeout) as caught:
        client.version()
    assert "did not answer within 0.2 seconds" in caught.value.message
    assert client.stats.retries == 1


def test_one_slow_answer_is_retried(halo_sandbox, make_client):
    halo_sandbox.add_fault("slow", delay=1.0, path="/api/InstanceInfo", count=1)
    client = make_client(halo_sandbox, read_timeout=0.2, max_retries=1)
    assert client.version() == "2.130.1"


def test_connection_refused(halo_sandbox_factory, make_client):
    sandbox = halo_sandbox_factory()
    url = sandbox.url
    sandbox.stop()
    client = make_client(base_url=url, max_retries=1)
    with pytest.raises(HaloConnectionError) as caught:
        client.version()
    assert "refused the connection" in caught.value.message
    assert client.stats.retries == 1  # a refused connection never reached HaloPSA: safe to repeat


def test_unknown_host(monkeypatch, make_client):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(HaloConnectionError) as caught:
        make_client(base_url="https://nonexistent.halopsa.com", max_retries=0).version()
    assert "could not be found (DNS)" in caught.value.message


def test_non_idempotent_post_is_not_blindly_retried(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    halo_sandbox.add_fault("status", status=503, path="/api/Webhook", method="POST", count=1)
    with pytest.raises(HaloServerError):
        client.create_webhook({"name": "a", "url": "https://portal.example.com/h"})
    halo_sandbox.add_fault("drop", path="/api/Webhook", method="POST", count=1)
    with pytest.raises(HaloConnectionError):
        client.create_webhook({"name": "a", "url": "https://portal.example.com/h"})
    assert halo_sandbox.count_requests("/api/Webhook", "POST") == 2
    # A 429 proves nothing was done, so it is retried even for a POST.
    halo_sandbox.add_fault("status", status=429, path="/api/Webhook", method="POST", count=1)
    assert client.create_webhook({"name": "a", "url": "https://portal.example.com/h"})["id"]
    assert len(client.list_webhooks()) == 1


# --------------------------------------------------------------------------------------------
# Exactly-once payments


def _payments(sandbox, reference: str) -> list:
    return [p for p in sandbox.store.get_invoice(1).payments if p.reference == reference]


@pytest.mark.parametrize(
    ("fault", "posts"),
    [
        ({"mode": "lost_response"}, 1),  # committed in HaloPSA, answer lost: found by the lookup
        ({"mode": "drop"}, 2),  # never performed: not found, posted again
        ({"mode": "status", "status": 503}, 2),
        ({"mode": "status", "status": 500}, 2),
    ],
)
def test_create_payment_is_exactly_once_after_an_ambiguous_post(halo_sandbox, make_client, fault, posts):
    halo_sandbox.add_fault(path="/api/InvoicePayment", method="POST", count=1, **fault)
    client = make_client(halo_sandbox)
    created = client.create_payment(invoice_id=1, amount=Decimal("5.00"), paid_on=date(2026, 11, 3), reference="ap-77")
    stored = _payments(halo_sandbox, "ap-77")
    assert len(stored) == 1
    assert created["id"] == stored[0].id
    assert created["amount"] == Decimal("5.00")
    assert halo_sandbox.count_requests("/api/InvoicePayment", "POST") == posts
    # Looked up before the first POST and after the ambiguous one, in the invoice's own payments
    # (never with `search`, never through the whole instance's payments).
    assert halo_sandbox.count_requests("/api/Invoice/1", "GET") == 2
    assert halo_sandbox.count_requests("/api/InvoicePayment", "GET") == 0


def test_payment_lookup_failing_after_an_ambiguous_post_is_an_ambiguous_write(halo_sandbox, make_client, sleeps):
    halo_sandbox.add_fault("lost_response", path="/api/InvoicePayment", method="POST", count=1)

    def break_lookups(_seconds: float) -> None:
        # The first sleep is the pause before the post-failure lookup: make every lookup fail from here.
        if not getattr(break_lookups, "done", False):
            halo_sandbox.add_fault("status", status=503, path="/api/Invoice", method="GET", count=50)
            break_lookups.done = True

    sleeps.hooks.append(break_lookups)
    client = make_client(halo_sandbox, max_retries=1)
    with pytest.raises(HaloAmbiguousWrite) as caught:
        client.create_payment(invoice_id=1, amount=Decimal("5.00"), paid_on=date(2026, 11, 3), reference="ap-78")
    assert "ap-78" in caught.value.message
    assert halo_sandbox.count_requests("/api/InvoicePayment", "POST") == 1
    # Later (a retried push) the first lookup settles it without posting again.
    halo_sandbox.clear_faults()
    again = client.create_payment(invoice_id=1, amount=Decimal("5.00"), paid_on=date(2026, 11, 3), reference="ap-78")
    assert halo_sandbox.count_requests("/api/InvoicePayment", "POST") == 1
    assert [p.id for p in _payments(halo_sandbox, "ap-78")] == [again["id"]]


def test_timed_out_payment_is_not_posted_twice(halo_sandbox, make_client):
    halo_sandbox.add_fault("slow", delay=1.0, path="/api/InvoicePayment", method="POST", count=1)
    client = make_client(halo_sandbox, read_timeout=0.3)
    with pytest.raises(HaloTimeout):
        client.create_payment(invoice_id=1, amount=Decimal("5.00"), paid_on=date(2026, 11, 3), reference="ap-79")
    deadline = time.monotonic() + 5
    while not _payments(halo_sandbox, "ap-79") and time.monotonic() < deadline:
        time.sleep(0.05)  # HaloPSA finishes the slow request on its own
    again = client.create_payment(invoice_id=1, amount=Decimal("5.00"), paid_on=date(2026, 11, 3), reference="ap-79")
    assert [p.id for p in _payments(halo_sandbox, "ap-79")] == [again["id"]]
    assert halo_sandbox.count_requests("/api/InvoicePayment", "POST") == 1


# --------------------------------------------------------------------------------------------
# Request budget


@pytest.mark.sandbox(rate_limit=20, rate_window=60)
def test_budget_stops_before_the_server_limit(halo_sandbox, make_client):
    client = make_client(halo_sandbox, rate_limit=20, rate_window=60, budget_max_wait=0)
    done = 0
    with pytest.raises(HaloRateLimited) as caught:
        for _ in range(40):
            client.get_invoice(1, include_lines=False)
            done += 1
    assert 0 < caught.value.retry_after <= 62
    assert "stay under its limit of 20 requests" in caught.value.message
    assert done == 18  # 19 (20 less 5 % headroom) including the token request
    assert all(e["status"] != 429 for e in halo_sandbox.request_log)


@pytest.mark.sandbox(rate_limit=4, rate_window=1)
def test_budget_waits_for_a_slot_and_never_meets_a_429(halo_sandbox, make_client):
    client = make_client(halo_sandbox, rate_limit=4, rate_window=1, budget_max_wait=5, sleep=time.sleep)
    for _ in range(8):
        client.get_invoice(1, include_lines=False)
    assert halo_sandbox.count_requests("/api/Invoice/1") == 8
    assert all(e["status"] == 200 for e in halo_sandbox.request_log)


# --------------------------------------------------------------------------------------------
# Answers the sandbox never gives (stub server over real HTTP)


def test_permission_error_names_where_to_fix_it(stub_halo, make_client):
    stub_halo.route("GET", "/api/Invoice", 403, {"Message": "You do not have permission to access invoices"})
    with pytest.raises(HaloPermissionError) as caught:
        list(make_client(base_url=stub_halo.url).iter_invoices())
    assert "Configuration > Integrations > HaloPSA API" in caught.value.message
    assert "You do not have permission to access invoices" in caught.value.message
    assert caught.value.permanent


@pytest.mark.parametrize(
    "body",
    [
        {"page_no": 1, "record_count": 3},  # no list key
        {"invoices": "nope", "record_count": 3},
        {"invoices": [], "record_count": "3"},
        {"invoices": [{"id": 1}]},  # no record_count
        [{"id": 1}],  # a bare array where an envelope is expected
    ],
)
def test_wrong_envelope_is_a_bad_response(stub_halo, make_client, body):
    stub_halo.route("GET", "/api/Invoice", 200, body)
    with pytest.raises(HaloBadResponse):
        list(make_client(base_url=stub_halo.url).iter_invoices())


def test_a_server_with_a_smaller_page_cap_is_paged_to_the_end(stub_halo, make_client):
    # Halo documents no cap; one report says 100. If an instance serves 50, no record may be lost.
    def page(query):
        number = int(query["page_no"])
        rows = [{"id": i} for i in range((number - 1) * 50 + 1, min(number * 50, 120) + 1)]
        body = {"page_no": number, "page_size": 50, "record_count": 120, "invoices": rows}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    stub_halo.routes[("GET", "/api/Invoice")] = page
    ids = [r["id"] for r in make_client(base_url=stub_halo.url).iter_invoices()]
    assert ids == list(range(1, 121))
    assert stub_halo.requests.count(("GET", "/api/Invoice")) == 3


def test_a_400_saying_the_token_expired_reauthenticates_once(stub_halo, make_client):
    # Some instances answer an expired token with 400 instead of 401 (reference peers).
    answers = iter(
        [
            (400, {"error": "invalid_token", "error_description": "The access token has expired"}),
            (200, {"app_version": "2.140.2"}),
        ]
    )

    def instance_info(query):
        status, body = next(answers)
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    stub_halo.routes[("GET", "/api/InstanceInfo")] = instance_info
    assert make_client(base_url=stub_halo.url).version() == "2.140.2"
    assert stub_halo.requests.count(("POST", "/auth/token")) == 2


def test_attachment_that_is_not_a_pdf(stub_halo, make_client):
    stub_halo.route("GET", "/api/Attachment/5", 200, b"<html>login page</html>", {"Content-Type": "text/html"})
    with pytest.raises(HaloBadResponse) as caught:
        make_client(base_url=stub_halo.url).get_invoice_pdf(1, attachment_id=5)
    assert "not a PDF" in caught.value.message


def test_token_response_without_a_token(stub_halo, make_client):
    stub_halo.route("POST", "/auth/token", 200, {"token_type": "Bearer"})
    with pytest.raises(HaloBadResponse) as caught:
        make_client(base_url=stub_halo.url).version()
    assert "without an access token" in caught.value.message


def test_missing_token_endpoint_points_at_the_urls(stub_halo, make_client):
    del stub_halo.routes[("POST", "/auth/token")]
    from integrations.halopsa.exceptions import HaloNotFound

    with pytest.raises(HaloNotFound) as caught:
        make_client(base_url=stub_halo.url).version()
    assert "Authorisation server URL" in caught.value.message
