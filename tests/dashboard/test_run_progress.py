"""Run progress and history (issue 17 item 8): steps instead of a total that jumps, PDFs left for
the next batch said in words, "Fetch new data" since the last sync, webhook runs kept apart."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from integrations import selectors
from integrations.models import Invoice, SyncRun
from integrations.services.sync import sync_execute

pytestmark = pytest.mark.django_db

# Two invoice pages and a write per page, so the invoices step is seen moving.
PAGED = {"customers": 5, "contacts": 12, "billing_contacts": 3, "invoices": 230, "max_lines": 2}


def _watch(connection, scope="full", **fields):
    """Run a sync, returning what the progress bar showed after every write."""
    run = SyncRun.objects.create(connection=connection, scope=scope, trigger=SyncRun.Trigger.MANUAL, **fields)
    seen = []
    sync_execute(
        run=run,
        progress=lambda current: seen.append(
            (selectors.run_progress(current), current.progress_done, current.progress_total)
        ),
    )
    run.refresh_from_db()
    return run, seen


@pytest.mark.sandbox(dataset=PAGED)
def test_the_bar_shows_steps_whose_totals_never_jump(partner, make_connection, halo_sandbox, settings):
    settings.HALOPSA_SYNC_WRITE_BATCH = 100
    settings.HALOPSA_PDF_BATCH = 4
    connection = make_connection(partner, halo_sandbox)
    run, seen = _watch(connection)
    assert run.state == "succeeded", run.message
    steps: dict[str, set[int]] = {}
    last_step, last_total = 0, 0
    for progress, done, total in seen:
        match = re.fullmatch(r"Step (\d) of 4: ([a-z ]+), ([\d,]+)(?: of ([\d,]+))?.*", progress["progress_text"])
        assert match, progress["progress_text"]
        step = int(match[1])
        assert step >= last_step  # customers, billing contacts, invoices, PDFs: never back
        last_step = step
        steps.setdefault(match[2], set()).add(progress["total"])
        assert 0 <= progress["done"] <= progress["total"] and progress["percent"] <= 100
        assert done <= total and total >= last_total  # the run's own count never shrinks either
        last_total = total
    assert list(steps) == ["customers", "billing contacts", "invoices", "invoice pdfs"]
    # Within a step the total shown is the one known when the step began: it never moves.
    assert all(len(totals) == 1 for totals in steps.values()), steps
    assert steps["invoices"] == {Invoice.objects.filter(connection=connection).count()}
    final = selectors.run_progress(run)
    assert final["percent"] == 100 and final["progress_text"].endswith("in 4 steps")
    needed = Invoice.objects.filter(connection=connection, pdf_attachment_id__isnull=False).count()
    assert f"Invoice PDFs: 4 of {needed:,} needed" in final["phases_text"]
    # The PDFs it left are said: how many of those needed, why, and when the next batch runs.
    minute = f"{connection.schedule_minute:02d}"
    assert re.search(
        rf"Invoice PDFs: 4 of {needed:,} needed were fetched \(at most 4 are fetched per run\); "
        rf"{needed - 4:,} still to fetch: the next batch runs with the hourly sync at \d\d:{minute} UTC\.",
        run.message,
    ), run.message


def test_pdfs_left_by_the_time_limit_continue_in_a_queued_run(partner, make_connection, halo_sandbox, settings):
    settings.HALOPSA_RATE_LIMIT = 20
    settings.HALOPSA_RATE_WINDOW = 60
    settings.HALOPSA_PDF_BUDGET_SHARE = 0.15  # 2 PDFs per window after the headroom
    settings.HALOPSA_PDF_PHASE_SECONDS = 0.5
    connection = make_connection(partner, halo_sandbox)
    run, _ = _watch(connection)
    needed = Invoice.objects.filter(connection=connection, pdf_attachment_id__isnull=False).count()
    assert (
        f"Invoice PDFs: 2 of {needed} needed were fetched (the PDF phase's 0 minutes ran out); {needed - 2} still "
        "to fetch: a PDF-only run was queued to continue now."
    ) in run.message
    assert SyncRun.objects.filter(connection=connection, scope="entity", entity="pdfs", state="queued").count() == 1


def test_a_paused_connection_says_the_next_batch_waits_for_a_sync_started_by_hand(
    partner, make_connection, halo_sandbox, settings
):
    settings.HALOPSA_PDF_BATCH = 2
    connection = make_connection(partner, halo_sandbox, paused=True)
    run, _ = _watch(connection)
    assert "the next batch runs with the next sync you start (scheduled syncs are paused or disabled)" in run.message


def test_a_run_that_fetched_every_pdf_says_nothing_about_pdfs(partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox)
    run, _ = _watch(connection)
    assert "Invoice PDFs:" not in run.message
    assert selectors.run_progress(run)["phases_text"].startswith("Customers: ")


def test_a_failed_run_shows_the_step_it_stopped_at(partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox, shape_checked_at=timezone.now())
    halo_sandbox.add_fault("status", status=500, path="/api/Invoice", count=50)
    run, _ = _watch(connection)
    assert run.state == "failed"
    progress = selectors.run_progress(run)
    assert progress["progress_text"] == "Step 3 of 4: invoices, 0 read (stopped here)"
    assert [(p["phase"], p["state"]) for p in progress["phases"]] == [
        ("customers", "done"),
        ("contacts", "done"),
        ("invoices", "failed"),
        ("pdfs", "waiting"),
    ]
    assert progress["phases_text"].endswith("Invoices: 0 read · Invoice PDFs: waiting")


def test_a_single_record_run_has_one_step(partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox)
    run, _ = _watch(connection, scope="invoice", entity="invoices", target_halopsa_id=1)
    progress = selectors.run_progress(run)
    # Its customer, fetched on the side, counts for the run but not for the invoices step.
    assert progress["phases"] == [{"phase": "invoices", "label": "Invoices", "state": "done", "figures": "1"}]
    assert (
        progress["progress_text"] == f"{run.progress_done} records in 1 step"
        and run.progress_done <= run.progress_total
    )


def test_old_runs_without_steps_still_show_their_counts(alice_client, mine):
    progress = selectors.run_progress(mine.run)
    assert (progress["progress_text"], progress["percent"], progress["phases"]) == ("5 / 5 records", 100, [])


# --- "Fetch new data": since the last sync, and said so ------------------------------------------


def test_fetch_new_data_reads_changes_since_the_last_sync_not_the_last_hour(
    alice_client, partner, make_connection, halo_sandbox, django_capture_on_commit_callbacks
):
    connection = make_connection(partner, halo_sandbox)
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "full"})
    target = Invoice.objects.filter(connection=connection).order_by("halopsa_id").first()
    store = halo_sandbox.store
    halo_sandbox.store.update_invoice(target.halopsa_id, amount="4321.00")
    with store.lock:  # the change was made two hours ago: after the last sync, outside "the last hour"
        store._touch_invoice(store._mutable_invoice(target.halopsa_id), now=store.now_ms() - 2 * 3600 * 1000)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(
            reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "recent"}, follow=True
        )
    target.refresh_from_db()
    assert str(target.total) == "4321.00"
    body = response.content.decode()
    assert "Fetch new data (since the last sync)" in body  # the run's label
    assert ">Fetch new data since the last sync</button>" in body
    assert "reads what changed in HaloPSA since the last successful hourly or full sync (<time" in body


def test_fetch_new_data_before_any_sync_says_it_reads_everything(alice_client, partner, make_connection):
    connection = make_connection(partner)
    body = alice_client.get(reverse("connection_detail", kwargs={"pk": connection.pk})).content.decode()
    assert "there has been none yet, so it reads everything" in body


# --- the run history: webhook runs apart, labels in words --------------------------------------------


def test_webhook_runs_are_listed_apart_with_readable_labels(alice_client, partner_user, partner, make_connection):
    connection = make_connection(partner, halopsa_version="2.130.1")
    now = timezone.now()

    def run(minutes_ago, trigger, scope, **fields):
        return SyncRun.objects.create(
            connection=connection,
            trigger=trigger,
            scope=scope,
            state="succeeded",
            queued_at=now - timedelta(minutes=minutes_ago),
            finished_at=now,
            **fields,
        )

    run(50, "schedule", "full")
    run(40, "schedule", "incremental")
    manual = run(30, "manual", "entity", entity="pdfs", requested_by=partner_user)
    for minute in range(1, 30):  # a busy afternoon of webhooks, newer than every other run
        run(minute, "webhook", "invoice", entity="invoices", target_halopsa_id=1000 + minute)
    response = alice_client.get(reverse("connection_detail", kwargs={"pk": connection.pk}))
    body = response.content.decode()
    history = body[body.index("<h2>Recent runs</h2>") : body.index('id="webhook-runs"')]
    webhooks = body[body.index('id="webhook-runs"') : body.index('id="errors"')]
    assert "Full sync (daily)" in history and "Changes since last sync" in history
    assert "Resync of invoice PDFs" in history and "(alice)" in history
    assert "Invoice #" not in history and "invoices #" not in history
    assert webhooks.count("Invoice #10") == 25 and "Invoice #1001" in webhooks and "Invoice #1029" not in webhooks
    # The progress box follows the sync a person started, not the latest webhook run.
    assert response.context["progress"]["id"] == manual.pk
    data = alice_client.get(reverse("connection_progress", kwargs={"pk": connection.pk})).json()["run"]
    assert data["id"] == manual.pk and data["scope"] == "Resync of invoice PDFs"


def test_run_page_names_the_run_and_its_steps(alice_client, partner, make_connection, halo_sandbox, settings):
    settings.HALOPSA_PDF_BATCH = 2
    connection = make_connection(partner, halo_sandbox)
    run, _ = _watch(connection, scope="entity", entity="invoices")
    body = alice_client.get(reverse("run_detail", kwargs={"pk": run.pk})).content.decode()
    assert "<h1>Resync of invoices</h1>" in body
    count = Invoice.objects.filter(connection=connection).count()
    assert f'data-field="phases_text">Invoices: {count}</p>' in body  # its one step
    assert "Trigger</dt><dd>Manual</dd>" in body
