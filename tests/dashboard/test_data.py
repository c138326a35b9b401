"""Synced data pages: invoice filters/sorts/pagination with bounded queries, detail, PDF, payments."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from integrations.models import Customer, Invoice, Payment


@pytest.fixture
def many_invoices(mine):
    customers = Customer.objects.bulk_create(
        [Customer(connection=mine.connection, halopsa_id=500 + i, name=f"Bulk {i}") for i in range(5)]
    )
    base = date(2026, 1, 1)
    Invoice.objects.bulk_create(
        [
            Invoice(
                connection=mine.connection,
                customer=customers[i % 5],
                halopsa_id=10_000 + i,
                number=f"B-{i:04d}",
                invoice_date=base + timedelta(days=i % 200),
                due_date=base + timedelta(days=30 + i % 200),
                total=Decimal(i) + Decimal("0.50"),
                balance=Decimal(i % 97) + Decimal("0.25"),
                status=[Invoice.Status.OPEN, Invoice.Status.PAID, Invoice.Status.PARTIALLY_PAID][i % 3],
            )
            for i in range(260)
        ]
    )
    return customers


def test_invoice_list_is_paginated_50(alice_client, mine, many_invoices):
    response = alice_client.get(reverse("invoice_list"))
    assert len(response.context["page"].object_list) == 50
    assert response.context["page"].paginator.num_pages == 6  # 260 + the 3 of the world
    last = alice_client.get(reverse("invoice_list"), {"page": 6})
    assert len(last.context["page"].object_list) == 13
    assert alice_client.get(reverse("invoice_list"), {"page": "nonsense"}).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"status": "open", "sort": "-balance"},
        {"overdue": "on", "sort": "due"},
        {"q": "B-01"},
        {"archived": "on"},
        {"page": 3, "sort": "date"},
    ],
)
def test_invoice_list_query_count_is_bounded(alice_client, mine, many_invoices, params, django_assert_max_num_queries):
    # Session, user, the partner's connection ids, count, the page's ids, its rows, totals per
    # currency, the menu's queue counts, the user's partner (header), open incidents (banner).
    with django_assert_max_num_queries(10):
        response = alice_client.get(reverse("invoice_list"), params)
    assert response.status_code == 200


def test_query_count_does_not_grow_with_data(alice_client, mine, many_invoices, django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as small:
        alice_client.get(reverse("invoice_list"), {"q": "B-000"})  # a few rows
    with CaptureQueriesContext(connection) as full:
        alice_client.get(reverse("invoice_list"))  # a full page
    assert len(full) == len(small)


def test_invoice_filters_and_sorts(alice_client, mine, many_invoices):
    page = alice_client.get(reverse("invoice_list"), {"status": "paid"}).context["page"]
    assert {inv.status for inv in page} == {"paid"}
    page = alice_client.get(reverse("invoice_list"), {"sort": "-balance"}).context["page"]
    balances = [inv.balance for inv in page]
    assert balances == sorted(balances, reverse=True)
    page = alice_client.get(reverse("invoice_list"), {"sort": "due"}).context["page"]
    dues = [inv.due_date for inv in page if inv.due_date]
    assert dues == sorted(dues)
    page = alice_client.get(reverse("invoice_list"), {"q": "B-0042"}).context["page"]
    assert [inv.number for inv in page] == ["B-0042"]
    page = alice_client.get(reverse("invoice_list"), {"customer_name": "bulk 3"}).context["page"]
    assert page.paginator.count == 52 and {inv.customer.name for inv in page} == {"Bulk 3"}
    page = alice_client.get(reverse("invoice_list"), {"customer": many_invoices[0].pk}).context["page"]
    assert {inv.customer_id for inv in page} == {many_invoices[0].pk}
    today = timezone.now().date()
    page = alice_client.get(reverse("invoice_list"), {"overdue": "on"}).context["page"]
    assert page.paginator.count > 0
    assert all(inv.due_date < today and inv.status in ("open", "partially_paid") for inv in page)


def test_bad_filter_values_do_not_error(alice_client, mine):
    response = alice_client.get(reverse("invoice_list"), {"status": "bogus", "sort": "drop table", "customer": "x"})
    assert response.status_code == 200


def test_customer_list_shows_billing_contacts_with_bounded_queries(
    alice_client, mine, many_invoices, django_assert_max_num_queries
):
    with django_assert_max_num_queries(8):
        body = alice_client.get(reverse("customer_list")).content.decode()
    assert "billing@acme.example" in body


def test_invoice_detail_shows_lines_payments_and_raw(alice_client, mine):
    body = alice_client.get(reverse("invoice_detail", kwargs={"pk": mine.invoice.pk})).content.decode()
    assert "ACME managed services" in body and "ACME-PAY" in body and "Download PDF" in body


def test_pdf_download_serves_stored_file(alice_client, mine):
    from tests.dashboard.conftest import PDF_BYTES

    response = alice_client.get(reverse("invoice_pdf", kwargs={"pk": mine.invoice.pk}))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert b"".join(response.streaming_content) == PDF_BYTES
    assert 'filename="invoice-acme-inv-100.pdf"' in response["Content-Disposition"]


def test_record_payment_changes_balance(alice_client, mine, partner_user):
    response = alice_client.post(
        reverse("invoice_payment", kwargs={"pk": mine.invoice.pk}),
        {"amount": "20.00", "method": "card", "reference": "ACME-WEB-1", "confirmed": "yes"},
        follow=True,
    )
    body = response.content.decode()
    assert "recorded" in body
    invoice = Invoice.objects.get(pk=mine.invoice.pk)
    assert invoice.balance == Decimal("100.00") and invoice.status == Invoice.Status.PARTIALLY_PAID
    payment = Payment.objects.get(reference="ACME-WEB-1")
    assert payment.amount == Decimal("20.00") and payment.created_by == partner_user


def test_overpayment_is_refused_with_a_message(alice_client, mine):
    response = alice_client.post(
        reverse("invoice_payment", kwargs={"pk": mine.invoice.pk}), {"amount": "999.00"}, follow=True
    )
    assert "overpayments are refused" in response.content.decode()
    assert Invoice.objects.get(pk=mine.invoice.pk).balance == Decimal("120.00")


def test_bad_payment_form_is_an_error_not_a_500(alice_client, mine):
    response = alice_client.post(
        reverse("invoice_payment", kwargs={"pk": mine.invoice.pk}), {"amount": "-3"}, follow=True
    )
    assert response.status_code == 200 and "Payment not recorded" in response.content.decode()


def test_status_change_form(alice_client, mine):
    alice_client.post(reverse("invoice_status", kwargs={"pk": mine.invoice.pk}), {"status": "void", "confirmed": "yes"})
    assert Invoice.objects.get(pk=mine.invoice.pk).status == Invoice.Status.VOID
    response = alice_client.post(
        reverse("invoice_status", kwargs={"pk": mine.invoice.pk}), {"status": "nonsense"}, follow=True
    )
    assert "Choose a valid status" in response.content.decode()


def test_status_change_refused_is_explained(alice_client, mine):
    response = alice_client.post(
        reverse("invoice_status", kwargs={"pk": mine.deleted_invoice.pk}), {"status": "paid"}, follow=True
    )
    assert "deleted in HaloPSA" in response.content.decode()


def test_delete_platform_payment(alice_client, mine):
    alice_client.post(reverse("payment_delete", kwargs={"pk": mine.payment.pk}), {"confirmed": "yes"})
    assert Payment.objects.get(pk=mine.payment.pk).voided_at is not None
    response = alice_client.post(reverse("payment_delete", kwargs={"pk": mine.payment.pk}), follow=True)
    assert "already deleted" in response.content.decode()


def test_payments_list_filters_by_source(alice_client, mine):
    Payment.objects.create(
        invoice=mine.invoice,
        connection=mine.connection,
        source="halopsa",
        halopsa_id=9,
        amount=Decimal("1.00"),
        paid_on=date(2026, 10, 6),
        reference="HALO-PAY",
    )
    body = alice_client.get(reverse("payment_list"), {"source": "platform"}).content.decode()
    assert "ACME-PAY" in body and "HALO-PAY" not in body


def test_activity_shows_partner_actions(alice_client, mine, theirs):
    body = alice_client.get(reverse("activity")).content.decode()
    assert "ACME seeded the world" in body and "GLOBEX" not in body


def test_unit_prices_and_quantities_display_without_noise():
    from decimal import Decimal

    from integrations.templatetags.portal_format import quantity, unit_amount

    assert [unit_amount(Decimal(v)) for v in ("2243.0000", "61.7500", "0.0125")] == ["2,243.00", "61.75", "0.0125"]
    assert [quantity(Decimal(v)) for v in ("3.0000", "1.2500", "100.0000")] == ["3", "1.25", "100"]
    assert unit_amount("not a number") == "" and quantity(None) == "" and quantity("1,5") == ""


def test_status_form_offers_only_statuses_a_person_may_set():
    from integrations.forms import InvoiceStatusForm

    offered = [value for value, _ in InvoiceStatusForm().fields["status"].choices]
    assert offered == ["open", "paid", "void"]
