"""Synced data: customers, invoices (with detail, PDF, status, payments) and payments."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from integrations import selectors
from integrations.forms import InvoiceFilterForm, InvoiceStatusForm, PaymentFilterForm, PaymentForm
from integrations.ids import parse_id
from integrations.models import Customer, Invoice, Origin, Payment, PushJob, SyncRun
from integrations.services.payments import (
    PaymentRefused,
    StatusChangeRefused,
    invoice_pushes_to_halopsa,
    invoice_status_change,
    invoice_status_choices,
    payment_delete as payment_void,
    payment_push_states,
    payment_record,
    payment_refusal,
    status_change_preview,
    status_change_refusal,
)
from integrations.services.sync import PdfUnavailable, invoice_pdf_ensure, sync_queue
from integrations.tenancy import get_visible_or_404
from integrations.views.confirm import Fact, confirmation_page, confirmed
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
        selectors.customer_list(user=request.user, q=q, connection_id=connection_id, archived=archived),
        request.GET.get("page"),
    )
    selectors.customer_page_with_contacts(page)
    return render(
        request,
        "integrations/customer_list.html",
        {"page": page, "q": q, "archived": archived, "query": _query_without_page(request)},
    )


@login_required
def customer_detail(request, pk: int):
    customer = get_visible_or_404(Customer.objects.select_related("connection", "archived_by"), request.user, pk=pk)
    contacts = customer.billing_contacts.order_by("name", "id")
    invoices = customer.invoices.filter(archived_at__isnull=True)
    page = selectors.paginate(
        invoices.select_related("connection").order_by("-invoice_date", "-id"), request.GET.get("page")
    )
    return render(
        request,
        "integrations/customer_detail.html",
        {
            "customer": customer,
            "contacts": contacts,
            "page": page,
            "receivables": selectors.receivables(invoices),
        },
    )


@login_required
def invoice_list(request):
    form = InvoiceFilterForm(request.GET or None)
    filters = form.filters()
    invoices = selectors.invoice_list(user=request.user, filters=filters)
    page = selectors.paginate_ids_first(invoices, request.GET.get("page"))
    customer = None
    if filters.customer_id:
        customer = Customer.objects.visible_to(request.user).filter(pk=filters.customer_id).first()
    return render(
        request,
        "integrations/invoice_list.html",
        {
            "form": form,
            "problems": form.problems(),
            "filters": filters,
            "page": page,
            "customer": customer,
            "totals": selectors.invoice_totals(invoices),
            "query": _query_without_page(request),
        },
    )


@login_required
def invoice_detail(request, pk: int):
    return _invoice_page(request, selectors.invoice_detail(user=request.user, pk=pk))


def _invoice_page(
    request, invoice: Invoice, *, payment_form: PaymentForm | None = None, status_form: InvoiceStatusForm | None = None
):
    """The invoice page; a refused form comes back bound, with what the person typed and its errors."""
    payments = selectors.invoice_payments(invoice=invoice)
    states = payment_push_states(payments)
    for payment in payments:
        payment.push_state = states[payment.pk]  # type: ignore[attr-defined]
    context = {
        "invoice": invoice,
        "lines": invoice.lines.order_by("sequence", "id"),
        "payments": payments,
        "pdf": getattr(invoice, "pdf", None) if _has_pdf(invoice) else None,
        # Payment pushes show on their payment's row; status pushes have no row of their own.
        "push_jobs": invoice.push_jobs.filter(payment__isnull=True)
        .exclude(state__in=[PushJob.State.DONE, PushJob.State.CANCELLED])
        .order_by("-created_at"),
        "remote_status_label": Invoice.Status(invoice.remote_status).label
        if invoice.remote_status in Invoice.Status.values and invoice.remote_status != invoice.status
        else "",
        "status_form": status_form or InvoiceStatusForm(invoice=invoice),
        "status_refusal": status_change_refusal(invoice),
        # A paid invoice's menu has no "Open": say how it is re-opened instead.
        "reopen_by_deleting_payments": invoice.status == Invoice.Status.PAID
        and Invoice.Status.OPEN not in invoice_status_choices(invoice),
        "payment_form": payment_form or PaymentForm(invoice=invoice),
        "payment_refusal": payment_refusal(invoice),
    }
    return render(request, "integrations/invoice_detail.html", context)


def _money(amount, currency: str) -> str:
    return f"{amount:,.2f} {currency}"


def _invoice_facts(invoice: Invoice) -> list[Fact]:
    return [Fact("Invoice", str(invoice)), Fact("Customer", invoice.customer.name)]


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
    if not pdf.file or not pdf.file.storage.exists(pdf.file.name):  # type: ignore[arg-type]
        messages.error(request, "The stored PDF file is missing; it is downloaded again by the next sync.")
        return redirect("invoice_detail", pk=invoice.pk)
    filename = f"invoice-{slugify(invoice.number) or invoice.pk}.pdf"
    return FileResponse(pdf.file.open("rb"), content_type="application/pdf", as_attachment=True, filename=filename)


@login_required
@require_POST
def invoice_status(request, pk: int):
    invoice = selectors.invoice_detail(user=request.user, pk=pk)
    form = InvoiceStatusForm(request.POST, invoice=invoice)
    if not form.is_valid():
        messages.error(request, "Status not changed: " + " ".join(form.errors.get("status", ["choose a status."])))  # type: ignore[arg-type]
        return _invoice_page(request, invoice, status_form=form)
    status = form.cleaned_data["status"]
    # A change the menu offers is confirmed first; anything else goes straight to the service,
    # which refuses it with the reason (and records that), so there is nothing to confirm.
    if status in invoice_status_choices(invoice) and not confirmed(request):
        balance_after, halopsa = status_change_preview(invoice=invoice, status=status)
        new_label = Invoice.Status(status).label
        return confirmation_page(
            request,
            title=f"Change invoice {invoice} to {new_label.lower()}?",
            facts=[
                *_invoice_facts(invoice),
                Fact("Status", f"{invoice.get_status_display()} → {new_label}"),
                Fact(
                    "Balance",
                    f"{_money(invoice.balance, invoice.currency)} → {_money(balance_after, invoice.currency)}",
                    emphasis=True,
                ),
            ],
            consequence=halopsa,
            confirm_label=f"Set to {new_label.lower()}",
            cancel_url=reverse("invoice_detail", kwargs={"pk": invoice.pk}),
            danger=status == Invoice.Status.VOID,
        )
    try:
        change = invoice_status_change(invoice=invoice, status=status, user=request.user)
    except StatusChangeRefused as exc:
        messages.error(request, f"Status not changed: {exc.message}")
    else:
        (messages.success if change.changed else messages.info)(request, change.message)
    return redirect("invoice_detail", pk=invoice.pk)


@login_required
@require_POST
def invoice_payment(request, pk: int):
    invoice = selectors.invoice_detail(user=request.user, pk=pk)
    refusal = payment_refusal(invoice)
    if refusal:  # the page shows no form then; a stale page or a hand-made POST gets the reason
        messages.error(request, f"Payment not recorded: {refusal}")
        return redirect("invoice_detail", pk=invoice.pk)
    form = PaymentForm(request.POST, invoice=invoice)
    if not form.is_valid():
        messages.error(request, "Payment not recorded: correct the fields marked below.")
        return _invoice_page(request, invoice, payment_form=form)
    data = form.cleaned_data
    if not confirmed(request):
        amount = _money(data["amount"], invoice.currency)
        paid_on = data["paid_on"] or timezone.now().date()
        return confirmation_page(
            request,
            title=f"Record a payment of {amount}?",
            facts=[
                Fact("Amount", amount, emphasis=True),
                *_invoice_facts(invoice),
                Fact("Paid on", paid_on.isoformat()),
                Fact("Method", data["method"] or "—"),
                Fact("Reference", data["reference"] or "generated when recorded"),
                Fact(
                    "Balance",
                    f"{_money(invoice.balance, invoice.currency)} → "
                    f"{_money(invoice.balance - data['amount'], invoice.currency)}",
                ),
            ],
            consequence=(
                "The payment is recorded here at once and posted to HaloPSA in the background."
                if invoice_pushes_to_halopsa(invoice)
                else "The invoice was made here: the payment is recorded here only."
            ),
            confirm_label=f"Record {amount}",
            cancel_url=reverse("invoice_detail", kwargs={"pk": invoice.pk}),
        )
    try:
        payment = payment_record(invoice=invoice, user=request.user, **data)
    except PaymentRefused as exc:
        form.add_error(None, exc.message)
        messages.error(request, f"Payment refused: {exc.message}")
        return _invoice_page(request, invoice, payment_form=form)
    where = (
        "it is posted to HaloPSA in the background"
        if invoice_pushes_to_halopsa(invoice)
        else "the invoice was made here, so nothing is sent to HaloPSA"
    )
    messages.success(
        request, f"Payment of {_money(payment.amount, invoice.currency)} recorded on invoice {invoice}; {where}."
    )
    return redirect("invoice_detail", pk=invoice.pk)


@login_required
@require_POST
def payment_delete(request, pk: int):
    payment = get_visible_or_404(
        Payment.objects.select_related("invoice__customer", "invoice__connection"), request.user, pk=pk
    )
    invoice = payment.invoice
    deletable = payment.source == Origin.PLATFORM and payment.voided_at is None
    if deletable and not confirmed(request):
        amount = _money(payment.amount, invoice.currency)
        return confirmation_page(
            request,
            title=f"Delete the payment of {amount}?",
            facts=[
                Fact("Amount", amount, emphasis=True),
                *_invoice_facts(invoice),
                Fact("Paid on", payment.paid_on.isoformat() if payment.paid_on else "unknown"),
                Fact("Reference", payment.reference or "—"),
                Fact("HaloPSA", payment_push_states([payment])[payment.pk].label),
                Fact(
                    "Balance",
                    f"{_money(invoice.balance, invoice.currency)} → "
                    f"{_money(invoice.balance + payment.amount, invoice.currency)}",
                ),
            ],
            consequence=(
                "The payment is removed here at once and, if it reached HaloPSA, deleted there in the background."
                if invoice_pushes_to_halopsa(invoice)
                else "The invoice was made here: nothing is sent to HaloPSA."
            ),
            confirm_label=f"Delete {amount}",
            cancel_url=reverse("invoice_detail", kwargs={"pk": invoice.pk}),
            danger=True,
        )
    try:  # a payment from HaloPSA, or one already deleted: the service says why not
        payment_void(payment=payment, user=request.user)
    except PaymentRefused as exc:
        messages.error(request, f"Payment not deleted: {exc.message}")
    else:
        messages.success(
            request,
            f"Payment of {_money(payment.amount, invoice.currency)} deleted; "
            + (
                "it is removed from HaloPSA in the background."
                if invoice_pushes_to_halopsa(invoice)
                else "nothing is sent to HaloPSA."
            ),
        )
    return redirect("invoice_detail", pk=invoice.pk)


@login_required
@require_POST
def invoice_resync(request, pk: int):
    invoice = get_visible_or_404(Invoice.objects.select_related("connection"), request.user, pk=pk)
    if invoice.halopsa_id is None:
        messages.error(request, "This invoice was created here, not in HaloPSA; there is nothing to resync.")
        return redirect("invoice_detail", pk=invoice.pk)

    run, started = sync_queue(
        connection=invoice.connection,
        scope=SyncRun.Scope.INVOICE,
        trigger=SyncRun.Trigger.MANUAL,
        entity="invoices",
        halopsa_id=invoice.halopsa_id,
        user=request.user,
    )
    report_sync_queued(request, run, started)
    return redirect("invoice_detail", pk=invoice.pk)


@login_required
def payment_list(request):
    form = PaymentFilterForm(request.GET or None)
    payments = selectors.payment_list(user=request.user, filters=form.filters())
    page = selectors.paginate(payments, request.GET.get("page"))
    page.object_list = list(page.object_list)  # read once: the rows carry their push state
    states = payment_push_states(page.object_list)
    for payment in page.object_list:
        payment.push_state = states[payment.pk]
    return render(
        request,
        "integrations/payment_list.html",
        {
            "form": form,
            "problems": form.problems(),
            "page": page,
            "totals": selectors.payment_totals(payments),
            "query": _query_without_page(request),
        },
    )
