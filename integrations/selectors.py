"""Read-only queries behind the dashboard.

Every function takes the signed-in user and starts from `visible_to(user)`, so a partner only ever
reads its own rows. Lists use select_related/annotations so a page costs the same number of
queries whatever the data size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, prefetch_related_objects
from django.utils import timezone
from django_q.models import Schedule

from integrations.models import (
    AuditEvent,
    Connection,
    Customer,
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


# --- Connections ---------------------------------------------------------------------------


def connection_list(*, user) -> QuerySet[Connection]:
    last_success = SyncRun.objects.filter(
        connection=OuterRef("pk"), state__in=[SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL]
    ).order_by("-finished_at").values("finished_at")[:1]
    return (
        Connection.objects.visible_to(user)
        .select_related("partner")
        .annotate(
            open_errors=Count("sync_errors", filter=Q(sync_errors__resolved_at__isnull=True), distinct=True),
            last_success_at=Subquery(last_success),
            active_runs=Count("runs", filter=Q(runs__state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING]), distinct=True),
        )
    )


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
    extra: dict[str, Any] = field(default_factory=dict)


def connection_health(*, connection: Connection) -> ConnectionHealth:
    cursors = {c.entity: c for c in SyncCursor.objects.filter(connection=connection)}
    cursor_rows = [
        {"entity": label, "last_success_at": getattr(cursors.get(value), "last_success_at", None),
         "last_full_sync_at": getattr(cursors.get(value), "last_full_sync_at", None)}
        for value, label in SyncCursor.Entity.choices
    ]
    pushes = PushJob.objects.filter(connection=connection).aggregate(
        pending=Count("pk", filter=Q(state__in=PUSH_OPEN_STATES)),
        failed=Count("pk", filter=Q(state__in=PUSH_FAILED_STATES)),
    )
    runs = list(SyncRun.objects.filter(connection=connection).order_by("-queued_at", "-id")[:1])
    current = SyncRun.objects.filter(connection=connection, state__in=[SyncRun.State.QUEUED, SyncRun.State.RUNNING]).order_by("-queued_at").first()
    return ConnectionHealth(
        cursors=cursor_rows,
        next_run=_next_scheduled_run(connection),
        open_errors=SyncError.objects.filter(connection=connection, resolved_at__isnull=True).count(),
        pending_pushes=pushes["pending"],
        failed_pushes=pushes["failed"],
        current_run=current,
        last_run=runs[0] if runs else None,
        # The unknown customer belongs to this connection, so its invoices are the connection's.
        unknown_invoices=Invoice.objects.filter(customer_id__in=_unknown_customer_ids(Customer.objects.filter(connection=connection)),
                                                archived_at__isnull=True).count(),
        archive_queue=(
            Invoice.objects.filter(connection=connection, deleted_in_halopsa_at__isnull=False, archived_at__isnull=True).count()
            + Customer.objects.filter(connection=connection, deleted_in_halopsa_at__isnull=False, archived_at__isnull=True).count()
        ),
    )


def _next_scheduled_run(connection: Connection) -> datetime | None:
    if not connection.is_active:
        return None
    schedule = Schedule.objects.filter(name=schedule_name(connection.pk)).only("next_run").first()
    return schedule.next_run if schedule is not None else None


def connection_runs(*, connection: Connection, limit: int = 25) -> list[SyncRun]:
    return list(SyncRun.objects.filter(connection=connection).select_related("requested_by").order_by("-queued_at", "-id")[:limit])


def connection_open_errors(*, connection: Connection, limit: int = 50) -> list[SyncError]:
    return list(SyncError.objects.filter(connection=connection, resolved_at__isnull=True).order_by("-created_at", "-id")[:limit])


def connection_webhook_events(*, connection: Connection, limit: int = 25) -> list[WebhookEvent]:
    return list(WebhookEvent.objects.filter(connection=connection).order_by("-received_at", "-id")[:limit])


def connection_push_jobs(*, connection: Connection, limit: int = 50) -> list[PushJob]:
    """Pushes still waiting or failed (done/cancelled ones are history, not work)."""
    return list(
        PushJob.objects.filter(connection=connection, state__in=PUSH_OPEN_STATES + (PushJob.State.NEEDS_REVIEW,))
        .select_related("invoice", "payment")
        .order_by("-created_at", "-id")[:limit]
    )


def run_progress(run: SyncRun) -> dict[str, Any]:
    """What the progress bar shows; also the JSON the page polls."""
    total = run.progress_total
    done = min(run.progress_done, total) if total else run.progress_done
    if run.is_active:
        percent = int(done * 100 / total) if total else 0
    else:
        percent = 100 if run.state in (SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL) else (int(done * 100 / total) if total else 0)
    return {
        "id": run.pk,
        "state": run.state,
        "state_label": run.get_state_display(),
        "scope": run.get_scope_display(),
        "active": run.is_active,
        "done": run.progress_done,
        "total": total,
        "percent": percent,
        "created": run.created,
        "updated": run.updated,
        "unchanged": run.unchanged,
        "failed": run.failed,
        "api_requests": run.api_requests,
        "message": run.message,
    }


# --- Synced data ---------------------------------------------------------------------------


def customer_list(*, user, q: str = "", connection_id: int | None = None, archived: bool = False) -> QuerySet[Customer]:
    qs = Customer.objects.visible_to(user).select_related("connection").annotate(
        invoice_count=Count("invoices", distinct=True),
    )
    qs = qs.filter(archived_at__isnull=not archived)
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    if q:
        qs = qs.filter(name__icontains=q)
    return qs.order_by("name", "id")


def customer_page_with_contacts(page: Page) -> Page:
    """Attach billing contacts to one page of customers in one extra query."""
    prefetch_related_objects(page.object_list, "billing_contacts")
    return page


def customer_choices(*, user, connection_id: int | None, q: str = "", limit: int = 50) -> list[Customer]:
    """Customers offered when resolving "unknown" invoices: real, not archived, same connection."""
    qs = Customer.objects.visible_to(user).filter(is_unknown=False, archived_at__isnull=True)
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    if q:
        qs = qs.filter(name__icontains=q)
    return list(qs.order_by("name", "id")[:limit])


@dataclass
class InvoiceFilters:
    status: str = ""
    customer_id: int | None = None
    connection_id: int | None = None
    archived: bool = False
    overdue: bool = False
    q: str = ""
    customer_name: str = ""
    sort: str = "-date"


def invoice_list(*, user, filters: InvoiceFilters) -> QuerySet[Invoice]:
    qs = Invoice.objects.visible_to(user).select_related("customer", "connection").defer("raw", "customer__raw")
    # The partner's connection id as a value (not only a join) lets the database read the newest
    # invoices straight from the (connection, archived_at, invoice_date) index instead of sorting
    # every invoice of the partner: ~1 s -> ~1 ms at 100k invoices.
    connection_ids = list(Connection.objects.visible_to(user).values_list("pk", flat=True))
    qs = qs.filter(connection_id=connection_ids[0]) if len(connection_ids) == 1 else qs.filter(connection_id__in=connection_ids)
    qs = qs.filter(archived_at__isnull=not filters.archived)
    if filters.status:
        qs = qs.filter(status=filters.status)
    if filters.customer_id:
        qs = qs.filter(customer_id=filters.customer_id)
    if filters.connection_id:
        qs = qs.filter(connection_id=filters.connection_id)
    if filters.overdue:
        qs = qs.filter(status__in=OPEN_STATES, due_date__lt=timezone.now().date())
    if filters.q:
        qs = qs.filter(number__icontains=filters.q)
    if filters.customer_name:
        qs = qs.filter(customer__name__icontains=filters.customer_name)
    return qs.order_by(*INVOICE_SORTS.get(filters.sort, INVOICE_SORTS["-date"]))


def invoice_detail(*, user, pk: int) -> Invoice:
    return get_visible_or_404(
        Invoice.objects.select_related("customer", "connection", "connection__partner", "customer_assigned_by", "archived_by"),
        user,
        pk=pk,
    )


def invoice_payments(*, invoice: Invoice) -> list[Payment]:
    return list(invoice.payments.select_related("created_by").order_by("paid_on", "id"))


def payment_list(*, user, source: str = "", connection_id: int | None = None) -> QuerySet[Payment]:
    qs = Payment.objects.visible_to(user).select_related("invoice", "invoice__customer", "connection")
    if source:
        qs = qs.filter(source=source)
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    return qs.order_by("-paid_on", "-id")


# --- Queues --------------------------------------------------------------------------------


def _unknown_customer_ids(customers: QuerySet[Customer]) -> list[int]:
    """The "unknown" customers' ids (one per connection) as values: queries over their invoices
    then start from the customer's invoice index, not from every invoice of the connection
    (~300 ms -> a few ms at 100k invoices)."""
    return list(customers.filter(is_unknown=True).values_list("pk", flat=True))


def unknown_invoices(*, user, connection_id: int | None = None) -> QuerySet[Invoice]:
    qs = (Invoice.objects.visible_to(user)
          .filter(customer_id__in=_unknown_customer_ids(Customer.objects.visible_to(user)), archived_at__isnull=True)
          .select_related("connection", "customer").defer("customer__raw"))
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    return qs.order_by("-invoice_date", "-id")


def unknown_counts_by_connection(*, user) -> dict[int, int]:
    rows = (
        Invoice.objects.visible_to(user)
        .filter(customer_id__in=_unknown_customer_ids(Customer.objects.visible_to(user)), archived_at__isnull=True)
        .values("connection_id").annotate(n=Count("pk"))
    )
    return {row["connection_id"]: row["n"] for row in rows}


def archive_queue(*, user, archived: bool = False) -> tuple[QuerySet[Customer], QuerySet[Invoice]]:
    """Deleted-in-HaloPSA rows not yet archived (or, with `archived`, everything archived)."""
    if archived:
        customers = Customer.objects.visible_to(user).filter(archived_at__isnull=False)
        invoices = Invoice.objects.visible_to(user).filter(archived_at__isnull=False)
    else:
        customers = Customer.objects.visible_to(user).filter(deleted_in_halopsa_at__isnull=False, archived_at__isnull=True)
        invoices = Invoice.objects.visible_to(user).filter(deleted_in_halopsa_at__isnull=False, archived_at__isnull=True)
    customers = customers.select_related("connection", "archived_by").annotate(
        open_invoices=Count("invoices", filter=Q(invoices__status__in=OPEN_STATES, invoices__archived_at__isnull=True))
    ).order_by("name", "id")
    invoices = invoices.select_related("connection", "customer", "archived_by").order_by("-invoice_date", "-id")
    return customers, invoices


# --- Activity ------------------------------------------------------------------------------


def activity_list(*, user) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.visible_to(user).select_related("user", "partner").order_by("-created_at", "-id")

