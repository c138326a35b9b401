"""Archiving customers and invoices: a person's decision, usually after HaloPSA deleted the record.

Deleting in HaloPSA only flags the row (`deleted_in_halopsa_at`); it leaves the default lists
when someone archives it here. Un-archiving brings it back.
"""

from __future__ import annotations

from django.utils import timezone

from integrations.models import Customer, Invoice
from integrations.services.audit import audit_record

Archivable = Customer | Invoice


def record_archive(*, obj: Archivable, user) -> bool:
    """Archive one customer or invoice; False when it already was (a double click is harmless)."""
    changed = (
        type(obj)
        .objects.filter(pk=obj.pk, archived_at__isnull=True)
        .update(archived_at=timezone.now(), archived_by=user if user is not None and user.is_authenticated else None)
    )
    if not changed:
        return False
    obj.refresh_from_db(fields=["archived_at", "archived_by"])
    audit_record(
        user=user,
        action=f"{obj._meta.model_name}.archive",
        summary=f"Archived {obj._meta.verbose_name} {obj}",
        obj=obj,
        deleted_in_halopsa=obj.deleted_in_halopsa_at is not None,
    )
    return True


def record_unarchive(*, obj: Archivable, user) -> bool:
    """Bring an archived customer or invoice back into the default lists."""
    changed = type(obj).objects.filter(pk=obj.pk, archived_at__isnull=False).update(archived_at=None, archived_by=None)
    if not changed:
        return False
    obj.refresh_from_db(fields=["archived_at", "archived_by"])
    audit_record(
        user=user,
        action=f"{obj._meta.model_name}.unarchive",
        summary=f"Un-archived {obj._meta.verbose_name} {obj}",
        obj=obj,
    )
    return True
