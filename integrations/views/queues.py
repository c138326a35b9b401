"""Work queues: invoices HaloPSA sent without a customer, and records deleted in HaloPSA."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from integrations import selectors
from integrations.forms import ArchiveForm, AssignCustomerForm
from integrations.models import Connection, Customer, Invoice
from integrations.services.archive import record_archive, record_unarchive
from integrations.services.resolution import invoices_assign_customer
from integrations.tenancy import get_visible_or_404
from integrations.views.confirm import confirmation_page, confirmed


@login_required
@require_http_methods(["GET", "POST"])
def unknown_customers(request):
    """One connection at a time: customers offered are that connection's, searchable by name."""
    connections = list(Connection.objects.visible_to(request.user).select_related("partner"))
    counts = selectors.unknown_counts_by_connection(user=request.user)
    connection_param = request.POST.get("connection") or request.GET.get("connection")
    if connection_param:
        connection = get_visible_or_404(Connection, request.user, pk=_int(connection_param))
    else:
        # Default to the first connection with work waiting.
        connection = next((c for c in connections if counts.get(c.pk)), connections[0] if connections else None)
    q = request.GET.get("q", "").strip()
    invoices = selectors.unknown_invoices(user=request.user, connection_id=connection.pk if connection else -1)
    customers_qs = (
        Customer.objects.visible_to(request.user)
        .filter(connection=connection, is_unknown=False, archived_at__isnull=True)
        .order_by("name", "id")
    )
    form = AssignCustomerForm(request.POST or None, customers=customers_qs, invoices=invoices)
    if request.method == "POST":
        if form.is_valid():
            customer = form.cleaned_data["customer"]
            try:
                changed = invoices_assign_customer(
                    invoices=form.cleaned_data["invoices"], customer=customer, user=request.user
                )
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
            else:
                messages.success(
                    request, f"{changed} invoice{'s' if changed != 1 else ''} assigned to {customer.name}."
                )
                return redirect(f"{reverse('unknown_customers')}?connection={connection.pk}")
        else:
            messages.error(request, " ".join(e for errs in form.errors.values() for e in errs))
    page = selectors.paginate(invoices, request.GET.get("page"))
    choices = selectors.customer_choices(user=request.user, connection_id=connection.pk, q=q) if connection else []
    return render(
        request,
        "integrations/unknown_customers.html",
        {
            "tabs": [(c, counts.get(c.pk, 0)) for c in connections],
            "connection": connection,
            "page": page,
            "customers": choices,
            "q": q,
            "form": form,
            "query": f"connection={connection.pk}&q={q}" if connection else "",
        },
    )


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


@login_required
@require_http_methods(["GET", "POST"])
def archive_queue(request):
    show_archived = request.GET.get("show") == "archived" or request.POST.get("show") == "archived"
    customers, invoices = selectors.archive_queue(user=request.user, archived=show_archived)
    if request.method == "POST":
        # Scope the choices to what this view lists, so foreign or unflagged ids are rejected.
        data = request.POST.copy()
        one = data.get("one", "")
        if one:  # a row's own button acts on that row only
            data.setlist("customers", [one[1:]] if one.startswith("c") else [])
            data.setlist("invoices", [one[1:]] if one.startswith("i") else [])
        data.setdefault("action", "unarchive" if show_archived else "archive")
        form = ArchiveForm(data, customers=customers, invoices=invoices)
        if form.is_valid():
            chosen = [*form.cleaned_data["customers"], *form.cleaned_data["invoices"]]
            archiving = form.cleaned_data["action"] == "archive"
            if archiving and not confirmed(request):
                return _archive_confirmation(
                    request,
                    form.cleaned_data["customers"],
                    form.cleaned_data["invoices"],
                    cancel_url=reverse("archive_queue"),
                )
            action = record_archive if archiving else record_unarchive
            done = sum(action(obj=obj, user=request.user) for obj in chosen)
            verb = "archived" if archiving else "un-archived"
            unchanged = len(chosen) - done
            messages.success(
                request,
                f"{done} record{'s' if done != 1 else ''} {verb}."
                + (f" {unchanged} already {verb}." if unchanged else ""),
            )
        else:
            messages.error(request, " ".join(e for errs in form.errors.values() for e in errs))
        return redirect(reverse("archive_queue") + ("?show=archived" if show_archived else ""))
    return render(
        request,
        "integrations/archive_queue.html",
        {
            "customers": customers[:200],
            "invoices": selectors.paginate(invoices, request.GET.get("page")),
            "show_archived": show_archived,
        },
    )


@login_required
@require_http_methods(["POST"])
def record_archive_toggle(request, kind: str, pk: int):
    """Archive (after its confirmation) or un-archive one customer/invoice from its own page."""
    model = {"customers": Customer, "invoices": Invoice}[kind]
    related = ("connection", "customer") if model is Invoice else ("connection",)
    obj = get_visible_or_404(model.objects.select_related(*related), request.user, pk=pk)
    page = "customer_detail" if model is Customer else "invoice_detail"
    if request.POST.get("action") == "unarchive":
        changed = record_unarchive(obj=obj, user=request.user)
        messages.success(request, f"{obj} un-archived." if changed else f"{obj} was not archived.")
    elif not confirmed(request):
        customers, invoices = ([obj], []) if model is Customer else ([], [obj])
        return _archive_confirmation(request, customers, invoices, cancel_url=reverse(page, kwargs={"pk": obj.pk}))
    else:
        changed = record_archive(obj=obj, user=request.user)
        messages.success(request, f"{obj} archived." if changed else f"{obj} was already archived.")
    return redirect(page, pk=obj.pk)


def _archive_confirmation(request, customers, invoices, *, cancel_url: str):
    """Archiving takes records (and what they owe) out of the lists and totals: confirm it first."""
    count = len(customers) + len(invoices)
    rows = [["Customer", c.name, "—", ""] for c in customers]
    rows += [["Invoice", str(i), i.customer.name, f"{i.balance:,.2f} {i.currency}"] for i in invoices]
    if count == 1:
        title = f"Archive {'customer' if customers else 'invoice'} {(customers or invoices)[0]}?"
    else:
        title = f"Archive these {count} records?"
    return confirmation_page(
        request,
        title=title,
        facts=[],
        rows=rows,
        row_headers=["", "Record", "Customer", "Balance"],
        consequence="Archived records leave the default lists, totals and exports (“Archived only” shows them). "
        "Nothing is deleted and nothing is sent to HaloPSA; un-archiving brings them back.",
        confirm_label=f"Archive {count} record{'s' if count != 1 else ''}",
        cancel_url=cancel_url,
    )
