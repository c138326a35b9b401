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
    SyncCursor.objects.create(
        connection=mine.connection, entity="invoices", last_success_at=timezone.now() - timedelta(minutes=5)
    )
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
        SyncRun.objects.create(
            connection=mine.connection,
            trigger=SyncRun.Trigger.SCHEDULE,
            scope=SyncRun.Scope.INCREMENTAL,
            state=SyncRun.State.SUCCEEDED,
            created=i,
            updated=i,
            api_requests=2,
            queued_at=now - timedelta(hours=i + 1),
            started_at=now - timedelta(hours=i + 1),
            finished_at=now - timedelta(hours=i + 1) + timedelta(seconds=10 * (i + 1)),
        )
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
    run = SyncRun.objects.create(
        connection=mine.connection,
        trigger=SyncRun.Trigger.MANUAL,
        scope=SyncRun.Scope.FULL,
        state=SyncRun.State.RUNNING,
        progress_done=30,
        progress_total=120,
    )
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


def test_home_lists_connections_with_bounded_queries(
    alice_client, mine, make_connection, partner, django_assert_max_num_queries
):
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


# --- what the shape probe learned -------------------------------------------------------------


def _learned(connection, **facts) -> None:
    from integrations.halopsa.shape import HaloShape

    connection.halo_shape = HaloShape(**facts).as_dict()
    connection.shape_checked_at = timezone.now() - timedelta(minutes=5)
    connection.save()


def _shape_section(body: str) -> str:
    start = body.index('id="halopsa-shape"')
    return body[start : body.index("</section>", start)]


def test_before_any_check_the_page_says_how_to_check(alice_client, mine):
    section = _shape_section(_detail(alice_client, mine).content.decode())
    assert "Not checked yet" in section and "Test connection" in section


def test_what_the_probe_learned_is_shown_in_words(alice_client, mine):
    _learned(
        mine.connection,
        version="2.99.1",
        checked_at=timezone.now().isoformat(),
        invoice_datesearch="ignored",
        invoice_order_by_modified="works",
        client_updated_filter="works",
        user_updated_filter="ignored",
        user_order_by_updated="ignored",
        billing_flag_source="detail",
        billing_flag_field="sendaccountsemails",
        payments_lookup="invoice",
        payments_list_key="[]",
        payments_list_filter="ignored",
        paymentstatus_codes={
            "-1": {"seen": 4, "unpaid": 3, "paid": 0},
            "2": {"seen": 1, "unpaid": 0, "paid": 1},
            "7": {"seen": 2, "unpaid": 1, "paid": 1},
        },
        missing_fields={"invoice": ["pdf_attachment_id", "duedate"]},
        clock_offset_seconds=-25200.2,
        clock_offset_measured_at="2026-12-05T10:00:00+00:00",
        probe_errors=[{"call": "GET /api/Webhook", "message": "The HaloPSA API application lacks permission"}],
    )
    section = _shape_section(_detail(alice_client, mine).content.decode())
    assert "HaloPSA 2.99.1 · checked <time" in section and "minutes ago</time>" in section
    # Billing contacts: the rule in force and where the flag comes from.
    assert "Accounts contact + users who can access invoices" in section
    assert "Read from sendaccountsemails on each user&#x27;s own record (GET /Users/{id})" in section
    # How each entity is read incrementally.
    assert "Customers</dt><dd>Changed records only, filtered by lastupdatefromdate." in section
    assert (
        'Users</dt><dd class="error">Full reads: HaloPSA ignores both lastupdatefromdate and order=ulastupdate.'
        in section
    )
    assert "Invoices</dt><dd>Newest first (order=last_modified) until the last sync&#x27;s mark" in section
    # Payments: the lookup, the list key, the clock.
    assert "In the invoice&#x27;s own payments (GET /Invoice/{id}?includedetails=true)" in section
    assert "A bare JSON array. Its invoice_id filter is ignored" in section
    assert "7 h behind ours" in section and "Measured 2026-12-05 10:00 UTC" in section
    # paymentstatus codes, each with what the amounts said and whether "unpaid" fetches it.
    rows = section[section.index("<tbody>") : section.index("</tbody>")]
    assert rows.index("<code>-1</code>") < rows.index("<code>2</code>") < rows.index("<code>7</code>")
    assert "<td>unpaid</td><td>included</td>" in rows and "<td>mixed</td><td>included</td>" in rows
    assert '<td>paid</td><td><span class="muted">not included</span>' in rows
    assert "Invoices</dt><dd><code>pdf_attachment_id, duedate</code>" in section
    assert "GET /api/Webhook</code>: The HaloPSA API application lacks permission" in section
    assert "{&quot;" not in section and "Blocked" not in section  # words, not a JSON dump; nothing blocked


def test_blocked_features_show_their_messages(alice_client, mine):
    _learned(
        mine.connection,
        billing_flag_source="none",
        payments_lookup="none",
        problems=[
            {"feature": "billing_contacts", "message": "HaloPSA shows no invoice-access flag on its users."},
            {"feature": "payment_push", "message": "HaloPSA lists no invoice's payments exactly."},
        ],
    )
    section = _shape_section(_detail(alice_client, mine).content.decode())
    assert "<strong>Blocked:</strong> HaloPSA shows no invoice-access flag on its users." in section
    assert "<strong>Blocked:</strong> HaloPSA lists no invoice&#x27;s payments exactly." in section
    assert "Nowhere: HaloPSA shows no invoice-access flag" in section
    assert "Nowhere: HaloPSA lists no invoice&#x27;s payments exactly, so payments are not posted." in section


def test_an_unreadable_stored_shape_still_renders(alice_client, mine):
    mine.connection.halo_shape = {
        "paymentstatus_codes": {"x": "junk", "0": {"seen": "2"}},
        "missing_fields": {"a": "b"},
        "clock_offset_seconds": "soon",
        "unknown_key": 1,
        "problems": ["junk", 3],
        "probe_errors": {"a": 1},
        "payments_lookup": ["invoice"],
    }
    mine.connection.shape_checked_at = timezone.now()
    mine.connection.save()
    section = _shape_section(_detail(alice_client, mine).content.decode())
    assert "Not measured yet" in section and "<code>0</code>" in section
