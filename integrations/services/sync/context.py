"""The state of one running sync, shared by the per-entity readers and writers: the run and its
counts, progress per phase, the lease, the HaloPSA client and what the run has learnt or must say.

A reader/writer (customers, contacts, invoices, PDFs) takes the context and reports through it:
`pages` (progress totals and the lease, as each page arrives), `store` (one page in one
transaction, record by record when the database refuses the page), `page_done` (counts and
progress, committed with the page's data), `record_error`, `note`, `learn`, `saw` (change times,
for the cursors).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, Mapping

from django.db import DatabaseError, transaction
from django.utils import timezone

from integrations.conf import halo_settings
from integrations.halopsa import mapping
from integrations.halopsa.client import HaloClient, Page, RequestStats
from integrations.halopsa.mapping import MappingError
from integrations.halopsa.shape import HaloShape
from integrations.models import Customer, Invoice, Origin, SyncError, SyncRun
from integrations.services.leases import lease_renew
from integrations.services.sync.config import (
    CHUNK,
    SyncAborted,
    lease_name,
    lease_renew_interval,
    lease_ttl,
    run_seconds,
)

logger = logging.getLogger(__name__)

Mapped = list[tuple[dict[str, Any], Any]]  # (mapped row, HaloPSA's payload) per record


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged, "failed": self.failed}


def payload_id(payload: Any) -> int | None:
    if isinstance(payload, Mapping):
        try:
            return mapping.parse_id(payload.get("id"), required=False)
        except MappingError:
            return None
    return None


class RunContext:
    """One execution of one SyncRun (holds the lease while it runs)."""

    def __init__(self, run: SyncRun, *, lease_owner: str, progress: Callable[[SyncRun], None] | None = None) -> None:
        self.run = run
        self.connection = run.connection
        self.lease_owner = lease_owner
        self.lease_renewed = time.monotonic()  # sync_execute acquired it just now
        self.progress = progress
        self.stats = RequestStats()
        self.counts = Counts()
        self.started_at = run.started_at or timezone.now()
        self.now = self.started_at
        self._client: HaloClient | None = None
        # The connection's "unknown" customer once an invoice needed it (reset when a page's
        # transaction that may have created it rolls back).
        self.unknown: Customer | None = None
        self.has_open_errors = SyncError.objects.filter(connection=self.connection, resolved_at__isnull=True).exists()
        self.progress_done = 0
        self.progress_total = 0
        # Progress per phase (SyncRun.progress_phases): what the dashboard shows, see phase().
        self.phases: list[dict[str, Any]] = []
        self.current_phase: dict[str, Any] | None = None
        # Entities with a record that failed without a readable id: a full read then cannot tell
        # which row it was, so it flags nothing as deleted this time.
        self.unidentified: set[str] = set()
        self.realtime_poll = (
            run.trigger == SyncRun.Trigger.SCHEDULE
            and run.scope == SyncRun.Scope.INCREMENTAL
            and self.connection.is_realtime
        )
        # PDF downloads count as updates but are not records a webhook missed (a webhook run
        # fetches the PDF after its invoice), so the poll's "fixed" figure leaves them out.
        self.pdf_updates = 0
        # PDFs the time limit left for a follow-up run.
        self.pdf_backlog = 0
        self.shape = HaloShape.of(self.connection)
        # Cursors (see plan.next_cursor): per entity, the newest change time seen in HaloPSA's records,
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
        # What a person should know about how this run read HaloPSA (ends up in the run's message).
        self.notes: list[str] = []

    @property
    def client(self) -> HaloClient:
        if self._client is None:
            self._client = HaloClient.for_connection(
                self.connection, stats=self.stats, deadline=self.deadline, **self._budget_overrides()
            )
        return self._client

    def _budget_overrides(self) -> dict[str, Any]:
        """A run that reads lists waits for the request budget instead of failing: at 300 requests
        per 5 minutes a first full sync of a large MSP spans several windows, and failing at the
        first spent window (the client's default wait is 30 s) would restart it from page one every
        hour and never finish. The wait stays under half the lease TTL (the lease is checked as each
        page arrives, see keep_lease). Single-record runs (webhooks) keep the short wait: their callers retry."""
        if self.run.target_halopsa_id:
            return {}
        configured = halo_settings()
        wait = min(configured.rate_window * 1.1 + 1, lease_ttl() / 2)
        return {"budget_max_wait": wait} if wait > configured.budget_max_wait else {}

    # -- what the run learns and says ------------------------------------------------------------

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def learn(self, **facts: Any) -> None:
        """Store what this run found out about the instance on the connection's HaloShape (only
        these fields: what the probe or a push wrote meanwhile stays)."""
        from integrations.services.connections import connection_shape_update

        for name, value in facts.items():
            setattr(self.shape, name, value)
        connection_shape_update(connection=self.connection, **facts)

    def saw(self, entity: str, newest: datetime | None, unstamped: int) -> None:
        """Records of `entity` were just read: `newest` is the newest change time among them,
        `unstamped` how many had none."""
        self.last_read[entity] = time.monotonic()
        if newest is not None and (entity not in self.newest_change or newest > self.newest_change[entity]):
            self.newest_change[entity] = newest
        if unstamped:
            self.unstamped[entity] = self.unstamped.get(entity, 0) + unstamped

    def reading_took(self, entity: str) -> timedelta:
        """How long the run had been reading when it last read `entity` (our monotonic clock)."""
        return timedelta(seconds=self.last_read[entity] - self.started_monotonic)

    # -- pages and the lease -----------------------------------------------------------------------

    def pages(self, pages: Iterator[Page], *, count_each_page: bool = False) -> Iterator[Page]:
        """Yield pages, growing the progress total by each query's record_count (by each page's
        rows for a read that may stop early, whose phase has no total); the lease is checked (and
        renewed when due) as each page arrives, before anything of it is written."""
        first = True
        for page in pages:
            if count_each_page:
                self.grow_total(len(page.records), known=False)
            elif first:
                self.grow_total(page.record_count)
                first = False
            self.keep_lease()
            yield page

    def keep_lease(self, *, now: bool = False) -> None:
        """Renew the connection's lease when `lease_renew_interval()` has passed since the last
        renewal (or `now`); a run that lost it stops before writing more.

        The lease stays ours for the TTL after each renewal, and the longest pause between two
        checks (a wait for the request budget) is under half of it, so checking every page is
        enough and renewing every page (a write each) is not needed."""
        if not now and time.monotonic() - self.lease_renewed < lease_renew_interval():
            return
        if not lease_renew(lease_name(self.connection.pk), self.lease_owner, lease_ttl()):
            raise SyncAborted(
                "The sync lost its lock on the connection (it ran too long without progress); it will be retried."
            )
        self.lease_renewed = time.monotonic()

    # -- progress ------------------------------------------------------------------------------

    def plan_phases(self, names: list[str]) -> None:
        """The phases this run goes through, in order, all waiting: the page shows "step 2 of 4"
        from the start, and a phase's size is added when its read begins, never to a total that
        was shown before."""
        self.phases = [{"phase": name, "done": 0, "total": None, "state": "waiting"} for name in names]

    def phase(self, name: str) -> None:
        """`name`'s phase starts; the one before it is done."""
        self.end_phase("done")
        phase = next((p for p in self.phases if p["phase"] == name), None)
        if phase is None:  # not planned (a PDF fetched with its invoice): progress goes on in the current list
            phase = {"phase": name, "done": 0, "total": None, "state": "waiting"}
            self.phases.append(phase)
        phase["state"] = "running"
        self.current_phase = phase

    def end_phase(self, state: str) -> None:
        phase, self.current_phase = self.current_phase, None
        if phase is not None:
            phase["state"] = state
            if state == "done" and phase["total"] is None:
                phase["total"] = phase["done"]  # a read that stopped at the cursor: what it read is its size

    def close_phases(self, *, failed: bool) -> None:
        """At the end of the run: the phase at work is done (or where the run failed); phases the
        run never reached are skipped (or, after a failure, still waiting)."""
        self.end_phase("failed" if failed else "done")
        if not failed:
            for phase in self.phases:
                if phase["state"] == "waiting":
                    phase["state"] = "skipped"
        self.run.progress_phases = self.phases
        SyncRun.objects.filter(pk=self.run.pk).update(progress_phases=self.phases)

    @contextmanager
    def beside_phase(self, records: int) -> Iterator[None]:
        """`records` written on the side (an invoice's customer fetched while the invoices are
        read) count for the run, not for the step at work, whose "x of y" stays true."""
        phase, self.current_phase = self.current_phase, None
        self.progress_total += records
        try:
            yield
        finally:
            self.current_phase = phase

    def grow_total(self, records: int, *, known: bool = True) -> None:
        """`records` more are to be read: the run's total and, when the phase's size is known
        (a list's record_count, the PDFs chosen), the phase's."""
        self.progress_total += records
        phase = self.current_phase
        if phase is not None and known:
            phase["total"] = (phase["total"] or 0) + records

    def page_done(self, records: int) -> None:
        """Called inside the page's transaction: counts and progress commit with the data."""
        self.progress_done += records
        phase = self.current_phase
        if phase is not None:
            phase["done"] += records
            if phase["total"] is not None and phase["done"] > phase["total"]:
                phase["total"] = phase["done"]  # HaloPSA sent more than it announced: never "done > total"
        self.save_counts()
        if self.progress is not None:
            self.progress(self.run)

    def save_counts(self) -> None:
        numbers = self.stats.as_dict()
        run = self.run
        run.created, run.updated = self.counts.created, self.counts.updated
        run.unchanged, run.failed = self.counts.unchanged, self.counts.failed
        run.progress_done, run.progress_total = self.progress_done, max(self.progress_total, self.progress_done)
        run.api_requests, run.api_retries, run.api_bytes = numbers["requests"], numbers["retries"], numbers["bytes"]
        if self.realtime_poll:
            run.fixed_by_poll = self.counts.created + self.counts.updated - self.pdf_updates
        run.progress_phases = self.phases
        SyncRun.objects.filter(pk=run.pk).update(
            created=run.created,
            updated=run.updated,
            unchanged=run.unchanged,
            failed=run.failed,
            progress_done=run.progress_done,
            progress_total=run.progress_total,
            progress_phases=self.phases,
            api_requests=run.api_requests,
            api_retries=run.api_retries,
            api_bytes=run.api_bytes,
            fixed_by_poll=run.fixed_by_poll,
        )

    # -- records that fail, and writing a page ---------------------------------------------------

    def record_error(self, entity: str, halopsa_id: int | None, message: str, payload: Any) -> None:
        if halopsa_id is None:
            self.unidentified.add(entity)
        SyncError.objects.create(
            run=self.run,
            connection=self.connection,
            entity=entity,
            halopsa_id=halopsa_id,
            message=message[:4000],
            payload=payload,
        )
        self.counts.failed += 1

    def resolve_errors(self, entity: str, halopsa_ids: Iterable[int]) -> None:
        if not self.has_open_errors:
            return
        ids = list(halopsa_ids)
        for start in range(0, len(ids), CHUNK):
            SyncError.objects.filter(
                connection=self.connection,
                entity=entity,
                resolved_at__isnull=True,
                halopsa_id__in=ids[start : start + CHUNK],
            ).update(resolved_at=self.now)

    def resolve_idless_errors(self, entity: str) -> None:
        """Every record of `entity` was readable this time: earlier errors without an id are over."""
        if self.has_open_errors:
            SyncError.objects.filter(
                connection=self.connection, entity=entity, halopsa_id__isnull=True, resolved_at__isnull=True
            ).update(resolved_at=self.now)

    def map_records(
        self, entity: str, records: list[Any], map_one: Callable[[Any], dict[str, Any]], seen: set[int]
    ) -> Mapped:
        """(row, payload) of each record `map_one` maps; every readable id goes to `seen`, a record
        that cannot be mapped becomes a sync error, and the rows' change times are noted (`saw`)."""
        mapped: Mapped = []
        newest, unstamped = None, 0
        for payload in records:
            try:
                row = map_one(payload)
            except MappingError as exc:
                halopsa_id = exc.halopsa_id or payload_id(payload)
                if halopsa_id:
                    seen.add(halopsa_id)
                self.record_error(entity, halopsa_id, exc.message, payload)
                continue
            seen.add(row["halopsa_id"])
            mapped.append((row, payload))
            stamp = row["remote_updated_at"]
            if stamp is None:
                unstamped += 1
            elif newest is None or stamp > newest:
                newest = stamp
        self.saw(entity, newest, unstamped)
        return mapped

    def flag_gone(self, model: type[Customer] | type[Invoice], halopsa_id: int) -> None:
        """HaloPSA answered 404 for the one record a run syncs: ours is flagged "deleted in HaloPSA"."""
        with transaction.atomic():
            self.counts.updated += model.objects.filter(
                connection=self.connection,
                origin=Origin.HALOPSA,
                halopsa_id=halopsa_id,
                deleted_in_halopsa_at__isnull=True,
            ).update(deleted_in_halopsa_at=self.now, updated_at=self.now)
            self.page_done(1)

    def store(self, write: Callable[[Mapped, int], None], mapped: Mapped, entity: str, *, page_records: int) -> None:
        """Write mapped records as one page; if the database refuses the page (say HaloPSA sent the
        same line or payment id twice), write them one by one so only the bad record fails."""
        counts = replace(self.counts)
        try:
            write(mapped, page_records)
            return
        except DatabaseError as exc:
            self.counts = counts
            self.unknown = None  # it may have been created in the rolled-back transaction
            if len(mapped) == 1:
                row, payload = mapped[0]
                logger.warning(
                    "connection %s: %s %s not stored: %s", self.connection.pk, entity, row["halopsa_id"], exc
                )
                self.record_error(
                    entity,
                    row["halopsa_id"],
                    f"{entity[:-1]} {row['halopsa_id']}: the record could not be stored ({type(exc).__name__}: {exc}).",
                    payload,
                )
                with transaction.atomic():
                    self.page_done(page_records)
                return
        for item in mapped:
            self.store(write, [item], entity, page_records=0)
        with transaction.atomic():
            self.page_done(page_records)
