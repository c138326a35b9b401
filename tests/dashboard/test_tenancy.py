"""Tenancy on every URL: another partner's objects are 404 (GET and POST), anonymous users are sent
to sign in, staff see every partner. New routes must be added to ROUTES, or the first test fails."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, reverse

from integrations import urls as dashboard_urls

# route name -> (World attribute whose pk fills <pk> or None, HTTP methods the view accepts)
ROUTES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "home": (None, ("GET",)),
    "connection_create": (None, ("GET", "POST")),
    "connection_detail": ("connection", ("GET",)),
    "connection_edit": ("connection", ("GET", "POST")),
    "connection_delete": ("connection", ("GET", "POST")),
    "connection_test": ("connection", ("POST",)),
    "connection_state": ("connection", ("POST",)),
    "connection_sync": ("connection", ("POST",)),
    "connection_webhook_subscribe": ("connection", ("POST",)),
    "connection_webhook_auth": ("connection", ("POST",)),
    "connection_progress": ("connection", ("GET",)),
    "run_detail": ("run", ("GET",)),
    "run_progress": ("run", ("GET",)),
    "sync_error_retry": ("sync_error", ("POST",)),
    "webhook_event_replay": ("webhook_event", ("POST",)),
    "push_job_retry": ("push_job", ("POST",)),
    "customer_list": (None, ("GET",)),
    "customer_detail": ("customer", ("GET",)),
    "customer_archive": ("deleted_customer", ("POST",)),
    "invoice_list": (None, ("GET",)),
    "invoice_export": (None, ("GET",)),
    "invoice_detail": ("invoice", ("GET",)),
    "invoice_pdf": ("invoice", ("GET",)),
    "invoice_status": ("invoice", ("POST",)),
    "invoice_payment": ("invoice", ("POST",)),
    "invoice_resync": ("invoice", ("POST",)),
    "invoice_archive": ("deleted_invoice", ("POST",)),
    "payment_list": (None, ("GET",)),
    "payment_export": (None, ("GET",)),
    "payment_delete": ("payment", ("POST",)),
    "unknown_customers": (None, ("GET", "POST")),
    "archive_queue": (None, ("GET", "POST")),
    "activity": (None, ("GET",)),
    "profile": (None, ("GET", "POST")),
}
OBJECT_ROUTES = [(name, key, method) for name, (key, methods) in ROUTES.items() if key for method in methods]
ALL_ROUTES = [(name, method) for name, (_, methods) in ROUTES.items() for method in methods]
LIST_ROUTES = [name for name, (key, methods) in ROUTES.items() if key is None and "GET" in methods]

# Plausible form data, so a POST that wrongly reached the service would change something.
POST_DATA = {
    "connection_edit": {
        "name": "hijacked",
        "base_url": "https://evil.example",
        "client_id": "x",
        "invoice_number_field": "invoicenumber",
        "billing_contact_rule": "accounts_only",
    },
    "connection_state": {"action": "disable"},
    "connection_sync": {"scope": "full"},
    "connection_webhook_auth": {"scheme": "hmac", "confirmed": "yes"},
    "invoice_status": {"status": "void"},
    "invoice_payment": {"amount": "5.00"},
    "customer_archive": {"action": "archive"},
    "invoice_archive": {"action": "archive"},
}


def _url(name: str, world=None, key: str | None = None) -> str:
    return reverse(name, kwargs={"pk": world.by_key(key).pk}) if key else reverse(name)


def _body(response) -> str:
    """The page, or the whole of a streamed download (the CSV exports)."""
    return (b"".join(response.streaming_content) if response.streaming else response.content).decode()


def test_every_dashboard_route_is_covered():
    names = {p.name for p in dashboard_urls.urlpatterns if isinstance(p, URLPattern)}
    assert names == set(ROUTES), f"add new routes to ROUTES: {sorted(names ^ set(ROUTES))}"


@pytest.mark.parametrize("name,key,method", OBJECT_ROUTES)
def test_other_partners_object_is_404(name, key, method, alice_client, mine, theirs):
    url = _url(name, theirs, key)
    response = alice_client.get(url) if method == "GET" else alice_client.post(url, POST_DATA.get(name, {}))
    assert response.status_code == 404


@pytest.mark.parametrize("name,key,method", OBJECT_ROUTES)
def test_other_partners_object_unchanged_after_post(name, key, method, alice_client, mine, theirs):
    """The 404 comes before any work: nothing of the other partner changes."""
    from integrations.models import AuditEvent, Connection, Invoice, Payment, SyncRun

    before = (
        Connection.objects.get(pk=theirs.connection.pk).name,
        Connection.objects.get(pk=theirs.connection.pk).enabled,
        SyncRun.objects.filter(connection=theirs.connection).count(),
        Payment.objects.filter(connection=theirs.connection).count(),
        list(Invoice.objects.filter(connection=theirs.connection).values_list("status", "archived_at").order_by("pk")),
        AuditEvent.objects.filter(partner=theirs.connection.partner).count(),
    )
    url = _url(name, theirs, key)
    if method == "POST":
        alice_client.post(url, POST_DATA.get(name, {}))
    else:
        alice_client.get(url)
    after = (
        Connection.objects.get(pk=theirs.connection.pk).name,
        Connection.objects.get(pk=theirs.connection.pk).enabled,
        SyncRun.objects.filter(connection=theirs.connection).count(),
        Payment.objects.filter(connection=theirs.connection).count(),
        list(Invoice.objects.filter(connection=theirs.connection).values_list("status", "archived_at").order_by("pk")),
        AuditEvent.objects.filter(partner=theirs.connection.partner).count(),
    )
    assert after == before


@pytest.mark.parametrize("name,method", ALL_ROUTES)
def test_anonymous_is_sent_to_sign_in(name, method, client, mine):
    key = ROUTES[name][0]
    url = _url(name, mine, key)
    response = client.get(url) if method == "GET" else client.post(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", LIST_ROUTES)
def test_lists_show_only_own_rows(name, alice_client, mine, theirs):
    response = alice_client.get(reverse(name))
    assert response.status_code == 200
    body = _body(response)
    assert "GLOBEX" not in body


@pytest.mark.parametrize("name,key", [(n, k) for n, k, m in OBJECT_ROUTES if m == "GET"])
def test_own_objects_open(name, key, alice_client, mine, theirs):
    response = alice_client.get(_url(name, mine, key))
    assert response.status_code == 200
    if response.get("Content-Type", "").startswith("text/html"):
        assert "GLOBEX" not in response.content.decode()


@pytest.mark.parametrize("name,key", [(n, k) for n, k, m in OBJECT_ROUTES if m == "GET"])
def test_staff_see_every_partner(name, key, client, staff_user, mine, theirs):
    client.force_login(staff_user)
    assert client.get(_url(name, theirs, key)).status_code == 200
    assert client.get(_url(name, mine, key)).status_code == 200


@pytest.mark.parametrize(
    "name,own,foreign",
    [
        ("invoice_list", "ACME-INV-100", "GLOBEX-INV-100"),
        ("invoice_export", "ACME-INV-100", "GLOBEX-INV-100"),
        ("payment_list", "ACME-PAY", "GLOBEX-PAY"),
        ("payment_export", "ACME-PAY", "GLOBEX-PAY"),
    ],
)
def test_staff_lists_include_both_partners(name, own, foreign, client, staff_user, mine, theirs):
    client.force_login(staff_user)
    body = _body(client.get(reverse(name)))
    assert own in body and foreign in body


@pytest.mark.parametrize(
    "name,own",
    [
        ("invoice_list", "ACME-INV-100"),
        ("invoice_export", "ACME-INV-100"),
        ("payment_list", "ACME-PAY"),
        ("payment_export", "ACME-PAY"),
    ],
)
def test_lists_and_exports_filtered_by_another_partners_connection_show_nothing(name, own, alice_client, mine, theirs):
    body = _body(alice_client.get(reverse(name), {"connection": theirs.connection.pk}))
    assert "GLOBEX" not in body and own not in body


def test_filter_by_other_partners_ids_shows_nothing(alice_client, mine, theirs):
    body = alice_client.get(reverse("invoice_list"), {"customer": theirs.customer.pk}).content.decode()
    assert "GLOBEX" not in body and "ACME-INV-100" not in body
    assert alice_client.get(reverse("unknown_customers"), {"connection": theirs.connection.pk}).status_code == 404


def test_assigning_to_other_partners_customer_is_refused(alice_client, mine, theirs):
    response = alice_client.post(
        reverse("unknown_customers") + f"?connection={mine.connection.pk}",
        {"connection": mine.connection.pk, "customer": theirs.customer.pk, "invoices": [mine.unknown_invoice.pk]},
    )
    mine.unknown_invoice.refresh_from_db()
    assert mine.unknown_invoice.customer_id == mine.unknown.pk
    assert response.status_code in (200, 302)


def test_archiving_other_partners_rows_in_bulk_is_refused(alice_client, mine, theirs):
    alice_client.post(
        reverse("archive_queue"),
        {"action": "archive", "invoices": [theirs.deleted_invoice.pk], "customers": [theirs.deleted_customer.pk]},
    )
    theirs.deleted_invoice.refresh_from_db()
    theirs.deleted_customer.refresh_from_db()
    assert theirs.deleted_invoice.archived_at is None and theirs.deleted_customer.archived_at is None


def test_user_without_partner_sees_nothing(client, make_user, mine):
    loner = make_user("loner", None)
    client.force_login(loner)
    assert client.get(reverse("invoice_detail", kwargs={"pk": mine.invoice.pk})).status_code == 404
    assert "ACME" not in client.get(reverse("invoice_list")).content.decode()


def test_post_without_csrf_token_is_403(partner_user, mine):
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(partner_user)
    response = csrf_client.post(reverse("connection_state", kwargs={"pk": mine.connection.pk}), {"action": "disable"})
    assert response.status_code == 403
    mine.connection.refresh_from_db()
    assert mine.connection.enabled is True
