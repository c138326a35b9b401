"""Invoice PDFs: last phase, new/changed only, unpaid first, capped per run, fetched on first view."""

from __future__ import annotations

import hashlib

import pytest

from integrations.models import Invoice, InvoicePdf
from integrations.services.sync import PdfUnavailable, invoice_pdf_ensure

pytestmark = pytest.mark.django_db


def _attachment_requests(srv) -> list[str]:
    return [e["path"] for e in srv.request_log if e["path"].lower().startswith("/api/attachment/")]


def test_pdfs_stored_with_sha256_and_fetched_last(connection, halo_sandbox, run_sync, settings):
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    pdfs = InvoicePdf.objects.filter(invoice__connection=connection).select_related("invoice")
    assert pdfs.count() == 7
    for pdf in pdfs:
        content = pdf.file.read()
        pdf.file.close()
        assert content.startswith(b"%PDF")
        assert (
            pdf.sha256
            == hashlib.sha256(content).hexdigest()
            == hashlib.sha256(
                halo_sandbox.invoice_pdf(halo_sandbox.store.get_invoice(pdf.invoice.halopsa_id))
            ).hexdigest()
        )
        assert pdf.attachment_id == pdf.invoice.pdf_attachment_id
        assert pdf.size == len(content)
        assert str(settings.MEDIA_ROOT) in pdf.file.path
    paths = [e["path"] for e in halo_sandbox.request_log]
    first_pdf = next(i for i, p in enumerate(paths) if p.startswith("/api/Attachment"))
    assert all(not p.startswith("/api/Attachment") for p in paths[:first_pdf])
    assert "/api/Invoice" in paths[:first_pdf]  # invoice data came first


def test_pdf_redownloaded_only_when_the_attachment_changes(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    before = InvoicePdf.objects.get(invoice__connection=connection, invoice__halopsa_id=1)
    halo_sandbox.clear_request_log()
    run_sync(connection, "incremental")
    assert _attachment_requests(halo_sandbox) == []
    halo_sandbox.store.update_invoice(1, duedate="2027-01-15")  # HaloPSA regenerates the PDF
    run_sync(connection, "incremental")
    invoice = Invoice.objects.get(connection=connection, halopsa_id=1)
    assert _attachment_requests(halo_sandbox) == [f"/api/Attachment/{invoice.pdf_attachment_id}"]
    after = InvoicePdf.objects.get(invoice=invoice)
    assert after.attachment_id == invoice.pdf_attachment_id != before.attachment_id
    assert after.sha256 != before.sha256


def test_unpaid_first_and_capped_per_run(connection, halo_sandbox, run_sync, settings):
    settings.HALOPSA_PDF_BATCH = 2
    run_sync(connection, "full")
    fetched = list(InvoicePdf.objects.filter(invoice__connection=connection).values_list("invoice__status", flat=True))
    assert len(fetched) == 2 and set(fetched) <= {"open", "partially_paid"}
    run_sync(connection, "incremental")
    run_sync(connection, "incremental")
    statuses = list(Invoice.objects.filter(connection=connection, pdf__isnull=True).values_list("status", flat=True))
    # 5 unpaid invoices in "tiny": all fetched after 3 runs, before any paid one beyond the cap.
    assert len(statuses) == 1 and statuses[0] in ("paid", "void")
    run_sync(connection, "incremental")
    assert not Invoice.objects.filter(connection=connection, pdf__isnull=True).exists()


def test_rate_limited_pdfs_never_fail_the_invoice_sync(connection, halo_sandbox, run_sync):
    halo_sandbox.add_fault("status", status=429, retry_after=0, path="/api/Attachment", count=100)
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    assert Invoice.objects.filter(connection=connection).count() == 7
    assert not InvoicePdf.objects.filter(invoice__connection=connection).exists()


def test_invoice_pdf_ensure_fetches_on_first_view_once(connection, halo_sandbox, run_sync, settings):
    settings.HALOPSA_PDF_BATCH = 0
    run_sync(connection, "full")
    invoice = Invoice.objects.get(connection=connection, halopsa_id=3)
    halo_sandbox.clear_request_log()
    pdf = invoice_pdf_ensure(invoice=invoice)
    assert pdf.attachment_id == invoice.pdf_attachment_id and len(pdf.sha256) == 64
    assert invoice_pdf_ensure(invoice=invoice).pk == pdf.pk
    assert len(_attachment_requests(halo_sandbox)) == 1


def test_invoice_pdf_ensure_fetches_again_when_the_file_is_missing(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    invoice = Invoice.objects.get(connection=connection, halopsa_id=1)
    pdf = InvoicePdf.objects.get(invoice=invoice)
    pdf.file.storage.delete(pdf.file.name)  # e.g. a web node without the shared media mount
    halo_sandbox.clear_request_log()
    again = invoice_pdf_ensure(invoice=invoice)
    assert len(_attachment_requests(halo_sandbox)) == 1
    assert again.file.storage.exists(again.file.name)
    with again.file.open("rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == again.sha256


def test_invoice_pdf_ensure_without_a_pdf_is_a_clear_error(connection, halo_sandbox, run_sync, settings):
    settings.HALOPSA_PDF_BATCH = 0
    run_sync(connection, "full")
    invoice = Invoice.objects.get(connection=connection, halopsa_id=3)
    halo_sandbox.store.update_invoice(3, duedate="2027-01-01")  # our attachment id is now stale
    with pytest.raises(PdfUnavailable, match="no longer has this PDF"):
        invoice_pdf_ensure(invoice=invoice)
    Invoice.objects.filter(pk=invoice.pk).update(pdf_attachment_id=None)
    invoice.refresh_from_db()
    with pytest.raises(PdfUnavailable, match="has no PDF"):
        invoice_pdf_ensure(invoice=invoice)


def test_entity_pdfs_scope_fetches_only_pdfs(connection, halo_sandbox, run_sync, settings):
    settings.HALOPSA_PDF_BATCH = 0
    run_sync(connection, "full")
    settings.HALOPSA_PDF_BATCH = 50
    halo_sandbox.clear_request_log()
    run = run_sync(connection, "entity", entity="pdfs")
    assert run.state == "succeeded" and run.updated == 7
    assert {e["path"].split("/")[2] for e in halo_sandbox.request_log} == {"Attachment"}


def test_pdfs_spend_only_their_budget_share_and_a_follow_up_run_continues(connection, halo_sandbox, run_sync, settings):
    from django.core.cache import cache

    from integrations.models import SyncRun
    from integrations.services.sync import sync_execute

    settings.HALOPSA_RATE_LIMIT = 20
    settings.HALOPSA_RATE_WINDOW = 60
    settings.HALOPSA_PDF_BUDGET_SHARE = 0.15  # 3 per window, 2 after the 5% headroom
    settings.HALOPSA_PDF_PHASE_SECONDS = 0.5  # the next slot frees in ~60 s: past the phase's end
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    assert Invoice.objects.filter(connection=connection).count() == 7  # invoice data is never held back
    assert len(_attachment_requests(halo_sandbox)) == 2
    assert InvoicePdf.objects.filter(invoice__connection=connection).count() == 2
    # The time limit ended the phase with work left: one follow-up PDF run is queued.
    follow_ups = SyncRun.objects.filter(connection=connection, scope=SyncRun.Scope.ENTITY, entity="pdfs")
    follow_up = follow_ups.get()
    assert follow_up.state == "queued"
    # Run in the same window, it finds the share spent, fetches nothing and queues no further run.
    assert sync_execute(run=follow_up).state == "succeeded"
    assert len(_attachment_requests(halo_sandbox)) == 2
    assert follow_ups.count() == 1
    # In the next window (the budget's counters expire) the backlog moves on.
    cache.clear()
    run_sync(connection, SyncRun.Scope.ENTITY, entity="pdfs")
    assert InvoicePdf.objects.filter(invoice__connection=connection).count() == 4


def test_pdf_phase_stays_inside_the_worker_timeout(settings):
    from integrations.services.sync import pdf_phase_seconds

    settings.HALOPSA_PDF_PHASE_SECONDS = 5000
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 1800}
    assert pdf_phase_seconds() == 1080
    settings.HALOPSA_PDF_PHASE_SECONDS = 60
    assert pdf_phase_seconds() == 60
