"""The one way partner-owned rows are read: scoped to the user's partner (staff see all).

Every partner-owned model uses `PartnerScopedQuerySet` and names the lookup that reaches its
partner in `partner_lookup`. Views fetch single objects with `get_visible_or_404`, so another
partner's object is a 404, never a 403 that would confirm it exists.
"""

from __future__ import annotations

from typing import Self, TypeVar

from django.db import models
from django.http import Http404

M = TypeVar("M", bound=models.Model)


class PartnerScopedQuerySet(models.QuerySet[M]):
    def visible_to(self, user) -> Self:
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self
        if user.partner_id is None:
            return self.none()
        return self.filter(**{self.model.partner_lookup: user.partner_id})  # type: ignore[attr-defined]

    def for_partner(self, partner_id: int) -> Self:
        return self.filter(**{self.model.partner_lookup: partner_id})  # type: ignore[attr-defined]


def get_visible_or_404(queryset_or_model, user, **lookup):
    """Fetch one object the user may see, or raise Http404 (also for other partners' objects)."""
    queryset = queryset_or_model._default_manager.all() if isinstance(queryset_or_model, type) else queryset_or_model
    obj = queryset.visible_to(user).filter(**lookup).first()
    if obj is None:
        raise Http404("Not found.")
    return obj
