"""Incidents: a problem the partner hears about once (banner + email), not once per run."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from integrations.models import Connection, Incident

logger = logging.getLogger(__name__)


def incident_open(connection: Connection, kind: str, message: str) -> Incident:
    """Open an incident unless one of this kind is already open; email the partner's users once."""
    existing = Incident.objects.filter(connection=connection, kind=kind, resolved_at__isnull=True).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            incident = Incident.objects.create(connection=connection, kind=kind, message=message[:2000])
    except IntegrityError:  # opened concurrently by another worker
        return Incident.objects.get(connection=connection, kind=kind, resolved_at__isnull=True)
    _notify(incident)
    return incident


def incident_resolve(connection: Connection, kind: str) -> int:
    return Incident.objects.filter(connection=connection, kind=kind, resolved_at__isnull=True).update(
        resolved_at=timezone.now()
    )


def _notify(incident: Incident) -> None:
    # The partner's active users who keep alerts on, at the address each set on their profile page.
    recipients = list(
        incident.connection.partner.users.filter(is_active=True, receives_alerts=True)
        .exclude(email="")
        .values_list("email", flat=True)
    )
    if recipients:
        subject = f"[syncportal] {incident.connection.name}: {incident.get_kind_display()}"
        body = (
            f'{incident.get_kind_display()} for the HaloPSA connection "{incident.connection.name}".\n\n'
            f"{incident.message}\n\nOpen the connection page: {settings.SITE_URL}/connections/{incident.connection.pk}/\n"
        )
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
        except Exception:  # a mail outage must not break a sync; the banner still shows
            logger.exception("could not email incident %s", incident.pk)
            return
    Incident.objects.filter(pk=incident.pk).update(notified_at=timezone.now())
