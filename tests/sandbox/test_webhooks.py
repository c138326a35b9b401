"""Outbound webhooks: HaloPSA-shaped bodies, events as objects, Basic/HMAC auth, retries, version gating,
non-blocking."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from halosandbox.shapes import WEBHOOK_EVENTNOS, parse_version, version_supports_webhooks


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 that records calls and can fail the first N."""

    def __init__(self, fail_first: int = 0, status: int = 200, delay: float = 0.0) -> None:
        self.calls: list[dict] = []
        self.fail_first = fail_first
        self.status = status
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if receiver.delay:
                    time.sleep(receiver.delay)
                failing = len(receiver.calls) <= receiver.fail_first
                self.send_response(500 if failing else receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/halo"

    def bodies(self) -> list[dict]:
        return [json.loads(call["body"]) for call in self.calls]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    instances = []

    def make(**kwargs):
        instance = Receiver(**kwargs)
        instances.append(instance)
        return instance

    yield make
    for instance in instances:
        instance.close()


def test_version_compare_is_numeric():
    assert parse_version("2.99") < parse_version("2.122.1") < parse_version("2.130.1")
    assert parse_version("v2.126.32") == (2, 126, 32)
    assert not version_supports_webhooks("2.99.0")
    assert not version_supports_webhooks("2.122.0")
    assert version_supports_webhooks("2.122.1") and version_supports_webhooks("2.200")


def test_type_0_sends_no_authentication(halo_sandbox, receiver):
    hook = receiver()
    halo_sandbox.add_webhook(
        hook.url,
        authentication_type=0,
        authentication_header="Token",
        basic_username="halo",
        basic_password="unused",
        events=["client created"],
    )
    halo_sandbox.store.create_client(name="Open Door Ltd")
    assert halo_sandbox.wait_for_webhooks(5)
    [call] = hook.calls
    assert "Authorization" not in call["headers"] and "Token" not in call["headers"]


def test_basic_auth_delivery_with_halo_shape(halo_sandbox, halo_session, receiver):
    hook = receiver()
    subscription = halo_session.post(
        f"{halo_sandbox.url}/api/Webhook",
        json=[
            {
                "name": "Portal",
                "url": hook.url,
                "authentication_type": 1,
                "basic_username": "halo",
                "basic_password": "s3cret",
                "events": [
                    {"eventno": WEBHOOK_EVENTNOS["invoice updated"]},
                    {"eventno": str(WEBHOOK_EVENTNOS["payment created"])},
                ],
            }
        ],
    ).json()
    assert re.fullmatch(r"[0-9a-f-]{36}", subscription["id"])
    halo_session.post(f"{halo_sandbox.url}/api/InvoicePayment", json=[{"invoice_id": 1, "amount": "5.00"}])
    halo_sandbox.store.update_client(1, name="Not subscribed")  # "client updated" not in events
    assert halo_sandbox.wait_for_webhooks(5)
    bodies = hook.bodies()
    assert sorted(b["event"] for b in bodies) == ["invoice updated", "payment created"]
    expected_auth = "Basic " + base64.b64encode(b"halo:s3cret").decode()
    assert all(call["headers"]["Authorization"] == expected_auth for call in hook.calls)
    assert not any("Token" in call["headers"] for call in hook.calls)  # Basic only
    assert all(call["headers"]["Content-Type"] == "application/json" for call in hook.calls)
    invoice_event = next(b for b in bodies if b["event"] == "invoice updated")
    assert invoice_event["object_id"] == 1 and invoice_event["invoice"]["id"] == 1
    assert invoice_event["invoice"]["amountdue"] == 8945.37
    assert invoice_event["webhook_id"] == subscription["id"]
    assert isinstance(invoice_event["notification_id"], int)
    assert re.fullmatch(r"[0-9a-f-]{36}", invoice_event["id"]) and re.fullmatch(
        r"[0-9a-f-]{36}", invoice_event["escmsg_id"]
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", invoice_event["timestamp"])
    assert {"message", "agent_id"} <= set(invoice_event)
    payment_event = next(b for b in bodies if b["event"] == "payment created")
    assert payment_event["payment"]["invoice_id"] == 1
    assert len({b["id"] for b in bodies}) == 2


def test_hmac_type_sends_the_signature_and_no_basic_auth(halo_sandbox, receiver):
    hook = receiver()
    halo_sandbox.add_webhook(
        hook.url,
        authentication_type=3,
        authentication_header="Token",
        basic_username="halo",
        basic_password="shared-key",
        events=["client created"],
    )
    halo_sandbox.store.create_client(name="Delta Dental")
    assert halo_sandbox.wait_for_webhooks(5)
    [call] = hook.calls
    expected = base64.b64encode(hmac.new(b"shared-key", call["body"], hashlib.sha256).digest()).decode()
    assert call["headers"]["Token"] == expected
    assert "Authorization" not in call["headers"]  # a username is set, still no Basic
    body = json.loads(call["body"])
    assert body["event"] == "client created" and body["client"]["name"] == "Delta Dental"


def test_failed_deliveries_are_retried_with_the_same_id(halo_sandbox_factory, receiver):
    server = halo_sandbox_factory(webhook_backoff=(0.05, 0.1, 0.2))
    hook = receiver(fail_first=2)
    server.add_webhook(hook.url, events=["invoice deleted"])
    server.store.delete_invoice(3)
    assert server.wait_for_webhooks(5)
    assert len(hook.calls) == 3
    ids = {b["id"] for b in hook.bodies()}
    assert len(ids) == 1 and hook.bodies()[0]["event"] == "invoice deleted"
    attempts = [(d["attempt"], d["status"]) for d in server.webhook_deliveries]
    assert attempts == [(1, 500), (2, 500), (3, 200)]


def test_gives_up_after_max_attempts_and_handles_connection_errors(halo_sandbox_factory):
    server = halo_sandbox_factory(webhook_backoff=(0.01,), webhook_attempts=3)
    server.add_webhook("http://127.0.0.1:9/unreachable", events=["user updated"])  # discard port: refused
    server.store.update_user(1, canaccessinvoices=False)
    assert server.wait_for_webhooks(10)
    deliveries = server.webhook_deliveries
    assert [d["attempt"] for d in deliveries] == [1, 2, 3]
    assert all(d["status"] is None and d["error"] for d in deliveries)


@pytest.mark.sandbox(version="2.99.3")
def test_no_webhooks_below_2_122_1(halo_sandbox, halo_session, receiver):
    hook = receiver()
    halo_sandbox.add_webhook(hook.url, events=["payment created", "client updated"])
    halo_session.post(f"{halo_sandbox.url}/api/InvoicePayment", json=[{"invoice_id": 1, "amount": "5.00"}])
    halo_sandbox.store.update_client(1, name="Renamed")
    assert halo_sandbox.wait_for_webhooks(2)
    time.sleep(0.1)
    assert hook.calls == [] and halo_sandbox.webhook_deliveries == []
    # upgrading the instance turns them on
    requests.put(f"{halo_sandbox.url}/_sandbox/version", json={"version": "2.122.1"}, timeout=10)
    halo_sandbox.store.update_client(1, name="Renamed again")
    assert halo_sandbox.wait_for_webhooks(5)
    assert [b["event"] for b in hook.bodies()] == ["client updated"]


def test_slow_receiver_does_not_block_the_change(halo_sandbox, halo_session, receiver):
    hook = receiver(delay=0.5)
    halo_sandbox.add_webhook(hook.url, events=["invoice updated"])
    started = time.monotonic()
    response = requests.patch(f"{halo_sandbox.url}/_sandbox/invoices/1", json={"duedate": "2027-01-01"}, timeout=10)
    assert response.status_code == 200
    assert time.monotonic() - started < 0.4
    assert halo_sandbox.wait_for_webhooks(5)
    assert len(hook.calls) == 1


def test_webhook_crud_via_api_and_control(halo_sandbox, halo_session, receiver):
    url = halo_sandbox.url
    hook = receiver()
    created = requests.post(
        f"{url}/_sandbox/webhooks", json={"url": hook.url, "active": False, "events": ["client updated"]}, timeout=10
    ).json()
    listed = halo_session.get(f"{url}/api/Webhook").json()
    assert [w["id"] for w in listed] == [created["id"]]
    assert halo_session.get(f"{url}/api/Webhook/{created['id']}").json()["active"] is False
    halo_sandbox.store.update_client(1, name="Inactive subscription gets nothing")
    assert halo_sandbox.wait_for_webhooks(2) and hook.calls == []
    assert halo_session.delete(f"{url}/api/Webhook/{created['id']}").status_code == 200
    assert halo_session.get(f"{url}/api/Webhook").json() == []
    assert halo_session.delete(f"{url}/api/Webhook/{created['id']}").status_code == 404


def test_burst_of_events_all_delivered(halo_sandbox, receiver):
    hook = receiver()
    halo_sandbox.add_webhook(hook.url, events=["invoice updated"])
    for n in range(100):
        halo_sandbox.store.update_invoice(1 + n % 3, duedate=f"2027-01-{1 + n % 28:02d}")
    assert halo_sandbox.wait_for_webhooks(20)
    assert len(hook.calls) == 100 and len({b["id"] for b in hook.bodies()}) == 100


def test_events_are_objects_with_an_eventno(halo_sandbox, halo_session):
    url = f"{halo_sandbox.url}/api/Webhook"
    base = {"name": "Portal", "url": "https://portal.example.com/hooks/halo/x/", "authentication_type": 1}
    # Event names where HaloPSA expects objects: refused, and nothing is created.
    refused = halo_session.post(url, json=[{**base, "events": ["invoice updated"]}])
    assert refused.status_code == 400 and "eventno" in refused.json()["Message"]
    assert halo_session.get(url).json() == []
    # Known eventnos attach; an unknown one, or an object without eventno, is dropped silently.
    created = halo_session.post(
        url,
        json=[
            {
                **base,
                "events": [
                    {"eventno": WEBHOOK_EVENTNOS["invoice updated"]},
                    {"eventno": 61},
                    {"name": "invoice created"},
                ],
            }
        ],
    ).json()
    [event] = created["events"]
    assert event["eventno"] == WEBHOOK_EVENTNOS["invoice updated"] and event["name"] == "invoice updated"
    assert event["webhook_id"] == created["id"] and isinstance(event["id"], int)
    fetched = halo_session.get(f"{url}/{created['id']}").json()
    assert [e["eventno"] for e in fetched["events"]] == [WEBHOOK_EVENTNOS["invoice updated"]]
    assert [e["eventno"] for e in halo_session.get(url).json()[0]["events"]] == [WEBHOOK_EVENTNOS["invoice updated"]]
    # An update without `events` keeps them; with `events` it replaces them.
    halo_session.post(url, json=[{"id": created["id"], "name": "Renamed"}])
    assert halo_session.get(f"{url}/{created['id']}").json()["events"] == fetched["events"]
    halo_session.post(url, json=[{"id": created["id"], "events": [{"eventno": WEBHOOK_EVENTNOS["client created"]}]}])
    assert [e["name"] for e in halo_session.get(f"{url}/{created['id']}").json()["events"]] == ["client created"]


def test_a_webhook_without_events_delivers_nothing(halo_sandbox, receiver):
    hook = receiver()
    silent = halo_sandbox.add_webhook(hook.url)
    assert silent["events"] == []
    halo_sandbox.store.update_client(1, name="Nobody hears this")
    halo_sandbox.store.delete_invoice(3)
    assert halo_sandbox.wait_for_webhooks(2)
    assert hook.calls == [] and halo_sandbox.webhook_deliveries == []


def test_control_api_ticks_events_by_name_like_a_person(halo_sandbox, halo_session, receiver):
    hook = receiver()
    registered = halo_session.post(
        f"{halo_sandbox.url}/api/Webhook",
        json=[{"url": hook.url, "authentication_type": 1, "basic_username": "u", "basic_password": "p"}],
    ).json()
    assert registered["events"] == []
    control = f"{halo_sandbox.url}/_sandbox/webhooks/{registered['id']}/events"
    ticked = requests.post(control, json={"events": ["client updated", "invoice updated"]}, timeout=10)
    assert ticked.status_code == 200
    again = requests.post(control, json={"events": ["client updated"]}, timeout=10).json()  # already ticked: kept once
    assert [e["name"] for e in again["events"]] == ["client updated", "invoice updated"]
    assert requests.post(control, json={"events": ["invoice paid"]}, timeout=10).status_code == 400
    assert requests.post(control, json={"events": "client updated"}, timeout=10).status_code == 400
    assert (
        requests.post(f"{halo_sandbox.url}/_sandbox/webhooks/nope/events", json={"events": []}, timeout=10).status_code
        == 404
    )
    halo_sandbox.store.update_client(1, name="Heard")
    assert halo_sandbox.wait_for_webhooks(5)
    assert [b["event"] for b in hook.bodies()] == ["client updated"]
