"""The tables mirrored from HaloPSA have no default ordering (issue 18 item 5): a lookup, count or
sync read never sorts by accident. What people see still comes in the documented order, asked
for where it is shown: invoices newest first, an invoice's lines by sequence, payments by date,
customers and billing contacts by name.

Rows are inserted in the opposite order to the one shown, so a page that lost its ORDER BY (and
fell back to insertion order) fails here."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from integrations.models import Contact, Customer, Invoice, InvoiceLine, Payment

MIRRORED = [Customer, Contact, Invoice, InvoiceLine, Payment]


@pytest.mark.parametrize("model", MIRRORED, ids=lambda m: m.__name__)
def test_mirrored_tables_have_no_default_ordering(model):
    assert model._meta.ordering == []
    queryset = model.objects.all()
    assert not queryset.ordered
    assert queryset.query.order_by == ()
    assert "ORDER BY" not in str(model.objects.filter(pk=1).query)


def test_invoice_list_is_newest_first(alice_client, mine):
    # Inserted oldest first: newest-first is the ORDER BY's doing, not the insertion order.
    for day in (3, 4, 5):
        Invoice.objects.create(
            connection=mine.connection,
            customer=mine.customer,
            halopsa_id=900 + day,
            number=f"ORD-{day}",
            invoice_date=date(2026, 11, day),
            total=Decimal("1.00"),
        )
    page = alice_client.get(reverse("invoice_list")).context["page"]
    dates = [invoice.invoice_date for invoice in page.object_list]
    assert dates == sorted(dates, reverse=True)
    assert [i.number for i in page.object_list][:3] == ["ORD-5", "ORD-4", "ORD-3"]


def test_invoice_lines_are_shown_by_sequence(alice_client, mine):
    InvoiceLine.objects.filter(invoice=mine.invoice).delete()
    for sequence in (3, 2, 1):  # last line first
        InvoiceLine.objects.create(
            invoice=mine.invoice, sequence=sequence, description=f"line {sequence}", net_amount=Decimal("1.00")
        )
    response = alice_client.get(reverse("invoice_detail", kwargs={"pk": mine.invoice.pk}))
    assert [line.sequence for line in response.context["lines"]] == [1, 2, 3]
    html = response.content.decode()
    assert html.index("line 1") < html.index("line 2") < html.index("line 3")


def test_invoice_payments_are_shown_by_date(alice_client, mine):
    Payment.objects.create(
        invoice=mine.invoice,
        connection=mine.connection,
        source="halopsa",
        amount=Decimal("5.00"),
        paid_on=date(2026, 10, 2),
        halopsa_id=7001,
    )
    response = alice_client.get(reverse("invoice_detail", kwargs={"pk": mine.invoice.pk}))
    assert [p.paid_on for p in response.context["payments"]] == [date(2026, 10, 2), date(2026, 10, 5)]


def test_billing_contacts_are_shown_by_name(alice_client, mine):
    # The world's contact is "ACME Billing"; "Zed" is added before "Abe".
    for name in ("Zed Payables", "Abe Accounts"):
        Contact.objects.create(
            customer=mine.customer,
            halopsa_key=f"user:{len(name)}{name[0]}",
            source=Contact.Source.INVOICE_USER,
            name=name,
            email=f"{name.split()[0].lower()}@acme.example",
        )
    expected = ["ACME Billing", "Abe Accounts", "Zed Payables"]
    detail = alice_client.get(reverse("customer_detail", kwargs={"pk": mine.customer.pk}))
    assert [c.name for c in detail.context["contacts"]] == expected
    listing = alice_client.get(reverse("customer_list"), {"q": mine.customer.name})
    (customer,) = listing.context["page"].object_list
    assert [c.name for c in customer.billing_contacts.all()] == expected


def test_customer_list_is_by_name(alice_client, mine):
    Customer.objects.create(connection=mine.connection, halopsa_id=801, name="ZZ Last")
    Customer.objects.create(connection=mine.connection, halopsa_id=802, name="AA First")
    names = [c.name for c in alice_client.get(reverse("customer_list")).context["page"].object_list]
    assert names == sorted(names) and names[0] == "AA First" and names.index("ZZ Last") > names.index("ACME Customer")


@pytest.mark.parametrize(
    ("model", "ordering"),
    [(Customer, ["name"]), (Invoice, ["-invoice_date", "-id"]), (Payment, ["paid_on", "id"])],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_admin_lists_keep_their_order(model, ordering):
    request = RequestFactory().get("/admin/")
    assert list(admin.site._registry[model].get_ordering(request)) == ordering
