"""Hourly sync schedules: one django-q2 Schedule row per enabled connection.

Each connection runs at its own `schedule_minute`, chosen when the connection is created as the
least-used minute (ties broken by a fixed order derived from the connection id), so a hundred
partners do not all hit HaloPSA and our workers at :00. Rows are keyed by name and written with
`schedule_named_ensure` (also used for the push and webhook sweeps), so every function here is
idempotent, also when several processes call it at once; `ensure_schedules` (run by `make run` and
deploys) re-creates the whole set from the connections table.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule

from integrations.models import Connection
from integrations.services.leases import lease_acquire_waiting, lease_release

logger = logging.getLogger(__name__)

SYNC_TASK = "integrations.tasks.sync.sync_scheduled_task"
NAME_PREFIX = "sync-connection-"
# One lease for every schedule row, held only for a check and a write; a caller waits at most this
# long for it (by then a dead holder's lease has expired).
SCHEDULE_LEASE = "django-q-schedules"
SCHEDULE_LEASE_SECONDS = 10.0


def schedule_named_ensure(*, name: str, defaults: dict[str, Any], update: bool = True) -> Schedule:
    """The one django-q2 schedule called `name`: created from `defaults` when there is none; an
    existing one is set to `defaults` when `update` (as update_or_create), else left as it is (as
    get_or_create).

    django-q2's Schedule.name is not unique, so get_or_create on it let two workers each create a
    'webhook-sweep' row 2 ms apart, after which every call raised MultipleObjectsReturned. Here the
    check and the write run under a lease (a row, so it works on SQLite too), and rows of the name
    beyond the oldest (left by such a race) are deleted instead of raising.
    """
    # Without the lease in time (its holder is stuck) go on: a duplicate that makes is deleted by
    # the next call.
    owner = lease_acquire_waiting(
        SCHEDULE_LEASE, SCHEDULE_LEASE_SECONDS, wait_seconds=SCHEDULE_LEASE_SECONDS, poll_seconds=0.02
    )
    try:
        with transaction.atomic():
            rows = list(Schedule.objects.filter(name=name).order_by("pk"))
            if not rows:
                return Schedule.objects.create(name=name, **defaults)
            schedule, duplicates = rows[0], rows[1:]
            if duplicates:
                logger.warning(
                    "%d duplicate django-q2 schedule(s) named %r deleted; kept the oldest (id %s)",
                    len(duplicates),
                    name,
                    schedule.pk,
                )
                Schedule.objects.filter(pk__in=[row.pk for row in duplicates]).delete()
            if update:
                for field, value in defaults.items():
                    setattr(schedule, field, value)
                schedule.save(update_fields=list(defaults))
            return schedule
    finally:
        if owner is not None:
            lease_release(SCHEDULE_LEASE, owner)


def schedule_name(connection_id: int) -> str:
    return f"{NAME_PREFIX}{connection_id}"


def schedule_minute_pick(connection_id: int) -> int:
    """The minute of the hour used by the fewest other enabled connections.

    Ties go to the first minute in a per-connection order (a stride of 37 through the hour, which
    is coprime with 60, starting at a point derived from the id), so the choice is deterministic.
    """
    used = Counter(
        Connection.objects.filter(enabled=True).exclude(pk=connection_id).values_list("schedule_minute", flat=True)
    )
    order = [((connection_id * 7) + step * 37) % 60 for step in range(60)]
    return min(order, key=lambda minute: (used.get(minute, 0), order.index(minute)))


def next_run_at(minute: int, now: datetime | None = None) -> datetime:
    """The next time (strictly after now) whose minute is `minute`."""
    now = now or timezone.now()
    candidate = now.replace(minute=minute, second=0, microsecond=0)
    if candidate <= now:
        candidate += timedelta(hours=1)
    return candidate


def schedule_ensure(connection: Connection) -> Schedule | None:
    """Create or update the connection's hourly schedule; remove it when the connection is disabled."""
    if not connection.enabled:
        schedule_remove(connection.pk)
        return None
    return schedule_named_ensure(
        name=schedule_name(connection.pk),
        defaults={
            "func": SYNC_TASK,
            "args": repr((connection.pk,)),
            "schedule_type": Schedule.HOURLY,
            "repeats": -1,
            "next_run": next_run_at(connection.schedule_minute),
        },
    )


def schedule_remove(connection_id: int) -> int:
    deleted, _ = Schedule.objects.filter(name=schedule_name(connection_id)).delete()
    return deleted


def ensure_schedules() -> dict[str, int]:
    """Make the schedule table match the connections: one row per enabled connection, no others."""
    enabled_ids = set()
    for connection in Connection.objects.filter(enabled=True).only("pk", "enabled", "schedule_minute"):
        schedule_ensure(connection)
        enabled_ids.add(connection.pk)
    removed = 0
    for schedule in Schedule.objects.filter(name__startswith=NAME_PREFIX).only("pk", "name"):
        suffix = schedule.name[len(NAME_PREFIX) :]
        if not suffix.isdigit() or int(suffix) not in enabled_ids:
            schedule.delete()
            removed += 1
    return {"ensured": len(enabled_ids), "removed": removed}
