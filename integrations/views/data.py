"""Synced data: customers, invoices (with detail, PDF, status, payments) and payments."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from integrations import selectors
from integrations.forms import InvoiceFilterForm, InvoiceStatusForm, PaymentFilterForm, PaymentForm
from integrations.ids import parse_id
from integrations.models import Customer, Invoice, Payment, PushJob, SyncRun
from integrations.services.payments import PaymentRefused, StatusChangeRefused, invoice_status_change, payment_record
from integrations.services.payments import payment_delete as payment_void
from integrations.services.sync import PdfUnavailable, invoice_pdf_ensure, sync_queue
from integrations.tenancy import get_visible_or_404
from integrations.views.connections import report_sync_queued

def _query_without_page(request) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


@login_required
def customer_list(request):
    q = request.GET.get("q", "").strip()
    archived = request.GET.get("archived") == "1"
    connection_id = parse_id(request.GET.get("connection"))
    page = selectors.paginate(
        selectors.customer_list(user=request.user, q=q, connection_id=connection_id, archived=archived), request.GET.get("page")
    )
    selectors.customer_page_with_contacts(page)
    return render(request, "integrations/customer_list.html",
                  {"page": page, "q": q, "archived": archived, "query": _query_without_page(request)})


@login_required
def customer_detail(request, pk: int):
    customer = get_visible_or_404(Customer.objects.select_related("connection", "archived_by"), request.user, pk=pk)
    contacts = customer.billing_contacts.all()
    invoices = customer.invoices.filter(archived_at__isnull=True)
    page = selectors.paginate(invoices.select_related("connection").order_by("-invoice_date", "-id"), request.GET.get("page"))
    return render(request, "integrations/customer_detail.html", {
        "customer": customer, "contacts": contacts, "page": page, "receivables": selectors.receivables(invoices),
    })


@login_required
def invoice_list(request):
    form = InvoiceFilterForm(request.GET or None)
    filters = form.filters()
    invoices = selectors.invoice_list(user=request.user, filters=filters)
    page = selectors.paginate_ids_first(invoices, request.GET.get("page"))
    customer = None
    if filters.customer_id:
        customer = Customer.objects.visible_to(request.user).filter(pk=filters.customer_id).first()
    return render(request, "integrations/invoice_list.html", {
        "form": form, "problems": form.problems(), "filters": filters, "page": page, "customer": customer,
        "totals": selectors.invoice_totals(invoices), "query": _query_without_page(request),
    })


@login_required
def invoice_detail(request, pk: int):
    invoice = selectors.invoice_detail(user=request.user, pk=pk)
    context = {
        "invoice": invoice,
        "lines": invoice.lines.all(),
        "payments": selectors.invoice_payments(invoice=invoice),
        "pdf": getattr(invoice, "pdf", None) if _has_pdf(invoice) else None,
        "push_jobs": invoice.push_jobs.exclude(state__in=[PushJob.State.DONE, PushJob.State.CANCELLED]).order_by("-created_at"),
        "status_form": InvoiceStatusForm(initial={"status": invoice.status}),
        "payment_form": PaymentForm(),
    }
    return render(request, "integrations/invoice_detail.html", context)


def _has_pdf(invoice: Invoice) -> bool:
    try:
        return invoice.pdf is not None
    except Invoice.pdf.RelatedObjectDoesNotExist:
        return False


@login_required
@require_GET
def invoice_pdf(request, pk: int):
    """Serve the stored PDF after the tenancy check; fetch it from HaloPSA on first view."""
    invoice = get_visible_or_404(Invoice.objects.select_related("connection"), request.user, pk=pk)

    try:
        # Returns the stored PDF when it is current; downloads it once when missing or stale.
        pdf = invoice_pdf_ensure(invoice=invoice)
    except PdfUnavailable as exc:
        messages.error(request, f"No PDF: {exc.message}")
        return redirect("invoice_detail", pk=invoice.pk)
    if not pdf.file or not pdf.file.storage.exists(pdf.file.name):
        messages.error(request, "The stored PDF file is missing; it is downloaded again by the next sync.")
        return redirect("invoice_detail", pk=invoice.pk)
    filename = f"invoice-{slugify(invoice.number) or invoice.pk}.pdf"
    return FileResponse(pdf.file.open("rb"), content_type="application/pdf", as_attachment=True, filename=filename)


@login_required
@require_POST
def invoice_status(request, pk: int):
    invoice = get_visible_or_404(Invoice, request.user, pk=pk)
    form = InvoiceStatusForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid status.")
        return redirect("invoice_detail", pk=invoice.pk)

    try:
        invoice_status_change(invoice=invoice, status=form.cleaned_data["status"], user=request.user)
    except StatusChangeRefused as exc:
        messages.error(request, f"Status not changed: {exc.message}")
    else:
        messages.success(request, f"Status changed to {Invoice.Status(form.cleaned_data['status']).label}; HaloPSA is updated in the background.")
    return redirect("invoice_detail", pk=invoice.pk)


@login_required
@require_POST
def invoice_payment(request, pk: int):
    invoice = get_visible_or_404(Invoice.objects.select_related("connection"), request.user, pk=pk)
    form = PaymentForm(request.POST)

    if form.is_valid():
        try:
            payment = payment_record(invoice=invoice, user=request.user, **form.cleaned_data)
        except PaymentRefused as exc:
            messages.error(request, f"Payment refused: {exc.message}")
        else:
            messages.success(request, f"Payment of {payment.amount} {invoice.currency} recorded; it is posted to HaloPSA in the background.")
            return redirect("invoice_detail", pk=invoice.pk)
    else:
        messages.error(request, "Payment not recorded: " + "; ".join(
            f"{name.replace('_', ' ') if name != '__all__' else ''} {e}".strip() for name, errs in form.errors.items() for e in errs))
    return redirect("invoice_detail", pk=invoice.pk)


@login_required
@require_POST
def payment_delete(request, pk: int):
    payment = get_visible_or_404(Payment.objects.select_related("invoice"), request.user, pk=pk)

    try:
        payment_void(payment=payment, user=request.user)
    except PaymentRefused as exc:
        messages.error(request, f"Payment not deleted: {exc.message}")
    else:
        messages.success(request, "Payment deleted; it is removed from HaloPSA in the background.")
    return redirect("invoice_detail", pk=payment.invoice_id)


@login_required
@require_POST
def invoice_resync(request, pk: int):
    invoice = get_visible_or_404(Invoice.objects.select_related("connection"), request.user, pk=pk)
    if invoice.halopsa_id is None:
        messages.error(request, "This invoice was created here, not in HaloPSA; there is nothing to resync.")
        return redirect("invoice_detail", pk=invoice.pk)

    run, started = sync_queue(connection=invoice.connection, scope=SyncRun.Scope.INVOICE, trigger=SyncRun.Trigger.MANUAL,
                              entity="invoices", halopsa_id=invoice.halopsa_id, user=request.user)
    report_sync_queued(request, run, started)
    return redirect("invoice_detail", pk=invoice.pk)


@login_required
def payment_list(request):
    form = PaymentFilterForm(request.GET or None)
    payments = selectors.payment_list(user=request.user, filters=form.filters())
    page = selectors.paginate(payments, request.GET.get("page"))
    return render(request, "integrations/payment_list.html", {
        "form": form, "problems": form.problems(), "page": page,
        "totals": selectors.payment_totals(payments), "query": _query_without_page(request),
    })
