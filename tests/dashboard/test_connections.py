"""Connection screens: add/edit (write-only secret), test, pause/resume, enable/disable, delete, resync."""

from __future__ import annotations

import pytest
from django.urls import reverse

from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from integrations.models import AuditEvent, Connection, Incident, SyncRun


def _form(sandbox_url: str, **overrides) -> dict:
    data = {
        "name": "Main HaloPSA",
        "base_url": sandbox_url,
        "auth_url": "",
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": SANDBOX_CLIENT_SECRET,
        "tenant": "",
        "invoices_created_since": "2024-01-01",
        "invoice_number_field": "invoicenumber",
        "billing_contact_rule": "accounts_and_invoice_users",
    }
    data.update(overrides)
    return data


def test_partner_user_adds_a_connection_for_own_partner(alice_client, partner, halo_sandbox):
    response = alice_client.post(reverse("connection_create"), _form(halo_sandbox.url))
    assert response.status_code == 302, response.context["form"].errors if response.context else response
    connection = Connection.objects.get()
    assert connection.partner == partner and connection.client_secret == SANDBOX_CLIENT_SECRET
    assert connection.invoices_created_since.isoformat() == "2024-01-01"
    assert AuditEvent.objects.filter(action="connection.create").exists()


def test_partner_field_only_for_staff(alice_client, client, staff_user, other_partner, halo_sandbox):
    assert "id_partner" not in alice_client.get(reverse("connection_create")).content.decode()
    client.force_login(staff_user)
    assert "id_partner" in client.get(reverse("connection_create")).content.decode()
    response = client.post(reverse("connection_create"), _form(halo_sandbox.url, partner=other_partner.pk))
    assert response.status_code == 302
    assert Connection.objects.get().partner == other_partner


def test_partner_user_cannot_create_for_another_partner(alice_client, partner, other_partner, halo_sandbox):
    alice_client.post(reverse("connection_create"), _form(halo_sandbox.url, partner=other_partner.pk))
    assert Connection.objects.get().partner == partner


def test_secret_is_write_only(alice_client, partner, make_connection):
    connection = make_connection(partner, client_secret="s3cret-value-never-shown")
    body = alice_client.get(reverse("connection_edit", kwargs={"pk": connection.pk})).content.decode()
    assert "s3cret-value-never-shown" not in body
    assert 'type="password"' in body


def test_blank_secret_on_edit_keeps_the_old_one(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox, client_secret="old-secret")
    url = reverse("connection_edit", kwargs={"pk": connection.pk})
    # A rename changes nothing HaloPSA checks: saved as it is, the stored secret kept.
    response = alice_client.post(url, _form(halo_sandbox.url, name="Renamed", client_secret=""))
    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.name == "Renamed" and connection.client_secret == "old-secret"
    # A new secret is saved once HaloPSA accepts it.
    alice_client.post(url, _form(halo_sandbox.url, name="Renamed", client_secret=SANDBOX_CLIENT_SECRET))
    connection.refresh_from_db()
    assert connection.client_secret == SANDBOX_CLIENT_SECRET and connection.last_test_ok is True


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("base_url", "not a url", "Enter a valid URL"),
        ("client_id", "", "This field is required"),
        ("client_secret", "", "This field is required"),
        ("invoice_number_field", "bogus", "Select a valid choice"),
        ("invoices_created_since", "31/31/2024", "Enter a valid date"),
    ],
)
def test_bad_form_values_are_explained(alice_client, partner, field, value, message):
    response = alice_client.post(reverse("connection_create"), _form("https://example.halopsa.com", **{field: value}))
    assert response.status_code == 200 and message in response.content.decode()
    assert not Connection.objects.exists()


def test_duplicate_name_is_explained(alice_client, partner, make_connection):
    make_connection(partner, name="Main HaloPSA")
    response = alice_client.post(reverse("connection_create"), _form("https://example.halopsa.com"))
    assert "already have a connection with this name" in response.content.decode()


def test_connection_test_success_shows_version_and_mode(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox)
    response = alice_client.post(reverse("connection_test", kwargs={"pk": connection.pk}), follow=True)
    body = response.content.decode()
    assert "Connected. HaloPSA version 2.130.1" in body and "real time" in body
    assert AuditEvent.objects.filter(action="connection.test").exists()


@pytest.mark.sandbox(version="2.99.0")
def test_connection_test_old_version_is_hourly(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox)
    body = alice_client.post(reverse("connection_test", kwargs={"pk": connection.pk}), follow=True).content.decode()
    assert "2.99.0" in body and "hourly" in body


def test_connection_test_failure_says_what_failed(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox, client_secret="wrong")
    body = alice_client.post(reverse("connection_test", kwargs={"pk": connection.pk}), follow=True).content.decode()
    assert "Test failed — Bad credentials" in body


def test_connection_test_unreachable(alice_client, partner, make_connection, halo_sandbox_factory):
    sandbox = halo_sandbox_factory()
    url = sandbox.url
    sandbox.stop()
    connection = make_connection(partner, None, base_url=url)
    body = alice_client.post(reverse("connection_test", kwargs={"pk": connection.pk}), follow=True).content.decode()
    assert "Test failed — " in body


@pytest.mark.parametrize("action,field,value", [("pause", "paused", True), ("disable", "enabled", False)])
def test_pause_and_disable(alice_client, partner, make_connection, action, field, value):
    connection = make_connection(partner)
    alice_client.post(reverse("connection_state", kwargs={"pk": connection.pk}), {"action": action})
    connection.refresh_from_db()
    assert getattr(connection, field) is value
    undo = {"pause": "resume", "disable": "enable"}[action]
    alice_client.post(reverse("connection_state", kwargs={"pk": connection.pk}), {"action": undo})
    connection.refresh_from_db()
    assert getattr(connection, field) is (not value)


def test_delete_needs_confirmation(alice_client, partner, make_connection):
    connection = make_connection(partner)
    body = alice_client.get(reverse("connection_delete", kwargs={"pk": connection.pk})).content.decode()
    assert "Delete “Main HaloPSA”?" in body
    assert Connection.objects.filter(pk=connection.pk).exists()
    response = alice_client.post(reverse("connection_delete", kwargs={"pk": connection.pk}))
    assert response.status_code == 302 and not Connection.objects.filter(pk=connection.pk).exists()


def test_second_click_does_not_start_another_sync(alice_client, partner, make_connection):
    """A run already queued (no worker has taken it) makes the next click a no-op with a message."""
    connection = make_connection(partner)
    queued = SyncRun.objects.create(connection=connection, trigger=SyncRun.Trigger.MANUAL, scope=SyncRun.Scope.FULL)
    for scope in ("full", "recent", "unpaid"):
        response = alice_client.post(
            reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": scope}, follow=True
        )
        assert "A sync is already queued" in response.content.decode()
    assert list(SyncRun.objects.filter(connection=connection)) == [queued]


@pytest.mark.parametrize(
    "data,scope,entity",
    [
        ({"scope": "full"}, "full", ""),
        ({"scope": "recent"}, "recent", ""),
        ({"scope": "unpaid"}, "unpaid", ""),
        ({"scope": "entity", "entity": "customers"}, "entity", "customers"),
    ],
)
def test_manual_sync_buttons_queue_runs(
    alice_client, partner_user, partner, make_connection, data, scope, entity, django_capture_on_commit_callbacks
):
    connection = make_connection(partner)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), data)
    run = SyncRun.objects.get(connection=connection)
    assert (run.scope, run.entity, run.trigger, run.requested_by) == (scope, entity, "manual", partner_user)
    assert len(callbacks) == 1  # the task is enqueued after commit


def test_entity_sync_needs_an_entity(alice_client, partner, make_connection):
    connection = make_connection(partner)
    response = alice_client.post(
        reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "entity"}, follow=True
    )
    assert "Choose which entity type" in response.content.decode()
    assert not SyncRun.objects.exists()


def test_disabled_connection_does_not_sync(alice_client, partner, make_connection):
    connection = make_connection(partner, enabled=False)
    alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "full"})
    assert not SyncRun.objects.exists()


def test_full_sync_from_the_page_with_the_sandbox(
    alice_client, partner, make_connection, halo_sandbox, django_capture_on_commit_callbacks
):
    connection = make_connection(partner, halo_sandbox)
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "full"})
    run = SyncRun.objects.get(connection=connection)
    assert run.state in ("succeeded", "partial") and run.progress_done == run.progress_total > 0
    body = alice_client.get(reverse("connection_detail", kwargs={"pk": connection.pk})).content.decode()
    assert 'aria-valuenow="100"' in body


def test_one_invoice_resync(alice_client, partner, make_connection, halo_sandbox, django_capture_on_commit_callbacks):
    from integrations.models import Invoice

    connection = make_connection(partner, halo_sandbox)
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "full"})
    invoice = Invoice.objects.filter(connection=connection).order_by("halopsa_id").first()
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("invoice_resync", kwargs={"pk": invoice.pk}), follow=True)
    run = SyncRun.objects.filter(connection=connection).order_by("-id").first()
    assert (run.scope, run.target_halopsa_id) == ("invoice", invoice.halopsa_id)
    assert "Sync" in response.content.decode()


def test_assignment_survives_a_later_sync(
    alice_client, partner, make_connection, halo_sandbox, django_capture_on_commit_callbacks
):
    from integrations.models import Customer, Invoice

    connection = make_connection(partner, halo_sandbox)
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "full"})
    unknown = Invoice.objects.get(connection=connection, customer__is_unknown=True)
    target = Customer.objects.filter(connection=connection, is_unknown=False).order_by("name").first()
    alice_client.post(
        reverse("unknown_customers") + f"?connection={connection.pk}",
        {"connection": connection.pk, "customer": target.pk, "only": unknown.pk},
    )
    halo_sandbox.store.update_invoice(unknown.halopsa_id, amount="321.00")  # HaloPSA changes the invoice
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "full"})
    unknown.refresh_from_db()
    assert unknown.customer_id == target.pk and str(unknown.total) == "321.00"


def test_connection_test_runs_the_shape_probe_and_shows_it(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox)
    halo_sandbox.set_profile("flag_on_detail,payments_bare_array")
    halo_sandbox.clear_request_log()
    response = alice_client.post(reverse("connection_test", kwargs={"pk": connection.pk}), follow=True)
    assert response.redirect_chain[-1][0].endswith("#halopsa-shape")
    body = response.content.decode()
    assert "Connected. HaloPSA version 2.130.1" in body
    assert "Read from canaccessinvoices on each user&#x27;s own record" in body and "A bare JSON array." in body
    connection.refresh_from_db()
    assert connection.shape_checked_at is not None
    assert halo_sandbox.count_requests() == 13  # the probe's calls, token included


def test_connection_test_warns_about_blocked_features(
    alice_client, partner, make_connection, halo_sandbox, monkeypatch
):
    from integrations.services import connections as connection_services

    real_probe = connection_services.probe_shape

    def probe_finding_no_flag(client):
        result = real_probe(client)
        result.shape.problems = [{"feature": "billing_contacts", "message": "HaloPSA shows no invoice-access flag."}]
        return result

    monkeypatch.setattr(connection_services, "probe_shape", probe_finding_no_flag)
    connection = make_connection(partner, halo_sandbox)
    body = alice_client.post(reverse("connection_test", kwargs={"pk": connection.pk}), follow=True).content.decode()
    # The message, the health summary (needs attention) and the shape section.
    assert "Connected." in body and body.count("HaloPSA shows no invoice-access flag.") == 3


# --- saving checks the URL and the credentials, then starts the first sync (issue 17 item 7) ------


def test_create_tests_the_credentials_before_saving(alice_client, partner, halo_sandbox):
    """A secret HaloPSA refuses saves nothing; the form comes back with what was typed (the secret
    aside) and says what failed."""
    response = alice_client.post(
        reverse("connection_create"), _form(halo_sandbox.url, name="Typed name", client_secret="not-the-secret")
    )
    assert response.status_code == 200 and not Connection.objects.exists()
    body = response.content.decode()
    assert "HaloPSA did not accept this connection — Bad credentials" in body
    assert 'value="Typed name"' in body and f'value="{halo_sandbox.url}"' in body and 'value="2024-01-01"' in body
    assert "not-the-secret" not in body


def test_create_saves_the_checked_connection_and_starts_the_first_sync(
    alice_client, partner_user, partner, halo_sandbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = alice_client.post(reverse("connection_create"), _form(halo_sandbox.url), follow=True)
    connection = Connection.objects.get()
    assert (connection.halopsa_version, connection.last_test_ok, connection.last_test_failure) == ("2.130.1", True, "")
    run = SyncRun.objects.get(connection=connection)
    assert (run.scope, run.trigger, run.state, run.requested_by) == ("full", "manual", "queued", partner_user)
    assert len(callbacks) == 1  # the first sync's task, enqueued after the commit
    assert "the first full sync has started" in response.content.decode()


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://acme.halopsa.com", "must start with https://"),
        ("https://admin:pw@acme.halopsa.com", "must not contain a user name or password"),
        ("https://10.1.2.3", "loopback, private, link-local or reserved address"),
        ("https://[fe80::1]", "loopback, private, link-local or reserved address"),
        ("https://169.254.169.254", "cloud metadata address"),
        ("https://localhost:1", "resolves to an address the portal does not call"),
    ],
)
def test_unsafe_urls_are_refused_with_the_typed_values_kept(alice_client, partner, settings, url, message):
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = False
    response = alice_client.post(reverse("connection_create"), _form(url, name="Typed name"))
    assert response.status_code == 200 and not Connection.objects.exists()
    body = response.content.decode()
    assert message in body and 'value="Typed name"' in body
    assert SANDBOX_CLIENT_SECRET not in body


def test_private_networks_allowed_by_the_setting_but_never_metadata(alice_client, partner, settings):
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = True
    body = alice_client.post(reverse("connection_create"), _form("http://169.254.169.254")).content.decode()
    assert "cloud metadata address" in body and not Connection.objects.exists()


def test_edit_refuses_an_unsafe_url_and_keeps_the_stored_one(
    alice_client, partner, make_connection, halo_sandbox, settings
):
    connection = make_connection(partner, halo_sandbox)
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = False
    response = alice_client.post(
        reverse("connection_edit", kwargs={"pk": connection.pk}),
        _form("https://user@acme.halopsa.com", name="Typed name", client_secret=""),
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "must not contain a user name or password" in body and 'value="Typed name"' in body
    assert "Edit “Main HaloPSA”" in body  # the page still names the stored connection
    connection.refresh_from_db()
    assert (connection.name, connection.base_url) == ("Main HaloPSA", halo_sandbox.url)


def test_edit_with_a_rejected_secret_keeps_the_stored_one(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox)
    response = alice_client.post(
        reverse("connection_edit", kwargs={"pk": connection.pk}),
        _form(halo_sandbox.url, client_secret="a-wrong-secret"),
    )
    assert response.status_code == 200 and "Bad credentials" in response.content.decode()
    connection.refresh_from_db()
    assert connection.client_secret == SANDBOX_CLIENT_SECRET


def test_a_passed_check_on_edit_ends_the_credentials_alert(alice_client, partner, make_connection, halo_sandbox):
    from integrations.services.incidents import incident_open

    connection = make_connection(partner, halo_sandbox, client_secret="expired")
    incident_open(connection, Incident.Kind.CREDENTIALS_REJECTED, "HaloPSA answered 401.")
    alice_client.post(
        reverse("connection_edit", kwargs={"pk": connection.pk}),
        _form(halo_sandbox.url, client_secret=SANDBOX_CLIENT_SECRET),
    )
    assert not Incident.objects.filter(resolved_at__isnull=True).exists()


@pytest.mark.parametrize("typed", ["{url}", "{url}/", "{upper}", "{upper}//"])
def test_a_second_connection_to_the_same_halopsa_is_refused(
    alice_client, partner, make_connection, halo_sandbox, typed
):
    make_connection(partner, halo_sandbox, name="First")
    upper = halo_sandbox.url.replace("http://", "HTTP://").replace("127.0.0.1", "127.0.0.1")
    halo_sandbox.clear_request_log()
    response = alice_client.post(
        reverse("connection_create"), _form(typed.format(url=halo_sandbox.url, upper=upper), name="Second")
    )
    assert response.status_code == 200
    assert "You already have a connection to this HaloPSA with this client ID: “First”" in response.content.decode()
    assert Connection.objects.count() == 1
    assert halo_sandbox.count_requests() == 0  # refused before HaloPSA is asked anything
