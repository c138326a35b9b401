"""/healthz for load balancers: database and broker checked, no sign-in, no https redirect."""

from __future__ import annotations

from django.db import OperationalError

import integrations.views.health as health
from tests.production.procs import free_port


def test_healthy_when_database_and_broker_answer(client, db):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_needs_no_sign_in_and_sets_no_session(client, db):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert "sessionid" not in response.cookies


def test_is_not_redirected_to_https_when_the_rest_of_the_site_is(client, db, settings):
    settings.SECURE_SSL_REDIRECT = True

    assert client.get("/healthz").status_code == 200
    redirected = client.get("/login/")
    assert redirected.status_code == 301
    assert redirected["Location"].startswith("https://")


def test_unhealthy_when_the_broker_is_unreachable(client, db, monkeypatch):
    # A real Redis client against a closed port, whatever broker this test run is configured with.
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(Conf, "DJANGO_REDIS", None)

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] == "error: ConnectionError"


def test_unhealthy_when_the_database_fails(client, db, monkeypatch):
    class BrokenConnection:
        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(health, "connection", BrokenConnection())

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "error: OperationalError"


def test_only_get_is_allowed(client, db):
    assert client.post("/healthz").status_code == 405
