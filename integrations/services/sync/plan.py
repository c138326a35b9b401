"""What a run reads (from its scope and the cursors), and the cursors it leaves once complete."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from integrations.halopsa import mapping
from integrations.models import SyncCursor, SyncRun
from integrations.services.sync.config import (
    ENTITY_CONTACTS,
    ENTITY_CUSTOMERS,
    ENTITY_INVOICES,
    ENTITY_PDFS,
    SyncAborted,
    cursor_max_ahead,
    cursor_overlap,
)
from integrations.services.sync.context import RunContext
from integrations.services.sync.feeds import FEEDS


@dataclass
class Plan:
    customers: str | None = None  # "read" (clients, then users) | "one" | None
    invoices: str | None = None  # "read" | "unpaid" | "one" | None
    pdfs: bool = False
    # Where an entity's read starts (its cursor minus the overlap); an entity without one is read in full.
    since: dict[str, datetime] = field(default_factory=dict)
    advance_cursors: bool = False
    flag_deletions: bool = True  # after a read in full (never for "recent")


def plan_for(run: SyncRun) -> Plan:
    scope = run.scope
    plan = Plan()
    if scope in (SyncRun.Scope.FULL, SyncRun.Scope.INCREMENTAL, SyncRun.Scope.RECENT):
        plan.customers = plan.invoices = "read"
        plan.pdfs = True
        # "Fetch new data" (recent) reads what changed since the cursors like an incremental
        # run, but leaves cursors and deletions to the scheduled runs.
        plan.advance_cursors = plan.flag_deletions = scope != SyncRun.Scope.RECENT
        if scope != SyncRun.Scope.FULL:
            # Without a cursor an entity is read in full (first sync, or records without a
            # change time), which is always correct.
            for cursor in SyncCursor.objects.filter(connection=run.connection, changed_since__isnull=False):
                if cursor.entity in FEEDS and cursor.changed_since is not None:  # never None: the filter
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


def phase_names(plan: Plan) -> list[str]:
    """The phases the plan goes through, in order (a one-invoice sync's PDF is part of its invoice)."""
    names = [ENTITY_CUSTOMERS, ENTITY_CONTACTS] if plan.customers else []
    names += [ENTITY_INVOICES] if plan.invoices else []
    names += [ENTITY_PDFS] if plan.pdfs and plan.invoices != "one" else []
    return names


def cursors_after(ctx: RunContext, plan: Plan, *, users_waiting: bool) -> dict[str, dict[str, Any]]:
    """The cursor rows to write once the run has completed (and only then): successes
    recorded, cursors advanced (`next_cursor`) by runs that read everything changed.
    `users_waiting`: users still wait for their billing flag (the contacts cursor stays)."""
    now = timezone.now()
    current = dict(SyncCursor.objects.filter(connection=ctx.connection).values_list("entity", "changed_since"))
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
            values["changed_since"] = next_cursor(ctx, entity, current.get(entity), users_waiting=users_waiting)
        if in_full:
            values["last_full_sync_at"] = now
        touched[entity] = values
    if plan.pdfs and ctx.run.scope != SyncRun.Scope.INVOICE:
        touched[ENTITY_PDFS] = {"last_success_at": now}
    return touched


def next_cursor(ctx: RunContext, entity: str, current: datetime | None, *, users_waiting: bool) -> datetime | None:
    """An entity's cursor after a run that read everything changed since it: the newest change
    time seen in HaloPSA's own records (a high-water mark, in HaloPSA's frame: its timestamps
    carry no offset and may be its local time, docs/halopsa-facts.md §2) minus how long the run had been
    reading by then, measured on our monotonic clock. A record changed after the run started
    has a change time at or after that, so no read skips it. Never our clock, never
    backwards; no records seen keeps the cursor. Records without a change time cannot be read
    incrementally: the cursor is cleared, so the entity is read in full, and the run says so."""
    feed = FEEDS[entity]
    if ctx.unstamped.get(entity):
        ctx.note(
            f"{ctx.unstamped[entity]} {feed.label} record(s) in HaloPSA have no "
            f"{mapping.UPDATED_AT_FIELDS[feed.kind]}, so {feed.label} cannot be read incrementally: "
            "they are read in full until every record has one."
        )
        return None
    newest = ctx.newest_change.get(entity)
    if newest is None:
        return current
    if entity == ENTITY_CONTACTS and users_waiting:
        return current  # the next run reads the same users again and goes on with their flags
    candidate = min(newest - ctx.reading_took(entity), timezone.now() + cursor_max_ahead())
    return candidate if current is None or candidate > current else current
