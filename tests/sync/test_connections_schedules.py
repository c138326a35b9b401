"""Connection services (create/update/delete/state/test) and their hourly schedules; the scheduled task."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_q.models import Schedule

from integrations.models import AuditEvent, Connection, Customer, Invoice, InvoicePdf, SyncCursor, SyncRun
from integrations.sandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
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
    connection = connection_create(partner=partner, user=partner_user, name="Main", base_url=halo_sandbox.url,
                                   client_id=SANDBOX_CLIENT_ID, client_secret=SANDBOX_CLIENT_SECRET)
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
    connections = [_create(partner, name=f"c{i}", detect_version=False) for i in range(6)]
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
    wrong_path = connection_test(connection=make_connection(partner, name="path", base_url=halo_sandbox.url + "/nothing-here"))
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


def test_scheduled_task_skips_paused_and_picks_scope(partner, make_connection, halo_sandbox, django_capture_on_commit_callbacks):
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
