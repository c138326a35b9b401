"""The pull sync: HaloPSA -> our copy of customers, billing contacts, invoices, payments and PDFs.

Shape of a run (`sync_execute`):
1. take the connection's lease (two syncs of one connection never run together);
2. phases in order: customers, billing contacts, invoices, PDFs (last, with its own cap, so PDF
   downloads never starve invoice data of API budget). Which phases run and how much they read
   depends on the scope (full, incremental, recent, unpaid, one entity, one record);
3. each phase goes page by page (HaloPSA pages hold 100 rows) and writes in batches (a page of
   customers or contacts, `write_batch_size()` invoices): one query loads the batch's existing
   rows, new rows are inserted with one executemany (COPY on PostgreSQL) per table, changed rows
   bulk-updated, an unchanged row (same fingerprint) costs no write; a batch commits on its own,
   so an interrupted run keeps what it wrote and a rerun (upserts keyed on (connection,
   halopsa_id)) creates no duplicates;
4. a record that cannot be mapped becomes a SyncError with its payload; the rest commit ("partial");
5. cursors advance only when the run completes, to the newest change time seen in HaloPSA's own
   records (never our clock); a full read that paged everything flags rows HaloPSA no longer has
   (never deletes or archives them).

What one HaloPSA instance supports (date filters, where the billing flag is) comes from its
HaloShape (integrations/halopsa/shape.py); what is unknown is found out at run time and stored
back, and until then the run takes the path that is correct whatever the answer.

The rules (billing contacts, unknown customer, deletions, conflicts, PDFs, overlap) are written
up in docs/sync-rules.md.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import logging
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Mapping

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Case, F, IntegerField, Q, Value, When
from django.utils import timezone

from integrations.halopsa import mapping
from integrations.halopsa.budget import RequestBudget
from integrations.halopsa.client import (
    ENVELOPE_CLIENTS,
    ENVELOPE_INVOICES,
    ENVELOPE_USERS,
    HaloClient,
    Page,
    RequestStats,
)
from integrations.halopsa.exceptions import HaloAuthError, HaloDeadlineReached, HaloError, HaloNotFound, HaloRateLimited
from integrations.halopsa.mapping import MappingError
from integrations.halopsa.shape import (
    FILTER_IGNORED,
    FILTER_WORKS,
    FLAG_NOWHERE,
    FLAG_ON_DETAIL,
    FLAG_ON_LIST_WITH_BILLINGINFO,
    UNKNOWN,
    HaloShape,
)
from integrations.models import (
    Connection,
    Contact,
    Customer,
    HaloUserFlag,
    Incident,
    Invoice,
    InvoiceLine,
    InvoicePdf,
    Origin,
    Payment,
    PushJob,
    SyncCursor,
    SyncError,
    SyncRun,
)
from integrations.services.audit import audit_record
from integrations.services.bulk_db import insert_rows
from integrations.services.incidents import incident_open, incident_resolve
from integrations.services.leases import lease_acquire, lease_is_held, lease_release, lease_renew
from integrations.services.reconcile import (
    link_platform_payments,
    payment_unpushed_adjustment,
    status_conflict_winner,
    status_push_on_the_way,
)

logger = logging.getLogger(__name__)

ENTITY_CUSTOMERS = "customers"
ENTITY_CONTACTS = "contacts"
ENTITY_INVOICES = "invoices"
ENTITY_PDFS = "pdfs"
ENTITIES = (ENTITY_CUSTOMERS, ENTITY_INVOICES, ENTITY_PDFS)

# The scheduled sync reads everything (and so detects deletions) when the last full read is older.
FULL_SYNC_INTERVAL = timedelta(hours=24)
# Renewed every lease_renew_interval() during a run; a killed worker's lease lapses after this
# long (setting HALOPSA_SYNC_LEASE_TTL overrides it, e.g. for tests that kill a worker).
LEASE_TTL_SECONDS = 600
CONSECUTIVE_FAILURES_FOR_INCIDENT = 3
LEASE_CONFLICT_MESSAGE = "another sync of this connection is running"
INTERRUPTED_MESSAGE = "The sync was interrupted (the worker stopped); a new sync will pick up where it left off."
# Invoices are written when this much time passed since the last write, even if fewer than
# write_batch_size() are waiting (slow or rate-limited pages are never held back long).
WRITE_BATCH_SECONDS = 2.0
# Batch size of flag/unflag UPDATEs (keeps IN lists well under database parameter limits).
CHUNK = 500

INVOICE_UPDATE_FIELDS = [
    "customer", "number", "invoice_date", "due_date", "currency", "subtotal", "tax", "total", "amount_paid",
    "balance", "status", "remote_status", "status_changed_locally_at", "is_credit_note", "halopsa_client_id",
    "customer_assigned_at", "customer_assigned_by", "pdf_attachment_id", "remote_updated_at", "fingerprint",
    "raw", "last_seen_at", "deleted_in_halopsa_at", "updated_at",
]
CUSTOMER_UPDATE_FIELDS = ["name", "inactive", "remote_updated_at", "fingerprint", "raw", "last_seen_at", "deleted_in_halopsa_at", "updated_at"]
LINE_FIELDS = ("halopsa_id", "sequence", "description", "quantity", "unit_price", "net_amount", "tax_amount", "tax_rate")


class SyncAborted(Exception):
    """The run cannot go on (e.g. it lost its lease); `message` goes on the run."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PdfUnavailable(Exception):
    """The invoice has no PDF in HaloPSA we could fetch; `message` says why, for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def lease_name(connection_id: int) -> str:
    return f"sync:connection:{connection_id}"


def lease_ttl() -> int:
    return int(getattr(settings, "HALOPSA_SYNC_LEASE_TTL", LEASE_TTL_SECONDS))


def lease_renew_interval() -> float:
    """Seconds between lease renewals during a run (HALOPSA_SYNC_LEASE_RENEW_SECONDS, default a
    twentieth of the TTL: 30 s)."""
    return float(getattr(settings, "HALOPSA_SYNC_LEASE_RENEW_SECONDS", lease_ttl() / 20))


def write_batch_size() -> int:
    """Mapped invoices written per transaction (HALOPSA_SYNC_WRITE_BATCH, default 1,000 = 10 pages)."""
    return max(1, int(getattr(settings, "HALOPSA_SYNC_WRITE_BATCH", 1000)))


def cursor_overlap() -> timedelta:
    """Incremental reads start this long before the cursor (HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS,
    default 10 min): equal timestamps and HaloPSA's own write delays are never skipped, and
    re-reading a record costs no write (fingerprints)."""
    return timedelta(seconds=float(getattr(settings, "HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS", 600)))


def cursor_max_ahead() -> timedelta:
    """A cursor never goes further than this ahead of our clock (HALOPSA_SYNC_CURSOR_MAX_AHEAD_HOURS,
    default 24): one record stamped in the far future must not stop incremental reads. Capping
    only lowers a cursor, which makes a read longer, never miss anything."""
    return timedelta(hours=float(getattr(settings, "HALOPSA_SYNC_CURSOR_MAX_AHEAD_HOURS", 24)))


def user_details_per_run() -> int:
    """GET /Users/{id} calls one run may make for billing flags (HALOPSA_SYNC_USER_DETAILS_PER_RUN,
    default 250, under a window of the usual 300-requests budget); users beyond it wait for the
    next run and keep their billing contacts meanwhile."""
    return max(0, int(getattr(settings, "HALOPSA_SYNC_USER_DETAILS_PER_RUN", 250)))


def run_seconds() -> float:
    """How long one run may take (HALOPSA_SYNC_RUN_SECONDS, default 25 min), and never more than
    90 % of the worker's task timeout: a run stops cleanly, with what it read saved, before the
    worker would be killed; the next run reads the rest."""
    configured = float(getattr(settings, "HALOPSA_SYNC_RUN_SECONDS", 1500))
    task_timeout = float(settings.Q_CLUSTER.get("timeout") or configured)
    return min(configured, task_timeout * 0.9)


def deletion_checks() -> int:
    """Records a deletion sweep confirms one by one (GET by id, one request each;
    HALOPSA_SYNC_DELETION_CHECKS, default 20). More candidates are checked with one id-only list."""
    return max(0, int(getattr(settings, "HALOPSA_SYNC_DELETION_CHECKS", 20)))


def pdf_batch_size() -> int:
    return int(getattr(settings, "HALOPSA_PDF_BATCH", 2000))


def pdf_phase_seconds() -> float:
    """How long one run may spend on PDFs: inside the worker's timeout, with room for the lists
    that ran before (a longer backlog continues in a follow-up run)."""
    configured = float(getattr(settings, "HALOPSA_PDF_PHASE_SECONDS", 1200))
    task_timeout = float(settings.Q_CLUSTER.get("timeout") or configured)
    return min(configured, task_timeout * 0.6)


def pdf_budget(connection: Connection) -> RequestBudget:
    """PDFs spend at most this share of the connection's request budget, so payment pushes,
    webhook fetches and the next lists always find room in every window."""
    limit = int(getattr(settings, "HALOPSA_RATE_LIMIT", 300))
    share = float(getattr(settings, "HALOPSA_PDF_BUDGET_SHARE", 0.9))
    return RequestBudget(f"conn:{connection.pk}:pdfs", limit=max(1, int(limit * share)) if limit > 0 else 0)


# ---------------------------------------------------------------------------------------------
# Public services


def sync_queue(*, connection: Connection, scope: str, trigger: str, entity: str = "", halopsa_id: int | None = None,
               user=None) -> tuple[SyncRun, bool]:
    """Queue a sync of the connection, or return the one already queued/running (and False).

    The task is enqueued after the commit, so a rolled-back request queues nothing.
    """
    if scope not in SyncRun.Scope.values:
        raise ValueError(f"unknown sync scope {scope!r}")
    if entity and entity not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}; use one of {', '.join(ENTITIES)}")
    if scope == SyncRun.Scope.ENTITY and not entity:
        raise ValueError("an entity sync needs the entity (customers, invoices or pdfs)")
    if scope == SyncRun.Scope.INVOICE and not halopsa_id:
        raise ValueError("a one-invoice sync needs the invoice's HaloPSA id")
    with transaction.atomic():
        active = _active_run(connection)
        if active is not None:
            return active, False
        run = SyncRun.objects.create(
            connection=connection, scope=scope, trigger=trigger,
            entity=ENTITY_INVOICES if scope == SyncRun.Scope.INVOICE else entity,
            target_halopsa_id=halopsa_id, requested_by=user if getattr(user, "is_authenticated", False) else None,
        )
        if user is not None:
            audit_record(user=user, action="sync.queue", obj=run, partner=connection.partner_id,
                         summary=f"Queued a {run.get_scope_display().lower()} of {connection.name}",
                         scope=scope, entity=entity, halopsa_id=halopsa_id)
        run_id = run.pk
        transaction.on_commit(lambda: _enqueue_run(run_id))
    return run, True


def _enqueue_run(run_id: int) -> None:
    from django_q.tasks import async_task

    task_id = async_task("integrations.tasks.sync.sync_run_task", run_id)
    if isinstance(task_id, str):
        SyncRun.objects.filter(pk=run_id, task_id="").update(task_id=task_id[:64])


def _active_run(connection: Connection) -> SyncRun | None:
    """The queued or running run of this connection; runs left behind by a dead worker are closed."""
    now = timezone.now()
    stale_queued_after = timedelta(seconds=2 * int(settings.Q_CLUSTER.get("retry", 2100)))
    for run in SyncRun.objects.filter(connection=connection, state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING]).order_by("queued_at", "id"):
        stale = (
            (run.state == SyncRun.State.RUNNING and not lease_is_held(lease_name(connection.pk)))
            or (run.state == SyncRun.State.QUEUED and run.queued_at < now - stale_queued_after)
        )
        if stale:
            SyncRun.objects.filter(pk=run.pk, state=run.state).update(
                state=SyncRun.State.FAILED, finished_at=now, message=INTERRUPTED_MESSAGE)
            continue
        return run
    return None


def sync_execute(*, run: SyncRun, progress: Callable[[SyncRun], None] | None = None) -> SyncRun:
    """Run a queued sync in the foreground (tasks and the CLI call this). Safe to call twice.

    A run of a connection whose lease is held waits a few seconds (HALOPSA_SYNC_LEASE_WAIT, for a
    single-record sync to finish), then fails with "another sync of this connection is running"
    (the dashboard shows it; nothing is re-queued behind the running one). Single-record runs do
    not wait: their callers (webhooks) retry.
    A run left "running" by a killed worker is taken over when the lease has lapsed.
    """
    run.refresh_from_db()
    if run.state not in (SyncRun.State.QUEUED, SyncRun.State.RUNNING):
        return run  # already finished: a duplicated task delivery
    connection = run.connection
    name = lease_name(connection.pk)
    owner = lease_acquire(name, lease_ttl())
    if owner is None and not run.target_halopsa_id:
        # Single-record syncs (webhooks) hold the lease for a moment: a whole-connection run waits
        # that long rather than failing, so a burst of webhooks cannot make the hourly sync miss.
        deadline = time.monotonic() + float(getattr(settings, "HALOPSA_SYNC_LEASE_WAIT", 5.0))
        while owner is None and time.monotonic() < deadline:
            time.sleep(0.2)
            owner = lease_acquire(name, lease_ttl())
    if owner is None:
        if run.state == SyncRun.State.QUEUED:
            _finish(run, SyncRun.State.FAILED, LEASE_CONFLICT_MESSAGE)
        return run  # "running": the holder is this very run in another worker
    runner: _Runner | None = None
    try:
        now = timezone.now()
        claimed = SyncRun.objects.filter(pk=run.pk, state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING]).update(
            state=SyncRun.State.RUNNING, started_at=now, finished_at=None, message="", created=0, updated=0,
            unchanged=0, failed=0, progress_done=0, progress_total=0, progress_phases=[], fixed_by_poll=0,
        )
        if not claimed:
            run.refresh_from_db()
            return run
        run.refresh_from_db()
        # Holding the lease proves no other run of this connection is alive: close runs a killed
        # worker left "running" (a CLI rerun never reaches _active_run), or they show forever.
        SyncRun.objects.filter(connection=connection, state=SyncRun.State.RUNNING).exclude(pk=run.pk).update(
            state=SyncRun.State.FAILED, finished_at=now, message=INTERRUPTED_MESSAGE)
        if not connection.enabled:
            return _finish(run, SyncRun.State.FAILED, "The connection is disabled.")
        runner = _Runner(run, lease_owner=owner, progress=progress)
        with _rare_cycle_collection():
            runner.execute()
    finally:
        lease_release(name, owner)
    run.refresh_from_db()
    if runner is not None and runner.pdf_backlog and run.state != SyncRun.State.FAILED:
        # The PDF phase ran out of time, not of work: continue at once instead of an hour later.
        sync_queue(connection=connection, scope=SyncRun.Scope.ENTITY, entity=ENTITY_PDFS, trigger=run.trigger)
    return run


class _RareCycleCollection:
    """A run allocates millions of short-lived containers (parsed payloads, mapped rows) that hold
    no reference cycles; at Python's default thresholds the cycle collector still runs thousands of
    times per run and now and then walks every long-lived object of the worker (11 % of a
    100k-invoice full sync). It runs less often while any run executes in this process; the
    thresholds come back when the last one ends (runs may overlap in threads: the thresholds are
    the process's, so they are set by the first and restored by the last)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._previous = gc.get_threshold()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._active:
                self._previous = gc.get_threshold()
                previous = self._previous
                gc.set_threshold(max(previous[0], 10_000), max(previous[1], 50), max(previous[2], 1000))
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    gc.set_threshold(*self._previous)


_rare_cycle_collection = _RareCycleCollection()


def sync_record(*, connection: Connection, entity: str, halopsa_id: int, trigger: str) -> SyncRun:
    """Sync one invoice or customer now (webhooks, per-record retry). Returns the finished run.

    A record HaloPSA no longer has (404) is flagged "deleted in HaloPSA". If a sync of the
    connection is running, this run fails with LEASE_CONFLICT_MESSAGE and the caller retries later.
    """
    if entity not in (ENTITY_INVOICES, ENTITY_CUSTOMERS):
        raise ValueError(f"sync_record syncs invoices or customers, not {entity!r}")
    scope = SyncRun.Scope.INVOICE if entity == ENTITY_INVOICES else SyncRun.Scope.ENTITY
    run = SyncRun.objects.create(connection=connection, scope=scope, trigger=trigger, entity=entity,
                                 target_halopsa_id=int(halopsa_id))
    return sync_execute(run=run)


def sync_error_retry(*, error: SyncError, user) -> SyncRun:
    """A person asks to sync a failed record again: queues a sync of just that record (or of its
    entity when the record has no usable id). The error is resolved when the record syncs."""
    connection = error.connection
    if error.entity == ENTITY_INVOICES and error.halopsa_id:
        run, _ = sync_queue(connection=connection, scope=SyncRun.Scope.INVOICE, trigger=SyncRun.Trigger.MANUAL,
                            halopsa_id=error.halopsa_id, user=user)
    elif error.entity == ENTITY_CUSTOMERS and error.halopsa_id:
        run, _ = sync_queue(connection=connection, scope=SyncRun.Scope.ENTITY, trigger=SyncRun.Trigger.MANUAL,
                            entity=ENTITY_CUSTOMERS, halopsa_id=error.halopsa_id, user=user)
    else:
        entity = error.entity if error.entity in ENTITIES else ENTITY_CUSTOMERS
        run, _ = sync_queue(connection=connection, scope=SyncRun.Scope.ENTITY, trigger=SyncRun.Trigger.MANUAL,
                            entity=entity, user=user)
    audit_record(user=user, action="sync_error.retry", obj=error, partner=connection.partner_id,
                 summary=f"Retried sync of {error.entity} {error.halopsa_id or ''}".strip(), run_id=run.pk)
    return run


def sync_scope_for_schedule(connection: Connection) -> str:
    """Incremental, except full once a day (a full read is what detects deletions)."""
    last_full = (
        SyncCursor.objects.filter(connection=connection, entity__in=[ENTITY_CUSTOMERS, ENTITY_INVOICES])
        .values_list("last_full_sync_at", flat=True)
    )
    values = list(last_full)
    if len(values) < 2 or any(v is None or v < timezone.now() - FULL_SYNC_INTERVAL for v in values):
        return SyncRun.Scope.FULL
    return SyncRun.Scope.INCREMENTAL


def invoice_pdf_ensure(*, invoice: Invoice, client: HaloClient | None = None) -> InvoicePdf:
    """The invoice's current PDF, downloading it (one API call) when missing or stale.

    For the dashboard's first view of an invoice whose PDF the batch has not fetched yet.
    Raises PdfUnavailable with a readable message when HaloPSA has none or cannot be reached.
    """
    current = InvoicePdf.objects.filter(invoice=invoice).first()
    if current is not None and not (current.file and current.file.storage.exists(current.file.name)):
        current = None  # the row outlived its file (a node without the shared media mount, a restore)
    if current is not None and (invoice.pdf_attachment_id is None or current.attachment_id == invoice.pdf_attachment_id):
        return current
    if invoice.halopsa_id is None or invoice.pdf_attachment_id is None:
        if current is not None:
            return current
        raise PdfUnavailable("HaloPSA has no PDF for this invoice.")
    client = client or HaloClient.for_connection(invoice.connection)
    try:
        content = client.get_invoice_pdf(invoice.halopsa_id, attachment_id=invoice.pdf_attachment_id)
    except HaloNotFound:
        if current is not None:
            return current
        raise PdfUnavailable("HaloPSA no longer has this PDF (the invoice changed); it is fetched again after the next sync.") from None
    except HaloError as exc:
        if current is not None:
            return current
        raise PdfUnavailable(exc.message) from None
    return pdf_store(invoice=invoice, content=content, attachment_id=invoice.pdf_attachment_id)


def pdf_store(*, invoice: Invoice, content: bytes, attachment_id: int | None) -> InvoicePdf:
    """Save PDF bytes for the invoice with their sha256 (same bytes: the file is not rewritten)."""
    digest = hashlib.sha256(content).hexdigest()
    now = timezone.now()
    current = InvoicePdf.objects.filter(invoice=invoice).first()
    if current is not None and current.sha256 == digest and current.file and current.file.storage.exists(current.file.name):
        InvoicePdf.objects.filter(pk=current.pk).update(attachment_id=attachment_id, fetched_at=now)
        current.attachment_id, current.fetched_at = attachment_id, now
        return current
    name = f"invoice-{invoice.pk}-{attachment_id or 'x'}-{digest[:12]}.pdf"
    old_name = current.file.name if current is not None and current.file else None
    pdf = current or InvoicePdf(invoice=invoice)
    pdf.file.save(name, ContentFile(content), save=False)
    pdf.sha256, pdf.size, pdf.attachment_id, pdf.fetched_at = digest, len(content), attachment_id, now
    try:
        pdf.save()
    except IntegrityError:  # fetched concurrently (e.g. a dashboard view during a sync): keep theirs
        pdf.file.delete(save=False)
        return InvoicePdf.objects.get(invoice=invoice)
    if old_name and old_name != pdf.file.name:
        storage = pdf.file.storage
        transaction.on_commit(lambda: storage.delete(old_name))
    return pdf


# ---------------------------------------------------------------------------------------------
# Run bookkeeping


def _finish(run: SyncRun, state: str, message: str = "", stats: RequestStats | None = None) -> SyncRun:
    values: dict[str, Any] = {"state": state, "finished_at": timezone.now(), "message": message[:4000]}
    if stats is not None:
        numbers = stats.as_dict()
        values.update(api_requests=numbers["requests"], api_retries=numbers["retries"], api_bytes=numbers["bytes"])
    SyncRun.objects.filter(pk=run.pk).update(**values)
    run.refresh_from_db()
    return run


def _incidents_after(run: SyncRun, error: BaseException | None) -> None:
    connection = run.connection
    if run.state in (SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL):
        incident_resolve(connection, Incident.Kind.CREDENTIALS_REJECTED)
        incident_resolve(connection, Incident.Kind.SYNC_FAILING)
        return
    if isinstance(error, HaloAuthError):
        incident_open(connection, Incident.Kind.CREDENTIALS_REJECTED, error.message)
    recent = list(
        SyncRun.objects.filter(connection=connection, finished_at__isnull=False)
        .exclude(message=LEASE_CONFLICT_MESSAGE)
        .order_by("-finished_at", "-id")
        .values_list("state", flat=True)[:CONSECUTIVE_FAILURES_FOR_INCIDENT]
    )
    if len(recent) == CONSECUTIVE_FAILURES_FOR_INCIDENT and all(s == SyncRun.State.FAILED for s in recent):
        incident_open(connection, Incident.Kind.SYNC_FAILING,
                      f"The last {CONSECUTIVE_FAILURES_FOR_INCIDENT} syncs of {connection.name} failed. Latest: {run.message}")


_insert_rows = insert_rows  # the name tests/sync/test_insert_rows.py imports


def _insert_invoices(connection_id: int, rows: list[Mapping[str, Any]]) -> dict[int, int]:
    """INSERT new invoices of one connection; returns {halopsa_id: pk} (read back by the unique
    (connection, halopsa_id): executemany and COPY return none)."""
    if not rows:
        return {}
    insert_rows(Invoice, rows)
    return dict(Invoice.objects.filter(connection_id=connection_id, halopsa_id__in=[r["halopsa_id"] for r in rows])
                .order_by().values_list("halopsa_id", "pk"))


def _payload_id(payload: Any) -> int | None:
    if isinstance(payload, Mapping):
        try:
            return mapping.parse_id(payload.get("id"), required=False)
        except MappingError:
            return None
    return None


@dataclass
class _Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged, "failed": self.failed}


@dataclass
class _Plan:
    customers: str | None = None  # "read" (clients, then users) | "one" | None
    invoices: str | None = None  # "read" | "unpaid" | "one" | None
    pdfs: bool = False
    # Where an entity's read starts (its cursor minus the overlap); an entity without one is read in full.
    since: dict[str, datetime] = field(default_factory=dict)
    advance_cursors: bool = False
    flag_deletions: bool = True  # after a read in full (never for "recent")


@dataclass(frozen=True)
class _Feed:
    """How an entity's changed records are listed (`_Runner._changed_pages`)."""

    entity: str
    kind: str  # the record kind of mapping.updated_at
    label: str
    filter_fact: str  # the HaloShape field: is the list's date filter honoured
    filter_name: str
    order_fact: str  # the HaloShape field: is newest-first order honoured
    order_name: str


_FEEDS = {
    ENTITY_CUSTOMERS: _Feed(ENTITY_CUSTOMERS, "client", "customers", "client_updated_filter",
                            "lastupdatefromdate on GET /Client", "client_order_by_updated", "order=alastupdate"),
    ENTITY_CONTACTS: _Feed(ENTITY_CONTACTS, "user", "billing contacts (users)", "user_updated_filter",
                           "lastupdatefromdate on GET /Users", "user_order_by_updated", "order=ulastupdate"),
    ENTITY_INVOICES: _Feed(ENTITY_INVOICES, "invoice", "invoices", "invoice_datesearch",
                           "datesearch=last_modified on GET /Invoice", "invoice_order_by_modified", "order=last_modified"),
}
# The date filter check: a start this far ahead matches no record where the filter is honoured
# (well inside SQL Server's smalldatetime, which ends in 2079).
FILTER_CHECK_AHEAD = timedelta(days=3650)
# The id-only list (HaloClient.listed_ids) that checks an entity's deletion candidates.
_ID_LIST_OF = {ENTITY_CUSTOMERS: ENVELOPE_CLIENTS, ENTITY_CONTACTS: ENVELOPE_USERS, ENTITY_INVOICES: ENVELOPE_INVOICES}


class _Runner:
    """One execution of one SyncRun (holds the lease while it runs)."""

    def __init__(self, run: SyncRun, *, lease_owner: str, progress: Callable[[SyncRun], None] | None = None) -> None:
        self.run = run
        self.connection = run.connection
        self.lease_owner = lease_owner
        self.lease_renewed = time.monotonic()  # sync_execute acquired it just now
        self.progress = progress
        self.stats = RequestStats()
        self.counts = _Counts()
        self.started_at = run.started_at or timezone.now()
        self.now = self.started_at
        self._client: HaloClient | None = None
        self._unknown: Customer | None = None
        self.has_open_errors = SyncError.objects.filter(connection=self.connection, resolved_at__isnull=True).exists()
        self.progress_done = 0
        self.progress_total = 0
        # Progress per phase (SyncRun.progress_phases): what the dashboard shows, see _phase.
        self.phases: list[dict[str, Any]] = []
        self.current_phase: dict[str, Any] | None = None
        # Entities with a record that failed without a readable id: a full read then cannot tell
        # which row it was, so it flags nothing as deleted this time.
        self.unidentified: set[str] = set()
        self.failed_user_ids: set[int] = set()
        self.realtime_poll = (
            run.trigger == SyncRun.Trigger.SCHEDULE and run.scope == SyncRun.Scope.INCREMENTAL and self.connection.is_realtime
        )
        # PDF downloads count as updates but are not records a webhook missed (a webhook run
        # fetches the PDF after its invoice), so the poll's "fixed" figure leaves them out.
        self.pdf_updates = 0
        # PDFs the time limit left for a follow-up run.
        self.pdf_backlog = 0
        self.shape = HaloShape.of(self.connection)
        # Cursors (see _next_cursor): per entity, the newest change time seen in HaloPSA's records,
        # how many records had none, and when (our monotonic clock) its records were last read.
        self.started_monotonic = time.monotonic()
        # The run stops cleanly here (run_seconds): the client starts no request, retry or wait past it.
        self.deadline = self.started_monotonic + run_seconds()
        self.reading = "HaloPSA"  # what the run is reading, for the message when time runs out
        # Per entity: rows a list sent twice while it was read (page drift; read once each).
        self.repeated_rows: dict[str, int] = {}
        self.newest_change: dict[str, datetime] = {}
        self.unstamped: dict[str, int] = {}
        self.last_read: dict[str, float] = {}
        # Billing flags read from user details: users still waiting for one keep their contacts.
        self.user_details_left = user_details_per_run()
        self.waiting_user_ids: set[int] = set()
        self.flagless_user_ids: set[int] = set()
        # What a person should know about how this run read HaloPSA (ends up in the run's message).
        self.notes: list[str] = []

    @property
    def client(self) -> HaloClient:
        if self._client is None:
            self._client = HaloClient.for_connection(self.connection, stats=self.stats, deadline=self.deadline,
                                                     **self._budget_overrides())
        return self._client

    def _budget_overrides(self) -> dict[str, Any]:
        """A run that reads lists waits for the request budget instead of failing: at 300 requests
        per 5 minutes a first full sync of a large MSP spans several windows, and failing at the
        first spent window (the client's default wait is 30 s) would restart it from page one every
        hour and never finish. The wait stays under half the lease TTL (the lease is checked as each
        page arrives, see _keep_lease). Single-record runs (webhooks) keep the short wait: their callers retry."""
        if self.run.target_halopsa_id:
            return {}
        window = float(getattr(settings, "HALOPSA_RATE_WINDOW", 300))
        wait = min(window * 1.1 + 1, lease_ttl() / 2)
        default = float(getattr(settings, "HALOPSA_BUDGET_MAX_WAIT", 30.0))
        return {"budget_max_wait": wait} if wait > default else {}

    # -- orchestration ----------------------------------------------------------------------

    def execute(self) -> None:
        error: BaseException | None = None
        try:
            self._probe_on_first_sync()
            plan = self._plan()
            self._run_plan(plan)
        except HaloDeadlineReached:
            error = SyncAborted(self._out_of_time_message())
            _finish(self.run, SyncRun.State.FAILED, error.message, self.stats)
        except HaloError as exc:
            error = exc
            _finish(self.run, SyncRun.State.FAILED, exc.message, self.stats)
        except SyncAborted as exc:
            error = exc
            _finish(self.run, SyncRun.State.FAILED, exc.message, self.stats)
        except Exception as exc:  # a bug must still close the run, with a message a person can use
            logger.exception("sync run %s failed", self.run.pk)
            error = exc
            _finish(self.run, SyncRun.State.FAILED, f"Internal error during the sync ({type(exc).__name__}); the team has been notified.", self.stats)
        else:
            cursors = self._cursors_after(plan)
            self._note_waiting_users()
            state = SyncRun.State.PARTIAL if self.counts.failed else SyncRun.State.SUCCEEDED
            parts = [f"{self.counts.failed} record(s) could not be synced; see the sync errors."] if self.counts.failed else []
            self._save_counts()
            _finish(self.run, state, " ".join(parts + self.notes), self.stats)
            for entity, values in cursors.items():
                SyncCursor.objects.update_or_create(connection=self.connection, entity=entity, defaults=values)
        self._close_phases(failed=error is not None)
        _incidents_after(self.run, error)

    def _out_of_time_message(self) -> str:
        minutes = run_seconds() / 60
        return (f"The sync stopped after {minutes:g} minutes, the most one run may take (HALOPSA_SYNC_RUN_SECONDS), "
                f"while reading {self.reading}: HaloPSA answered too slowly to finish in one run. Everything read so far "
                "is saved; the next sync reads the rest (what is saved already costs it no writes).")

    def _probe_on_first_sync(self) -> None:
        """A connection's first sync learns its instance's shape first (services.connections.
        connection_probe, about ten read-only calls). A probe that fails (or does not exist yet)
        never fails the sync: what stays unknown is found out by the sync itself."""
        if self.connection.shape_checked_at is not None or self.run.target_halopsa_id:
            return
        try:
            from integrations.services.connections import connection_probe
        except ImportError:
            return
        try:
            connection_probe(connection=self.connection)
        except Exception:  # noqa: BLE001 - whatever the probe met, the sync goes on without it
            logger.warning("connection %s: the shape probe failed; the sync finds out what it needs itself",
                           self.connection.pk, exc_info=True)
        self.connection.refresh_from_db(fields=["halo_shape", "shape_checked_at"])
        self.shape = HaloShape.of(self.connection)

    def _plan(self) -> _Plan:
        run, scope = self.run, self.run.scope
        plan = _Plan()
        if scope in (SyncRun.Scope.FULL, SyncRun.Scope.INCREMENTAL, SyncRun.Scope.RECENT):
            plan.customers = plan.invoices = "read"
            plan.pdfs = True
            # "Fetch new data" (recent) reads what changed since the cursors like an incremental
            # run, but leaves cursors and deletions to the scheduled runs.
            plan.advance_cursors = plan.flag_deletions = scope != SyncRun.Scope.RECENT
            if scope != SyncRun.Scope.FULL:
                # Without a cursor an entity is read in full (first sync, or records without a
                # change time), which is always correct.
                for cursor in SyncCursor.objects.filter(connection=self.connection, changed_since__isnull=False):
                    if cursor.entity in _FEEDS:
                        plan.since[cursor.entity] = cursor.changed_since - cursor_overlap()
        elif scope == SyncRun.Scope.UNPAID:
            plan.invoices = "unpaid"
            plan.pdfs = True
        elif scope == SyncRun.Scope.INVOICE:
            plan.invoices = "one"
            plan.pdfs = True  # PDFs are real time too: a webhook's invoice comes with its new PDF
        elif scope == SyncRun.Scope.ENTITY:
            plan.advance_cursors = True
            if run.entity == ENTITY_CUSTOMERS:
                plan.customers = "one" if run.target_halopsa_id else "read"
            elif run.entity == ENTITY_INVOICES:
                plan.invoices = "one" if run.target_halopsa_id else "read"
            elif run.entity == ENTITY_PDFS:
                plan.pdfs = True
            else:
                raise SyncAborted(f"Unknown entity {run.entity!r}.")
        return plan

    def _run_plan(self, plan: _Plan) -> None:
        self._plan_phases(plan)
        if plan.customers == "one":
            self._phase(ENTITY_CUSTOMERS)
            self._one_customer(self.run.target_halopsa_id)
        elif plan.customers:
            since = plan.since.get(ENTITY_CUSTOMERS)
            self._phase(ENTITY_CUSTOMERS)
            self._customers_phase(since=since, detect_deletions=since is None and plan.flag_deletions)
            # Users have their own cursor; a complete read of them also removes contacts that no
            # longer qualify.
            users_since = plan.since.get(ENTITY_CONTACTS)
            self._phase(ENTITY_CONTACTS)
            self._contacts_phase(since=users_since, prune=users_since is None)
        if plan.invoices == "one":
            self._phase(ENTITY_INVOICES)
            self._one_invoice(self.run.target_halopsa_id, with_pdf=plan.pdfs)
            return
        if plan.invoices:
            self._phase(ENTITY_INVOICES)
            since = plan.since.get(ENTITY_INVOICES) if plan.invoices == "read" else None
            self._invoices_phase(
                since=since,
                # HaloPSA's own "unpaid" view asks for 0,-1 (-1 is the database default, reference
                # §3.2, §3.6); the shape adds 1 and any code the probe saw on invoices with money due.
                payment_statuses=list(self.shape.unpaid_codes) if plan.invoices == "unpaid" else None,
                detect_deletions=plan.invoices == "read" and since is None and plan.flag_deletions,
            )
        if plan.pdfs:
            self._phase(ENTITY_PDFS)
        if plan.pdfs and self.run.target_halopsa_id and self.run.entity == ENTITY_PDFS:
            self._one_pdf(self.run.target_halopsa_id)
        elif plan.pdfs:
            self._pdfs_phase(limit=pdf_batch_size())

    def _cursors_after(self, plan: _Plan) -> dict[str, dict[str, Any]]:
        """The cursor rows to write once the run has completed (and only then): successes
        recorded, cursors advanced (`_next_cursor`) by runs that read everything changed."""
        now = timezone.now()
        current = dict(SyncCursor.objects.filter(connection=self.connection).values_list("entity", "changed_since"))
        read: dict[str, bool] = {}  # entity -> read in full, deletions flagged
        if plan.customers == "read":
            for entity in (ENTITY_CUSTOMERS, ENTITY_CONTACTS):
                read[entity] = entity not in plan.since and plan.flag_deletions
        if plan.invoices in ("read", "unpaid"):
            read[ENTITY_INVOICES] = plan.invoices == "read" and ENTITY_INVOICES not in plan.since and plan.flag_deletions
        touched: dict[str, dict[str, Any]] = {}
        for entity, in_full in read.items():
            values: dict[str, Any] = {"last_success_at": now}
            if plan.advance_cursors and not (entity == ENTITY_INVOICES and plan.invoices == "unpaid"):
                values["changed_since"] = self._next_cursor(entity, current.get(entity))
            if in_full:
                values["last_full_sync_at"] = now
            touched[entity] = values
        if plan.pdfs and self.run.scope != SyncRun.Scope.INVOICE:
            touched[ENTITY_PDFS] = {"last_success_at": now}
        return touched

    def _next_cursor(self, entity: str, current: datetime | None) -> datetime | None:
        """An entity's cursor after a run that read everything changed since it: the newest change
        time seen in HaloPSA's own records (a high-water mark, in HaloPSA's frame: its timestamps
        carry no offset and may be its local time, reference §2) minus how long the run had been
        reading by then, measured on our monotonic clock. A record changed after the run started
        has a change time at or after that, so no read skips it. Never our clock, never
        backwards; no records seen keeps the cursor. Records without a change time cannot be read
        incrementally: the cursor is cleared, so the entity is read in full, and the run says so."""
        feed = _FEEDS[entity]
        if self.unstamped.get(entity):
            self._note(f"{self.unstamped[entity]} {feed.label} record(s) in HaloPSA have no "
                       f"{mapping.UPDATED_AT_FIELDS[feed.kind]}, so {feed.label} cannot be read incrementally: "
                       "they are read in full until every record has one.")
            return None
        newest = self.newest_change.get(entity)
        if newest is None:
            return current
        if entity == ENTITY_CONTACTS and self.waiting_user_ids:
            return current  # the next run reads the same users again and goes on with their flags
        reading = timedelta(seconds=self.last_read[entity] - self.started_monotonic)
        candidate = min(newest - reading, timezone.now() + cursor_max_ahead())
        return candidate if current is None or candidate > current else current

    def _saw(self, entity: str, newest: datetime | None, unstamped: int) -> None:
        """Records of `entity` were just read: `newest` is the newest change time among them,
        `unstamped` how many had none."""
        self.last_read[entity] = time.monotonic()
        if newest is not None and (entity not in self.newest_change or newest > self.newest_change[entity]):
            self.newest_change[entity] = newest
        if unstamped:
            self.unstamped[entity] = self.unstamped.get(entity, 0) + unstamped

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _learn(self, **facts: Any) -> None:
        """Store what this run found out about the instance on the connection's HaloShape (only
        these fields: what the probe or a push wrote meanwhile stays)."""
        from integrations.services.connections import connection_shape_update

        for name, value in facts.items():
            setattr(self.shape, name, value)
        connection_shape_update(connection=self.connection, **facts)

    # -- incremental reads -----------------------------------------------------------------------

    def _changed_pages(self, feed: _Feed, since: datetime | None, list_pages: Callable[..., Iterator[Page]]) -> Iterator[Page]:
        """Pages of `feed`'s records changed since `since` (all records when None), read the way
        this instance supports (its HaloShape, found out here when unknown):
        - its date filter when honoured (checked once with a start far in the future, which must
          match nothing: one call; a row older than the start later means it is ignored after all);
        - else newest first, stopping at `since`, the order checked as pages arrive (a row newer
          than one before it means it is not honoured: everything is read this time);
        - else everything. A read longer than asked for is said in the run's message."""
        if since is None:
            yield from self._pages(list_pages())
            return
        honoured = getattr(self.shape, feed.filter_fact)
        if honoured == UNKNOWN:
            first = next(iter(list_pages(changed_since=timezone.now() + FILTER_CHECK_AHEAD, page_size=1)), None)
            honoured = FILTER_WORKS if first is None else FILTER_IGNORED
            self._learn(**{feed.filter_fact: honoured})
        if honoured != FILTER_IGNORED:
            yield from self._filtered_pages(feed, since, list_pages)
        elif getattr(self.shape, feed.order_fact) == FILTER_IGNORED:
            self._note(f"HaloPSA ignores {feed.filter_name} and {feed.order_name}: {feed.label} are read in full.")
            yield from self._pages(list_pages())
        else:
            yield from self._newest_first_pages(feed, since, list_pages)

    def _filtered_pages(self, feed: _Feed, since: datetime, list_pages: Callable[..., Iterator[Page]]) -> Iterator[Page]:
        earliest = since.replace(microsecond=0) - timedelta(seconds=1)  # the query sends whole seconds
        checking = True
        for page in self._pages(list_pages(changed_since=since)):
            if checking and any(stamp is not None and stamp < earliest
                                for stamp in (mapping.updated_at(record, feed.kind) for record in page.records)):
                checking = False
                self._learn(**{feed.filter_fact: FILTER_IGNORED})
                self._note(f"HaloPSA ignored {feed.filter_name}: {feed.label} were read in full this time "
                           f"(from the next run: newest first, {feed.order_name}).")
            yield page

    def _newest_first_pages(self, feed: _Feed, since: datetime, list_pages: Callable[..., Iterator[Page]]) -> Iterator[Page]:
        honoured, previous = True, None
        for page in self._pages(list_pages(newest_first=True), count_each_page=True):
            oldest = None
            for record in page.records:
                stamp = mapping.updated_at(record, feed.kind)
                if stamp is None:
                    continue
                if honoured and previous is not None and stamp > previous:
                    honoured = False
                    self._learn(**{feed.order_fact: FILTER_IGNORED})
                    self._note(f"HaloPSA ignores {feed.filter_name} and {feed.order_name}: {feed.label} "
                               "were read in full.")
                previous = stamp
                oldest = stamp if oldest is None or stamp < oldest else oldest
            yield page
            if honoured and oldest is not None and oldest < since:
                return  # every later row is older than the cursor

    # -- page plumbing -----------------------------------------------------------------------

    def _pages(self, pages: Iterator[Page], *, count_each_page: bool = False) -> Iterator[Page]:
        """Yield pages, growing the progress total by each query's record_count (by each page's
        rows for a read that may stop early, whose phase has no total); the lease is checked (and
        renewed when due) as each page arrives, before anything of it is written."""
        first = True
        for page in pages:
            if count_each_page:
                self._grow_total(len(page.records), known=False)
            elif first:
                self._grow_total(page.record_count)
                first = False
            self._keep_lease()
            yield page

    def _keep_lease(self, *, now: bool = False) -> None:
        """Renew the connection's lease when `lease_renew_interval()` has passed since the last
        renewal (or `now`); a run that lost it stops before writing more.

        The lease stays ours for the TTL after each renewal, and the longest pause between two
        checks (a wait for the request budget) is under half of it, so checking every page is
        enough and renewing every page (a write each) is not needed."""
        if not now and time.monotonic() - self.lease_renewed < lease_renew_interval():
            return
        if not lease_renew(lease_name(self.connection.pk), self.lease_owner, lease_ttl()):
            raise SyncAborted("The sync lost its lock on the connection (it ran too long without progress); it will be retried.")
        self.lease_renewed = time.monotonic()

    def _plan_phases(self, plan: _Plan) -> None:
        """The phases this run goes through, in order, all waiting: the page shows "step 2 of 4"
        from the start, and a phase's size is added when its read begins, never to a total that
        was shown before."""
        names = [ENTITY_CUSTOMERS, ENTITY_CONTACTS] if plan.customers else []
        names += [ENTITY_INVOICES] if plan.invoices else []
        names += [ENTITY_PDFS] if plan.pdfs and plan.invoices != "one" else []
        self.phases = [{"phase": name, "done": 0, "total": None, "state": "waiting"} for name in names]

    def _phase(self, name: str) -> None:
        """`name`'s phase starts; the one before it is done."""
        self._end_phase("done")
        phase = next((p for p in self.phases if p["phase"] == name), None)
        if phase is None:  # not planned (a PDF fetched with its invoice): progress goes on in the current list
            phase = {"phase": name, "done": 0, "total": None, "state": "waiting"}
            self.phases.append(phase)
        phase["state"] = "running"
        self.current_phase = phase

    def _end_phase(self, state: str) -> None:
        phase, self.current_phase = self.current_phase, None
        if phase is not None:
            phase["state"] = state
            if state == "done" and phase["total"] is None:
                phase["total"] = phase["done"]  # a read that stopped at the cursor: what it read is its size

    def _close_phases(self, *, failed: bool) -> None:
        """At the end of the run: the phase at work is done (or where the run failed); phases the
        run never reached are skipped (or, after a failure, still waiting)."""
        self._end_phase("failed" if failed else "done")
        if not failed:
            for phase in self.phases:
                if phase["state"] == "waiting":
                    phase["state"] = "skipped"
        self.run.progress_phases = self.phases
        SyncRun.objects.filter(pk=self.run.pk).update(progress_phases=self.phases)

    @contextmanager
    def _beside_phase(self, records: int) -> Iterator[None]:
        """`records` written on the side (an invoice's customer fetched while the invoices are
        read) count for the run, not for the step at work, whose "x of y" stays true."""
        phase, self.current_phase = self.current_phase, None
        self.progress_total += records
        try:
            yield
        finally:
            self.current_phase = phase

    def _grow_total(self, records: int, *, known: bool = True) -> None:
        """`records` more are to be read: the run's total and, when the phase's size is known
        (a list's record_count, the PDFs chosen), the phase's."""
        self.progress_total += records
        phase = self.current_phase
        if phase is not None and known:
            phase["total"] = (phase["total"] or 0) + records

    def _page_done(self, records: int) -> None:
        """Called inside the page's transaction: counts and progress commit with the data."""
        self.progress_done += records
        phase = self.current_phase
        if phase is not None:
            phase["done"] += records
            if phase["total"] is not None and phase["done"] > phase["total"]:
                phase["total"] = phase["done"]  # HaloPSA sent more than it announced: never "done > total"
        self._save_counts()
        if self.progress is not None:
            self.progress(self.run)

    def _save_counts(self) -> None:
        numbers = self.stats.as_dict()
        self.run.created, self.run.updated = self.counts.created, self.counts.updated
        self.run.unchanged, self.run.failed = self.counts.unchanged, self.counts.failed
        self.run.progress_done, self.run.progress_total = self.progress_done, max(self.progress_total, self.progress_done)
        self.run.api_requests, self.run.api_retries, self.run.api_bytes = numbers["requests"], numbers["retries"], numbers["bytes"]
        if self.realtime_poll:
            self.run.fixed_by_poll = self.counts.created + self.counts.updated - self.pdf_updates
        self.run.progress_phases = self.phases
        SyncRun.objects.filter(pk=self.run.pk).update(
            created=self.run.created, updated=self.run.updated, unchanged=self.run.unchanged, failed=self.run.failed,
            progress_done=self.run.progress_done, progress_total=self.run.progress_total, progress_phases=self.phases,
            api_requests=self.run.api_requests, api_retries=self.run.api_retries, api_bytes=self.run.api_bytes,
            fixed_by_poll=self.run.fixed_by_poll,
        )

    def _record_error(self, entity: str, halopsa_id: int | None, message: str, payload: Any) -> None:
        if halopsa_id is None:
            self.unidentified.add(entity)
        SyncError.objects.create(run=self.run, connection=self.connection, entity=entity, halopsa_id=halopsa_id,
                                 message=message[:4000], payload=payload)
        self.counts.failed += 1

    def _resolve_errors(self, entity: str, halopsa_ids: Iterable[int]) -> None:
        if not self.has_open_errors:
            return
        ids = list(halopsa_ids)
        for start in range(0, len(ids), CHUNK):
            SyncError.objects.filter(connection=self.connection, entity=entity, resolved_at__isnull=True,
                                     halopsa_id__in=ids[start:start + CHUNK]).update(resolved_at=self.now)

    def _store(self, write: Callable[[list, int], None], mapped: list[tuple[dict[str, Any], Any]], entity: str, *,
               page_records: int) -> None:
        """Write mapped records as one page; if the database refuses the page (say HaloPSA sent the
        same line or payment id twice), write them one by one so only the bad record fails."""
        counts = replace(self.counts)
        try:
            write(mapped, page_records)
            return
        except DatabaseError as exc:
            self.counts = counts
            self._unknown = None  # it may have been created in the rolled-back transaction
            if len(mapped) == 1:
                row, payload = mapped[0]
                logger.warning("connection %s: %s %s not stored: %s", self.connection.pk, entity, row["halopsa_id"], exc)
                self._record_error(entity, row["halopsa_id"],
                                   f"{entity[:-1]} {row['halopsa_id']}: the record could not be stored ({type(exc).__name__}: {exc}).",
                                   payload)
                with transaction.atomic():
                    self._page_done(page_records)
                return
        for item in mapped:
            self._store(write, [item], entity, page_records=0)
        with transaction.atomic():
            self._page_done(page_records)

    def _flag_missing(self, model: type[Customer] | type[Invoice], seen: set[int]) -> int:
        """After a complete read: rows HaloPSA no longer lists, and confirms it no longer has
        (`_confirmed_gone`), get "deleted in HaloPSA"."""
        entity = ENTITY_CUSTOMERS if model is Customer else ENTITY_INVOICES
        if entity in self.unidentified:
            logger.warning("connection %s: not flagging deleted %s (a record without id failed)", self.connection.pk, entity)
            return 0
        if self.has_open_errors:  # every record was readable this time: earlier id-less errors are over
            SyncError.objects.filter(connection=self.connection, entity=entity, halopsa_id__isnull=True,
                                     resolved_at__isnull=True).update(resolved_at=self.now)
        candidates = {
            halopsa_id: pk for pk, halopsa_id in model.objects.filter(
                connection=self.connection, origin=Origin.HALOPSA, halopsa_id__isnull=False, deleted_in_halopsa_at__isnull=True,
            ).values_list("pk", "halopsa_id").iterator(chunk_size=2000)
            if halopsa_id not in seen
        }
        missing = [candidates[halopsa_id] for halopsa_id in self._confirmed_gone(entity, set(candidates), seen)]
        for start in range(0, len(missing), CHUNK):
            with transaction.atomic():
                model.objects.filter(pk__in=missing[start:start + CHUNK]).update(deleted_in_halopsa_at=self.now, updated_at=self.now)
        self.counts.updated += len(missing)
        return len(missing)

    def _confirmed_gone(self, entity: str, candidates: set[int], seen: set[int]) -> set[int]:
        """Which of `candidates` (ours, but not in this complete read of `entity`) HaloPSA
        confirms it no longer has. Not being listed alone is a guess: a record deleted while a
        list is paged moves every later row up one place, so the next page skips a live record.

        Up to `deletion_checks()` candidates are read one by one: a 404 confirms; a record that
        is there was skipped while paging, and is written now. More are checked against one
        id-only list of the entity, trusted only when it holds every record the read saw; a
        candidate it holds is not flagged (the next full read brings it). What cannot be checked
        is not flagged this time, and the run says so."""
        if not candidates:
            return set()
        label = _FEEDS[entity].label
        if len(candidates) <= deletion_checks():
            gone: set[int] = set()
            for halopsa_id in sorted(candidates):
                try:
                    payload = self._read_one(entity, halopsa_id)
                except HaloNotFound:
                    gone.add(halopsa_id)
                except HaloError as exc:
                    self._note(f"Some {label} missing from HaloPSA's list could not be checked ({exc.message}); "
                               "they are not flagged as deleted this time.")
                    break
                else:
                    self._write_found(entity, payload)
            return gone
        try:
            listed = self.client.listed_ids(_ID_LIST_OF[entity])
        except HaloError as exc:
            self._note(f"{len(candidates)} {label} missing from HaloPSA's list could not be checked ({exc.message}); "
                       "they are not flagged as deleted this time.")
            return set()
        if not seen <= listed:
            self._note(f"HaloPSA's id-only list of {label} lacked records its full list had just shown, so the "
                       f"{len(candidates)} missing from the full list are not flagged as deleted this time.")
            return set()
        return candidates - listed

    def _read_one(self, entity: str, halopsa_id: int) -> Any:
        if entity == ENTITY_CUSTOMERS:
            return self.client.get_client(halopsa_id)
        if entity == ENTITY_CONTACTS:
            return self.client.get_user(halopsa_id)
        return self.client.get_invoice(halopsa_id, include_lines=True)

    def _write_found(self, entity: str, payload: Any) -> None:
        """A record the list skipped but HaloPSA has: written as if listed (a user keeps its
        contacts until the next full read)."""
        if entity == ENTITY_CUSTOMERS:
            self._customers_page([payload])
        elif entity == ENTITY_INVOICES:
            self._invoices_page([payload])

    def _count_repeated(self, entity: str, page: Page) -> None:
        if page.repeated:
            self.repeated_rows[entity] = self.repeated_rows.get(entity, 0) + page.repeated

    def _note_repeated(self, entity: str) -> None:
        """After a read: rows the list sent twice (it changed while it was read; each record was
        read once, and deletions are confirmed record by record anyway)."""
        if self.repeated_rows.get(entity):
            self._note(f"HaloPSA's list of {_FEEDS[entity].label} changed while it was read: "
                       f"{self.repeated_rows[entity]} row(s) came twice and were read once.")

    # -- customers -----------------------------------------------------------------------------

    def _customers_phase(self, *, since: datetime | None, detect_deletions: bool) -> None:
        self.reading = "customers"
        seen: set[int] = set()
        list_pages = functools.partial(self.client.client_pages, include_inactive=True)
        for page in self._changed_pages(_FEEDS[ENTITY_CUSTOMERS], since, list_pages):
            self._count_repeated(ENTITY_CUSTOMERS, page)
            seen.update(self._customers_page(page.records))
        self._note_repeated(ENTITY_CUSTOMERS)
        if detect_deletions:
            self._flag_missing(Customer, seen)

    def _one_customer(self, halopsa_id: int) -> None:
        try:
            payload = self.client.get_client(halopsa_id)
        except HaloNotFound:
            with transaction.atomic():
                self.counts.updated += Customer.objects.filter(
                    connection=self.connection, origin=Origin.HALOPSA, halopsa_id=halopsa_id, deleted_in_halopsa_at__isnull=True,
                ).update(deleted_in_halopsa_at=self.now, updated_at=self.now)
                self._page_done(1)
            return
        self._grow_total(1)
        self._customers_page([payload])
        if self._user_contacts_blocked():
            return
        # Its billing users, read in full so that ones that stopped qualifying are removed.
        self._phase(ENTITY_CONTACTS)
        kept: set[str] = set()
        for page in self._pages(self._user_pages(client_id=halopsa_id)):
            kept.update(self._contacts_page(page.records))
        customer = Customer.objects.filter(connection=self.connection, halopsa_id=halopsa_id).first()
        if customer is not None and ENTITY_CONTACTS not in self.unidentified:
            with transaction.atomic():
                removed = (
                    Contact.objects.filter(customer=customer, halopsa_key__startswith="user:")
                    .exclude(halopsa_key__in=kept)
                    .exclude(halopsa_user_id__in=self.failed_user_ids | self.waiting_user_ids | self.flagless_user_ids)
                    .delete()[0]
                )
                self.counts.updated += removed

    def _customers_page(self, records: list[Any]) -> set[int]:
        """Upsert one page of HaloPSA clients (and their accounts contacts). Returns ids seen."""
        seen: set[int] = set()
        mapped: list[tuple[dict[str, Any], Any]] = []
        newest, unstamped = None, 0
        for payload in records:
            try:
                row = mapping.map_client(payload)
            except MappingError as exc:
                halopsa_id = exc.halopsa_id or _payload_id(payload)
                if halopsa_id:
                    seen.add(halopsa_id)
                self._record_error(ENTITY_CUSTOMERS, halopsa_id, exc.message, payload)
                continue
            seen.add(row["halopsa_id"])
            mapped.append((row, payload))
            stamp = row["remote_updated_at"]
            if stamp is None:
                unstamped += 1
            elif newest is None or stamp > newest:
                newest = stamp
        self._saw(ENTITY_CUSTOMERS, newest, unstamped)
        self._store(self._write_customers, mapped, ENTITY_CUSTOMERS, page_records=len(records))
        return seen

    def _write_customers(self, mapped: list[tuple[dict[str, Any], Any]], page_records: int) -> None:
        with transaction.atomic():
            existing = {
                c.halopsa_id: c for c in Customer.objects.filter(connection=self.connection, halopsa_id__in=[r["halopsa_id"] for r, _ in mapped]).order_by()
            }
            to_create, to_update, changed = [], [], []
            for row, payload in mapped:
                customer = existing.get(row["halopsa_id"])
                if customer is not None and customer.origin != Origin.HALOPSA:
                    self.counts.unchanged += 1  # created in the portal: never touched by a sync
                    continue
                if customer is not None and customer.fingerprint == row["fingerprint"] and customer.deleted_in_halopsa_at is None:
                    self.counts.unchanged += 1
                    continue
                if customer is None:
                    customer = Customer(connection=self.connection, halopsa_id=row["halopsa_id"], origin=Origin.HALOPSA)
                    to_create.append(customer)
                else:
                    to_update.append(customer)
                customer.name, customer.inactive = row["name"], row["inactive"]
                customer.remote_updated_at, customer.fingerprint = row["remote_updated_at"], row["fingerprint"]
                customer.raw, customer.last_seen_at, customer.deleted_in_halopsa_at = payload, self.now, None
                customer.updated_at = self.now
                changed.append((customer, payload))
            Customer.objects.bulk_create(to_create)
            Customer.objects.bulk_update(to_update, CUSTOMER_UPDATE_FIELDS)
            self.counts.created += len(to_create)
            self.counts.updated += len(to_update)
            self._accounts_contacts(changed)
            self._resolve_errors(ENTITY_CUSTOMERS, [r["halopsa_id"] for r, _ in mapped])
            self._page_done(page_records)

    def _accounts_contacts(self, changed: list[tuple[Customer, Any]]) -> None:
        """Write the "accounts" billing contact of customers whose HaloPSA record changed."""
        if not changed:
            return
        rule = self.connection.billing_contact_rule
        contacts_by_customer: dict[int, list[Contact]] = defaultdict(list)
        for contact in Contact.objects.filter(customer_id__in=[c.pk for c, _ in changed]):
            contacts_by_customer[contact.customer_id].append(contact)
        to_create, to_update, to_delete = [], [], []
        for customer, payload in changed:
            desired = mapping.accounts_contact(payload, rule)
            contacts = contacts_by_customer.get(customer.pk, [])
            current = next((c for c in contacts if c.halopsa_key == "accounts"), None)
            if desired is None:
                if current is not None:
                    to_delete.append(current.pk)
                continue
            # One address appears once: the accounts contact wins over a user with the same e-mail.
            to_delete.extend(c.pk for c in contacts if c.halopsa_key != "accounts" and c.email.lower() == desired["email"].lower())
            if current is None:
                to_create.append(Contact(customer=customer, **{k: desired[k] for k in ("halopsa_key", "halopsa_user_id", "source", "name", "email", "fingerprint")}))
            elif current.fingerprint != desired["fingerprint"]:
                current.name, current.email, current.fingerprint = desired["name"], desired["email"], desired["fingerprint"]
                current.updated_at = self.now
                to_update.append(current)
        if to_delete:
            Contact.objects.filter(pk__in=to_delete).delete()
        Contact.objects.bulk_create(to_create)
        Contact.objects.bulk_update(to_update, ["name", "email", "fingerprint", "updated_at"])

    # -- billing contacts ------------------------------------------------------------------------

    def _user_contacts_blocked(self) -> bool:
        """Whether user billing contacts cannot be synced on this instance (the probe found the
        billing flag nowhere): the run says why; accounts contacts still sync."""
        if self.shape.billing_flag_source != FLAG_NOWHERE:
            return False
        self._note(self.shape.blocked("billing_contacts") or (
            f"Billing contacts from HaloPSA users are not synced: this HaloPSA shows no {self.shape.billing_flag_field} "
            "on users. Accounts contacts of customers are synced."))
        return True

    def _user_pages(self, **query: Any) -> Iterator[Page]:
        # includebillinginfo=true where list rows carry the flag only with it, and while that is
        # unknown (harmless where they carry it anyway: unknown parameters are ignored, reference §2).
        ask = self.shape.billing_flag_source in (UNKNOWN, FLAG_ON_LIST_WITH_BILLINGINFO)
        return self.client.user_pages(include_billing_info=ask, **query)

    def _contacts_phase(self, *, since: datetime | None, prune: bool) -> None:
        if self._user_contacts_blocked():
            return
        self.reading = "billing contacts (users)"
        kept: set[str] = set()
        seen_users: set[int] = set()
        for page in self._changed_pages(_FEEDS[ENTITY_CONTACTS], since, self._user_pages):
            self._count_repeated(ENTITY_CONTACTS, page)
            seen_users.update(user_id for user_id in map(_payload_id, page.records) if user_id is not None)
            kept.update(f"{customer_id}:{key}" for customer_id, key in self._contacts_page(page.records, with_customer=True))
        self._note_repeated(ENTITY_CONTACTS)
        if prune and ENTITY_CONTACTS not in self.unidentified:
            if self.has_open_errors:  # every user was readable this time: earlier id-less errors are over
                SyncError.objects.filter(connection=self.connection, entity=ENTITY_CONTACTS, halopsa_id__isnull=True,
                                         resolved_at__isnull=True).update(resolved_at=self.now)
            # A complete read of the users: user contacts that no longer qualify (or whose user is
            # gone) are removed; accounts contacts belong to the customers phase. Users whose
            # record could not be read, or whose billing flag is not known yet, keep their contacts.
            keep_users = self.failed_user_ids | self.waiting_user_ids | self.flagless_user_ids
            stale_users = {
                pk: user_id for pk, customer_id, key, user_id in Contact.objects.filter(
                    customer__connection=self.connection, customer__origin=Origin.HALOPSA, halopsa_key__startswith="user:",
                ).values_list("pk", "customer_id", "halopsa_key", "halopsa_user_id").iterator(chunk_size=2000)
                if f"{customer_id}:{key}" not in kept and user_id not in keep_users
            }
            # A user the list did not show at all may have been skipped while it was paged: only
            # users HaloPSA confirms are gone lose their contacts that way (`_confirmed_gone`).
            unseen = {user_id for user_id in stale_users.values() if user_id is not None and user_id not in seen_users}
            still_there = unseen - self._confirmed_gone(ENTITY_CONTACTS, unseen, seen_users)
            stale = [pk for pk, user_id in stale_users.items() if user_id not in still_there]
            for start in range(0, len(stale), CHUNK):
                with transaction.atomic():
                    Contact.objects.filter(pk__in=stale[start:start + CHUNK]).delete()
            self.counts.updated += len(stale)

    def _contacts_page(self, records: list[Any], *, with_customer: bool = False) -> set:
        """Apply one page of HaloPSA users to billing contacts. Returns the contact keys kept
        (as (customer pk, key) pairs when `with_customer`, else keys). A user whose billing flag
        is not on its row gets it from its detail (`_billing_flags`) or, until then, keeps the
        contacts it has."""
        rule = self.connection.billing_contact_rule
        flag_field = self.shape.billing_flag_field or mapping.BILLING_FLAG_FIELD
        desired: dict[int, tuple[int | None, dict[str, Any] | None]] = {}  # user id -> (client id, contact)
        flag_unknown: dict[int, tuple[int | None, Any]] = {}  # user id -> (client id, row)
        newest, unstamped = None, 0
        for payload in records:
            try:
                user_id = mapping.parse_id(payload.get("id") if isinstance(payload, Mapping) else None, "user id")
                client_id = mapping.parse_id(payload.get("client_id"), "user client_id", required=False)
                try:
                    desired[user_id] = (client_id, mapping.billing_user_contact(payload, rule, flag_field=flag_field))
                except mapping.BillingFlagUnknown:
                    flag_unknown[user_id] = (client_id, payload)
            except MappingError as exc:
                user_id = _payload_id(payload)
                if user_id is not None:
                    self.failed_user_ids.add(user_id)
                self._record_error(ENTITY_CONTACTS, user_id, exc.message, payload)
                continue
            stamp = mapping.updated_at(payload, "user")
            if stamp is None:
                unstamped += 1
            elif newest is None or stamp > newest:
                newest = stamp
        self._saw(ENTITY_CONTACTS, newest, unstamped)
        if self.shape.billing_flag_source == UNKNOWN and records:
            # Found out from the rows themselves (asked with includebillinginfo=true, _user_pages):
            # rows without the key mean the flag is not on list rows.
            on_rows = any(isinstance(row, Mapping) and flag_field in row for row in records)
            self._learn(billing_flag_source=FLAG_ON_LIST_WITH_BILLINGINFO if on_rows else FLAG_ON_DETAIL)
        client_ids = {client_id for client_id, contact in desired.values() if client_id and contact}
        client_ids.update(client_id for client_id, _ in flag_unknown.values() if client_id)
        customers = {
            c.halopsa_id: c for c in Customer.objects.filter(connection=self.connection, halopsa_id__in=client_ids, origin=Origin.HALOPSA).order_by()
        }
        if flag_unknown:
            # Only users who could be billing contacts of ours need the flag: inactive users and
            # users without an address were decided above, users of clients we do not have here.
            flags = self._billing_flags({user_id: row for user_id, (client_id, row) in flag_unknown.items() if client_id in customers},
                                        flag_field)
            for user_id, (client_id, row) in flag_unknown.items():
                if client_id not in customers:
                    desired[user_id] = (client_id, None)
                elif flags.get(user_id) is not None:
                    desired[user_id] = (client_id, mapping.billing_user_contact(
                        row, rule, can_access_invoices=flags[user_id], flag_field=flag_field))
        kept: set = set()
        with transaction.atomic():
            existing = list(Contact.objects.filter(
                Q(customer__connection=self.connection)
                & (Q(halopsa_user_id__in=list(desired)) | Q(customer_id__in=[c.pk for c in customers.values()]))
            ))
            by_user: dict[int, list[Contact]] = defaultdict(list)
            by_customer: dict[int, list[Contact]] = defaultdict(list)
            for contact in existing:
                if contact.halopsa_user_id is not None:
                    by_user[contact.halopsa_user_id].append(contact)
                by_customer[contact.customer_id].append(contact)
            to_create, to_update, to_delete = [], [], set()
            for user_id, (client_id, contact) in desired.items():
                customer = customers.get(client_id) if contact is not None else None
                current = None
                for row in by_user.get(user_id, []):
                    if customer is not None and row.customer_id == customer.pk and current is None:
                        current = row
                    else:
                        to_delete.add(row.pk)  # moved to another client, or no longer a billing contact
                if customer is None or contact is None:
                    if current is not None:
                        to_delete.add(current.pk)
                    if by_user.get(user_id):
                        self.counts.updated += 1
                    continue
                duplicate = any(
                    row is not current and row.pk not in to_delete and row.email.lower() == contact["email"].lower()
                    for row in by_customer.get(customer.pk, [])
                )
                if duplicate:  # the address is already a billing contact of this customer
                    if current is not None:
                        to_delete.add(current.pk)
                        self.counts.updated += 1
                    continue
                kept.add((customer.pk, contact["halopsa_key"]) if with_customer else contact["halopsa_key"])
                if current is None:
                    row = Contact(customer=customer, **{k: contact[k] for k in ("halopsa_key", "halopsa_user_id", "source", "name", "email", "fingerprint")})
                    to_create.append(row)
                    by_customer[customer.pk].append(row)
                    self.counts.created += 1
                elif current.fingerprint != contact["fingerprint"]:
                    current.name, current.email, current.fingerprint = contact["name"], contact["email"], contact["fingerprint"]
                    current.updated_at = self.now
                    to_update.append(current)
                    self.counts.updated += 1
                else:
                    self.counts.unchanged += 1
            if to_delete:
                Contact.objects.filter(pk__in=to_delete).delete()
            Contact.objects.bulk_create(to_create)
            Contact.objects.bulk_update(to_update, ["name", "email", "fingerprint", "updated_at"])
            self._resolve_errors(ENTITY_CONTACTS, list(desired))
            self._page_done(len(records))
        return kept

    def _billing_flags(self, rows: dict[int, Any], flag_field: str) -> dict[int, bool | None]:
        """{user id: billing flag or None} for users whose list rows lack it, from GET /Users/{id}
        (reference §4.2: only the full `Users` record has canaccessinvoices). A user's detail is
        read again only when its list row changed since (HaloUserFlag keeps that row's
        fingerprint), at most `user_details_per_run()` per run; users beyond that, or whose detail
        lacks the flag too, are None: they keep the contacts they have."""
        if not rows:
            return {}
        stored = {f.halopsa_user_id: f for f in HaloUserFlag.objects.filter(connection=self.connection, halopsa_user_id__in=list(rows))}
        flags: dict[int, bool | None] = {}
        to_create, to_update = [], []
        for user_id, row in rows.items():
            list_fingerprint = mapping.fingerprint({"flag": flag_field, "row": row})  # another flag: read again
            known = stored.get(user_id)
            if known is not None and known.checked_at is not None and known.list_fingerprint == list_fingerprint:
                flags[user_id] = known.can_access_invoices
            elif self.user_details_left <= 0:
                flags[user_id] = None
                self.waiting_user_ids.add(user_id)
                continue
            else:
                self.user_details_left -= 1
                try:
                    detail = self.client.get_user(user_id)
                except HaloNotFound:  # gone since the list was read: a complete read removes its contacts
                    flags[user_id] = None
                    self.waiting_user_ids.add(user_id)
                    continue
                except HaloRateLimited:  # out of budget: the rest wait for the next run
                    self.user_details_left = 0
                    flags[user_id] = None
                    self.waiting_user_ids.add(user_id)
                    continue
                flags[user_id] = mapping.billing_flag(detail, flag_field)
                if known is None:
                    known = HaloUserFlag(connection=self.connection, halopsa_user_id=user_id)
                    to_create.append(known)
                else:
                    to_update.append(known)
                known.list_fingerprint, known.can_access_invoices, known.checked_at = list_fingerprint, flags[user_id], self.now
            if flags[user_id] is None:
                self.flagless_user_ids.add(user_id)
        with transaction.atomic():
            HaloUserFlag.objects.bulk_create(to_create)
            HaloUserFlag.objects.bulk_update(to_update, ["list_fingerprint", "can_access_invoices", "checked_at"])
        return flags

    def _note_waiting_users(self) -> None:
        if self.waiting_user_ids:
            self._note(f"{len(self.waiting_user_ids)} HaloPSA user(s) wait for their billing flag (read from each "
                       f"user's details, at most {user_details_per_run()} per run); they keep their billing contacts "
                       "until the next sync reads it.")
        if self.flagless_user_ids:
            self._note(f"{len(self.flagless_user_ids)} HaloPSA user(s) show no {self.shape.billing_flag_field} even in "
                       "their details; they keep the billing contacts they have.")

    # -- invoices ------------------------------------------------------------------------------

    def _invoices_phase(self, *, since: datetime | None, payment_statuses: list[int] | None, detect_deletions: bool) -> None:
        """Invoices are written a few pages at a time (`write_batch_size` records, or whatever
        arrived within WRITE_BATCH_SECONDS): a commit per 100-row page cost a full sync as much as
        inserting its rows. When HaloPSA fails mid-way the pages read so far are written before
        the run fails; a killed worker loses at most the pages not yet written (the rerun reads
        them again)."""
        self.reading = "invoices"
        seen: set[int] = set()
        pending: list[tuple[dict[str, Any], Any]] = []
        pending_records, pending_since, batch = 0, time.monotonic(), write_batch_size()
        if payment_statuses:
            source = self._pages(self.client.invoice_pages(include_lines=True, payment_statuses=payment_statuses))
        else:
            source = self._changed_pages(_FEEDS[ENTITY_INVOICES], since,
                                         functools.partial(self.client.invoice_pages, include_lines=True))
        pages = iter(source)
        while True:
            try:
                page = next(pages)
            except StopIteration:
                break
            except HaloError:
                if pending_records:
                    self._store_invoices(pending, pending_records)
                raise
            self._count_repeated(ENTITY_INVOICES, page)
            pending.extend(self._map_invoices(page.records, seen))
            pending_records += len(page.records)
            if len(pending) >= batch or time.monotonic() - pending_since >= WRITE_BATCH_SECONDS:
                self._store_invoices(pending, pending_records)
                pending, pending_records, pending_since = [], 0, time.monotonic()
        if pending_records:
            self._store_invoices(pending, pending_records)
        self._note_repeated(ENTITY_INVOICES)
        if detect_deletions:
            self._flag_missing(Invoice, seen)

    def _one_invoice(self, halopsa_id: int, *, with_pdf: bool) -> None:
        try:
            payload = self.client.get_invoice(halopsa_id, include_lines=True)
        except HaloNotFound:
            with transaction.atomic():
                self.counts.updated += Invoice.objects.filter(
                    connection=self.connection, origin=Origin.HALOPSA, halopsa_id=halopsa_id, deleted_in_halopsa_at__isnull=True,
                ).update(deleted_in_halopsa_at=self.now, updated_at=self.now)
                self._page_done(1)
            return
        self._grow_total(1)
        self._invoices_page([payload])
        if with_pdf:
            self._one_pdf(halopsa_id)

    def _customers_for(self, client_ids: set[int], names: dict[int, str]) -> dict[int, int]:
        """{HaloPSA client id: customer pk} for the client ids of an invoice batch; clients we
        have not seen yet are fetched (one call each) - one HaloPSA deleted is kept as a flagged
        customer."""
        # Only the pk is used (the invoice's foreign key). No ORDER BY (see _write_invoices).
        customers = dict(Customer.objects.filter(connection=self.connection, halopsa_id__in=client_ids)
                         .order_by().values_list("halopsa_id", "pk"))
        for client_id in sorted(client_ids - set(customers)):
            try:
                payload = self.client.get_client(client_id)
            except HaloNotFound:
                customer, created = Customer.objects.get_or_create(
                    connection=self.connection, halopsa_id=client_id,
                    defaults={"name": names.get(client_id) or f"HaloPSA client {client_id}", "deleted_in_halopsa_at": self.now,
                              "last_seen_at": self.now},
                )
                self.counts.created += int(created)
            else:
                with self._beside_phase(1):
                    self._customers_page([payload])
                customer = Customer.objects.filter(connection=self.connection, halopsa_id=client_id).first()
            if customer is not None:
                customers[client_id] = customer.pk
        return customers

    def unknown_customer(self) -> Customer:
        if self._unknown is None:
            self._unknown = customer_unknown(self.connection)
        return self._unknown

    def _invoices_page(self, records: list[Any]) -> set[int]:
        """Upsert HaloPSA invoices with their lines and payments now. Returns the ids seen."""
        seen: set[int] = set()
        self._store_invoices(self._map_invoices(records, seen), len(records))
        return seen

    def _map_invoices(self, records: list[Any], seen: set[int]) -> list[tuple[dict[str, Any], Any]]:
        """Map HaloPSA invoices to (row, payload); adds every readable id to `seen`. A record that
        cannot be mapped becomes a sync error; credit notes and invoices older than the
        connection's "created since" are left out."""
        connection = self.connection
        mapped: list[tuple[dict[str, Any], Any]] = []
        newest, unstamped = None, 0
        for payload in records:
            try:
                row = mapping.map_invoice(payload, number_field=connection.invoice_number_field,
                                          default_currency=connection.default_currency)
            except MappingError as exc:
                halopsa_id = exc.halopsa_id or _payload_id(payload)
                if halopsa_id:
                    seen.add(halopsa_id)
                self._record_error(ENTITY_INVOICES, halopsa_id, exc.message, payload)
                continue
            seen.add(row["halopsa_id"])
            stamp = row["remote_updated_at"]
            if stamp is None:
                unstamped += 1
            elif newest is None or stamp > newest:
                newest = stamp
            if row["is_credit_note"]:
                continue  # credit notes are not invoices here; applied credit shows as a credit payment
            if (connection.invoices_created_since and row["invoice_date"] is not None
                    and row["invoice_date"] < connection.invoices_created_since):
                continue  # older than the connection's "invoices created since": never imported
            mapped.append((row, payload))
        self._saw(ENTITY_INVOICES, newest, unstamped)
        return mapped

    def _store_invoices(self, mapped: list[tuple[dict[str, Any], Any]], records: int) -> None:
        """Write mapped invoices in one transaction; `records` is how many HaloPSA records they
        came from (progress)."""
        if not mapped:
            with transaction.atomic():
                self._page_done(records)
            return
        client_ids = {r["halopsa_client_id"] for r, _ in mapped if r["halopsa_client_id"]}
        names = {r["halopsa_client_id"]: str(p.get("client_name") or "") for r, p in mapped if r["halopsa_client_id"]}
        customers = self._customers_for(client_ids, names)  # may call HaloPSA: outside the transaction
        self._store(lambda items, page_records: self._write_invoices(items, customers, page_records), mapped,
                    ENTITY_INVOICES, page_records=records)

    def _write_invoices(self, mapped: list[tuple[dict[str, Any], Any]], customers: dict[int, int], page_records: int) -> None:
        connection = self.connection
        with transaction.atomic():
            existing = {
                # raw is only ever replaced (a changed invoice gets the new payload), never read.
                # No ORDER BY: the model's default (-invoice_date) made SQLite walk the
                # (connection, invoice_date) index through every invoice of the connection on
                # every page, which made a full sync quadratic (100k invoices: 63 s of 113 s).
                i.halopsa_id: i for i in Invoice.objects.filter(
                    connection=connection, halopsa_id__in=[r["halopsa_id"] for r, _ in mapped]).defer("raw").order_by()
            }
            payments_by_invoice: dict[int, list[Payment]] = defaultdict(list)
            if existing:
                for payment in Payment.objects.filter(invoice_id__in=[i.pk for i in existing.values()]).defer("raw").order_by():
                    payments_by_invoice[payment.invoice_id].append(payment)
            to_create: list[dict[str, Any]] = []  # new invoices as column values (no model instances)
            to_update: list[Invoice] = []
            work: list[tuple[Invoice | None, dict[str, Any], dict[int, Payment]]] = []
            for row, payload in mapped:
                invoice = existing.get(row["halopsa_id"])
                if invoice is not None and invoice.origin != Origin.HALOPSA:
                    self.counts.unchanged += 1
                    continue
                local_payments = payments_by_invoice.get(invoice.pk, []) if invoice is not None else []
                links = link_platform_payments(row["payments"], local_payments)
                for halopsa_id, payment in links.items():
                    # Recorded now so the in-flight rule below already sees it as in HaloPSA.
                    Payment.objects.filter(pk=payment.pk, halopsa_id__isnull=True).update(halopsa_id=halopsa_id)
                    payment.halopsa_id = halopsa_id
                adjustment = Decimal("0.00") if invoice is None else payment_unpushed_adjustment(
                    invoice=invoice, payments=local_payments,
                    remote_payment_ids=(p["halopsa_id"] for p in row["payments"]),
                    remote_references=(p.get("reference") or "" for p in row["payments"]))
                effective = row["fingerprint"] if adjustment == 0 else mapping.fingerprint({"remote": row["fingerprint"], "unpushed": adjustment})
                if (invoice is not None and invoice.fingerprint == effective and invoice.deleted_in_halopsa_at is None
                        and not links and not _customer_outdated(invoice, row, customers)
                        and invoice.status_changed_locally_at is None):  # a status set here is re-checked: it may have settled
                    self.counts.unchanged += 1
                    continue
                values = self._invoice_values(invoice, row, payload, customers, adjustment, effective)
                if invoice is None:
                    values.update(connection_id=connection.pk, halopsa_id=row["halopsa_id"], origin=Origin.HALOPSA)
                    to_create.append(values)
                else:
                    for name, value in values.items():
                        setattr(invoice, name, value)
                    to_update.append(invoice)
                work.append((invoice, row, links))
            created_ids = _insert_invoices(connection.pk, to_create)
            Invoice.objects.bulk_update(to_update, INVOICE_UPDATE_FIELDS)
            self.counts.created += len(to_create)
            self.counts.updated += len(to_update)
            written = [(invoice.pk if invoice is not None else created_ids[row["halopsa_id"]], row, links) for invoice, row, links in work]
            self._write_lines(written, replace=[i.pk for i in to_update])
            self._write_payments(written, payments_by_invoice)
            self._resolve_errors(ENTITY_INVOICES, [r["halopsa_id"] for r, _ in mapped])
            self._page_done(page_records)

    def _invoice_values(self, invoice: Invoice | None, row: dict[str, Any], payload: Any, customers: dict[int, int],
                        adjustment: Decimal, effective_fingerprint: str) -> dict[str, Any]:
        """The invoice's column values (by attname) from HaloPSA's row: a new invoice (None) is
        inserted with them, an existing one takes them before its bulk_update."""
        client_id = row["halopsa_client_id"]
        values: dict[str, Any] = {}
        # Customer: HaloPSA's client; none -> "unknown". A person's assignment out of the unknown
        # queue stands until HaloPSA itself gives the invoice a (different) real client.
        halo_customer_id = customers.get(client_id) if client_id else None
        if invoice is not None and invoice.customer_assigned_at is not None:
            if client_id and client_id != invoice.halopsa_client_id and halo_customer_id is not None:
                values.update(customer_id=halo_customer_id, customer_assigned_at=None, customer_assigned_by_id=None)
        else:
            values["customer_id"] = halo_customer_id or self.unknown_customer().pk
        # Status follows the amounts (docs/push-rules.md, "Status"): HaloPSA's, corrected by
        # pushes still on their way, and never contradicted by a status set here.
        amount_paid = row["amount_paid"] + adjustment
        balance = row["balance"] - adjustment
        remote_status = row["status"]
        voided = remote_status == mapping.STATUS_VOID
        if invoice is not None and invoice.status_changed_locally_at is not None:
            # A status set here counts only while its push is on the way; once HaloPSA has had it,
            # HaloPSA's amounts and void flag decide (a mark as paid whose payment was deleted
            # there is open again).
            pending = status_push_on_the_way(invoice=invoice, read_started_at=self.started_at)
            if pending and status_conflict_winner(invoice=invoice, remote_status=remote_status,
                                                  remote_modified_at=row["remote_updated_at"]) == "local":
                voided = pending == mapping.STATUS_VOID
                if pending == mapping.STATUS_PAID and balance > 0:
                    amount_paid, balance = amount_paid + balance, Decimal("0.00")  # what the mark as paid settles
            else:
                values["status_changed_locally_at"] = None
        status = mapping.invoice_status(total=row["total"], amount_paid=amount_paid, balance=balance, voided=voided)
        if voided:
            balance = Decimal("0.00")  # a void invoice owes nothing; HaloPSA's amountdue stays in `raw`
        for name in ("number", "invoice_date", "due_date", "currency", "subtotal", "tax", "total", "is_credit_note",
                     "pdf_attachment_id", "remote_updated_at"):
            values[name] = row[name]
        values.update(
            halopsa_client_id=client_id, amount_paid=amount_paid, balance=balance, status=status, remote_status=remote_status,
            fingerprint=effective_fingerprint, raw=payload, last_seen_at=self.now, updated_at=self.now, deleted_in_halopsa_at=None,
        )
        return values

    def _write_lines(self, written: list[tuple[int, dict[str, Any], Any]], *, replace: list[int]) -> None:
        """Lines of every written invoice are replaced as a whole (two statements per page)."""
        for start in range(0, len(replace), CHUNK):
            InvoiceLine.objects.filter(invoice_id__in=replace[start:start + CHUNK]).delete()
        lines = []
        for invoice_id, row, _ in written:
            for line in row["lines"]:  # the mapped line becomes the row (no copy: lines are most rows)
                line["invoice_id"] = invoice_id
                lines.append(line)
        insert_rows(InvoiceLine, lines)

    def _write_payments(self, written: list[tuple[int, dict[str, Any], dict[int, Payment]]],
                        payments_by_invoice: dict[int, list[Payment]]) -> None:
        """Mirror HaloPSA's embedded payments: create new, update changed, remove vanished ones.

        Platform payments are matched by halopsa_id or, before their push recorded the id, by
        reference; they keep source "platform" and are never removed here (one deleted in HaloPSA
        is marked voided, see below).
        """
        to_create: list[dict[str, Any]] = []
        to_update, to_delete, vanished_platform = [], [], []
        for invoice_id, row, links in written:
            local = payments_by_invoice.get(invoice_id, [])
            by_halopsa_id = {p.halopsa_id: p for p in local if p.halopsa_id is not None}
            remote_ids = set()
            for remote in row["payments"]:
                remote_ids.add(remote["halopsa_id"])
                current = by_halopsa_id.get(remote["halopsa_id"]) or links.get(remote["halopsa_id"])
                if current is not None and current.source == Origin.PLATFORM:
                    continue  # ours: amount and reference are what we pushed
                if current is None:
                    # The mapped payment is also its raw record (what HaloPSA sent, as we read it).
                    to_create.append({**remote, "invoice_id": invoice_id, "connection_id": self.connection.pk,
                                      "source": Origin.HALOPSA, "raw": remote})
                elif current.fingerprint != remote["fingerprint"]:
                    current.kind, current.amount, current.paid_on = remote["kind"], remote["amount"], remote["paid_on"]
                    current.method, current.reference, current.fingerprint = remote["method"], remote["reference"], remote["fingerprint"]
                    current.raw = remote
                    to_update.append(current)
            to_delete.extend(p.pk for p in local if p.source == Origin.HALOPSA and p.halopsa_id not in remote_ids)
            vanished_platform.extend(
                p.pk for p in local
                if p.source == Origin.PLATFORM and p.halopsa_id is not None and p.voided_at is None and p.halopsa_id not in remote_ids
            )
        if to_delete:
            Payment.objects.filter(pk__in=to_delete).delete()
        if vanished_platform:
            self._void_platform_payments_deleted_in_halopsa(vanished_platform)
        Payment.objects.bulk_update(to_update, ["kind", "amount", "paid_on", "method", "reference", "fingerprint", "raw"])
        insert_rows(Payment, to_create)

    def _void_platform_payments_deleted_in_halopsa(self, payment_ids: list[int]) -> None:
        """A platform payment HaloPSA no longer lists was deleted there: mark it voided (the
        balance already follows HaloPSA). Only when its post finished before this run started: a
        page read before a push landed does not list that payment yet, and must not void it."""
        confirmed = PushJob.objects.filter(
            payment_id__in=payment_ids, kind=PushJob.Kind.PAYMENT_CREATE, state=PushJob.State.DONE,
            done_at__lt=self.started_at,
        ).values_list("payment_id", flat=True)
        self.counts.updated += Payment.objects.filter(pk__in=list(confirmed), voided_at__isnull=True).update(voided_at=self.now)

    # -- PDFs ----------------------------------------------------------------------------------

    def _pdfs_phase(self, *, limit: int) -> None:
        """Fetch PDFs that are missing or stale: unpaid invoices first, then paid ones newest
        first, at most `limit` per run (each is one API call). PDFs come last, spend at most their
        share of the request budget (`pdf_budget`) and stop after `pdf_phase_seconds`; a backlog
        left by the time limit continues in a follow-up run, and any PDF is also fetched on first
        view (`invoice_pdf_ensure`)."""
        if limit <= 0:
            return
        needed = (
            Invoice.objects.filter(
                connection=self.connection, origin=Origin.HALOPSA, halopsa_id__isnull=False, pdf_attachment_id__isnull=False,
                deleted_in_halopsa_at__isnull=True, archived_at__isnull=True,
            )
            .filter(Q(pdf__isnull=True) | ~Q(pdf__attachment_id=F("pdf_attachment_id")))
        )
        candidate_ids = list(
            needed.annotate(unpaid_first=Case(
                When(status__in=[Invoice.Status.OPEN, Invoice.Status.PARTIALLY_PAID], then=Value(0)),
                default=Value(1), output_field=IntegerField(),
            ))
            .order_by("unpaid_first", "-invoice_date", "-id").values_list("pk", flat=True)[:limit]
        )
        if not candidate_ids:
            return
        self._grow_total(len(candidate_ids))
        # How many PDFs are missing in all (a first sync's backlog is more than one batch), for the page and the message.
        needed_count = needed.count() if len(candidate_ids) == limit else len(candidate_ids)
        if self.current_phase is not None:
            self.current_phase["needed"] = needed_count
        share = pdf_budget(self.connection)
        deadline = min(time.monotonic() + pdf_phase_seconds(), self.deadline)  # the run's end comes first if sooner
        stopped = (f"at most {limit:,} are fetched per run" if needed_count > len(candidate_ids)
                   else "HaloPSA no longer had the file an invoice named; it is read again with the invoice")
        for fetched, invoice in enumerate(_pdf_candidates(candidate_ids)):
            if not self._pdf_slot(share, deadline):
                # Out of time, not of work: a follow-up run continues, but only after progress
                # (a run that fetched nothing would just queue the next one).
                self.pdf_backlog = len(candidate_ids) - fetched if fetched else 0
                stopped = f"the PDF phase's {pdf_phase_seconds() / 60:.0f} minutes ran out"
                break
            try:
                content = self.client.get_invoice_pdf(invoice.halopsa_id, attachment_id=invoice.pdf_attachment_id)
            except HaloNotFound:
                continue  # the attachment changed since we read the invoice; the next invoice sync brings the new id
            except HaloRateLimited:
                stopped = "HaloPSA's rate limit was reached"
                break  # out of budget: the rest waits for the next run, invoice data is already in
            except HaloDeadlineReached:  # the run's time is up: like the phase's own limit
                self.pdf_backlog = len(candidate_ids) - fetched if fetched else 0
                stopped = "the run's time ran out"
                break
            except HaloAuthError:
                raise
            except HaloError as exc:
                self._record_error(ENTITY_PDFS, invoice.halopsa_id, f"PDF of invoice {invoice.number}: {exc.message}", None)
                stopped = "a download failed (see the sync errors)"
                break
            with transaction.atomic():
                pdf_store(invoice=invoice, content=content, attachment_id=invoice.pdf_attachment_id)
                self.counts.updated += 1
                self.pdf_updates += 1
                self._resolve_errors(ENTITY_PDFS, [invoice.halopsa_id])  # an earlier failed download is over
                self._page_done(1)
            self._keep_lease()
        self._note_pdf_backlog(needed_count, stopped)

    def _note_pdf_backlog(self, needed: int, stopped: str) -> None:
        """A run that leaves PDFs to fetch says how many it fetched of those needed, why it
        stopped, and when the next batch runs."""
        fetched = self.current_phase["done"] if self.current_phase is not None else 0
        left = needed - fetched
        if left <= 0:
            return
        from integrations.schedules import next_run_at

        if self.pdf_backlog:
            when = "a PDF-only run was queued to continue now"
        elif self.connection.enabled and not self.connection.paused:
            when = f"the next batch runs with the hourly sync at {next_run_at(self.connection.schedule_minute):%H:%M} UTC"
        else:
            when = "the next batch runs with the next sync you start (scheduled syncs are paused or disabled)"
        self._note(f"Invoice PDFs: {fetched:,} of {needed:,} needed were fetched ({stopped}); {left:,} still to fetch: {when}. "
                   "Any PDF is also fetched when someone opens it.")

    def _pdf_slot(self, share: RequestBudget, deadline: float) -> bool:
        """Wait for a request slot in the PDFs' budget share; False when the phase's time runs out
        first. Long waits are cut into pieces with a lease renewal between them."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            share.max_wait = min(remaining, lease_ttl() / 3)
            try:
                share.acquire()
                return True
            except HaloRateLimited as exc:
                pause = min(exc.retry_after or 1.0, lease_ttl() / 3)
                if pause >= remaining:
                    return False
                time.sleep(pause)
                self._keep_lease(now=True)

    def _one_pdf(self, halopsa_id: int) -> None:
        invoice = Invoice.objects.filter(connection=self.connection, halopsa_id=halopsa_id, origin=Origin.HALOPSA).first()
        if invoice is None or invoice.pdf_attachment_id is None:
            return
        current = InvoicePdf.objects.filter(invoice=invoice).values_list("attachment_id", flat=True).first()
        if current == invoice.pdf_attachment_id:
            return
        try:
            invoice_pdf_ensure(invoice=invoice, client=self.client)
        except PdfUnavailable as exc:
            self._record_error(ENTITY_PDFS, halopsa_id, exc.message, None)
        else:
            self.counts.updated += 1
            self.pdf_updates += 1
            self._resolve_errors(ENTITY_PDFS, [halopsa_id])


def _pdf_candidates(ids: list[int]) -> Iterator[Invoice]:
    """The invoices of `ids`, in that order, loaded a chunk at a time with only what a PDF
    download needs: a first sync's backlog (or a large HALOPSA_PDF_BATCH) never holds tens of
    thousands of full invoices with their raw payloads in memory (66k: 1.2 GB)."""
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        loaded = Invoice.objects.only("pk", "connection_id", "halopsa_id", "pdf_attachment_id", "number", "status").in_bulk(chunk)
        for pk in chunk:
            if pk in loaded:  # not deleted meanwhile
                yield loaded[pk]


def customer_unknown(connection: Connection) -> Customer:
    """The connection's "unknown" customer (invoices HaloPSA has no customer for)."""
    try:
        with transaction.atomic():
            customer, _ = Customer.objects.get_or_create(
                connection=connection, is_unknown=True,
                defaults={"name": Customer.UNKNOWN_NAME, "halopsa_id": None, "origin": Origin.HALOPSA},
            )
    except IntegrityError:  # created concurrently
        customer = Customer.objects.get(connection=connection, is_unknown=True)
    return customer


def _customer_outdated(invoice: Invoice, row: dict[str, Any], customers: dict[int, int]) -> bool:
    """The invoice sits with another customer than HaloPSA's although that customer is here now
    (it could not be read when the invoice was written); a person's assignment is left alone."""
    customer_id = customers.get(row["halopsa_client_id"]) if row["halopsa_client_id"] else None
    return customer_id is not None and invoice.customer_assigned_at is None and invoice.customer_id != customer_id
