"""Unknown-customer resolution and the archive queue, through the views and the services."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from integrations.models import AuditEvent, Customer, Invoice


def _unknown_url(world) -> str:
    return reverse("unknown_customers") + f"?connection={world.connection.pk}"


def test_queue_lists_what_halopsa_sent(alice_client, mine):
    body = alice_client.get(reverse("unknown_customers")).content.decode()
    assert "ACME-INV-101" in body and "ACME-REF" in body  # raw reference shown
    assert "ACME-INV-100" not in body  # has a customer


def test_customer_search_filters_choices(alice_client, mine):
    Customer.objects.create(connection=mine.connection, halopsa_id=12, name="Zebra Corp")
    body = alice_client.get(
        reverse("unknown_customers"), {"connection": mine.connection.pk, "q": "zeb"}
    ).content.decode()
    assert "Zebra Corp" in body and "ACME Customer</option>" not in body


def test_assign_one_invoice_is_recorded(alice_client, mine, partner_user):
    response = alice_client.post(
        _unknown_url(mine),
        {"connection": mine.connection.pk, "customer": mine.customer.pk, "only": mine.unknown_invoice.pk},
    )
    assert response.status_code == 302
    invoice = Invoice.objects.get(pk=mine.unknown_invoice.pk)
    assert invoice.customer_id == mine.customer.pk
    assert invoice.customer_assigned_by == partner_user and invoice.customer_assigned_at is not None
    event = AuditEvent.objects.get(action="invoice.assign_customer")
    assert event.user == partner_user and event.partner_id == mine.connection.partner_id
    body = alice_client.get(response["Location"]).content.decode()
    assert "1 invoice assigned to ACME Customer" in body and "ACME-INV-101" not in body


def test_assign_in_bulk(alice_client, mine):
    second = Invoice.objects.create(
        connection=mine.connection, customer=mine.unknown, halopsa_id=150, number="ACME-INV-150"
    )
    alice_client.post(
        _unknown_url(mine),
        {
            "connection": mine.connection.pk,
            "customer": mine.customer.pk,
            "invoices": [mine.unknown_invoice.pk, second.pk],
        },
    )
    assert set(
        Invoice.objects.filter(customer=mine.customer, customer_assigned_at__isnull=False).values_list("pk", flat=True)
    ) == {mine.unknown_invoice.pk, second.pk}
    assert AuditEvent.objects.filter(action="invoice.assign_customer").count() == 2


def test_assign_without_selection_explains(alice_client, mine):
    response = alice_client.post(
        _unknown_url(mine), {"connection": mine.connection.pk, "customer": mine.customer.pk}, follow=True
    )
    assert "Select at least one invoice" in response.content.decode()
    assert Invoice.objects.get(pk=mine.unknown_invoice.pk).customer_id == mine.unknown.pk


def test_service_refuses_customer_of_another_connection(mine, theirs, partner_user):
    from integrations.services.resolution import invoices_assign_customer

    with pytest.raises(ValidationError):
        invoices_assign_customer(invoices=[mine.unknown_invoice], customer=theirs.customer, user=partner_user)
    with pytest.raises(ValidationError):
        invoices_assign_customer(invoices=[mine.unknown_invoice], customer=mine.unknown, user=partner_user)


def test_archive_one_then_it_leaves_default_lists(alice_client, mine, partner_user):
    assert "ACME-INV-102" in alice_client.get(reverse("invoice_list")).content.decode()
    response = alice_client.post(reverse("archive_queue"), {"one": f"i{mine.deleted_invoice.pk}", "confirmed": "yes"})
    assert response.status_code == 302
    invoice = Invoice.objects.get(pk=mine.deleted_invoice.pk)
    assert invoice.archived_at is not None and invoice.archived_by == partner_user
    assert "ACME-INV-102" not in alice_client.get(reverse("invoice_list")).content.decode()
    assert "ACME-INV-102" not in alice_client.get(reverse("archive_queue")).content.decode()
    assert "ACME-INV-102" in alice_client.get(reverse("invoice_list"), {"archived": "on"}).content.decode()
    assert "ACME-INV-102" in alice_client.get(reverse("archive_queue"), {"show": "archived"}).content.decode()
    assert AuditEvent.objects.filter(action="invoice.archive", user=partner_user).exists()


def test_archive_selected_and_unarchive(alice_client, mine):
    alice_client.post(
        reverse("archive_queue"),
        {
            "action": "archive",
            "customers": [mine.deleted_customer.pk],
            "invoices": [mine.deleted_invoice.pk],
            "confirmed": "yes",
        },
    )
    assert Customer.objects.get(pk=mine.deleted_customer.pk).archived_at is not None
    assert "ACME Gone Customer" not in alice_client.get(reverse("customer_list")).content.decode()
    alice_client.post(
        reverse("archive_queue"),
        {
            "action": "unarchive",
            "show": "archived",
            "customers": [mine.deleted_customer.pk],
            "invoices": [mine.deleted_invoice.pk],
        },
    )
    assert Customer.objects.get(pk=mine.deleted_customer.pk).archived_at is None
    assert Invoice.objects.get(pk=mine.deleted_invoice.pk).archived_at is None
    assert AuditEvent.objects.filter(action="customer.unarchive").count() == 1


def test_archive_queue_rejects_rows_not_flagged_deleted(alice_client, mine):
    alice_client.post(reverse("archive_queue"), {"action": "archive", "invoices": [mine.invoice.pk]})
    assert Invoice.objects.get(pk=mine.invoice.pk).archived_at is None


def test_archive_is_idempotent(mine, partner_user):
    from integrations.services.archive import record_archive, record_unarchive

    assert record_archive(obj=mine.deleted_invoice, user=partner_user) is True
    assert record_archive(obj=mine.deleted_invoice, user=partner_user) is False
    assert AuditEvent.objects.filter(action="invoice.archive").count() == 1
    assert record_unarchive(obj=mine.deleted_invoice, user=partner_user) is True
    assert record_unarchive(obj=mine.deleted_invoice, user=partner_user) is False


def test_archive_from_invoice_page(alice_client, mine):
    response = alice_client.post(
        reverse("invoice_archive", kwargs={"pk": mine.invoice.pk}), {"action": "archive", "confirmed": "yes"}
    )
    assert response.status_code == 302
    assert Invoice.objects.get(pk=mine.invoice.pk).archived_at is not None
    alice_client.post(reverse("invoice_archive", kwargs={"pk": mine.invoice.pk}), {"action": "unarchive"})
    assert Invoice.objects.get(pk=mine.invoice.pk).archived_at is None
