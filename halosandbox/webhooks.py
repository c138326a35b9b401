"""Outbound webhooks: HaloPSA-shaped POSTs to subscribed URLs when a record changes.

Events come from the store (any change: control API, Python API, API writes). They are turned into
one delivery per matching active subscription - only when the instance version is >= 2.122.1 - and
queued; worker threads send them so the change that caused them never waits. Failures (non-2xx,
connection errors, timeouts) are retried with a short backoff, reusing the delivery `id`, as a
real sender's retry would.

Always sent as POST with a JSON body (the subscription's `method`/`content_type` values are not
interpreted: their integer meanings are unverified, docs/halopsa-facts.md §11.3). A subscription gets the
events attached to it (by `eventno`, see shapes.py) and nothing else; authentication follows
`authentication_type`: 1 Basic only, 3 the HMAC signature only, 0 nothing.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPSConnection
from typing import Any
from urllib.parse import urlsplit

from . import shapes


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    subscription: dict = field(compare=False)
    body: bytes = field(compare=False)
    delivery_id: str = field(compare=False)
    event: str = field(compare=False)
    object_id: int = field(compare=False)
    attempt: int = field(compare=False, default=1)


class WebhookDispatcher:
    def __init__(
        self,
        store: Any,
        *,
        max_attempts: int = 4,
        backoff: tuple[float, ...] = (0.5, 1.0, 2.0),
        timeout: float = 5.0,
        workers: int = 4,
        agent_id: int = 1,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.timeout = timeout
        self.agent_id = agent_id
        #: One entry per attempt: subscription, event_id, event, object_id, attempt, status,
        #: error, url, duration_ms.
        self.deliveries: list[dict[str, Any]] = []
        self._heap: list[_Delivery] = []
        self._cond = threading.Condition()
        self._inflight = 0
        self._stopped = False
        self._seq = itertools.count()
        self._notification_ids = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._work, name=f"halopsa-sandbox-webhook-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        store.add_listener(self.on_event)

    # -----------------------------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        """Store listener: build and queue deliveries (never sends inline)."""
        if not shapes.version_supports_webhooks(self.store.version):
            return
        name = event["event"]
        eventno = shapes.WEBHOOK_EVENTNOS.get(name)
        # Only webhooks with this event attached; one with no events gets nothing (Halo needs one).
        matching = [
            w
            for w in self.store.list_webhooks()
            if w.get("active") and any(attached.get("eventno") == eventno for attached in w.get("events") or [])
        ]
        if not matching:
            return
        notification_id = next(self._notification_ids)
        escmsg_id = str(uuid.uuid4())
        entity = event["entity"]
        verb = name.split(" ", 1)[1] if " " in name else name
        for subscription in matching:
            body = {
                "id": str(uuid.uuid4()),
                "webhook_id": subscription["id"],
                "notification_id": notification_id,
                "escmsg_id": escmsg_id,
                "event": name,
                "message": f"{entity.capitalize()} {event['object_id']} {verb}",
                "object_id": event["object_id"],
                "agent_id": self.agent_id,
                "timestamp": shapes.format_webhook_timestamp(event["timestamp_ms"]),
                shapes.WEBHOOK_ENTITY_KEYS.get(entity, entity): event["object"],
            }
            self._push(
                _Delivery(
                    time.monotonic(),
                    next(self._seq),
                    subscription,
                    shapes.dumps(body),
                    body["id"],
                    name,
                    event["object_id"],
                )
            )

    def _push(self, delivery: _Delivery) -> None:
        with self._cond:
            heapq.heappush(self._heap, delivery)
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0].due > time.monotonic()):
                    wait = None if not self._heap else max(0.0, self._heap[0].due - time.monotonic())
                    self._cond.wait(wait)
                if self._stopped:
                    return
                delivery = heapq.heappop(self._heap)
                self._inflight += 1
            try:
                self._send(delivery)
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()

    def _headers(self, subscription: dict[str, Any], body: bytes) -> dict[str, str]:
        """Each authentication type sends only its own proof (shapes.WEBHOOK_AUTH_*)."""
        headers = {
            "Content-Type": subscription.get("content_type") or "application/json",
            "User-Agent": "HaloPSA-Sandbox-Webhook/1.0",
        }
        auth_type = int(subscription.get("authentication_type") or 0)
        password = str(subscription.get("basic_password") or "")
        if auth_type == shapes.WEBHOOK_AUTH_BASIC:
            username = str(subscription.get("basic_username") or "")
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        header_name = str(subscription.get("authentication_header") or "")
        if auth_type == shapes.WEBHOOK_AUTH_HMAC and header_name:
            digest = hmac.new(password.encode(), body, hashlib.sha256).digest()
            headers[header_name] = base64.b64encode(digest).decode()
        return headers

    def _send(self, delivery: _Delivery) -> None:
        url = str(delivery.subscription.get("url"))
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            parts = urlsplit(url)
            connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
            # A URL without a host fails here, recorded as the delivery's error below.
            connection = connection_class(parts.hostname, parts.port, timeout=self.timeout)  # type: ignore[arg-type]
            try:
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                connection.request(
                    "POST", path, body=delivery.body, headers=self._headers(delivery.subscription, delivery.body)
                )
                response = connection.getresponse()
                response.read()
                status = response.status
            finally:
                connection.close()
        except Exception as exc:  # connection refused, timeout, reset...
            error = f"{type(exc).__name__}: {exc}"
        self.deliveries.append(
            {
                "subscription": delivery.subscription["id"],
                "event_id": delivery.delivery_id,
                "event": delivery.event,
                "object_id": delivery.object_id,
                "attempt": delivery.attempt,
                "status": status,
                "error": error,
                "url": url,
                "duration_ms": round((time.monotonic() - started) * 1000, 2),
            }
        )
        ok = status is not None and 200 <= status < 300
        if not ok and delivery.attempt < self.max_attempts and not self._stopped:
            pause = self.backoff[min(delivery.attempt - 1, len(self.backoff) - 1)] if self.backoff else 0.0
            delivery.attempt += 1
            delivery.due = time.monotonic() + pause
            delivery.seq = next(self._seq)
            self._push(delivery)

    # -----------------------------------------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + self._inflight

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until nothing is queued or being sent (retries included). False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()
        self.deliveries.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=2)
