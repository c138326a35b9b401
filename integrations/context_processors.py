"""Values every page's layout needs."""

from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from integrations import selectors
from integrations.models import Incident


def portal(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # Open incidents show as a banner on every page until resolved.
    nav = SimpleLazyObject(lambda: selectors.nav_summary(user=user))
    incidents = Incident.objects.visible_to(user).filter(resolved_at__isnull=True).select_related("connection")[:5]
    return {
        "open_incidents": incidents,
        # Lazy: one query, run when a template first reads it (the menu's queue counts, on every page).
        "nav": nav,
        # Lists name each row's connection only when there is more than one to tell apart.
        "show_connection": SimpleLazyObject(lambda: user.is_staff or nav.connections > 1),
    }
