"""Named leases: "only one of us does this" across web and worker processes, on SQLite and PostgreSQL.

A lease is a row taken with a conditional UPDATE (free or expired -> ours), the same trick the
django-q2 ORM broker uses; `select_for_update` would lock nothing on SQLite. A holder that dies
simply lets the lease expire, so a crashed sync never blocks the connection for longer than the
TTL. Holders renew after each unit of work and release in `finally` (only if still theirs).
"""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from integrations.models import Lease


def lease_acquire(name: str, ttl_seconds: float) -> str | None:
    """Take the lease if it is free or expired; returns the owner token, or None when held."""
    try:
        with transaction.atomic():
            Lease.objects.get_or_create(name=name)
    except IntegrityError:  # created concurrently by another process: fine, it exists now
        pass
    owner = secrets.token_hex(16)
    now = timezone.now()
    taken = (
        Lease.objects.filter(name=name)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__lt=now))
        .update(owner=owner, expires_at=now + timedelta(seconds=ttl_seconds))
    )
    return owner if taken == 1 else None


def lease_acquire_waiting(name: str, ttl_seconds: float, *, wait_seconds: float, poll_seconds: float) -> str | None:
    """lease_acquire, trying again every `poll_seconds` for up to `wait_seconds` while another
    holds it; None if it stayed held."""
    owner = lease_acquire(name, ttl_seconds)
    deadline = time.monotonic() + wait_seconds
    while owner is None and time.monotonic() < deadline:
        time.sleep(poll_seconds)
        owner = lease_acquire(name, ttl_seconds)
    return owner


def lease_renew(name: str, owner: str, ttl_seconds: float) -> bool:
    """Extend our lease; False when it is no longer ours (it expired and someone took it)."""
    return bool(
        Lease.objects.filter(name=name, owner=owner).update(expires_at=timezone.now() + timedelta(seconds=ttl_seconds))
    )


def lease_release(name: str, owner: str) -> None:
    """Give the lease back, only if we still hold it."""
    Lease.objects.filter(name=name, owner=owner).update(owner="", expires_at=None)


def lease_is_held(name: str) -> bool:
    """True while somebody holds an unexpired lease of this name."""
    return Lease.objects.filter(name=name, expires_at__gte=timezone.now()).exists()
