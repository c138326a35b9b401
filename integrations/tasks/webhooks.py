"""django-q2 entry points for webhooks: thin, they take ids and call the service."""

from __future__ import annotations

from integrations.services.webhooks import webhook_event_process, webhook_events_requeue_stale


def webhook_event_task(event_id: int) -> str:
    event = webhook_event_process(event_id=event_id)
    return event.state if event is not None else "missing"


def webhook_sweep_task() -> int:
    """Re-queue events stored while the queue was unreachable (schedule every few minutes)."""
    return webhook_events_requeue_stale()
