"""CSV exports of the invoice and payment lists: exactly the rows the list's filters select.

Streamed (100k invoices never sit in memory), money as the Decimal text stored, dates ISO 8601,
the currency in its own column, and text cells that a spreadsheet would run as a formula
prefixed with an apostrophe (CSV injection: a customer name "=HYPERLINK(...)" comes from HaloPSA).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from integrations import selectors
from integrations.forms import InvoiceFilterForm, ListFilterForm, PaymentFilterForm
from integrations.models import Invoice, Origin, Payment

# What spreadsheet programs read as the start of a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ROWS_PER_CHUNK = 500

INVOICE_COLUMNS = (
    "Number",
    "Customer",
    "Connection",
    "Invoice date",
    "Due date",
    "Currency",
    "Total",
    "Amount paid",
    "Balance",
    "Status",
    "Overdue",
    "Deleted in HaloPSA at",
    "Archived at",
    "HaloPSA id",
)
PAYMENT_COLUMNS = (
    "Paid on",
    "Invoice",
    "Customer",
    "Connection",
    "Currency",
    "Amount",
    "Kind",
    "Source",
    "Method",
    "Reference",
    "Deleted at",
    "HaloPSA id",
)


def csv_text(value: str | None) -> str:
    """A text cell no spreadsheet runs as a formula."""
    text = value or ""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_value(value) -> str:
    """Numbers, dates and times in a form any program reads back exactly."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)  # Decimal: the stored text, e.g. "120.00"; ints as they are


class CsvStreamingResponse(StreamingHttpResponse):
    """A CSV download that streams under WSGI and ASGI alike. Django's ASGI handler reads a
    synchronous iterator whole into memory before sending; this one hands it over chunk by chunk,
    each read in the thread that holds the request's database connection."""

    def __init__(self, chunks: Iterable[str], filename: str):
        super().__init__(chunks, content_type="text/csv; charset=utf-8")
        self["Content-Disposition"] = f'attachment; filename="{filename}"'
        self["Cache-Control"] = "no-store"

    async def __aiter__(self):
        chunks = iter(self.streaming_content)
        next_chunk = sync_to_async(next, thread_sensitive=True)
        while (chunk := await next_chunk(chunks, None)) is not None:
            yield chunk


class _Echo:
    """csv.writer target that hands back each formatted line."""

    def write(self, line: str) -> str:
        return line


def csv_chunks(header: Iterable[str], rows: Iterable[Iterable[str]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    lines = [writer.writerow(header)]
    for row in rows:
        lines.append(writer.writerow(row))
        if len(lines) >= ROWS_PER_CHUNK:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def _refused(form: ListFilterForm) -> HttpResponse:
    """An export of other rows than asked for is worse than none: bad filters are a 400."""
    return HttpResponse(
        "Export refused: " + " ".join(form.problems()) + "\n", status=400, content_type="text/plain; charset=utf-8"
    )


@login_required
@require_GET
def invoice_export(request):
    form = InvoiceFilterForm(request.GET or None)
    if form.problems():
        return _refused(form)
    invoices = selectors.invoice_list(user=request.user, filters=form.filters())
    today = timezone.now().date()
    statuses = dict(Invoice.Status.choices)
    open_states = set(selectors.OPEN_STATES)

    def rows():
        fields = (
            "number",
            "customer__name",
            "connection__name",
            "invoice_date",
            "due_date",
            "currency",
            "total",
            "amount_paid",
            "balance",
            "status",
            "deleted_in_halopsa_at",
            "archived_at",
            "halopsa_id",
        )
        for (
            number,
            customer,
            connection,
            invoice_date,
            due_date,
            currency,
            total,
            paid,
            balance,
            status,
            deleted_at,
            archived_at,
            halopsa_id,
        ) in invoices.values_list(*fields).iterator(chunk_size=2000):
            overdue = status in open_states and deleted_at is None and due_date is not None and due_date < today
            yield (
                csv_text(number),
                csv_text(customer),
                csv_text(connection),
                csv_value(invoice_date),
                csv_value(due_date),
                csv_text(currency),
                csv_value(total),
                csv_value(paid),
                csv_value(balance),
                statuses.get(status, status),
                "yes" if overdue else "no",
                csv_value(deleted_at),
                csv_value(archived_at),
                csv_value(halopsa_id),
            )

    return CsvStreamingResponse(csv_chunks(INVOICE_COLUMNS, rows()), f"invoices-{today.isoformat()}.csv")


@login_required
@require_GET
def payment_export(request):
    form = PaymentFilterForm(request.GET or None)
    if form.problems():
        return _refused(form)
    payments = selectors.payment_list(user=request.user, filters=form.filters())
    kinds, sources = dict(Payment.Kind.choices), dict(Origin.choices)

    def rows():
        fields = (
            "paid_on",
            "invoice__number",
            "invoice__customer__name",
            "connection__name",
            "invoice__currency",
            "amount",
            "kind",
            "source",
            "method",
            "reference",
            "voided_at",
            "halopsa_id",
        )
        for (
            paid_on,
            invoice,
            customer,
            connection,
            currency,
            amount,
            kind,
            source,
            method,
            reference,
            voided_at,
            halopsa_id,
        ) in payments.values_list(*fields).iterator(chunk_size=2000):
            yield (
                csv_value(paid_on),
                csv_text(invoice),
                csv_text(customer),
                csv_text(connection),
                csv_text(currency),
                csv_value(amount),
                kinds.get(kind, kind),
                sources.get(source, source),
                csv_text(method),
                csv_text(reference),
                csv_value(voided_at),
                csv_value(halopsa_id),
            )

    return CsvStreamingResponse(
        csv_chunks(PAYMENT_COLUMNS, rows()), f"payments-{timezone.now().date().isoformat()}.csv"
    )
