"""The connection page: health at a glance, progress JSON, history chart, errors, webhooks, incidents."""
from __future__ import annotations

from datetime import timedelta

from django.core import mail
from django.urls import reverse
from django.utils import timezone

from integrations.models import Incident, SyncCursor, SyncRun


def _detail(client, world):
    return client.get(reverse("connection_detail", kwargs={"pk": world.connection.pk}))


def test_health_tiles(alice_client, mine):
    SyncCursor.objects.create(connection=mine.connection, entity="invoices", last_success_at=timezone.now() - timedelta(minutes=5))
    response = _detail(alice_client, mine)
    health = response.context["health"]
    assert health.open_errors == 1 and health.failed_pushes == 1 and health.unknown_invoices == 1
    assert health.archive_queue == 2
    rows = {row["entity"]: row["last_success_at"] for row in health.cursors}
    assert rows["Invoices"] is not None and rows["Customers"] is None
    body = response.content.decode()
    assert "Hourly" in body  # version unknown -> hourly


def test_next_run_comes_from_the_schedule(alice_client, mine):
    from integrations.schedules import schedule_ensure

    schedule = schedule_ensure(mine.connection)
    assert schedule.next_run > timezone.now()
    assert _detail(alice_client, mine).context["health"].next_run == schedule.next_run
    mine.connection.paused = True
    mine.connection.save()
    response = _detail(alice_client, mine)
    assert response.context["health"].next_run is None
    assert "paused: scheduled syncs skipped" in response.content.decode()


def test_realtime_mode_shows_version(alice_client, mine):
    mine.connection.halopsa_version = "2.130.1"
    mine.connection.save()
    body = _detail(alice_client, mine).content.decode()
    assert "Real time" in body and "HaloPSA 2.130.1" in body


def test_history_chart_and_errors(alice_client, mine):
    now = timezone.now()
    for i in range(3):
        SyncRun.objects.create(connection=mine.connection, trigger=SyncRun.Trigger.SCHEDULE, scope=SyncRun.Scope.INCREMENTAL,
                               state=SyncRun.State.SUCCEEDED, created=i, updated=i, api_requests=2,
                               queued_at=now - timedelta(hours=i + 1), started_at=now - timedelta(hours=i + 1),
                               finished_at=now - timedelta(hours=i + 1) + timedelta(seconds=10 * (i + 1)))
    response = _detail(alice_client, mine)
    chart = response.context["chart"]
    assert len(chart["bars"]) == 4 and chart["max_duration"] == 30.0
    body = response.content.decode()
    assert body.count('class="bar-changed"') + body.count('class="bar-failed"') == 4
    assert "ACME bad record" in body and "&#x27;total&#x27;: &#x27;abc&#x27;" in body  # payload shown
    assert reverse("sync_error_retry", kwargs={"pk": mine.sync_error.pk}) in body
    assert reverse("webhook_event_replay", kwargs={"pk": mine.webhook_event.pk}) in body
    assert reverse("push_job_retry", kwargs={"pk": mine.push_job.pk}) in body


def test_progress_endpoint_reports_running_run(alice_client, mine):
    run = SyncRun.objects.create(connection=mine.connection, trigger=SyncRun.Trigger.MANUAL, scope=SyncRun.Scope.FULL,
                                 state=SyncRun.State.RUNNING, progress_done=30, progress_total=120)
    data = alice_client.get(reverse("connection_progress", kwargs={"pk": mine.connection.pk})).json()["run"]
    assert data == {**data, "id": run.pk, "active": True, "done": 30, "total": 120, "percent": 25}
    body = _detail(alice_client, mine).content.decode()
    assert 'data-active="1"' in body and 'aria-valuenow="25"' in body and 'http-equiv="refresh"' in body
    run.state, run.progress_done = SyncRun.State.SUCCEEDED, 120
    run.save()
    data = alice_client.get(reverse("run_progress", kwargs={"pk": run.pk})).json()
    assert data["active"] is False and data["percent"] == 100


def test_webhook_setup_instructions_shown(alice_client, mine):
    mine.connection.halopsa_version = "2.130.1"
    mine.connection.save()
    body = _detail(alice_client, mine).content.decode()
    assert str(mine.connection.webhook_key) in body
    assert reverse("connection_webhook_subscribe", kwargs={"pk": mine.connection.pk}) in body


def test_incident_banner_shows_once_and_emails_once(client, make_user, partner, mine):
    from integrations.services.incidents import incident_open

    user = make_user("carol", partner)
    user.email = "carol@acme.example"
    user.save()
    client.force_login(user)
    incident_open(mine.connection, Incident.Kind.CREDENTIALS_REJECTED, "HaloPSA answered 401 to the token request.")
    incident_open(mine.connection, Incident.Kind.CREDENTIALS_REJECTED, "HaloPSA answered 401 again.")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["carol@acme.example"]
    for name in ("home", "invoice_list", "activity"):
        body = client.get(reverse(name)).content.decode()
        assert body.count("HaloPSA rejected the credentials") == 1, name
    Incident.objects.update(resolved_at=timezone.now())
    assert "HaloPSA rejected the credentials" not in client.get(reverse("home")).content.decode()


def test_other_partners_incident_not_shown(alice_client, mine, theirs):
    from integrations.services.incidents import incident_open

    incident_open(theirs.connection, Incident.Kind.SYNC_FAILING, "GLOBEX syncs failing")
    assert "GLOBEX" not in alice_client.get(reverse("home")).content.decode()


def test_home_lists_connections_with_bounded_queries(alice_client, mine, make_connection, partner, django_assert_max_num_queries):
    for i in range(5):
        make_connection(partner, name=f"Extra {i}")
    with django_assert_max_num_queries(7):
        body = alice_client.get(reverse("home")).content.decode()
    assert "Extra 4" in body and "ACME HaloPSA" in body


def test_realtime_connection_warns_about_failed_webhooks(alice_client, mine):
    mine.connection.halopsa_version = "2.130.1"
    mine.connection.save()
    body = _detail(alice_client, mine).content.decode()
    assert "1 webhook event(s) failed in the last 24 hours" in body
