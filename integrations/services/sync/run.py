"""Running syncs: queueing a run, executing it under the connection's lease, and what a finished
run leaves (its state and message, cursors, incidents, a follow-up for PDFs)."""

from __future__ import annotations

import gc
import logging
import threading
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.conf import halo_settings
from integrations.halopsa.client import RequestStats
from integrations.halopsa.exceptions import HaloAuthError, HaloDeadlineReached, HaloError
from integrations.halopsa.shape import HaloShape
from integrations.models import Connection, Incident, SyncCursor, SyncError, SyncRun
from integrations.services.audit import audit_record
from integrations.services.incidents import incident_open, incident_resolve
from integrations.services.leases import lease_acquire_waiting, lease_is_held, lease_release
from integrations.services.sync.config import (
    CONSECUTIVE_FAILURES_FOR_INCIDENT,
    ENTITIES,
    ENTITY_CONTACTS,
    ENTITY_CUSTOMERS,
    ENTITY_INVOICES,
    ENTITY_PDFS,
    FULL_SYNC_INTERVAL,
    INTERRUPTED_MESSAGE,
    LEASE_CONFLICT_MESSAGE,
    SyncAborted,
    lease_name,
    lease_ttl,
    run_seconds,
)
from integrations.services.sync.contacts import ContactsSync
from integrations.services.sync.context import RunContext
from integrations.services.sync.customers import CustomersSync
from integrations.services.sync.invoices import InvoicesSync
from integrations.services.sync.pdfs import PdfsSync
from integrations.services.sync.plan import Plan, cursors_after, phase_names, plan_for

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Public services


def sync_queue(
    *, connection: Connection, scope: str, trigger: str, entity: str = "", halopsa_id: int | None = None, user=None
) -> tuple[SyncRun, bool]:
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
            connection=connection,
            scope=scope,
            trigger=trigger,
            entity=ENTITY_INVOICES if scope == SyncRun.Scope.INVOICE else entity,
            target_halopsa_id=halopsa_id,
            requested_by=user if getattr(user, "is_authenticated", False) else None,
        )
        if user is not None:
            audit_record(
                user=user,
                action="sync.queue",
                obj=run,
                partner=connection.partner_id,
                summary=f"Queued a {run.get_scope_display().lower()} of {connection.name}",
                scope=scope,
                entity=entity,
                halopsa_id=halopsa_id,
            )
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
    active = SyncRun.objects.filter(connection=connection, state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING])
    for run in active.order_by("queued_at", "id"):
        stale = (run.state == SyncRun.State.RUNNING and not lease_is_held(lease_name(connection.pk))) or (
            run.state == SyncRun.State.QUEUED and run.queued_at < now - stale_queued_after
        )
        if stale:
            SyncRun.objects.filter(pk=run.pk, state=run.state).update(
                state=SyncRun.State.FAILED, finished_at=now, message=INTERRUPTED_MESSAGE
            )
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
    owner = _lease_take(name, wait=not run.target_halopsa_id)
    if owner is None:
        if run.state == SyncRun.State.QUEUED:
            _finish(run, SyncRun.State.FAILED, LEASE_CONFLICT_MESSAGE)
        return run  # "running": the holder is this very run in another worker
    runner: _Runner | None = None
    try:
        if not _claim(run):
            run.refresh_from_db()
            return run
        if not connection.enabled:
            return _finish(run, SyncRun.State.FAILED, "The connection is disabled.")
        runner = _Runner(run, lease_owner=owner, progress=progress)
        with _rare_cycle_collection():
            runner.execute()
    finally:
        lease_release(name, owner)
    run.refresh_from_db()
    if runner is not None and runner.ctx.pdf_backlog and run.state != SyncRun.State.FAILED:
        # The PDF phase ran out of time, not of work: continue at once instead of an hour later.
        sync_queue(connection=connection, scope=SyncRun.Scope.ENTITY, entity=ENTITY_PDFS, trigger=run.trigger)
    return run


def _lease_take(name: str, *, wait: bool) -> str | None:
    """The connection's lease (its owner token), or None while another run holds it."""
    # Single-record syncs (webhooks) hold the lease for a moment: a whole-connection run waits
    # that long rather than failing, so a burst of webhooks cannot make the hourly sync miss.
    wait_seconds = halo_settings().sync_lease_wait if wait else 0.0
    return lease_acquire_waiting(name, lease_ttl(), wait_seconds=wait_seconds, poll_seconds=0.2)


def _claim(run: SyncRun) -> bool:
    """Mark the run running from scratch (False: it finished meanwhile). Called with the lease held."""
    now = timezone.now()
    claimed = SyncRun.objects.filter(pk=run.pk, state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING]).update(
        state=SyncRun.State.RUNNING,
        started_at=now,
        finished_at=None,
        message="",
        created=0,
        updated=0,
        unchanged=0,
        failed=0,
        progress_done=0,
        progress_total=0,
        progress_phases=[],
        fixed_by_poll=0,
    )
    if not claimed:
        return False
    run.refresh_from_db()
    # Holding the lease proves no other run of this connection is alive: close runs a killed
    # worker left "running" (a CLI rerun never reaches _active_run), or they show forever.
    SyncRun.objects.filter(connection=run.connection, state=SyncRun.State.RUNNING).exclude(pk=run.pk).update(
        state=SyncRun.State.FAILED, finished_at=now, message=INTERRUPTED_MESSAGE
    )
    return True


class _RareCycleCollection:
    """A run allocates millions of short-lived containers (parsed payloads, mapped rows) that hold
    no reference cycles; at Python's default thresholds the cycle collector still runs thousands of
    times per run and now and then walks every long-lived object of the worker (figures:
    benchmarks/README.md, "History"). It runs less often while any run executes in this process; the
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
    run = SyncRun.objects.create(
        connection=connection, scope=scope, trigger=trigger, entity=entity, target_halopsa_id=int(halopsa_id)
    )
    return sync_execute(run=run)


def sync_error_retry(*, error: SyncError, user) -> SyncRun:
    """A person asks to sync a failed record again: queues a sync of just that record (or of its
    entity when the record has no usable id). The error is resolved when the record syncs."""
    connection = error.connection
    if error.entity == ENTITY_INVOICES and error.halopsa_id:
        run, _ = sync_queue(
            connection=connection,
            scope=SyncRun.Scope.INVOICE,
            trigger=SyncRun.Trigger.MANUAL,
            halopsa_id=error.halopsa_id,
            user=user,
        )
    elif error.entity == ENTITY_CUSTOMERS and error.halopsa_id:
        run, _ = sync_queue(
            connection=connection,
            scope=SyncRun.Scope.ENTITY,
            trigger=SyncRun.Trigger.MANUAL,
            entity=ENTITY_CUSTOMERS,
            halopsa_id=error.halopsa_id,
            user=user,
        )
    else:
        entity = error.entity if error.entity in ENTITIES else ENTITY_CUSTOMERS
        run, _ = sync_queue(
            connection=connection, scope=SyncRun.Scope.ENTITY, trigger=SyncRun.Trigger.MANUAL, entity=entity, user=user
        )
    audit_record(
        user=user,
        action="sync_error.retry",
        obj=error,
        partner=connection.partner_id,
        summary=f"Retried sync of {error.entity} {error.halopsa_id or ''}".strip(),
        run_id=run.pk,
    )
    return run


def sync_scope_for_schedule(connection: Connection) -> str:
    """Incremental, except full once a day (a full read is what detects deletions)."""
    last_full = SyncCursor.objects.filter(
        connection=connection, entity__in=[ENTITY_CUSTOMERS, ENTITY_INVOICES]
    ).values_list("last_full_sync_at", flat=True)
    values = list(last_full)
    if len(values) < 2 or any(v is None or v < timezone.now() - FULL_SYNC_INTERVAL for v in values):
        return SyncRun.Scope.FULL
    return SyncRun.Scope.INCREMENTAL


# ---------------------------------------------------------------------------------------------
# Run bookkeeping


def _finish(run: SyncRun, state: str, message: str = "", stats: RequestStats | None = None) -> SyncRun:
    values: dict[str, object] = {"state": state, "finished_at": timezone.now(), "message": message[:4000]}
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
        incident_open(
            connection,
            Incident.Kind.SYNC_FAILING,
            f"The last {CONSECUTIVE_FAILURES_FOR_INCIDENT} syncs of {connection.name} failed. Latest: {run.message}",
        )


class _Runner:
    """One execution of one SyncRun: its plan, run phase by phase by the per-entity readers and
    writers (which share the run's context), then the run's outcome."""

    def __init__(self, run: SyncRun, *, lease_owner: str, progress: Callable[[SyncRun], None] | None = None) -> None:
        self.run = run
        self.ctx = ctx = RunContext(run, lease_owner=lease_owner, progress=progress)
        self.contacts = ContactsSync(ctx)
        self.customers = CustomersSync(ctx)
        self.pdfs = PdfsSync(ctx)
        self.invoices = InvoicesSync(ctx, customers=self.customers, pdfs=self.pdfs)

    def execute(self) -> None:
        ctx = self.ctx
        error: BaseException | None = None
        try:
            self._probe_on_first_sync()
            plan = plan_for(self.run)
            self._run_plan(plan)
        except HaloDeadlineReached:
            error = SyncAborted(self._out_of_time_message())
            _finish(self.run, SyncRun.State.FAILED, error.message, ctx.stats)
        except HaloError as exc:
            error = exc
            _finish(self.run, SyncRun.State.FAILED, exc.message, ctx.stats)
        except SyncAborted as exc:
            error = exc
            _finish(self.run, SyncRun.State.FAILED, exc.message, ctx.stats)
        except Exception as exc:  # a bug must still close the run, with a message a person can use
            logger.exception("sync run %s failed", self.run.pk)
            error = exc
            _finish(
                self.run,
                SyncRun.State.FAILED,
                f"Internal error during the sync ({type(exc).__name__}); the team has been notified.",
                ctx.stats,
            )
        else:
            self._complete(plan)
        ctx.close_phases(failed=error is not None)
        _incidents_after(self.run, error)

    def _complete(self, plan: Plan) -> None:
        """The run read all it planned: its state and message, then its cursors."""
        ctx = self.ctx
        cursors = cursors_after(ctx, plan, users_waiting=bool(self.contacts.waiting_user_ids))
        self.contacts.note_waiting_users()
        failed = ctx.counts.failed
        state = SyncRun.State.PARTIAL if failed else SyncRun.State.SUCCEEDED
        parts = [f"{failed} record(s) could not be synced; see the sync errors."] if failed else []
        ctx.save_counts()
        _finish(self.run, state, " ".join(parts + ctx.notes), ctx.stats)
        for entity, values in cursors.items():
            SyncCursor.objects.update_or_create(connection=ctx.connection, entity=entity, defaults=values)

    def _out_of_time_message(self) -> str:
        minutes = run_seconds() / 60
        return (
            f"The sync stopped after {minutes:g} minutes, the most one run may take (HALOPSA_SYNC_RUN_SECONDS), "
            f"while reading {self.ctx.reading}: HaloPSA answered too slowly to finish in one run. Everything read so far "
            "is saved; the next sync reads the rest (what is saved already costs it no writes)."
        )

    def _probe_on_first_sync(self) -> None:
        """A connection's first sync learns its instance's shape first (services.connections.
        connection_probe, about ten read-only calls). A probe that fails (or does not exist yet)
        never fails the sync: what stays unknown is found out by the sync itself."""
        ctx = self.ctx
        if ctx.connection.shape_checked_at is not None or self.run.target_halopsa_id:
            return
        try:
            from integrations.services.connections import connection_probe
        except ImportError:
            return
        try:
            connection_probe(connection=ctx.connection)
        except Exception:  # noqa: BLE001 - whatever the probe met, the sync goes on without it
            logger.warning(
                "connection %s: the shape probe failed; the sync finds out what it needs itself",
                ctx.connection.pk,
                exc_info=True,
            )
        ctx.connection.refresh_from_db(fields=["halo_shape", "shape_checked_at"])
        ctx.shape = HaloShape.of(ctx.connection)

    def _run_plan(self, plan: Plan) -> None:
        ctx, target = self.ctx, self.run.target_halopsa_id
        ctx.plan_phases(phase_names(plan))
        if plan.customers == "one":
            assert target is not None  # plan_for: "one" only for a run with a target
            ctx.phase(ENTITY_CUSTOMERS)
            if self.customers.one(target):
                self.contacts.of_customer(target)
        elif plan.customers:
            since = plan.since.get(ENTITY_CUSTOMERS)
            ctx.phase(ENTITY_CUSTOMERS)
            self.customers.read(since=since, detect_deletions=since is None and plan.flag_deletions)
            # Users have their own cursor; a complete read of them also removes contacts that no
            # longer qualify.
            users_since = plan.since.get(ENTITY_CONTACTS)
            ctx.phase(ENTITY_CONTACTS)
            self.contacts.read(since=users_since, prune=users_since is None)
        if plan.invoices == "one":
            # plan_for: an entity run's "one" has a target; sync_queue and sync_record give a one-invoice run one.
            assert target is not None
            ctx.phase(ENTITY_INVOICES)
            self.invoices.one(target, with_pdf=plan.pdfs)
            return
        if plan.invoices:
            ctx.phase(ENTITY_INVOICES)
            since = plan.since.get(ENTITY_INVOICES) if plan.invoices == "read" else None
            self.invoices.read(
                since=since,
                # HaloPSA's own "unpaid" view asks for 0,-1 (-1 is the database default, docs/halopsa-facts.md
                # §3.2, §3.6); the shape adds 1 and any code the probe saw on invoices with money due.
                payment_statuses=list(ctx.shape.unpaid_codes) if plan.invoices == "unpaid" else None,
                detect_deletions=plan.invoices == "read" and since is None and plan.flag_deletions,
            )
        if plan.pdfs:
            ctx.phase(ENTITY_PDFS)
        if plan.pdfs and target and self.run.entity == ENTITY_PDFS:
            self.pdfs.one(target)
        elif plan.pdfs:
            self.pdfs.read()
