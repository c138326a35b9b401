"""Connection services (create/update/delete/state/test) and their hourly schedules; the scheduled task."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_q.models import Schedule

from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from integrations.models import AuditEvent, Connection, Customer, Invoice, InvoicePdf, SyncCursor, SyncRun
from integrations.schedules import next_run_at, schedule_name
from integrations.services.connections import (
    connection_create,
    connection_delete,
    connection_set_state,
    connection_test,
    connection_update,
)
from integrations.tasks.sync import sync_run_task, sync_scheduled_task

pytestmark = pytest.mark.django_db


def _create(partner, url="https://example.halopsa.com", **fields):
    values = {"name": "Main", "base_url": url, "client_id": SANDBOX_CLIENT_ID, "client_secret": SANDBOX_CLIENT_SECRET}
    values.update(fields)
    return connection_create(partner=partner, **values)


def test_create_detects_version_and_ensures_an_hourly_schedule(partner, halo_sandbox, partner_user):
    connection = connection_create(
        partner=partner,
        user=partner_user,
        name="Main",
        base_url=halo_sandbox.url,
        client_id=SANDBOX_CLIENT_ID,
        client_secret=SANDBOX_CLIENT_SECRET,
    )
    assert connection.halopsa_version == "2.130.1" and connection.version_checked_at is not None
    schedule = Schedule.objects.get(name=schedule_name(connection.pk))
    assert schedule.func == "integrations.tasks.sync.sync_scheduled_task"
    assert schedule.args == f"({connection.pk},)"
    assert schedule.schedule_type == Schedule.HOURLY
    assert schedule.next_run.minute == connection.schedule_minute
    assert AuditEvent.objects.filter(action="connection.create", partner=partner).exists()


def test_create_succeeds_when_halopsa_is_unreachable(partner):
    connection = _create(partner, url="https://127.0.0.1:9")
    assert connection.pk and connection.halopsa_version == ""


def test_create_refuses_bad_values(partner):
    with pytest.raises(ValidationError):
        _create(partner, url="ftp://nope")
    with pytest.raises(ValidationError, match="Unknown connection field"):
        _create(partner, webhook_key="x")


def test_schedule_minutes_are_spread_deterministically(partner):
    connections = [_create(partner, name=f"c{i}", client_id=f"client-{i}", detect_version=False) for i in range(6)]
    minutes = [c.schedule_minute for c in connections]
    assert len(set(minutes)) == 6  # each took a minute nobody else uses
    # Recomputing gives the same minute (deterministic), and the schedules follow.
    assert {Schedule.objects.get(name=schedule_name(c.pk)).next_run.minute for c in connections} == set(minutes)


def test_next_run_is_strictly_in_the_future():
    now = timezone.now().replace(minute=30, second=0, microsecond=0)
    assert next_run_at(30, now) == now + timedelta(hours=1)
    assert next_run_at(45, now) == now.replace(minute=45)


def test_disable_removes_and_enable_restores_the_schedule(partner, partner_user):
    connection = _create(partner, detect_version=False)
    connection_set_state(connection=connection, user=partner_user, enabled=False)
    assert not Schedule.objects.filter(name=schedule_name(connection.pk)).exists()
    connection_set_state(connection=connection, user=partner_user, enabled=True, paused=True)
    assert Schedule.objects.filter(name=schedule_name(connection.pk)).exists()  # paused keeps it; the task skips
    assert Connection.objects.get(pk=connection.pk).paused
    assert AuditEvent.objects.filter(action="connection.state").count() == 2


def test_delete_removes_schedule_and_synced_data(partner, halo_sandbox, partner_user):
    connection = _create(partner, url=halo_sandbox.url)
    sync_run_task(SyncRun.objects.create(connection=connection, scope="full", trigger="manual").pk)
    files = [pdf.file.path for pdf in InvoicePdf.objects.filter(invoice__connection=connection)]
    assert files and Invoice.objects.filter(connection=connection).exists()
    connection_delete(connection=connection, user=partner_user)
    assert not Connection.objects.filter(pk=connection.pk).exists()
    assert not Schedule.objects.filter(name=schedule_name(connection.pk)).exists()
    assert not Customer.objects.filter(connection_id=connection.pk).exists()
    assert AuditEvent.objects.filter(action="connection.delete").exists()


def test_update_records_changes_without_secrets(partner, partner_user):
    connection = _create(partner, detect_version=False)
    connection_update(connection=connection, user=partner_user, client_secret="new-secret", name="Renamed")
    event = AuditEvent.objects.get(action="connection.update")
    assert "new-secret" not in str(event.details) and "client_secret" in event.details["fields"]
    assert Connection.objects.get(pk=connection.pk).name == "Renamed"


def test_connection_test_success_and_failures(partner, make_connection, halo_sandbox):
    ok = connection_test(connection=make_connection(partner, halo_sandbox, name="ok"))
    assert (ok.ok, ok.version, ok.failure) == (True, "2.130.1", "")
    stored = Connection.objects.get(name="ok")
    assert stored.last_test_ok and stored.halopsa_version == "2.130.1"
    bad = connection_test(connection=make_connection(partner, halo_sandbox, name="bad", client_secret="nope"))
    assert (bad.ok, bad.failure) == (False, "bad_credentials") and bad.message
    assert Connection.objects.get(name="bad").last_test_ok is False
    unreachable = connection_test(connection=make_connection(partner, name="down", base_url="https://127.0.0.1:9"))
    assert unreachable.failure == "unreachable"
    wrong_path = connection_test(
        connection=make_connection(partner, name="path", base_url=halo_sandbox.url + "/nothing-here")
    )
    assert wrong_path.failure == "bad_url"
    scheme = connection_test(connection=make_connection(partner, name="scheme", base_url="ftp://example.com"))
    assert scheme.failure == "bad_url"


def test_connection_test_permission_and_bad_response(partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox)
    halo_sandbox.add_fault("status", status=403, path="/api/Invoice", count=5)
    assert connection_test(connection=connection).failure == "permission"
    halo_sandbox.clear_faults()
    halo_sandbox.add_fault("malformed_json", path="/api/InstanceInfo", count=10)
    assert connection_test(connection=connection).failure == "bad_response"


def test_refused_address(partner, make_connection, settings):
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = False
    result = connection_test(connection=make_connection(partner, base_url="https://169.254.169.254"))
    assert result.failure == "refused_address"


def test_scheduled_task_skips_paused_and_picks_scope(
    partner, make_connection, halo_sandbox, django_capture_on_commit_callbacks
):
    connection = make_connection(partner, halo_sandbox)
    with django_capture_on_commit_callbacks(execute=True):
        run_id = sync_scheduled_task(connection.pk)
    run = SyncRun.objects.get(pk=run_id)
    assert (run.scope, run.trigger, run.state) == ("full", "schedule", "succeeded")  # never synced: full
    with django_capture_on_commit_callbacks(execute=True):
        run = SyncRun.objects.get(pk=sync_scheduled_task(connection.pk))
    assert run.scope == "incremental"
    # A day after the last full read, the scheduled run is full again (it detects deletions).
    SyncCursor.objects.filter(connection=connection).update(last_full_sync_at=timezone.now() - timedelta(hours=25))
    with django_capture_on_commit_callbacks(execute=True):
        assert SyncRun.objects.get(pk=sync_scheduled_task(connection.pk)).scope == "full"
    connection.paused = True
    connection.save()
    assert sync_scheduled_task(connection.pk) is None
    assert sync_scheduled_task(987654) is None


def test_sync_run_task_with_a_missing_run(db):
    assert sync_run_task(424242) is None


# --- one connection per HaloPSA and client id, URLs the portal may call (issue 17 item 7) ------


@pytest.mark.parametrize(
    "url,key",
    [
        ("https://acme.halopsa.com", "https://acme.halopsa.com"),
        ("HTTPS://Acme.HaloPSA.com:443/", "https://acme.halopsa.com"),
        ("https://acme.halopsa.com.//", "https://acme.halopsa.com"),
        ("https://acme.halopsa.com:8443/halo/", "https://acme.halopsa.com:8443/halo"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
        ("https://[::1]:443", "https://[::1]"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
    ],
)
def test_halopsa_url_key_normalises_what_names_the_same_halopsa(url, key):
    from integrations.models import halopsa_url_key

    assert halopsa_url_key(url) == key


def test_a_second_connection_to_the_same_halopsa_and_client_id_is_refused(partner, other_partner):
    first = _create(partner, url="https://acme.halopsa.com", detect_version=False)
    assert first.base_url_key == "https://acme.halopsa.com"
    with pytest.raises(ValidationError, match="already have a connection to this HaloPSA with this client ID: “Main”"):
        _create(partner, name="Again", url="HTTPS://ACME.halopsa.com:443/", detect_version=False)
    # Another API application of the same HaloPSA, or another partner, is a different connection.
    _create(partner, name="Second app", url="https://acme.halopsa.com/", client_id="another-app", detect_version=False)
    _create(other_partner, url="https://acme.halopsa.com", detect_version=False)
    assert Connection.objects.count() == 3


def test_editing_into_a_twin_is_refused_and_changes_nothing(partner):
    _create(partner, url="https://acme.halopsa.com", detect_version=False)
    other = _create(partner, name="Other", url="https://other.halopsa.com", detect_version=False)
    with pytest.raises(ValidationError, match="already have a connection to this HaloPSA"):
        connection_update(connection=other, base_url="https://Acme.halopsa.com/")
    other.refresh_from_db()
    assert (other.base_url, other.base_url_key) == ("https://other.halopsa.com", "https://other.halopsa.com")


def test_the_database_refuses_a_twin_written_around_the_service(partner):
    from django.db import IntegrityError, transaction

    first = _create(partner, url="https://acme.halopsa.com", detect_version=False)
    with pytest.raises(IntegrityError), transaction.atomic():
        Connection.objects.create(
            partner=partner,
            name="Raced",
            base_url="https://acme.halopsa.com/",
            base_url_key=first.base_url_key,
            client_id=first.client_id,
            client_secret="x",
        )


def test_a_twin_saved_meanwhile_is_a_clear_error_not_a_500(partner, monkeypatch):
    """Two requests checked at the same moment: the second save trips the constraint."""
    from integrations.services import connections as service

    _create(partner, url="https://acme.halopsa.com", detect_version=False)
    monkeypatch.setattr(service, "connection_endpoint_twin", lambda connection: None)  # the check saw no twin yet
    with pytest.raises(ValidationError, match="already have a connection to this HaloPSA"):
        _create(partner, name="Raced", url="https://acme.halopsa.com", detect_version=False)


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://acme.halopsa.com", "must start with https://"),
        ("https://me:pw@acme.halopsa.com", "must not contain a user name or password"),
        ("https://192.168.1.10", "loopback, private, link-local or reserved address"),
    ],
)
def test_create_applies_the_outbound_url_rules(partner, settings, url, message):
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = False
    with pytest.raises(ValidationError, match=message):
        _create(partner, url=url, detect_version=False)
    with pytest.raises(ValidationError, match=message.replace("HaloPSA URL", "authorisation server URL")):
        _create(partner, auth_url=url, detect_version=False)
    assert not Connection.objects.exists()


def test_check_credentials_refuses_before_saving(partner, halo_sandbox):
    with pytest.raises(ValidationError) as refused:
        _create(partner, url=halo_sandbox.url, client_secret="wrong", check_credentials=True)
    assert "Bad credentials" in str(refused.value.message_dict["client_secret"]) and not Connection.objects.exists()
    connection = _create(partner, url=halo_sandbox.url, check_credentials=True)
    assert (connection.halopsa_version, connection.last_test_ok) == ("2.130.1", True)


def test_connection_test_records_why_it_failed_and_a_pass_ends_the_credentials_alert(
    partner, make_connection, halo_sandbox
):
    from integrations.models import Incident
    from integrations.services.incidents import incident_open

    connection = make_connection(partner, halo_sandbox, client_secret="nope")
    connection_test(connection=connection)
    assert Connection.objects.get(pk=connection.pk).last_test_failure == "bad_credentials"
    incident_open(connection, Incident.Kind.CREDENTIALS_REJECTED, "401")
    Connection.objects.filter(pk=connection.pk).update(client_secret=SANDBOX_CLIENT_SECRET)
    connection.refresh_from_db()
    assert connection_test(connection=connection).ok
    assert Connection.objects.get(pk=connection.pk).last_test_failure == ""
    assert not Incident.objects.filter(resolved_at__isnull=True).exists()
