"""Helpers for webhook tests: signed deliveries shaped like HaloPSA's (docs/halopsa-facts.md §6)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid

import pytest
from django.urls import reverse


def webhook_path(connection) -> str:
    return reverse("halopsa-webhook", kwargs={"key": connection.webhook_key})


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def hmac_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def delivery(event: str = "invoice updated", object_id: int = 101, *, delivery_id: str | None = None, **obj) -> dict:
    """A HaloPSA-shaped delivery body ("small object with key fields only")."""
    entity = event.split()[0]
    return {
        "id": delivery_id or str(uuid.uuid4()),
        "webhook_id": str(uuid.uuid4()),
        "notification_id": 1,
        "escmsg_id": str(uuid.uuid4()),
        "event": event,
        "message": f"{entity} {object_id}",
        "object_id": object_id,
        "agent_id": 1,
        "timestamp": "2026-09-25T06:41:08.7895915Z",
        entity: {"id": object_id, **obj},
    }


@pytest.fixture
def post_webhook(client):
    """POST a delivery with the connection's credentials (override any part to break it)."""

    def _post(
        connection,
        payload=None,
        *,
        raw: bytes | None = None,
        auth: str | None = None,
        signature: str | None = None,
        path: str | None = None,
        **extra,
    ):
        body = raw if raw is not None else json.dumps(payload if payload is not None else delivery()).encode()
        headers = {}
        if auth is None:
            auth = basic_auth(connection.webhook_username, connection.webhook_password)
        if auth:
            headers["HTTP_AUTHORIZATION"] = auth
        if signature is not None:
            headers["HTTP_TOKEN"] = signature
        headers.update(extra)
        return client.generic(
            "POST", path or webhook_path(connection), body, content_type="application/json", **headers
        )

    return _post


@pytest.fixture
def realtime_connection(make_connection, partner):
    return make_connection(partner, halopsa_version="2.130.1")


@pytest.fixture
def webhook_live_server(live_server, settings):
    """pytest-django's live_server, with SITE_URL pointing at it (webhook URLs are built from it).

    On in-memory SQLite, Django hands every live-server request thread the test's ONE shared
    connection, so concurrent requests would interleave their transactions on it ("database table
    is locked", broken atomic blocks) - a limit of the test database, not of the receiver. There,
    requests are run one at a time; clients still send concurrently. On PostgreSQL (the second
    `make test` pass) each request thread has its own connection and runs truly in parallel.
    """
    from django.db import connections

    settings.SITE_URL = live_server.url
    httpd = live_server.thread.httpd
    application = httpd.get_app()
    if any(conn.vendor == "sqlite" and conn.is_in_memory_db() for conn in connections.all()):
        lock = threading.Lock()

        def serialised(environ, start_response):
            with lock:
                response = application(environ, start_response)
                try:
                    return list(response)
                finally:
                    close = getattr(response, "close", None)
                    if close is not None:
                        close()

        httpd.set_app(serialised)
    yield live_server
    httpd.set_app(application)


def tick_by_hand(sandbox, webhook_id: str, *names: str) -> dict:
    """A person ticks events on the webhook in HaloPSA's UI (the sandbox's control API)."""
    import requests

    response = requests.post(
        f"{sandbox.url}/_sandbox/webhooks/{webhook_id}/events", json={"events": list(names)}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def http_session():
    """requests.Session that never goes through a proxy (the servers are on 127.0.0.1)."""
    import requests

    session = requests.Session()
    session.trust_env = False
    return session
