"""Invoice PDFs: fetched last in a run, within their own share of the request budget and their
own time limit (a backlog continues in a follow-up run), and on first view of an invoice."""

from __future__ import annotations

import hashlib
import time
from typing import Iterator

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Case, F, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone

from integrations.conf import halo_settings
from integrations.halopsa.budget import RequestBudget
from integrations.halopsa.client import HaloClient
from integrations.halopsa.exceptions import HaloAuthError, HaloDeadlineReached, HaloError, HaloNotFound, HaloRateLimited
from integrations.models import Connection, Invoice, InvoicePdf, Origin
from integrations.services.sync.config import CHUNK, ENTITY_PDFS, lease_ttl
from integrations.services.sync.context import RunContext


class PdfUnavailable(Exception):
    """The invoice has no PDF in HaloPSA we could fetch; `message` says why, for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def pdf_batch_size() -> int:
    return halo_settings().pdf_batch


def pdf_phase_seconds() -> float:
    """How long one run may spend on PDFs: inside the worker's timeout, with room for the lists
    that ran before (a longer backlog continues in a follow-up run)."""
    configured = halo_settings().pdf_phase_seconds
    task_timeout = float(settings.Q_CLUSTER.get("timeout") or configured)
    return min(configured, task_timeout * 0.6)


def pdf_budget(connection: Connection) -> RequestBudget:
    """PDFs spend at most this share of the connection's request budget, so payment pushes,
    webhook fetches and the next lists always find room in every window."""
    limit, share = halo_settings().rate_limit, halo_settings().pdf_budget_share
    return RequestBudget(f"conn:{connection.pk}:pdfs", limit=max(1, int(limit * share)) if limit > 0 else 0)


def _file_stored(pdf: InvoicePdf) -> bool:
    """The row names a file (a FieldFile is true when it has a name) and the storage still holds it."""
    name = pdf.file.name
    if not name:
        return False
    return pdf.file.storage.exists(name)


def invoice_pdf_ensure(*, invoice: Invoice, client: HaloClient | None = None) -> InvoicePdf:
    """The invoice's current PDF, downloading it (one API call) when missing or stale.

    For the dashboard's first view of an invoice whose PDF the batch has not fetched yet.
    Raises PdfUnavailable with a readable message when HaloPSA has none or cannot be reached.
    """
    current = InvoicePdf.objects.filter(invoice=invoice).first()
    if current is not None and not _file_stored(current):
        current = None  # the row outlived its file (a node without the shared media mount, a restore)
    if current is not None and (
        invoice.pdf_attachment_id is None or current.attachment_id == invoice.pdf_attachment_id
    ):
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
        raise PdfUnavailable(
            "HaloPSA no longer has this PDF (the invoice changed); it is fetched again after the next sync."
        ) from None
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
    if current is not None and current.sha256 == digest and _file_stored(current):
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


def _pdf_candidates(ids: list[int]) -> Iterator[Invoice]:
    """The invoices of `ids`, in that order, loaded a chunk at a time with only what a PDF
    download needs: a first sync's backlog (or a large HALOPSA_PDF_BATCH) never holds tens of
    thousands of full invoices with their raw payloads in memory (figures: benchmarks/README.md,
    "History")."""
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        loaded = Invoice.objects.only(
            "pk", "connection_id", "halopsa_id", "pdf_attachment_id", "number", "status"
        ).in_bulk(chunk)
        for pk in chunk:
            if pk in loaded:  # not deleted meanwhile
                yield loaded[pk]


class PdfsSync:
    """The PDF phase of a run, and the PDF of a one-invoice sync."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def read(self, *, limit: int | None = None) -> None:
        """Fetch PDFs that are missing or stale: unpaid invoices first, then paid ones newest
        first, at most `limit` (default `pdf_batch_size()`) per run, each one API call. PDFs come
        last, spend at most their share of the request budget (`pdf_budget`) and stop after
        `pdf_phase_seconds`; a backlog left by the time limit continues in a follow-up run, and any
        PDF is also fetched on first view (`invoice_pdf_ensure`)."""
        limit = pdf_batch_size() if limit is None else limit
        if limit <= 0:
            return
        ctx = self.ctx
        needed = self._needed()
        candidate_ids = list(
            needed.annotate(
                unpaid_first=Case(
                    When(status__in=[Invoice.Status.OPEN, Invoice.Status.PARTIALLY_PAID], then=Value(0)),
                    default=Value(1),
                    output_field=IntegerField(),
                )
            )
            .order_by("unpaid_first", "-invoice_date", "-id")
            .values_list("pk", flat=True)[:limit]
        )
        if not candidate_ids:
            return
        ctx.grow_total(len(candidate_ids))
        # How many PDFs are missing in all (a first sync's backlog is more than one batch), for the page and the message.
        needed_count = needed.count() if len(candidate_ids) == limit else len(candidate_ids)
        if ctx.current_phase is not None:
            ctx.current_phase["needed"] = needed_count
        stopped = self._fetch(candidate_ids)
        if stopped is None:
            stopped = (
                f"at most {limit:,} are fetched per run"
                if needed_count > len(candidate_ids)
                else "HaloPSA no longer had the file an invoice named; it is read again with the invoice"
            )
        self._note_backlog(needed_count, stopped)

    def _needed(self) -> QuerySet[Invoice]:
        """Invoices whose PDF is missing or older than the attachment HaloPSA names."""
        return Invoice.objects.filter(
            connection=self.ctx.connection,
            origin=Origin.HALOPSA,
            halopsa_id__isnull=False,
            pdf_attachment_id__isnull=False,
            deleted_in_halopsa_at__isnull=True,
            archived_at__isnull=True,
        ).filter(Q(pdf__isnull=True) | ~Q(pdf__attachment_id=F("pdf_attachment_id")))

    def _fetch(self, candidate_ids: list[int]) -> str | None:
        """Download and store the candidates' PDFs in order; why it stopped early, else None."""
        ctx = self.ctx
        share = pdf_budget(ctx.connection)
        deadline = min(time.monotonic() + pdf_phase_seconds(), ctx.deadline)  # the run's end comes first if sooner
        for fetched, invoice in enumerate(_pdf_candidates(candidate_ids)):
            if not self._slot(share, deadline):
                # Out of time, not of work: a follow-up run continues, but only after progress
                # (a run that fetched nothing would just queue the next one).
                ctx.pdf_backlog = len(candidate_ids) - fetched if fetched else 0
                return f"the PDF phase's {pdf_phase_seconds() / 60:.0f} minutes ran out"
            assert invoice.halopsa_id is not None  # _needed() chose invoices HaloPSA has
            try:
                content = ctx.client.get_invoice_pdf(invoice.halopsa_id, attachment_id=invoice.pdf_attachment_id)
            except HaloNotFound:
                continue  # the attachment changed since we read the invoice; the next invoice sync brings the new id
            except HaloRateLimited:
                return "HaloPSA's rate limit was reached"  # out of budget: the rest waits for the next run, invoice data is already in
            except HaloDeadlineReached:  # the run's time is up: like the phase's own limit
                ctx.pdf_backlog = len(candidate_ids) - fetched if fetched else 0
                return "the run's time ran out"
            except HaloAuthError:
                raise
            except HaloError as exc:
                ctx.record_error(
                    ENTITY_PDFS, invoice.halopsa_id, f"PDF of invoice {invoice.number}: {exc.message}", None
                )
                return "a download failed (see the sync errors)"
            with transaction.atomic():
                pdf_store(invoice=invoice, content=content, attachment_id=invoice.pdf_attachment_id)
                ctx.counts.updated += 1
                ctx.pdf_updates += 1
                ctx.resolve_errors(ENTITY_PDFS, [invoice.halopsa_id])  # an earlier failed download is over
                ctx.page_done(1)
            ctx.keep_lease()
        return None

    def _note_backlog(self, needed: int, stopped: str) -> None:
        """A run that leaves PDFs to fetch says how many it fetched of those needed, why it
        stopped, and when the next batch runs."""
        ctx = self.ctx
        fetched = ctx.current_phase["done"] if ctx.current_phase is not None else 0
        left = needed - fetched
        if left <= 0:
            return
        from integrations.schedules import next_run_at

        connection = ctx.connection
        if ctx.pdf_backlog:
            when = "a PDF-only run was queued to continue now"
        elif connection.enabled and not connection.paused:
            when = f"the next batch runs with the hourly sync at {next_run_at(connection.schedule_minute):%H:%M} UTC"
        else:
            when = "the next batch runs with the next sync you start (scheduled syncs are paused or disabled)"
        ctx.note(
            f"Invoice PDFs: {fetched:,} of {needed:,} needed were fetched ({stopped}); {left:,} still to fetch: {when}. "
            "Any PDF is also fetched when someone opens it."
        )

    def _slot(self, share: RequestBudget, deadline: float) -> bool:
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
                self.ctx.keep_lease(now=True)

    def one(self, halopsa_id: int) -> None:
        """The PDF of one invoice (a one-invoice sync), when it has none or a stale one."""
        ctx = self.ctx
        invoice = Invoice.objects.filter(
            connection=ctx.connection, halopsa_id=halopsa_id, origin=Origin.HALOPSA
        ).first()
        if invoice is None or invoice.pdf_attachment_id is None:
            return
        current = InvoicePdf.objects.filter(invoice=invoice).values_list("attachment_id", flat=True).first()
        if current == invoice.pdf_attachment_id:
            return
        try:
            invoice_pdf_ensure(invoice=invoice, client=ctx.client)
        except PdfUnavailable as exc:
            ctx.record_error(ENTITY_PDFS, halopsa_id, exc.message, None)
        else:
            ctx.counts.updated += 1
            ctx.pdf_updates += 1
            ctx.resolve_errors(ENTITY_PDFS, [halopsa_id])
