"""The audit trail: every action a person takes in the portal, visible to their partner."""

from __future__ import annotations

from typing import Any

from django.db import models

from integrations.models import AuditEvent, Partner


def audit_record(
    *, user, action: str, summary: str, obj: models.Model | None = None, partner: Partner | int | None = None, **details
) -> AuditEvent:
    """Record who did what. `partner` defaults to the object's partner, then the user's."""
    partner_id = partner.pk if isinstance(partner, Partner) else partner
    if partner_id is None and obj is not None:
        partner_id = _partner_id_of(obj)
    if partner_id is None and user is not None:
        partner_id = getattr(user, "partner_id", None)
    return AuditEvent.objects.create(
        partner_id=partner_id,
        user=user if (user is not None and user.is_authenticated) else None,
        action=action,
        object_type=(obj._meta.model_name or "") if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        summary=summary[:500],
        details=details,
    )


def _partner_id_of(obj: models.Model) -> int | None:
    lookup = getattr(type(obj), "partner_lookup", None)
    if lookup is None:
        return None
    if lookup == "pk":
        return obj.pk
    value: Any = obj
    for part in lookup.removesuffix("_id").split("__"):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value.pk
