"""django-q2 entry points for the pull sync: thin, take ids, safe to run twice."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def sync_run_task(run_id: int) -> str | None:
    """Execute a queued SyncRun (a duplicate delivery finds it finished and does nothing)."""
    from integrations.models import SyncRun
    from integrations.services.sync import sync_execute

    run = SyncRun.objects.filter(pk=run_id).first()
    if run is None:
        logger.info("sync run %s no longer exists", run_id)
        return None
    return sync_execute(run=run).state


def sync_scheduled_task(connection_id: int) -> int | None:
    """The hourly schedule of one connection: queue its sync unless it is disabled or paused.

    Incremental, except full once a day (see sync_scope_for_schedule): the full read is what
    detects records deleted in HaloPSA. Returns the run id (None when skipped).
    """
    from integrations.models import Connection, SyncRun
    from integrations.schedules import schedule_remove
    from integrations.services.sync import sync_queue, sync_scope_for_schedule

    connection = Connection.objects.filter(pk=connection_id).first()
    if connection is None:
        schedule_remove(connection_id)  # a leftover schedule of a deleted connection
        return None
    if not connection.is_active:
        return None
    run, _ = sync_queue(
        connection=connection, scope=sync_scope_for_schedule(connection), trigger=SyncRun.Trigger.SCHEDULE
    )
    return run.pk
