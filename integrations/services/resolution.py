"""Resolving invoices HaloPSA sent without a customer (the "unknown" customer queue)."""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from integrations.models import Customer, Invoice
from integrations.services.audit import audit_record


def invoices_assign_customer(*, invoices: Iterable[Invoice], customer: Customer, user) -> int:
    """Attach invoices to a real customer of the same connection; returns how many changed.

    `customer_assigned_at` tells the sync to keep this choice until HaloPSA itself gives the
    invoice a customer, so the assignment survives later syncs.
    """
    invoices = list(invoices)
    if customer.is_unknown:
        raise ValidationError("Choose a real customer, not “unknown”.")
    if customer.archived_at is not None:
        raise ValidationError(f"{customer.name} is archived; un-archive it first.")
    foreign = [inv for inv in invoices if inv.connection_id != customer.connection_id]
    if foreign:
        raise ValidationError(f"{customer.name} belongs to another HaloPSA connection than invoice {foreign[0]}.")
    now = timezone.now()
    changed = 0
    with transaction.atomic():
        for invoice in invoices:
            if invoice.customer_id == customer.pk:
                continue
            previous = invoice.customer_id
            invoice.customer = customer
            invoice.customer_assigned_by = user
            invoice.customer_assigned_at = now
            invoice.save(update_fields=["customer", "customer_assigned_by", "customer_assigned_at", "updated_at"])
            audit_record(
                user=user,
                action="invoice.assign_customer",
                summary=f"Assigned invoice {invoice} to customer {customer.name}",
                obj=invoice,
                customer_id=customer.pk,
                previous_customer_id=previous,
            )
            changed += 1
    return changed
