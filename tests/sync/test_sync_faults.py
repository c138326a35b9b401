"""Bad records, HaloPSA failing mid-run, interrupted runs, leases and incidents."""

from __future__ import annotations

import pytest

from integrations.halopsa import mapping
from integrations.halopsa.client import HaloClient
from integrations.halopsa.exceptions import HaloConnectionError
from integrations.models import Contact, Customer, Incident, Invoice, InvoiceLine, Payment, SyncError, SyncRun
from integrations.services.leases import lease_acquire, lease_acquire_waiting, lease_release, lease_renew
from integrations.services.sync import LEASE_CONFLICT_MESSAGE, lease_name, sync_execute, sync_queue
from tests.sync.helpers import assert_matches_truth

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(unprobed_connection, halo_sandbox):
    """Faults and request counts here are the sync's own: the first sync skips the shape probe
    (which would meet the faults first and add its requests)."""
    return unprobed_connection(halo_sandbox)


def _counts(connection):
    return (
        Customer.objects.filter(connection=connection).count(),
        Invoice.objects.filter(connection=connection).count(),
        InvoiceLine.objects.filter(invoice__connection=connection).count(),
        Payment.objects.filter(connection=connection).count(),
    )


def test_malformed_record_becomes_a_sync_error_and_the_rest_commits(connection, halo_sandbox, run_sync):
    halo_sandbox.add_fault("malformed_record", path="/api/Invoice", method="GET", count=1)
    run = run_sync(connection, "full")
    assert run.state == "partial"
    assert run.failed == 1
    error = SyncError.objects.get(run=run)
    assert error.entity == "invoices" and error.payload is not None
    assert error.message  # e.g. "invoice 3: total is not a number: 'abc'" or "invoice id is missing"
    # The other 6 invoices are in.
    assert Invoice.objects.filter(connection=connection).count() == 6
    # The next sync reads it fine and resolves the error.
    again = run_sync(connection, "full")
    assert again.state == "succeeded"
    error.refresh_from_db()
    assert error.resolved_at is not None
    assert_matches_truth(connection, halo_sandbox)


def test_halopsa_failing_beyond_retries_fails_the_run_and_a_rerun_completes(connection, halo_sandbox, run_sync):
    halo_sandbox.add_fault("status", status=503, path="/api/Invoice", count=50)
    run = run_sync(connection, "full")
    assert run.state == "failed"
    assert "HaloPSA" in run.message
    assert run.api_retries > 0 and run.api_requests > 3
    # Customers committed before the failure; cursors did not advance.
    assert Customer.objects.filter(connection=connection, halopsa_id__isnull=False).count() == 3
    assert not connection.cursors.filter(entity="invoices").exists()
    halo_sandbox.clear_faults()
    again = run_sync(connection, "full")
    assert again.state == "succeeded"
    assert_matches_truth(connection, halo_sandbox)


@pytest.mark.sandbox(dataset="demo")
def test_run_interrupted_mid_paging_loses_nothing_and_rerun_creates_no_duplicates(
    connection, halo_sandbox, run_sync, monkeypatch
):
    original = HaloClient.invoice_pages

    def first_page_then_die(self, **kwargs):
        pages = original(self, **kwargs)
        yield next(pages)
        raise HaloConnectionError("Could not connect to HaloPSA (simulated worker/network loss).")

    monkeypatch.setattr(HaloClient, "invoice_pages", first_page_then_die)
    run = run_sync(connection, "full")
    assert run.state == "failed"
    first_page = Invoice.objects.filter(connection=connection).count()
    assert 0 < first_page <= 100
    monkeypatch.setattr(HaloClient, "invoice_pages", original)
    again = run_sync(connection, "full")
    assert again.state == "succeeded"
    assert_matches_truth(connection, halo_sandbox)
    counts = _counts(connection)
    run_sync(connection, "full")
    assert _counts(connection) == counts


BATCHED = {"customers": 5, "contacts": 10, "billing_contacts": 3, "invoices": 450, "max_lines": 3}


def _pages_then(error, pages_before: int, read: list):
    """invoice_pages that yields `pages_before` real pages (their records appended to `read`), then raises."""
    original = HaloClient.invoice_pages

    def pages(self, **kwargs):
        for number, page in enumerate(original(self, **kwargs)):
            if number == pages_before:
                raise error
            read.extend(page.records)
            yield page

    return pages


@pytest.mark.sandbox(dataset=BATCHED)
def test_pages_read_before_halopsa_fails_are_written_although_their_write_batch_was_not_full(
    connection, run_sync, monkeypatch
):
    read: list = []
    monkeypatch.setattr(
        HaloClient, "invoice_pages", _pages_then(HaloConnectionError("simulated network loss"), 3, read)
    )

    run = run_sync(connection, "full")

    assert run.state == "failed"
    assert len(read) == 300  # three pages, fewer records than one write batch (1,000)
    invoices = {r["id"] for r in read if not mapping.is_credit_note(r)}
    assert set(Invoice.objects.filter(connection=connection).values_list("halopsa_id", flat=True)) == invoices


@pytest.mark.sandbox(dataset=BATCHED)
def test_a_run_that_lost_its_lease_writes_none_of_its_pending_pages(connection, run_sync, monkeypatch, settings):
    from integrations.services.sync import context as sync_service  # where the run renews its lease

    settings.HALOPSA_SYNC_LEASE_RENEW_SECONDS = 0  # renew as every page arrives
    renewals = []

    def lose_lease_on_the_second_invoice_page(name, owner, ttl):
        renewals.append(name)
        # customers (1 page) and users (1 page) renew first; then invoice pages 1, 2
        return len(renewals) < 4

    monkeypatch.setattr(sync_service, "lease_renew", lose_lease_on_the_second_invoice_page)

    run = run_sync(connection, "full")

    assert run.state == "failed" and "lost its lock" in run.message
    assert Customer.objects.filter(connection=connection, halopsa_id__isnull=False).count() == 5
    assert not Invoice.objects.filter(connection=connection).exists()


@pytest.mark.sandbox(dataset=BATCHED)
@pytest.mark.parametrize(("interval", "expected"), [(None, 0), (0, 7)])
def test_the_lease_is_renewed_when_due_not_on_every_page(
    connection, run_sync, monkeypatch, settings, interval, expected
):
    from integrations.services.sync import context as sync_service  # where the run renews its lease

    settings.HALOPSA_PDF_BATCH = 0
    if interval is not None:
        settings.HALOPSA_SYNC_LEASE_RENEW_SECONDS = interval
    renewals = []
    real = sync_service.lease_renew
    monkeypatch.setattr(sync_service, "lease_renew", lambda *a: renewals.append(a) or real(*a))

    assert run_sync(connection, "full").state == "succeeded"
    # Default: every 30 s (a twentieth of the 600 s TTL), so a run this short renews none;
    # interval 0: each page (1 client, 1 user and 5 invoice pages).
    assert len(renewals) == expected


@pytest.mark.sandbox(dataset=BATCHED)
def test_invoices_commit_once_per_write_batch(connection, halo_sandbox, settings):
    settings.HALOPSA_SYNC_WRITE_BATCH = 150  # two 100-row pages per write
    settings.HALOPSA_PDF_BATCH = 0  # (450 PDFs would wait for the request budget)
    run = SyncRun.objects.create(connection=connection, scope="full", trigger="cli")
    progress: list[int] = []

    sync_execute(run=run, progress=lambda r: progress.append(r.progress_done))

    run.refresh_from_db()
    invoice_records = run.progress_total - progress[1]  # progress[0:2]: the customer and user pages
    assert 400 < invoice_records < 500
    assert [done - progress[1] for done in progress[2:]] == [200, 400, invoice_records]
    assert_matches_truth(connection, halo_sandbox)


@pytest.mark.sandbox(dataset=BATCHED)
def test_pages_that_arrive_slowly_are_written_without_waiting_for_a_full_batch(connection, settings, monkeypatch):
    from integrations.services.sync import invoices as sync_service  # where the invoice phase batches its writes

    settings.HALOPSA_PDF_BATCH = 0
    monkeypatch.setattr(sync_service, "WRITE_BATCH_SECONDS", 0.0)  # every page counts as slow
    run = SyncRun.objects.create(connection=connection, scope="full", trigger="cli")
    progress: list[int] = []

    sync_execute(run=run, progress=lambda r: progress.append(r.progress_done))

    run.refresh_from_db()
    assert [done - progress[1] for done in progress[2:]] == [100, 200, 300, 400, run.progress_total - progress[1]]


def test_the_cycle_collector_is_slowed_only_while_a_run_executes(connection, run_sync, monkeypatch):
    import gc

    from integrations.services.sync import _Runner

    before = gc.get_threshold()
    during = []
    monkeypatch.setattr(_Runner, "_run_plan", lambda self, plan: during.append(gc.get_threshold()))

    assert run_sync(connection, "full").state == "succeeded"
    assert during and during[0][0] >= 10_000 and during[0][2] >= 1000
    assert gc.get_threshold() == before


def test_overlapping_runs_restore_the_cycle_collector_when_the_last_one_ends():
    import gc

    from integrations.services.sync import _rare_cycle_collection

    before = gc.get_threshold()
    first, second = _rare_cycle_collection(), _rare_cycle_collection()
    first.__enter__()
    second.__enter__()  # another thread's run starts while the first is still going
    raised = gc.get_threshold()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == raised  # the second run still executes
    second.__exit__(None, None, None)
    assert raised[0] >= 10_000 and gc.get_threshold() == before


def test_dropped_connections_are_retried_by_the_client(connection, halo_sandbox, run_sync):
    halo_sandbox.add_fault("drop", path="/api/Invoice", count=2)
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    assert run.api_retries >= 2
    assert_matches_truth(connection, halo_sandbox)


def test_a_second_sync_while_one_runs_is_refused(connection, run_sync, settings):
    settings.HALOPSA_SYNC_LEASE_WAIT = 0.3
    owner = lease_acquire(lease_name(connection.pk), 60)
    assert owner
    run = run_sync(connection, "full")
    assert run.state == "failed" and run.message == LEASE_CONFLICT_MESSAGE
    assert not Invoice.objects.filter(connection=connection).exists()
    lease_release(lease_name(connection.pk), owner)
    assert run_sync(connection, "full").state == "succeeded"


def test_sync_queue_returns_the_active_run(connection, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first, created = sync_queue(connection=connection, scope="full", trigger="manual")
        second, created_again = sync_queue(connection=connection, scope="incremental", trigger="manual")
    assert created and not created_again
    assert second.pk == first.pk
    assert len(callbacks) == 1
    # Executed (as the task would), the run finishes; the next request queues a new one.
    assert sync_execute(run=first).state == "succeeded"
    third, created = sync_queue(connection=connection, scope="incremental", trigger="manual")
    assert created and third.pk != first.pk


def test_sync_queue_enqueues_the_task_on_commit(connection, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run, created = sync_queue(connection=connection, scope="full", trigger="manual")
    run.refresh_from_db()
    assert created and run.state == "succeeded"  # Q_CLUSTER sync=True runs the task inline


def test_run_left_running_by_a_dead_worker_is_replaced(connection):
    stale = SyncRun.objects.create(connection=connection, scope="full", trigger="schedule", state="running")
    run, created = sync_queue(connection=connection, scope="full", trigger="manual")
    stale.refresh_from_db()
    assert created and stale.state == "failed" and "interrupted" in stale.message


def test_duplicate_task_delivery_of_a_finished_run_does_nothing(connection, halo_sandbox, run_sync):
    run = run_sync(connection, "full")
    requests_before = halo_sandbox.count_requests()
    assert sync_execute(run=run).state == "succeeded"
    assert halo_sandbox.count_requests() == requests_before


def test_leases(db):
    owner = lease_acquire("x", 60)
    assert owner and lease_acquire("x", 60) is None
    assert lease_renew("x", owner, 60) and not lease_renew("x", "someone-else", 60)
    lease_release("x", "someone-else")
    assert lease_acquire("x", 60) is None
    lease_release("x", owner)
    assert lease_acquire("x", 60) is not None
    expired = lease_acquire("y", -1)  # already expired: a crashed holder
    assert expired and lease_acquire("y", 60) not in (None, expired)


def test_a_lease_is_waited_for_as_long_as_asked_and_no_longer(db):
    assert lease_acquire("short", 0.3)  # a holder done in 0.3 s
    assert lease_acquire_waiting("short", 60, wait_seconds=5, poll_seconds=0.05) is not None
    assert lease_acquire("long", 60)
    assert lease_acquire_waiting("long", 60, wait_seconds=0.3, poll_seconds=0.05) is None
    assert lease_acquire_waiting("free", 60, wait_seconds=0, poll_seconds=0.05) is not None


def test_rejected_credentials_open_an_incident_resolved_by_success(partner, make_connection, halo_sandbox, run_sync):
    connection = make_connection(partner, halo_sandbox, client_secret="wrong")
    run = run_sync(connection, "incremental")
    assert run.state == "failed" and "rejected" in run.message.lower()
    assert Incident.objects.filter(
        connection=connection, kind="credentials_rejected", resolved_at__isnull=True
    ).exists()
    from halosandbox import SANDBOX_CLIENT_SECRET

    connection.client_secret = SANDBOX_CLIENT_SECRET
    connection.save()
    assert run_sync(connection, "incremental").state == "succeeded"
    assert not Incident.objects.filter(connection=connection, resolved_at__isnull=True).exists()


def test_three_failed_runs_open_sync_failing(connection, halo_sandbox, run_sync):
    halo_sandbox.add_fault("status", status=500, path="/api/Client", count=1000)
    for _ in range(2):
        assert run_sync(connection, "full").state == "failed"
    assert not Incident.objects.filter(connection=connection, kind="sync_failing").exists()
    run_sync(connection, "full")
    incident = Incident.objects.get(connection=connection, kind="sync_failing", resolved_at__isnull=True)
    assert "failed" in incident.message
    halo_sandbox.clear_faults()
    assert run_sync(connection, "full").state == "succeeded"
    incident.refresh_from_db()
    assert incident.resolved_at is not None


def test_a_record_without_id_prevents_flagging_deletions(connection, halo_sandbox, run_sync, monkeypatch):
    run_sync(connection, "full")
    original = HaloClient.invoice_pages

    def pages_with_one_record_missing_its_id(self, **kwargs):
        for page in original(self, **kwargs):
            records = [dict(r) for r in page.records]
            records[0].pop("id")
            yield type(page)(records=records, record_count=page.record_count, page_no=page.page_no)

    monkeypatch.setattr(HaloClient, "invoice_pages", pages_with_one_record_missing_its_id)
    run = run_sync(connection, "full")
    assert run.state == "partial"
    error = SyncError.objects.get(run=run)
    assert error.halopsa_id is None and error.message == "invoice id is missing"
    assert not Invoice.objects.filter(connection=connection, deleted_in_halopsa_at__isnull=False).exists()
    monkeypatch.undo()
    assert run_sync(connection, "full").state == "succeeded"
    error.refresh_from_db()
    assert error.resolved_at is not None  # a complete, clean read of the entity closes id-less errors


def test_sync_error_retry_queues_that_record_and_resolves_it(
    connection, halo_sandbox, run_sync, partner_user, django_capture_on_commit_callbacks
):
    from integrations.models import AuditEvent
    from integrations.services.sync import sync_error_retry

    halo_sandbox.add_fault("malformed_record", path="/api/Invoice", method="GET", count=1)
    run_sync(connection, "full")
    error = SyncError.objects.get(connection=connection)
    if error.halopsa_id is None:  # the fault removed the id: retry re-reads the whole entity
        expected_scope = "entity"
    else:
        expected_scope = "invoice"
    with django_capture_on_commit_callbacks(execute=True):
        retry_run = sync_error_retry(error=error, user=partner_user)
    retry_run.refresh_from_db()
    assert retry_run.scope == expected_scope and retry_run.trigger == "manual" and retry_run.state == "succeeded"
    assert retry_run.requested_by == partner_user
    assert AuditEvent.objects.filter(action="sync_error.retry", user=partner_user).exists()
    assert AuditEvent.objects.filter(action="sync.queue", user=partner_user).exists()
    assert Invoice.objects.filter(connection=connection).count() == 7
    error.refresh_from_db()
    assert error.resolved_at is not None


def test_sync_queue_validates_its_arguments(connection):
    with pytest.raises(ValueError, match="unknown sync scope"):
        sync_queue(connection=connection, scope="everything", trigger="manual")
    with pytest.raises(ValueError, match="needs the entity"):
        sync_queue(connection=connection, scope="entity", trigger="manual")
    with pytest.raises(ValueError, match="needs the invoice"):
        sync_queue(connection=connection, scope="invoice", trigger="manual")


def test_a_record_the_database_refuses_fails_alone(connection, halo_sandbox, run_sync, monkeypatch):
    original = HaloClient.invoice_pages

    def pages_with_a_duplicated_line(self, **kwargs):
        for page in original(self, **kwargs):
            records = [dict(r) for r in page.records]
            first = next(r for r in records if r["id"] == 1)
            first["lines"] = first["lines"] + first["lines"][:1]  # the same line id twice
            yield type(page)(records=records, record_count=page.record_count, page_no=page.page_no)

    monkeypatch.setattr(HaloClient, "invoice_pages", pages_with_a_duplicated_line)
    run = run_sync(connection, "full")
    assert run.state == "partial" and run.failed == 1
    error = SyncError.objects.get(run=run)
    assert error.halopsa_id == 1 and "could not be stored" in error.message and error.payload["id"] == 1
    assert set(Invoice.objects.filter(connection=connection).values_list("halopsa_id", flat=True)) == {2, 3, 4, 6, 7, 8}
    # customers (with their accounts contacts), user contacts, invoices (not the failed one)
    assert run.created == 3 + 4 + 6
    assert Customer.objects.filter(connection=connection, is_unknown=True).count() == 1


def test_a_whole_connection_run_waits_for_a_short_single_record_sync(connection, run_sync, settings):
    settings.HALOPSA_SYNC_LEASE_WAIT = 10
    assert lease_acquire(lease_name(connection.pk), 0.5)  # e.g. a webhook's one-invoice sync
    assert run_sync(connection, "full").state == "succeeded"


def test_a_single_record_sync_does_not_wait(connection, run_sync, settings):
    from integrations.services.sync import sync_record

    settings.HALOPSA_SYNC_LEASE_WAIT = 60  # would hang the test if single-record runs waited
    assert lease_acquire(lease_name(connection.pk), 60)
    run = sync_record(connection=connection, entity="invoices", halopsa_id=1, trigger="webhook")
    assert run.state == "failed" and run.message == LEASE_CONFLICT_MESSAGE


def test_an_unreadable_user_keeps_its_billing_contact(connection, halo_sandbox, run_sync, monkeypatch):
    run_sync(connection, "full")
    before = set(Contact.objects.filter(customer__connection=connection).values_list("halopsa_key", "email"))
    original = HaloClient.user_pages

    def pages_with_a_broken_billing_user(self, **kwargs):
        for page in original(self, **kwargs):
            records = [dict(r) for r in page.records]
            for record in records:
                if record["id"] == 1:  # Dana Whitfield, a billing contact of Acme
                    record["client_id"] = "not-an-id"
            yield type(page)(records=records, record_count=page.record_count, page_no=page.page_no)

    monkeypatch.setattr(HaloClient, "user_pages", pages_with_a_broken_billing_user)
    run = run_sync(connection, "full")
    assert run.state == "partial"
    error = SyncError.objects.get(run=run)
    assert (error.entity, error.halopsa_id) == ("contacts", 1)
    assert set(Contact.objects.filter(customer__connection=connection).values_list("halopsa_key", "email")) == before
