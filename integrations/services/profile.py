"""The signed-in user's own settings."""

from __future__ import annotations

from integrations.models import User
from integrations.services.audit import audit_record


def profile_update(*, user: User, email: str, receives_alerts: bool) -> bool:
    """Set the user's alert address and choice; recorded in the partner's activity. False when nothing changed."""
    if (user.email, user.receives_alerts) == (email, receives_alerts):
        return False
    before = {"email": user.email, "receives_alerts": user.receives_alerts}
    user.email = email
    user.receives_alerts = receives_alerts
    user.save(update_fields=["email", "receives_alerts"])
    alerts = f"alerts to {email}" if receives_alerts and email else "no alerts"
    audit_record(
        user=user,
        action="profile.update",
        summary=f"{user.get_username()} now gets {alerts}",
        obj=None,
        before=before,
        after={"email": email, "receives_alerts": receives_alerts},
    )
    return True
