"""A slow, huge, endless, drifting or garbled HaloPSA during a sync (issue 17 items 9, 10, 12).

A broken upstream ends the run with a clear message or fails one record; nothing already stored
is lost, and no live record is flagged "deleted in HaloPSA" on a guess.
"""

from __future__ import annotations

import time

import pytest

from integrations.halopsa.client import HaloClient
from integrations.halopsa.payloads import INVALID_TEXT_KEY
from integrations.models import Contact, Customer, Invoice, SyncError
from tests.sync.helpers import assert_matches_truth

pytestmark = pytest.mark.django_db

BATCHED = {"customers": 5, "contacts": 10, "billing_contacts": 3, "invoices": 450, "max_lines": 3}


@pytest.fixture
def connection(unprobed_connection, halo_sandbox, settings):
    """Requests here are the sync's own (no shape probe first); PDFs are left out (one request each)."""
    settings.HALOPSA_PDF_BATCH = 0
    return unprobed_connection(halo_sandbox)


def _listed_invoice_ids(srv) -> list[int]:
    """The invoice list's ids in the order GET /Invoice pages them (credit notes are not listed)."""
    return list(srv.store.query_invoice_ids())


def _flagged(connection) -> set[int]:
    return set(
        Invoice.objects.filter(connection=connection, deleted_in_halopsa_at__isnull=False).values_list(
            "halopsa_id", flat=True
        )
    )


# --- the run's own time limit ----------------------------------------------------------------------


@pytest.mark.sandbox(dataset=BATCHED)
def test_a_run_out_of_time_stops_cleanly_keeps_what_it_read_and_the_next_run_goes_on(
    connection, halo_sandbox, run_sync, monkeypatch
):
    original = HaloClient.invoice_pages

    def time_runs_out_after_the_first_page(self, **kwargs):
        pages = original(self, **kwargs)
        yield next(pages)
        self.deadline = time.monotonic()  # the run's end: the next page is not asked for
        yield from pages

    monkeypatch.setattr(HaloClient, "invoice_pages", time_runs_out_after_the_first_page)
    requests_before = halo_sandbox.count_requests("/api/Invoice")
    run = run_sync(connection, "full")

    assert run.state == "failed"
    assert "stopped after 25 minutes" in run.message and "HALOPSA_SYNC_RUN_SECONDS" in run.message
    assert "while reading invoices" in run.message and "the next sync reads the rest" in run.message
    assert halo_sandbox.count_requests("/api/Invoice") == requests_before + 1  # page 2 was never asked for
    first_page = set(_listed_invoice_ids(halo_sandbox)[:100])
    assert set(Invoice.objects.filter(connection=connection).values_list("halopsa_id", flat=True)) == first_page
    assert not connection.cursors.filter(entity="invoices").exists()
    assert not _flagged(connection)

    monkeypatch.undo()
    assert run_sync(connection, "full").state == "succeeded"
    assert_matches_truth(connection, halo_sandbox)


def test_the_run_limit_stays_inside_the_workers_task_timeout(settings):
    from integrations.services.sync import run_seconds

    settings.HALOPSA_SYNC_RUN_SECONDS = 1500
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 600}
    assert run_seconds() == 540  # 90 % of the task timeout: the run stops before the worker is killed
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 1800}
    assert run_seconds() == 1500


@pytest.mark.sandbox(dataset=BATCHED)
def test_pdfs_stop_at_the_run_limit_without_errors_and_a_follow_up_continues(
    connection, halo_sandbox, run_sync, settings, monkeypatch
):
    from integrations.services.sync import run as sync_service  # where sync_execute queues the follow-up

    settings.HALOPSA_PDF_BATCH = 50
    original = HaloClient.get_invoice_pdf
    fetched = []

    def time_runs_out_after_three(self, invoice_id, attachment_id=None):
        if len(fetched) == 3:
            self.deadline = time.monotonic()
        content = original(self, invoice_id, attachment_id=attachment_id)
        fetched.append(invoice_id)
        return content

    monkeypatch.setattr(HaloClient, "get_invoice_pdf", time_runs_out_after_three)
    queued = []
    monkeypatch.setattr(sync_service, "sync_queue", lambda **kw: queued.append(kw) or (None, True))
    run = run_sync(connection, "full")

    assert run.state == "succeeded", run.message  # invoice data is in; PDFs go on in a follow-up run
    assert len(fetched) == 3 and not SyncError.objects.filter(connection=connection).exists()
    assert queued and queued[0]["entity"] == "pdfs"


# --- a server that is slow, huge or endless ----------------------------------------------------------


@pytest.mark.sandbox(dataset=BATCHED)
def test_a_trickling_invoice_list_fails_the_run_at_the_request_deadline(connection, halo_sandbox, run_sync, settings):
    settings.HALOPSA_REQUEST_DEADLINE = 0.3
    halo_sandbox.add_fault("trickle", path="/api/Invoice", method="GET", chunk=1, delay=0.02, ratio=1)
    started = time.monotonic()
    run = run_sync(connection, "full")
    assert run.state == "failed" and "longer than 0.3 seconds" in run.message
    assert time.monotonic() - started < 10  # two tries of 0.3 s (and a backoff), not minutes
    assert Customer.objects.filter(connection=connection, halopsa_id__isnull=False).count() == 5  # kept


@pytest.mark.sandbox(dataset=BATCHED)
def test_a_huge_answer_fails_the_run_clearly_and_loses_nothing(connection, halo_sandbox, run_sync, settings):
    assert run_sync(connection, "full").state == "succeeded"
    settings.HALOPSA_MAX_RESPONSE_BYTES = 1_000_000
    halo_sandbox.add_fault(
        "huge_body", path="/api/Invoice", method="GET", size=20_000_000, declare_length=False, ratio=1
    )
    run = run_sync(connection, "full")
    assert run.state == "failed" and "larger than the 0.953674 MB" in run.message
    assert run.api_bytes < 2_000_000  # the 20 MB answer was not read
    halo_sandbox.clear_faults()
    assert_matches_truth(connection, halo_sandbox)
    assert not _flagged(connection)


@pytest.mark.sandbox(dataset=BATCHED)
def test_endless_pages_fail_the_run_and_flag_nothing(connection, halo_sandbox, run_sync):
    assert run_sync(connection, "full").state == "succeeded"
    halo_sandbox.add_fault("endless_pages", path="/api/Invoice", method="GET", ratio=1)
    before = halo_sandbox.count_requests("/api/Invoice")
    run = run_sync(connection, "full")
    assert run.state == "failed" and "only records it had already sent" in run.message
    assert halo_sandbox.count_requests("/api/Invoice") == before + 2
    assert not _flagged(connection)


# --- page drift and the deletion sweep ---------------------------------------------------------------------


@pytest.mark.sandbox(dataset=BATCHED)
def test_a_record_deleted_while_the_list_is_paged_never_flags_a_live_one(
    connection, halo_sandbox, run_sync, monkeypatch
):
    """The known case: deleting a record of page 1 (after it was read) moves every later row up
    one place, so page 2 starts one row late and its first record is never listed. That live
    record is checked by id, found, and not flagged; the deleted one is flagged by the next full read."""
    assert run_sync(connection, "full").state == "succeeded"
    ids = _listed_invoice_ids(halo_sandbox)
    deleted, skipped = ids[10], ids[100]
    original = HaloClient.invoice_pages

    def delete_one_after_the_first_page(self, **kwargs):
        pages = original(self, **kwargs)
        first = next(pages)
        halo_sandbox.store.delete_invoice(deleted)
        yield first
        yield from pages

    monkeypatch.setattr(HaloClient, "invoice_pages", delete_one_after_the_first_page)
    run = run_sync(connection, "full")

    assert run.state == "succeeded", run.message
    assert not _flagged(connection)
    assert [e["status"] for e in halo_sandbox.request_log if e["path"] == f"/api/Invoice/{skipped}"] == [200]
    monkeypatch.undo()
    assert run_sync(connection, "full").state == "succeeded"
    assert _flagged(connection) == {deleted}
    assert [e["status"] for e in halo_sandbox.request_log if e["path"] == f"/api/Invoice/{deleted}"] == [404]
    assert_matches_truth(connection, halo_sandbox)


@pytest.mark.sandbox(dataset=BATCHED)
def test_a_row_skipped_by_page_drift_is_not_flagged_but_written(connection, halo_sandbox, run_sync):
    assert run_sync(connection, "full").state == "succeeded"
    skipped = _listed_invoice_ids(halo_sandbox)[100]
    halo_sandbox.store.update_invoice(skipped, duedate="2030-01-31")  # changed in HaloPSA meanwhile
    halo_sandbox.add_fault("page_drift", path="/api/Invoice", method="GET", shift=-1, ratio=1)
    run = run_sync(connection, "full")
    assert run.state == "succeeded", run.message
    assert not _flagged(connection)
    assert Invoice.objects.get(connection=connection, halopsa_id=skipped).due_date.isoformat() == "2030-01-31"


@pytest.mark.sandbox(dataset=BATCHED)
def test_rows_a_drifting_list_sends_twice_are_read_once(connection, halo_sandbox, run_sync):
    assert run_sync(connection, "full").state == "succeeded"
    # a row added before page 2
    halo_sandbox.add_fault("page_drift", path="/api/Invoice", method="GET", shift=1, ratio=1)
    run = run_sync(connection, "full")
    listed = len(_listed_invoice_ids(halo_sandbox))
    assert run.state == "succeeded" and run.failed == 0
    assert run.created + run.updated + run.unchanged == 5 + 3 + listed  # customers, contacts, invoices: each once
    assert "came twice and were read once" in run.message
    assert not _flagged(connection)
    assert_matches_truth(connection, halo_sandbox)


@pytest.mark.sandbox(dataset=BATCHED)
def test_many_candidates_are_checked_with_one_id_only_list(connection, halo_sandbox, run_sync, settings):
    assert run_sync(connection, "full").state == "succeeded"
    settings.HALOPSA_SYNC_DELETION_CHECKS = 2
    gone = _listed_invoice_ids(halo_sandbox)[5:8]
    for halopsa_id in gone:
        halo_sandbox.store.delete_invoice(halopsa_id)
    halo_sandbox.clear_request_log()
    run = run_sync(connection, "full")
    assert run.state == "succeeded" and _flagged(connection) == set(gone)
    invoice_gets = [
        e for e in halo_sandbox.request_log if e["method"] == "GET" and e["path"].startswith("/api/Invoice")
    ]
    assert sum(e["query"].get("idonly") == "true" for e in invoice_gets) == 1
    assert not any(e["path"] != "/api/Invoice" for e in invoice_gets)  # no GET by id


@pytest.mark.sandbox(dataset=BATCHED)
def test_an_id_only_list_that_lacks_records_just_read_flags_nothing(
    connection, halo_sandbox, run_sync, settings, monkeypatch
):
    assert run_sync(connection, "full").state == "succeeded"
    settings.HALOPSA_SYNC_DELETION_CHECKS = 0
    halo_sandbox.store.delete_invoice(_listed_invoice_ids(halo_sandbox)[5])
    original = HaloClient.listed_ids
    # capped
    monkeypatch.setattr(HaloClient, "listed_ids", lambda self, entity: set(sorted(original(self, entity))[100:]))
    run = run_sync(connection, "full")
    assert run.state == "succeeded" and not _flagged(connection)
    assert "lacked records its full list had just shown" in run.message


@pytest.mark.sandbox(dataset=BATCHED)
def test_a_check_that_fails_flags_nothing_unchecked(connection, halo_sandbox, run_sync):
    assert run_sync(connection, "full").state == "succeeded"
    ids = _listed_invoice_ids(halo_sandbox)
    halo_sandbox.store.delete_invoice(ids[5])
    halo_sandbox.add_fault("status", status=403, path=f"/api/Invoice/{ids[5]}", ratio=1)
    run = run_sync(connection, "full")
    assert run.state == "succeeded" and not _flagged(connection)
    assert "could not be checked" in run.message


@pytest.mark.sandbox(dataset={"customers": 5, "contacts": 150, "billing_contacts": 150, "invoices": 5})
def test_a_billing_user_skipped_by_page_drift_keeps_the_contact(connection, halo_sandbox, run_sync):
    assert run_sync(connection, "full").state == "succeeded"
    users = halo_sandbox.store.query_users(include_active=True, include_inactive=True)
    contacts = set(
        Contact.objects.filter(customer__connection=connection, halopsa_user_id__isnull=False).values_list(
            "halopsa_user_id", flat=True
        )
    )
    target = next(index for index, user in enumerate(users) if index >= 100 and user.id in contacts)
    halo_sandbox.add_fault("page_drift", path="/api/Users", method="GET", shift=-(target - 99), ratio=1)
    halo_sandbox.clear_request_log()
    run = run_sync(connection, "full")
    assert run.state == "succeeded", run.message
    assert (
        set(
            Contact.objects.filter(customer__connection=connection, halopsa_user_id__isnull=False).values_list(
                "halopsa_user_id", flat=True
            )
        )
        == contacts
    )
    assert halo_sandbox.count_requests(f"/api/Users/{users[target].id}") == 1  # confirmed it is still there


# --- text that is not UTF-8 ---------------------------------------------------------------------------------------


@pytest.mark.sandbox(dataset=BATCHED)
def test_one_invalid_utf8_byte_fails_that_invoice_only(connection, halo_sandbox, run_sync):
    halo_sandbox.add_fault("invalid_utf8", path="/api/Invoice", method="GET", query={"page_no": "2"}, count=10)
    run = run_sync(connection, "full")

    assert run.state == "partial" and run.failed == 1
    error = SyncError.objects.get(run=run)
    assert error.entity == "invoices" and "not valid UTF-8 in client_name" in error.message
    assert error.payload["client_name"] == "Caf\ufffd" and error.payload[INVALID_TEXT_KEY] == ["client_name"]
    assert Invoice.objects.filter(connection=connection).count() == len(_listed_invoice_ids(halo_sandbox)) - 1
    assert halo_sandbox.count_requests("/api/Invoice") == 5  # the page was read once, not retried

    halo_sandbox.clear_faults()
    assert run_sync(connection, "full").state == "succeeded"
    error.refresh_from_db()
    assert error.resolved_at is not None
    assert_matches_truth(connection, halo_sandbox)
