"""Access (issue 9, item 5), where the dashboard and foundation suites leave gaps.

Already proven elsewhere and not repeated here: tenancy over every dashboard URL for GET and POST
incl. the PDF download (tests/dashboard/test_tenancy.py), the lockout itself and login CSRF
(tests/foundation/test_auth.py), `check --deploy --fail-level WARNING` clean with production
values and failing on unsafe ones, HTTPS redirect, HSTS and Secure cookies over real HTTP
(tests/foundation/test_settings.py, tests/production/test_gunicorn.py).

Here: CSRF on every POST route of the portal (dashboard, sign-out, admin), the lockout expiring
after its cool-off and covering the admin sign-in, every cookie and header flag of the production
settings, and the webhook endpoint refusing every unauthenticated request whatever the method,
credentials or connection.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.dashboard.conftest import build_world, mine  # noqa: F401  (fixtures)
from tests.dashboard.test_tenancy import POST_DATA, ROUTES
from tests.production.procs import PYTHON, production_env, run

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"
POST_ROUTES = [(name, key) for name, (key, methods) in ROUTES.items() if "POST" in methods]


def _snapshot():
    from integrations.models import AuditEvent, Connection, Invoice, Payment, PushJob, SyncRun

    return (
        list(Connection.objects.values_list("pk", "name", "enabled", "paused")),
        list(Invoice.objects.order_by("pk").values_list("pk", "status", "archived_at", "customer_id")),
        Payment.objects.count(),
        PushJob.objects.count(),
        SyncRun.objects.count(),
        AuditEvent.objects.count(),
    )


@pytest.mark.parametrize("name,key", POST_ROUTES)
def test_every_dashboard_post_without_a_csrf_token_is_403_and_changes_nothing(name, key, partner_user, mine):  # noqa: F811
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(partner_user)
    url = reverse(name, kwargs={"pk": mine.by_key(key).pk}) if key else reverse(name)
    before = _snapshot()
    response = browser.post(url, POST_DATA.get(name, {"action": "archive"}))
    assert response.status_code == 403
    assert _snapshot() == before


def test_the_same_post_with_its_token_goes_through(partner_user, mine):  # noqa: F811
    """The control case: the 403s above come from the missing token, not from the route."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(partner_user)
    browser.get(reverse("connection_detail", kwargs={"pk": mine.connection.pk}))
    token = browser.cookies[settings.CSRF_COOKIE_NAME].value
    response = browser.post(
        reverse("connection_state", kwargs={"pk": mine.connection.pk}),
        {"action": "disable", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    mine.connection.refresh_from_db()
    assert mine.connection.enabled is False


def test_sign_out_and_admin_posts_without_a_token_are_403(partner, partner_user, make_connection):
    from integrations.models import Connection, User

    connection = make_connection(partner)
    superuser = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(partner_user)
    assert browser.post(reverse("logout")).status_code == 403
    assert browser.get(reverse("home")).status_code == 200  # still signed in

    browser.force_login(superuser)
    change = reverse("admin:integrations_connection_change", args=[connection.pk])
    assert (
        browser.post(
            change,
            {
                "name": "renamed",
                "partner": partner.pk,
                "base_url": connection.base_url,
                "client_id": "x",
                "invoice_number_field": "invoicenumber",
                "billing_contact_rule": "accounts_only",
                "default_currency": "USD",
            },
        ).status_code
        == 403
    )
    assert (
        browser.post(reverse("admin:integrations_connection_delete", args=[connection.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert Connection.objects.filter(pk=connection.pk, name=connection.name).exists()


# --- sign-in throttling ----------------------------------------------------------------------------


def _sign_in(client: Client, url: str, username: str, password: str):
    client.get(url)
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    return client.post(url, {"username": username, "password": password, "csrfmiddlewaretoken": token})


def _cool_off_passes() -> None:
    """Move the failed attempts back past the cool-off (the clock itself is not mocked)."""
    from axes.models import AccessAttempt, AccessAttemptExpiration

    past = timezone.now() - timedelta(hours=settings.AXES_COOLOFF_TIME) - timedelta(minutes=1)
    AccessAttempt.objects.update(attempt_time=past)
    AccessAttemptExpiration.objects.update(expires_at=past)


def test_a_lockout_lasts_until_the_cool_off_then_the_right_password_works(partner_user):
    assert 0 < settings.AXES_COOLOFF_TIME <= 24  # a lockout that never ends would lock partners out for good
    browser = Client(enforce_csrf_checks=True)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _sign_in(browser, "/login/", "alice", "wrong")
    locked = _sign_in(browser, "/login/", "alice", PASSWORD)
    assert b"Too many failed sign-ins" in locked.content and "_auth_user_id" not in browser.session

    _cool_off_passes()
    response = _sign_in(browser, "/login/", "alice", PASSWORD)
    assert response.status_code == 302
    assert browser.session["_auth_user_id"] == str(partner_user.pk)


def test_the_admin_sign_in_is_throttled_too(make_user):
    staff = make_user("root", None, staff=True, password=PASSWORD)
    staff.is_superuser = True
    staff.save()
    browser = Client(enforce_csrf_checks=True)
    url = reverse("admin:login")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _sign_in(browser, url, "root", "wrong")
    locked = _sign_in(browser, url, "root", PASSWORD)
    assert "_auth_user_id" not in browser.session
    assert locked.status_code in (200, 403, 429)
    assert browser.get(reverse("admin:index")).status_code == 302  # still sent to sign in


# --- production cookie and header flags ----------------------------------------------------------

SHOW_FLAGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({name: getattr(s, name, None) for name in (
    "DEBUG", "SESSION_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY", "SESSION_COOKIE_SAMESITE", "SESSION_COOKIE_AGE",
    "CSRF_COOKIE_SECURE", "CSRF_COOKIE_SAMESITE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_CONTENT_TYPE_NOSNIFF", "X_FRAME_OPTIONS",
    "SECURE_REFERRER_POLICY", "AXES_ENABLED", "AXES_FAILURE_LIMIT", "AXES_COOLOFF_TIME",
    "DEFAULT_EXCEPTION_REPORTER_FILTER", "HALOPSA_ALLOW_PRIVATE_NETWORKS")}))
"""


def test_production_settings_set_every_cookie_and_transport_flag(tmp_path):
    result = run([PYTHON, "-c", SHOW_FLAGS], production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    flags = json.loads(result.stdout.strip().splitlines()[-1])
    assert flags["DEBUG"] is False
    assert flags["SESSION_COOKIE_SECURE"] is True and flags["CSRF_COOKIE_SECURE"] is True
    assert flags["SESSION_COOKIE_HTTPONLY"] is True
    assert flags["SESSION_COOKIE_SAMESITE"] in ("Lax", "Strict") and flags["CSRF_COOKIE_SAMESITE"] in ("Lax", "Strict")
    assert 0 < flags["SESSION_COOKIE_AGE"] <= 24 * 3600
    assert flags["SECURE_SSL_REDIRECT"] is True
    assert flags["SECURE_HSTS_SECONDS"] >= 31536000 and flags["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert flags["SECURE_CONTENT_TYPE_NOSNIFF"] is True and flags["X_FRAME_OPTIONS"] == "DENY"
    assert flags["SECURE_REFERRER_POLICY"] == "same-origin"
    assert flags["AXES_ENABLED"] is True and flags["AXES_FAILURE_LIMIT"] > 0 and flags["AXES_COOLOFF_TIME"] > 0
    assert flags["DEFAULT_EXCEPTION_REPORTER_FILTER"] == "syncportal.reporting.SecretHidingReporterFilter"
    assert flags["HALOPSA_ALLOW_PRIVATE_NETWORKS"] is False


def test_the_session_cookie_after_sign_in_carries_the_production_flags(partner_user, settings):
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    browser = Client(enforce_csrf_checks=True)
    response = _sign_in(browser, "/login/", "alice", PASSWORD)
    assert response.status_code == 302
    session = response.cookies[settings.SESSION_COOKIE_NAME]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"
    assert 0 < int(session["max-age"]) <= 24 * 3600
    csrf = browser.cookies[settings.CSRF_COOKIE_NAME]
    assert csrf["secure"] and csrf["samesite"] == "Lax"


# --- the webhook endpoint ----------------------------------------------------------------------


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def two_connections(partner, other_partner, make_connection):
    mine_ = make_connection(partner, halopsa_version="2.200.1")
    theirs_ = make_connection(other_partner, halopsa_version="2.200.1", name="Other")
    return mine_, theirs_


AUTH_VARIANTS = {
    "none": lambda m, t: None,
    "empty": lambda m, t: "",
    "bearer": lambda m, t: f"Bearer {m.webhook_password}",
    "basic garbage": lambda m, t: "Basic !!!not-base64!!!",
    "basic without colon": lambda m, t: "Basic " + base64.b64encode(m.webhook_password.encode()).decode(),
    "basic empty": lambda m, t: _basic("", ""),
    "wrong password": lambda m, t: _basic(m.webhook_username, m.webhook_password + "x"),
    "wrong username": lambda m, t: _basic(m.webhook_username + "x", m.webhook_password),
    "password as username": lambda m, t: _basic(m.webhook_password, m.webhook_username),
    "other connection": lambda m, t: _basic(t.webhook_username, t.webhook_password),
    "prefix of password": lambda m, t: _basic(m.webhook_username, m.webhook_password[:-1]),
    "lower-case scheme, wrong password": lambda m, t: "basic " + _basic(m.webhook_username, "nope").split()[1],
}


@pytest.mark.parametrize("variant", sorted(AUTH_VARIANTS))
@pytest.mark.parametrize("method", ["POST", "GET", "PUT", "PATCH", "DELETE"])
def test_webhook_endpoint_refuses_every_unauthenticated_request(client, two_connections, variant, method):
    from integrations.models import WebhookEvent

    mine_, theirs_ = two_connections
    auth = AUTH_VARIANTS[variant](mine_, theirs_)
    headers = {"HTTP_AUTHORIZATION": auth} if auth is not None else {}
    body = json.dumps({"id": "x-1", "event": "invoice updated", "object_id": 1, "invoice": {"id": 1}})
    url = reverse("halopsa-webhook", kwargs={"key": mine_.webhook_key})
    response = client.generic(method, url, body, content_type="application/json", **headers)
    if method == "POST":
        assert response.status_code == 401
        assert response.json() == {"error": "authentication failed"}
        assert mine_.webhook_password not in response.content.decode()
    else:
        assert response.status_code == 405
    assert not WebhookEvent.objects.exists()


def test_webhook_endpoint_with_no_password_configured_accepts_nobody(client, partner, make_connection):
    from integrations.models import Connection, WebhookEvent

    connection = make_connection(partner, halopsa_version="2.200.1")
    Connection.objects.filter(pk=connection.pk).update(webhook_password="")
    for auth in (_basic(connection.webhook_username, ""), _basic("", ""), None):
        headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
        response = client.post(
            reverse("halopsa-webhook", kwargs={"key": connection.webhook_key}),
            "{}",
            content_type="application/json",
            **headers,
        )
        assert response.status_code == 401
    assert not WebhookEvent.objects.exists()


def test_unknown_or_malformed_webhook_keys_are_404(client, two_connections):
    mine_, _ = two_connections
    auth = {"HTTP_AUTHORIZATION": _basic(mine_.webhook_username, mine_.webhook_password)}
    assert (
        client.post(
            "/hooks/halo/00000000-0000-0000-0000-000000000000/", "{}", content_type="application/json", **auth
        ).status_code
        == 404
    )
    assert client.post("/hooks/halo/not-a-uuid/", "{}", content_type="application/json", **auth).status_code == 404
    assert client.post(f"/hooks/halo/{mine_.pk}/", "{}", content_type="application/json", **auth).status_code == 404
