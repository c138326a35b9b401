"""Values every page's layout needs."""
from __future__ import annotations

from integrations.models import Incident


def portal(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # Open incidents show as a banner on every page until resolved.
    incidents = Incident.objects.visible_to(user).filter(resolved_at__isnull=True).select_related("connection")[:5]
    return {"open_incidents": incidents}
