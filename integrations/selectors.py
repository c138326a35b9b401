"""Read-only queries behind the dashboard.

Every function takes the signed-in user and starts from `visible_to(user)`, so a partner only ever
reads its own rows. Lists use select_related/annotations so a page costs the same number of
queries whatever the data size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from django.core.paginator import Page, Paginator
from django.db.models import (
    BigIntegerField,
    Count,
    Exists,
    F,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    prefetch_related_objects,
)
from django.db.models.functions import Cast, Coalesce, Round
from django.utils import timezone
from django_q.models import Schedule

from integrations.models import (
    AuditEvent,
    Connection,
    Contact,
    Customer,
    Incident,
    Invoice,
    Payment,
    PushJob,
    SyncCursor,
    SyncError,
    SyncRun,
    WebhookEvent,
)
from integrations.schedules import schedule_name
from integrations.tenancy import get_visible_or_404

if TYPE_CHECKING:
    from typing import TypedDict

    from django_stubs_ext import WithAnnotations

    class _HealthFacts(TypedDict):
        last_run_state: str | None
        last_run_message: str | None
        last_success_at: datetime | None
        is_syncing: bool
        open_errors: int
        pushes_for_review: int
        credentials_alert: bool
        sync_alert: bool
        push_alert: bool
        health_state: HealthState  # not annotated: connection_list / connection_for_page set it

    # A connection from `_with_health_facts`: the model plus the facts the health rule reads.
    HealthConnection = WithAnnotations[Connection, _HealthFacts]

PAGE_SIZE = 50
OPEN_STATES = (Invoice.Status.OPEN, Invoice.Status.PARTIALLY_PAID)
PUSH_OPEN_STATES = (PushJob.State.PENDING, PushJob.State.RUNNING, PushJob.State.RETRYING)
PUSH_FAILED_STATES = (PushJob.State.RETRYING, PushJob.State.NEEDS_REVIEW)

INVOICE_SORTS = {
    "date": ("invoice_date", "id"),
    "-date": ("-invoice_date", "-id"),
    "due": ("due_date", "id"),
    "-due": ("-due_date", "-id"),
    "balance": ("balance", "id"),
    "-balance": ("-balance", "-id"),
    "number": ("number", "id"),
    "-number": ("-number", "-id"),
}


def paginate(queryset: QuerySet, page_number: Any, per_page: int = PAGE_SIZE) -> Page:
    """One page (bad or out-of-range page numbers fall back to the nearest page, never a 404/500)."""
    return Paginator(queryset, per_page).get_page(page_number)


def paginate_ids_first(queryset: QuerySet, page_number: Any, per_page: int = PAGE_SIZE) -> Page:
    """`paginate` for big tables: the page's ids first (sorted from an index when the order's
    columns are in one), then only those rows. Sorting whole rows to keep 50 reads every row's
    payload (figures: benchmarks/README.md, "History"). One query more than `paginate`."""
    page = paginate(queryset.values_list("pk", flat=True), page_number, per_page)
    ids = list(page.object_list)
    rows = {row.pk: row for row in queryset.filter(pk__in=ids)}
    page.object_list = [rows[pk] for pk in ids if pk in rows]
    return page


# --- Connections ---------------------------------------------------------------------------


# --- Connection health: one state per connection, from the last test, the last run and open alerts.

HEALTH_CONNECTED, HEALTH_ATTENTION, HEALTH_RECONNECT = "connected", "attention", "reconnect"
HEALTH_LABELS = {HEALTH_CONNECTED: "Connected", HEALTH_ATTENTION: "Needs attention", HEALTH_RECONNECT: "Reconnect"}
HEALTH_BADGES = {HEALTH_CONNECTED: "badge-ok", HEALTH_ATTENTION: "badge-warn", HEALTH_RECONNECT: "badge-err"}


@dataclass(frozen=True)
class HealthState:
    """A connection's health: `level` is one of HEALTH_*; `reasons` say why (worst first) and
    what to do. Enabled/paused is a separate fact (Connection.enabled / paused)."""

    level: str
    reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return HEALTH_LABELS[self.level]

    @property
    def badge(self) -> str:
        return HEALTH_BADGES[self.level]


def _with_health_facts(connections: QuerySet[Connection]) -> QuerySet[HealthConnection]:
    """The facts `connection_health_state` reads, as correlated subqueries: the list costs one
    query whatever the number of connections, runs or errors."""
    from integrations.services.sync import LEASE_CONFLICT_MESSAGE

    runs = SyncRun.objects.filter(connection=OuterRef("pk")).order_by("-queued_at", "-id")
    # The latest finished run; "another sync is running" only means a run overlapped one.
    finished = runs.filter(finished_at__isnull=False).exclude(message=LEASE_CONFLICT_MESSAGE)
    good = runs.filter(state__in=[SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL])
    incidents = Incident.objects.filter(connection=OuterRef("pk"), resolved_at__isnull=True)
    # The cast names the facts for the type checker (the plugin types subqueries as Any).
    facts = connections.annotate(
        last_run_state=Subquery(finished.values("state")[:1]),
        last_run_message=Subquery(finished.values("message")[:1]),
        last_success_at=Subquery(good.values("finished_at")[:1]),
        is_syncing=Exists(runs.filter(state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING])),
        open_errors=_count_of(
            SyncError.objects.filter(connection=OuterRef("pk"), resolved_at__isnull=True), "connection_id"
        ),
        pushes_for_review=_count_of(
            PushJob.objects.filter(connection=OuterRef("pk"), state=PushJob.State.NEEDS_REVIEW), "connection_id"
        ),
        credentials_alert=Exists(incidents.filter(kind=Incident.Kind.CREDENTIALS_REJECTED)),
        sync_alert=Exists(incidents.filter(kind=Incident.Kind.SYNC_FAILING)),
        push_alert=Exists(incidents.filter(kind=Incident.Kind.PUSH_FAILING)),
    )
    return cast("QuerySet[HealthConnection]", facts)


def connection_health_state(connection: HealthConnection) -> HealthState:
    """The rule (a connection from `_with_health_facts`):
    - Reconnect: HaloPSA rejected the credentials during a sync (open alert), or the last test
      failed on the credentials or the URL and no sync has succeeded since: only an edit fixes it;
    - Needs attention: the last test failed otherwise (since the last good sync), the last run
      failed or was partial, syncs keep failing, pushes keep failing or wait for review, the
      probe found features blocked, or nothing has synced yet (never tested, first sync running);
    - Connected otherwise."""
    from integrations.services.connections import FAILURE_LABELS, RECONNECT_FAILURES

    reconnect: list[str] = []
    attention: list[str] = []
    good_at = connection.last_success_at
    if connection.credentials_alert:
        reconnect.append(
            "The credentials stopped working: HaloPSA refused them during a sync. Edit the connection and "
            "enter the client ID and secret again."
        )
    if (
        connection.last_test_ok is False
        and connection.last_test_at
        and (good_at is None or connection.last_test_at > good_at)
    ):
        label = FAILURE_LABELS.get(connection.last_test_failure, "Failed")
        text = f"The last test failed — {label}: {connection.last_test_message or 'no details'}"
        if connection.last_test_failure in RECONNECT_FAILURES:
            reconnect.append(f"{text} Edit the connection to fix it.")
        else:
            attention.append(text)
    if connection.sync_alert:
        attention.append(f"Syncs keep failing. Latest: {connection.last_run_message or 'no details'}")
    elif connection.last_run_state == SyncRun.State.FAILED:
        attention.append(f"The last sync failed: {connection.last_run_message or 'no details'}")
    elif connection.last_run_state == SyncRun.State.PARTIAL:
        attention.append(
            "The last sync was partial: some records could not be synced (see “Records that failed to sync”)."
        )
    if connection.push_alert or connection.pushes_for_review:
        waiting = f" {connection.pushes_for_review} wait for review." if connection.pushes_for_review else ""
        attention.append(f"Pushes to HaloPSA are failing.{waiting}")
    for problem in (connection.halo_shape or {}).get("problems") or []:
        if isinstance(problem, dict) and problem.get("message"):
            attention.append(f"Blocked in this HaloPSA: {problem['message']}")
    if good_at is None:
        if connection.is_syncing:
            attention.append("The first sync has not finished yet.")
        elif connection.last_test_at is None:
            attention.append("Not tested or synced yet: test the connection, then run a full sync.")
        else:
            attention.append("No sync has succeeded yet: run a full sync.")
    if reconnect:
        return HealthState(HEALTH_RECONNECT, tuple(reconnect + attention))
    if attention:
        return HealthState(HEALTH_ATTENTION, tuple(attention))
    return HealthState(HEALTH_CONNECTED)


def connection_list(*, user) -> list[HealthConnection]:
    """The user's connections, each with its `health_state`, in one query."""
    connections = list(_with_health_facts(Connection.objects.visible_to(user).select_related("partner")))
    for connection in connections:
        connection.health_state = connection_health_state(connection)
    return connections


def connection_for_page(*, user, pk: int) -> HealthConnection:
    """One connection the user may see (404 otherwise), with its `health_state`."""
    connection = get_visible_or_404(_with_health_facts(Connection.objects.select_related("partner")), user, pk=pk)
    connection.health_state = connection_health_state(connection)
    return connection


@dataclass
class ConnectionHealth:
    cursors: list[dict[str, Any]]
    next_run: datetime | None
    open_errors: int
    pending_pushes: int
    failed_pushes: int
    current_run: SyncRun | None
    last_run: SyncRun | None
    unknown_invoices: int
    archive_queue: int
    # When the last hourly or full sync finished: "Fetch new data" reads changes since the
    # cursors that run left (services/sync/plan.py, docs/sync-rules.md), less the overlap.
    changes_read_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def connection_health(*, connection: Connection) -> ConnectionHealth:
    cursors = {c.entity: c for c in SyncCursor.objects.filter(connection=connection)}
    cursor_rows = [
        {
            "entity": label,
            "last_success_at": getattr(cursors.get(value), "last_success_at", None),
            "last_full_sync_at": getattr(cursors.get(value), "last_full_sync_at", None),
        }
        for value, label in SyncCursor.Entity.choices
    ]
    pushes = PushJob.objects.filter(connection=connection).aggregate(
        pending=Count("pk", filter=Q(state__in=PUSH_OPEN_STATES)),
        failed=Count("pk", filter=Q(state__in=PUSH_FAILED_STATES)),
    )
    runs = list(SyncRun.objects.filter(connection=connection).order_by("-queued_at", "-id")[:1])
    current = (
        SyncRun.objects.filter(connection=connection, state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING])
        .order_by("-queued_at")
        .first()
    )
    return ConnectionHealth(
        cursors=cursor_rows,
        next_run=_next_scheduled_run(connection),
        open_errors=SyncError.objects.filter(connection=connection, resolved_at__isnull=True).count(),
        pending_pushes=pushes["pending"],
        failed_pushes=pushes["failed"],
        current_run=current,
        last_run=runs[0] if runs else None,
        # The unknown customer belongs to this connection, so its invoices are the connection's.
        unknown_invoices=Invoice.objects.filter(
            customer_id__in=_unknown_customer_ids(Customer.objects.filter(connection=connection)),
            archived_at__isnull=True,
        ).count(),
        archive_queue=(
            Invoice.objects.filter(
                connection=connection, deleted_in_halopsa_at__isnull=False, archived_at__isnull=True
            ).count()
            + Customer.objects.filter(
                connection=connection, deleted_in_halopsa_at__isnull=False, archived_at__isnull=True
            ).count()
        ),
        changes_read_at=SyncRun.objects.filter(
            connection=connection,
            scope__in=[SyncRun.Scope.FULL, SyncRun.Scope.INCREMENTAL],
            state__in=[SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL],
        )
        .order_by("-queued_at", "-id")
        .values_list("finished_at", flat=True)
        .first(),
    )


def _next_scheduled_run(connection: Connection) -> datetime | None:
    if not connection.is_active:
        return None
    schedule = Schedule.objects.filter(name=schedule_name(connection.pk)).only("next_run").first()
    return schedule.next_run if schedule is not None else None


def connection_progress_run(*, connection: Connection) -> SyncRun | None:
    """The run the connection page's progress bar follows: the running (or queued) sync, else the
    last one. Webhook runs (one record, a moment each) are left out: they would hide the sync a
    person started or the schedule ran."""
    runs = SyncRun.objects.filter(connection=connection).exclude(trigger=SyncRun.Trigger.WEBHOOK)
    return (
        runs.filter(state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING]).order_by("-queued_at", "-id").first()
        or runs.order_by("-queued_at", "-id").first()
    )


def connection_runs(*, connection: Connection, limit: int = 25) -> list[SyncRun]:
    """The latest scheduled, manual and command-line runs (webhook runs: `connection_webhook_runs`)."""
    return list(
        SyncRun.objects.filter(connection=connection)
        .exclude(trigger=SyncRun.Trigger.WEBHOOK)
        .select_related("requested_by")
        .order_by("-queued_at", "-id")[:limit]
    )


def connection_webhook_runs(*, connection: Connection, limit: int = 25) -> list[SyncRun]:
    """The latest runs HaloPSA's webhooks triggered (one record each, many a day): kept apart so
    they never push the scheduled and manual runs out of the history."""
    return list(
        SyncRun.objects.filter(connection=connection, trigger=SyncRun.Trigger.WEBHOOK).order_by("-queued_at", "-id")[
            :limit
        ]
    )


def connection_open_errors(*, connection: Connection, limit: int = 50) -> list[SyncError]:
    return list(
        SyncError.objects.filter(connection=connection, resolved_at__isnull=True).order_by("-created_at", "-id")[:limit]
    )


def connection_webhook_events(*, connection: Connection, limit: int = 25) -> list[WebhookEvent]:
    return list(WebhookEvent.objects.filter(connection=connection).order_by("-received_at", "-id")[:limit])


def webhook_health(connection: Connection, *, now: datetime | None = None, polls: int = 5) -> dict[str, Any]:
    """Is real time working? Last event, events of the last 24 h by state, what the polls fixed.

    A real-time connection whose hourly polls keep fixing records is missing webhooks.
    """
    now = now or timezone.now()
    since = now - timedelta(hours=24)
    last = WebhookEvent.objects.filter(connection=connection).order_by("-received_at", "-id").first()
    by_state = dict.fromkeys(WebhookEvent.State.values, 0)
    for row in (
        WebhookEvent.objects.filter(connection=connection, received_at__gte=since)
        .values("state")
        .annotate(n=Count("id"))
    ):
        by_state[row["state"]] = row["n"]
    finished = (SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL, SyncRun.State.FAILED)
    scheduled = SyncRun.objects.filter(connection=connection, trigger=SyncRun.Trigger.SCHEDULE, state__in=finished)
    recent_polls = [
        {"run_id": run.pk, "finished_at": run.finished_at, "state": run.state, "fixed_by_poll": run.fixed_by_poll}
        for run in scheduled.order_by("-queued_at", "-id")[:polls]
    ]
    fixed_24h = scheduled.filter(queued_at__gte=since).aggregate(total=Sum("fixed_by_poll"))["total"] or 0
    fixed_last = recent_polls[0]["fixed_by_poll"] if recent_polls else 0
    warnings = []
    if connection.is_realtime:
        if fixed_last:
            warnings.append(
                f"The last hourly sync fixed {fixed_last} record(s) that webhooks missed: check the webhook in "
                "HaloPSA (Configuration > Integrations > Webhooks > Deliveries)."
            )
        if last is None:
            warnings.append("No webhook received yet: set up the webhook in HaloPSA.")
        if by_state[WebhookEvent.State.FAILED]:
            warnings.append(
                f"{by_state[WebhookEvent.State.FAILED]} webhook event(s) failed in the last 24 hours; replay them."
            )
    return {
        "realtime": connection.is_realtime,
        "mode": "real time" if connection.is_realtime else "hourly",
        "version": connection.halopsa_version,
        "subscription_id": connection.webhook_subscription_id,
        "last_event_at": last.received_at if last else None,
        "last_event": (
            {
                "id": last.pk,
                "event": last.event,
                "entity": last.entity,
                "object_id": last.object_id,
                "state": last.state,
            }
            if last
            else None
        ),
        "events_24h": by_state,
        "events_24h_total": sum(by_state.values()),
        "recent_polls": recent_polls,
        "fixed_by_last_poll": fixed_last,
        "fixed_by_polls_24h": fixed_24h,
        "warnings": warnings,
        "healthy": not warnings,
    }


def connection_push_jobs(*, connection: Connection, limit: int = 50) -> list[PushJob]:
    """Pushes still waiting or failed (done/cancelled ones are history, not work)."""
    return list(
        PushJob.objects.filter(connection=connection, state__in=PUSH_OPEN_STATES + (PushJob.State.NEEDS_REVIEW,))
        .select_related("invoice", "payment")
        .order_by("-created_at", "-id")[:limit]
    )


PHASE_LABELS: dict[str, str] = {
    "customers": "Customers",
    "contacts": "Billing contacts",
    "invoices": "Invoices",
    "pdfs": "Invoice PDFs",
}


def _phase_figures(phase: dict[str, Any]) -> str:
    """One phase's figures: "300 of 1,200", "40 so far" (a read that stops at the last sync's
    mark has no total), PDFs "300 of 2,340 needed"."""
    done, total, state = int(phase.get("done") or 0), phase.get("total"), phase.get("state")
    if state == "waiting":
        return "waiting"
    if state == "skipped":
        return "not needed"
    needed = phase.get("needed")
    if isinstance(needed, int) and needed > (total or 0):
        return f"{done:,} of {needed:,} needed"
    if isinstance(total, int) and (state != "done" or total != done):
        return f"{done:,} of {total:,}"
    return {"running": f"{done:,} so far", "failed": f"{done:,} read"}.get(str(state), f"{done:,}")


def _phase_percent(phase: dict[str, Any]) -> int:
    total = phase.get("total")
    if not isinstance(total, int) or total <= 0:
        return 0
    return min(100, int(int(phase.get("done") or 0) * 100 / total))


def run_progress(run: SyncRun) -> dict[str, Any]:
    """What the progress bar shows; also the JSON the page polls. A run with phases
    (`SyncRun.progress_phases`) shows the phase at work, "Step 3 of 4: invoices, 300 of 1,200",
    with the bar for that step: a later phase's size is only known when its read starts, so an
    overall total would jump. Runs without phases show their overall counts."""
    phases = [p for p in (run.progress_phases or []) if isinstance(p, dict) and p.get("phase")]
    finished_ok = run.state in (SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL)
    if phases:
        working = [i for i, p in enumerate(phases) if p.get("state") in ("running", "failed")]
        started = [i for i, p in enumerate(phases) if p.get("state") != "waiting"]
        index = working[-1] if working else (started[-1] if started else 0)
        current = phases[index]
        label = str(PHASE_LABELS.get(current["phase"], current["phase"]))
        done, total = (
            int(current.get("done") or 0),
            current.get("total") if isinstance(current.get("total"), int) else 0,
        )
        percent = 100 if finished_ok else _phase_percent(current)
        if run.is_active or run.state == SyncRun.State.FAILED:
            stopped = " (stopped here)" if run.state == SyncRun.State.FAILED else ""
            text = f"Step {index + 1} of {len(phases)}: {label.lower()}, {_phase_figures(current)}{stopped}"
        else:
            records, steps = run.progress_done, len(started)
            text = f"{records:,} record{'s' if records != 1 else ''} in {steps} step{'s' if steps != 1 else ''}"
        phase_rows = [
            {
                "phase": p["phase"],
                "label": PHASE_LABELS.get(p["phase"], p["phase"]),
                "state": p.get("state"),
                "figures": _phase_figures(p),
            }
            for p in phases
        ]
    else:
        total = run.progress_total
        done = min(run.progress_done, total) if total else run.progress_done
        if run.is_active or not finished_ok:
            percent = int(done * 100 / total) if total else 0
        else:
            percent = 100
        text = f"{run.progress_done:,} / {total:,} records" if total else f"{run.progress_done:,} records"
        phase_rows = []
    return {
        "id": run.pk,
        "state": run.state,
        "state_label": run.get_state_display(),
        "scope": run.scope_label,
        "active": run.is_active,
        "done": done,
        "total": total,
        "percent": percent,
        "progress_text": text,
        "phases": phase_rows,
        "phases_text": " · ".join(f"{row['label']}: {row['figures']}" for row in phase_rows),
        "created": run.created,
        "updated": run.updated,
        "unchanged": run.unchanged,
        "failed": run.failed,
        "api_requests": run.api_requests,
        "message": run.message,
    }


# --- Synced data ---------------------------------------------------------------------------


def customer_list(*, user, q: str = "", connection_id: int | None = None, archived: bool = False) -> QuerySet[Customer]:
    qs = (
        Customer.objects.visible_to(user)
        .select_related("connection")
        .annotate(
            invoice_count=Count("invoices", distinct=True),
        )
    )
    qs = qs.filter(archived_at__isnull=not archived)
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    if q:
        qs = qs.filter(name__icontains=q)
    return qs.order_by("name", "id")


def customer_page_with_contacts(page: Page) -> Page:
    """Attach billing contacts (by name) to one page of customers in one extra query."""
    # list() evaluates the page's queryset into its cache, so the page shows these very objects.
    prefetch_related_objects(
        list(page.object_list), Prefetch("billing_contacts", queryset=Contact.objects.order_by("name", "id"))
    )
    return page


def customer_choices(*, user, connection_id: int | None, q: str = "", limit: int = 50) -> list[Customer]:
    """Customers offered when resolving "unknown" invoices: real, not archived, same connection."""
    qs = Customer.objects.visible_to(user).filter(is_unknown=False, archived_at__isnull=True)
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    if q:
        qs = qs.filter(name__icontains=q)
    return list(qs.order_by("name", "id")[:limit])


# What is owed: open or partially paid, and not deleted in HaloPSA (a deleted invoice waits in the
# archive queue; nobody owes it any more). Void invoices are never owed; credit notes are not
# stored as invoices (their credit shows as payments).
RECEIVABLE = Q(status__in=OPEN_STATES, deleted_in_halopsa_at__isnull=True)

# Ageing by days past the due date: (key, label, first day, last day); None = open-ended.
# "Current" is not yet due (or has no due date).
AGEING_BUCKETS = (
    ("current", "Current", None, 0),
    ("1_30", "1–30 days", 1, 30),
    ("31_60", "31–60 days", 31, 60),
    ("61_90", "61–90 days", 61, 90),
    ("over_90", "Over 90 days", 91, None),
)


def visible_connection_ids(*, user) -> list[int]:
    return list(Connection.objects.visible_to(user).values_list("pk", flat=True))


def _partner_invoices(user, connection_ids: list[int] | None = None) -> QuerySet[Invoice]:
    """The user's invoices. The partner's connection ids as values (not only a join) let the
    database read straight from the (connection, ...) indexes instead of every invoice of the
    partner (figures: benchmarks/README.md, "History"). Pass `connection_ids` when the
    caller has already read the user's connections."""
    if connection_ids is None:
        connection_ids = visible_connection_ids(user=user)
    qs = Invoice.objects.visible_to(user)
    return (
        qs.filter(connection_id=connection_ids[0])
        if len(connection_ids) == 1
        else qs.filter(connection_id__in=connection_ids)
    )


# --- Money totals ----------------------------------------------------------------------------


def money_sum(field_name: str, *, filter: Q | None = None) -> Sum:
    """An exact sum of a money column, in cents. SQLite stores decimals as floating point and sums
    them as floats; rounding each value to whole cents first makes the sum integer arithmetic
    there, and it stays exact numeric arithmetic on PostgreSQL. Read it back with `cents_to_money`."""
    cents = Cast(Round(F(field_name) * 100), output_field=BigIntegerField())
    return Sum(cents, filter=filter, default=0)


def cents_to_money(cents) -> Decimal:
    return (Decimal(int(cents or 0)) / 100).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class CurrencyTotals:
    """What a list's filter selects, in one currency."""

    currency: str
    count: int
    total: Decimal
    balance: Decimal | None = None  # invoices only


def invoice_totals(invoices: QuerySet[Invoice]) -> list[CurrencyTotals]:
    """Count, total and balance per currency of every invoice the queryset selects: one query."""
    rows = (
        invoices.order_by()
        .values("currency")
        .annotate(n=Count("pk"), total_cents=money_sum("total"), balance_cents=money_sum("balance"))
        .order_by("currency")
    )
    return [
        CurrencyTotals(
            row["currency"], row["n"], cents_to_money(row["total_cents"]), cents_to_money(row["balance_cents"])
        )
        for row in rows
    ]


def payment_totals(payments: QuerySet[Payment]) -> list[CurrencyTotals]:
    """Count and amount per currency (the invoice's) of the payments selected, deleted ones left out."""
    rows = (
        payments.filter(voided_at__isnull=True)
        .order_by()
        .values("invoice__currency")
        .annotate(n=Count("pk"), amount_cents=money_sum("amount"))
        .order_by("invoice__currency")
    )
    return [CurrencyTotals(row["invoice__currency"], row["n"], cents_to_money(row["amount_cents"])) for row in rows]


@dataclass(frozen=True)
class AgeingBucket:
    key: str
    label: str
    currency: str
    amount: Decimal
    count: int
    due_from: date | None  # the due dates the bucket covers, for links to the invoice list
    due_to: date | None


@dataclass(frozen=True)
class Receivables:
    """What customers owe in one currency: outstanding, overdue and its ageing."""

    currency: str
    outstanding: Decimal
    invoices: int
    overdue: Decimal
    overdue_invoices: int
    buckets: list[AgeingBucket]


def receivables(invoices: QuerySet[Invoice], *, today: date | None = None) -> list[Receivables]:
    """Outstanding, overdue and ageing per currency of the (already scoped) invoices: one
    aggregate query, whatever the number of invoices. Archived invoices are left out too."""
    today = today or timezone.now().date()
    ranges: dict[str, tuple[date | None, date | None]] = {}
    due_from: date | None
    due_to: date | None
    aggregates: dict[str, Any] = {
        "n": Count("pk"),
        "outstanding_cents": money_sum("balance"),
        "overdue_n": Count("pk", filter=Q(due_date__lt=today)),
        "overdue_cents": money_sum("balance", filter=Q(due_date__lt=today)),
    }
    for key, _label, first_day, last_day in AGEING_BUCKETS:
        if first_day is None:  # current: not yet due, or no due date
            due_from, due_to = today, None
            condition = Q(due_date__gte=today) | Q(due_date__isnull=True)
        else:  # first_day..last_day days past due = due between today - last_day and today - first_day
            due_to = today - timedelta(days=first_day)
            due_from = today - timedelta(days=last_day) if last_day is not None else None
            condition = Q(due_date__lte=due_to) if due_from is None else Q(due_date__range=(due_from, due_to))
        ranges[key] = (due_from, due_to)
        aggregates[f"{key}_n"] = Count("pk", filter=condition)
        aggregates[f"{key}_cents"] = money_sum("balance", filter=condition)
    # The keys come from **aggregates, which the type checker can't follow.
    rows: Iterable[Mapping[str, Any]] = (
        invoices.filter(RECEIVABLE, archived_at__isnull=True)
        .order_by()
        .values("currency")
        .annotate(**aggregates)
        .order_by("currency")
    )
    return [
        Receivables(
            currency=row["currency"],
            outstanding=cents_to_money(row["outstanding_cents"]),
            invoices=row["n"],
            overdue=cents_to_money(row["overdue_cents"]),
            overdue_invoices=row["overdue_n"],
            buckets=[
                AgeingBucket(
                    key, label, row["currency"], cents_to_money(row[f"{key}_cents"]), row[f"{key}_n"], *ranges[key]
                )
                for key, label, _first, _last in AGEING_BUCKETS
            ],
        )
        for row in rows
    ]


def partner_receivables(*, user, connections: list[Connection], today: date | None = None) -> list[Receivables]:
    """The home page's overview: every invoice of the user's connections (as listed for them)."""
    return receivables(_partner_invoices(user, [c.pk for c in connections]), today=today)


@dataclass
class InvoiceFilters:
    status: str = ""
    customer_id: int | None = None
    connection_id: int | None = None
    archived: bool = False
    overdue: bool = False
    outstanding: bool = False
    q: str = ""
    customer_name: str = ""
    invoice_date_from: date | None = None
    invoice_date_to: date | None = None
    due_date_from: date | None = None
    due_date_to: date | None = None
    sort: str = "-date"


def invoice_list(*, user, filters: InvoiceFilters) -> QuerySet[Invoice]:
    qs = _partner_invoices(user).select_related("customer", "connection").defer("raw", "customer__raw")
    qs = qs.filter(archived_at__isnull=not filters.archived)
    if filters.status:
        qs = qs.filter(status=filters.status)
    if filters.customer_id:
        qs = qs.filter(customer_id=filters.customer_id)
    if filters.connection_id:
        qs = qs.filter(connection_id=filters.connection_id)
    if filters.outstanding or filters.overdue:
        qs = qs.filter(RECEIVABLE)
    if filters.overdue:
        qs = qs.filter(due_date__lt=timezone.now().date())
    if filters.q:
        qs = qs.filter(number__icontains=filters.q)
    if filters.customer_name:
        qs = qs.filter(customer__name__icontains=filters.customer_name)
    date_ranges = {
        "invoice_date__gte": filters.invoice_date_from,
        "invoice_date__lte": filters.invoice_date_to,
        "due_date__gte": filters.due_date_from,
        "due_date__lte": filters.due_date_to,
    }
    qs = qs.filter(**{lookup: value for lookup, value in date_ranges.items() if value is not None})
    return qs.order_by(*INVOICE_SORTS.get(filters.sort, INVOICE_SORTS["-date"]))


def invoice_detail(*, user, pk: int) -> Invoice:
    return get_visible_or_404(
        Invoice.objects.select_related(
            "customer", "connection", "connection__partner", "customer_assigned_by", "archived_by"
        ),
        user,
        pk=pk,
    )


def invoice_payments(*, invoice: Invoice) -> list[Payment]:
    return list(invoice.payments.select_related("created_by").order_by("paid_on", "id"))


@dataclass
class PaymentFilters:
    source: str = ""
    connection_id: int | None = None
    paid_from: date | None = None
    paid_to: date | None = None


def payment_list(*, user, filters: PaymentFilters | None = None) -> QuerySet[Payment]:
    filters = filters or PaymentFilters()
    qs = (
        Payment.objects.visible_to(user)
        .select_related("invoice", "invoice__customer", "connection")
        .defer("raw", "invoice__raw", "invoice__customer__raw")
    )
    if filters.source:
        qs = qs.filter(source=filters.source)
    if filters.connection_id:
        qs = qs.filter(connection_id=filters.connection_id)
    if filters.paid_from:
        qs = qs.filter(paid_on__gte=filters.paid_from)
    if filters.paid_to:
        qs = qs.filter(paid_on__lte=filters.paid_to)
    return qs.order_by("-paid_on", "-id")


# --- Queues --------------------------------------------------------------------------------


def _unknown_customer_ids(customers: QuerySet[Customer]) -> list[int]:
    """The "unknown" customers' ids (one per connection) as values: queries over their invoices
    then start from the customer's invoice index, not from every invoice of the connection
    (figures: benchmarks/README.md, "History")."""
    return list(customers.filter(is_unknown=True).values_list("pk", flat=True))


def unknown_invoices(*, user, connection_id: int | None = None) -> QuerySet[Invoice]:
    qs = (
        Invoice.objects.visible_to(user)
        .filter(customer_id__in=_unknown_customer_ids(Customer.objects.visible_to(user)), archived_at__isnull=True)
        .select_related("connection", "customer")
        .defer("customer__raw")
    )
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    return qs.order_by("-invoice_date", "-id")


def unknown_counts_by_connection(*, user) -> dict[int, int]:
    rows = (
        Invoice.objects.visible_to(user)
        .filter(customer_id__in=_unknown_customer_ids(Customer.objects.visible_to(user)), archived_at__isnull=True)
        .values("connection_id")
        .annotate(n=Count("pk"))
    )
    return {row["connection_id"]: row["n"] for row in rows}


@dataclass(frozen=True)
class NavSummary:
    """What the navigation shows: the two queues' sizes, and whether lists must name connections."""

    unknown_invoices: int  # invoices waiting for a customer (the unknown-customer queue)
    archive: int  # customers and invoices deleted in HaloPSA, not archived yet (the archive queue)
    connections: int


def _count_of(queryset: QuerySet, group_by: str) -> Coalesce:
    """COUNT(*) of a correlated subquery (grouped by the column it is correlated on), 0 when empty."""
    return Coalesce(Subquery(queryset.order_by().values(group_by).annotate(n=Count("pk")).values("n")[:1]), 0)


def nav_summary(*, user) -> NavSummary:
    """The same rows as the two queue pages count, in one query over the user's connections: per
    connection, its unknown customer's invoices (the (customer, invoice_date) index) and its
    deleted invoices (the partial index of deleted invoices) and customers. Whatever the number
    of invoices, one query."""
    unknown_customer = Customer.objects.filter(connection_id=OuterRef(OuterRef("pk")), is_unknown=True).values("pk")[:1]
    counts = (
        Connection.objects.visible_to(user)
        .order_by()
        .annotate(
            unknown_n=_count_of(
                Invoice.objects.filter(customer_id=Subquery(unknown_customer), archived_at__isnull=True), "customer_id"
            ),
            deleted_invoices_n=_count_of(
                Invoice.objects.filter(
                    connection_id=OuterRef("pk"), deleted_in_halopsa_at__isnull=False, archived_at__isnull=True
                ),
                "connection_id",
            ),
            deleted_customers_n=_count_of(
                Customer.objects.filter(
                    connection_id=OuterRef("pk"), deleted_in_halopsa_at__isnull=False, archived_at__isnull=True
                ),
                "connection_id",
            ),
        )
        .values_list("unknown_n", "deleted_invoices_n", "deleted_customers_n")
    )
    rows = list(counts)
    return NavSummary(
        unknown_invoices=sum(row[0] for row in rows),
        archive=sum(row[1] + row[2] for row in rows),
        connections=len(rows),
    )


def archive_queue(*, user, archived: bool = False) -> tuple[QuerySet[Customer], QuerySet[Invoice]]:
    """Deleted-in-HaloPSA rows not yet archived (or, with `archived`, everything archived)."""
    if archived:
        listed = Q(archived_at__isnull=False)
    else:
        listed = Q(deleted_in_halopsa_at__isnull=False, archived_at__isnull=True)
    customers = (
        Customer.objects.visible_to(user)
        .filter(listed)
        .select_related("connection", "archived_by")
        .annotate(
            open_invoices=Count(
                "invoices", filter=Q(invoices__status__in=OPEN_STATES, invoices__archived_at__isnull=True)
            )
        )
        .order_by("name", "id")
    )
    invoices = (
        Invoice.objects.visible_to(user)
        .filter(listed)
        .select_related("connection", "customer", "archived_by")
        .order_by("-invoice_date", "-id")
    )
    return customers, invoices


# --- Activity ------------------------------------------------------------------------------


def activity_list(*, user) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.visible_to(user).select_related("user", "partner").order_by("-created_at", "-id")
