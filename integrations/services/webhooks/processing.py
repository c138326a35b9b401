"""Turning stored webhook events into sync work: a task claims the event, re-fetches the
*current* record it names through the sync service (amounts and statuses in the body are never
used, so duplicates and out-of-order deliveries change nothing twice), and marks it processed,
ignored or failed; events that must wait (another sync holds the connection) go back to the sweep.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django_q.tasks import async_task

from integrations.halopsa.exceptions import HaloError
from integrations.models import Connection, Contact, Payment, SyncRun, WebhookEvent
from integrations.services.audit import audit_record
from integrations.services.leases import lease_is_held
from integrations.services.sync import LEASE_CONFLICT_MESSAGE, lease_name, sync_record
from integrations.services.webhooks.common import REALTIME_MIN_VERSION_TEXT, WebhookError, as_halo_id

logger = logging.getLogger(__name__)

WEBHOOK_TASK = "integrations.tasks.webhooks.webhook_event_task"
SWEEP_TASK = "integrations.tasks.webhooks.webhook_sweep_task"
SWEEP_SCHEDULE_NAME = "webhook-sweep"
SWEEP_AFTER = timedelta(minutes=5)
# An event still waiting after this many attempts is FAILED (a person can replay it).
MAX_ATTEMPTS = 10
# Seconds to wait for another sync's lease before giving the event back to the sweep.
LEASE_WAIT_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.5, 2.0)


def webhook_event_enqueue(event_id: int) -> None:
    """Queue the event's processing once the transaction that stored (or reset) it commits."""
    transaction.on_commit(lambda: _queue_task(event_id))


def _queue_task(event_id: int) -> None:
    # The event is already committed: if the queue is unreachable it stays RECEIVED and the sweep
    # picks it up later. The delivery itself succeeded, so this never fails the response.
    try:
        async_task(WEBHOOK_TASK, event_id)
    except Exception:
        logger.exception("could not queue webhook event %s; the sweep will", event_id)
        try:
            webhook_sweep_schedule_ensure()
        except Exception:
            logger.exception("could not ensure the webhook sweep schedule")


def _claim_ttl() -> timedelta:
    # A task is killed after Q_CLUSTER["timeout"]; a claim older than that belongs to a dead worker.
    return timedelta(seconds=int(settings.Q_CLUSTER.get("timeout", 1800)))


def webhook_event_process(*, event_id: int) -> WebhookEvent | None:
    """Re-fetch the record the event names and mark the event PROCESSED / IGNORED / FAILED.

    Safe to run twice: only the worker whose conditional UPDATE claims the event does anything.
    """
    now = timezone.now()
    claimed = (
        WebhookEvent.objects.filter(pk=event_id)
        .filter(
            Q(state=WebhookEvent.State.RECEIVED)
            | Q(state=WebhookEvent.State.PROCESSING, claimed_at__lt=now - _claim_ttl())
        )
        .update(state=WebhookEvent.State.PROCESSING, claimed_at=now, attempts=F("attempts") + 1)
    )
    event = WebhookEvent.objects.select_related("connection").filter(pk=event_id).first()
    if not claimed or event is None:
        return event  # already handled, or another worker has it
    connection = event.connection
    reason = _process_refusal(connection)
    if reason:
        return _finish(event, claimed_at=now, state=WebhookEvent.State.IGNORED, error=reason)
    try:
        outcome = _resync(event)
    except HaloError as exc:
        return _finish(event, claimed_at=now, state=WebhookEvent.State.FAILED, error=exc.message)
    except Exception as exc:  # never leave an event claimed forever; the log has the traceback
        logger.exception("webhook event %s failed", event_id)
        return _finish(
            event,
            claimed_at=now,
            state=WebhookEvent.State.FAILED,
            error=f"Unexpected error while processing ({type(exc).__name__}).",
        )
    state, error = outcome
    if state == WebhookEvent.State.RECEIVED and event.attempts >= MAX_ATTEMPTS:
        state, error = WebhookEvent.State.FAILED, f"Gave up after {event.attempts} attempts: {error}"
    if state == WebhookEvent.State.PROCESSED:
        _coalesce(event, fetched_after=now)
    if state == WebhookEvent.State.RECEIVED:
        webhook_sweep_schedule_ensure()  # whoever waits must be picked up again
    return _finish(event, claimed_at=now, state=state, error=error)


def _process_refusal(connection: Connection) -> str:
    if not connection.enabled:
        return "The connection is disabled."
    if connection.paused:
        return "The connection is paused; the first sync after resuming picks up this change."
    if not connection.is_realtime:
        version = connection.halopsa_version or "an unknown version"
        return f"HaloPSA {version} is older than {REALTIME_MIN_VERSION_TEXT}; this connection syncs hourly."
    return ""


def _resync(event: WebhookEvent) -> tuple[str, str]:
    """Sync the current state of what the event is about; (state, error).

    RECEIVED means "try again later" (another sync of the connection held its lease throughout).
    """
    connection = event.connection
    targets = _sync_targets(event)
    if not targets:
        return WebhookEvent.State.IGNORED, _no_target_reason(event)
    errors = []
    for entity, halopsa_id in targets:
        run = _sync_when_free(connection, entity, halopsa_id)
        if run is None:
            return (
                WebhookEvent.State.RECEIVED,
                "Waiting: another sync of this connection is running; retried automatically.",
            )
        if run.state == SyncRun.State.FAILED:
            errors.append(run.message or f"Sync of {entity} {halopsa_id} failed (run {run.pk}).")
    if errors:
        return WebhookEvent.State.FAILED, " ".join(errors)[:2000]
    return WebhookEvent.State.PROCESSED, ""


def _sync_when_free(connection: Connection, entity: str, halopsa_id: int) -> SyncRun | None:
    """sync_record, waiting a few seconds for another sync's lease; None if it stayed busy.

    Single-record syncs (other webhooks) hold the lease for well under a second; a long hourly
    sync is not waited for - the event goes back to RECEIVED and the sweep retries it.
    """
    name = lease_name(connection.pk)
    for delay in (*LEASE_WAIT_DELAYS, None):
        if not lease_is_held(name):
            run = sync_record(
                connection=connection, entity=entity, halopsa_id=halopsa_id, trigger=SyncRun.Trigger.WEBHOOK
            )
            if not (run.state == SyncRun.State.FAILED and run.message == LEASE_CONFLICT_MESSAGE):
                return run
            run.delete()  # a lost race for the lease is not a sync the partner needs to see
        if delay is None:
            return None
        time.sleep(delay)
    return None


def _sync_targets(event: WebhookEvent) -> list[tuple[str, int]]:
    """(sync entity, HaloPSA id) pairs to re-fetch. Ids in the body are only used to route."""
    obj = (event.payload or {}).get(event.entity) if event.entity else None
    obj = obj if isinstance(obj, dict) else {}
    if event.entity in ("invoice", "client"):
        assert event.object_id is not None  # an event without one is stored IGNORED (intake), never processed
        return [("invoices" if event.entity == "invoice" else "customers", event.object_id)]
    if event.entity == "payment":
        # The payment's invoice holds it (payments are embedded in invoices): resync the invoice.
        invoice_id = as_halo_id(obj.get("invoice_id"))
        if invoice_id is None:
            payment = (
                Payment.objects.filter(connection=event.connection, halopsa_id=event.object_id)
                .select_related("invoice")
                .first()
            )
            invoice_id = payment.invoice.halopsa_id if payment is not None else None
        return [("invoices", invoice_id)] if invoice_id is not None else []
    if event.entity == "user":
        # A user is a billing contact of its client: resync that client (its contacts with it),
        # and the client we had the user under, in case the user moved.
        client_ids = []
        client_id = as_halo_id(obj.get("client_id"))
        if client_id is not None:
            client_ids.append(client_id)
        known = (
            Contact.objects.filter(customer__connection=event.connection, halopsa_user_id=event.object_id)
            .order_by("customer__halopsa_id")
            .values_list("customer__halopsa_id", flat=True)
        )
        client_ids.extend(cid for cid in known if cid is not None and cid not in client_ids)
        return [("customers", cid) for cid in client_ids]
    return []


def _no_target_reason(event: WebhookEvent) -> str:
    if event.entity == "payment":
        return (
            "The payment's invoice is unknown (not in the delivery, not synced yet); the hourly sync will pick it up."
        )
    if event.entity == "user":
        return "The user belongs to no known customer; nothing to update."
    return "Nothing to sync for this event."


def _coalesce(event: WebhookEvent, *, fetched_after: datetime) -> int:
    """Events for the same record received before our fetch are served by it: mark them done."""
    if event.object_id is None:
        return 0
    return (
        WebhookEvent.objects.filter(
            connection_id=event.connection_id,
            entity=event.entity,
            object_id=event.object_id,
            state=WebhookEvent.State.RECEIVED,
            received_at__lte=fetched_after,
        )
        .exclude(pk=event.pk)
        .update(
            state=WebhookEvent.State.PROCESSED,
            processed_at=timezone.now(),
            error=f"Covered by the fetch of event {event.pk}.",
        )
    )


def _finish(event: WebhookEvent, *, claimed_at: datetime, state: str, error: str) -> WebhookEvent:
    now = timezone.now()
    # Only the claim we hold may finish the event (a stale worker must not overwrite a newer one).
    WebhookEvent.objects.filter(pk=event.pk, state=WebhookEvent.State.PROCESSING, claimed_at=claimed_at).update(
        state=state,
        error=error,
        processed_at=None if state == WebhookEvent.State.RECEIVED else now,
    )
    event.refresh_from_db()
    return event


def webhook_event_replay(*, event: WebhookEvent, user) -> WebhookEvent:
    """Queue a FAILED event again (a person asked for it). Raises WebhookError otherwise."""
    if event.state != WebhookEvent.State.FAILED:
        raise WebhookError(f"Only failed events can be replayed; this one is {event.get_state_display().lower()}.")
    with transaction.atomic():
        reset = WebhookEvent.objects.filter(pk=event.pk, state=WebhookEvent.State.FAILED).update(
            state=WebhookEvent.State.RECEIVED,
            error="",
            claimed_at=None,
            processed_at=None,
        )
        if not reset:
            raise WebhookError("The event changed meanwhile; reload the page.")
        audit_record(
            user=user,
            action="webhook.replay",
            obj=event,
            summary=f"Replayed webhook event {event.pk} ({event.event or event.entity})",
            connection_id=event.connection_id,
        )
        webhook_event_enqueue(event.pk)
    event.refresh_from_db()
    return event


def webhook_events_requeue_stale(*, older_than: timedelta = SWEEP_AFTER) -> int:
    """Queue again events still RECEIVED a while after they arrived or last waited (queue was
    unreachable, or a long sync held the lease), and events whose worker died mid-way (claim
    older than the task timeout). A duplicate task is harmless: the claim decides."""
    now = timezone.now()
    cutoff = now - older_than
    waiting = Q(state=WebhookEvent.State.RECEIVED) & (
        Q(claimed_at__isnull=True, received_at__lt=cutoff) | Q(claimed_at__lt=cutoff)
    )
    abandoned = Q(state=WebhookEvent.State.PROCESSING, claimed_at__lt=now - _claim_ttl())
    ids = list(
        WebhookEvent.objects.filter(waiting | abandoned).order_by("received_at").values_list("pk", flat=True)[:1000]
    )
    for event_id in ids:
        async_task(WEBHOOK_TASK, event_id)
    return len(ids)


def webhook_sweep_schedule_ensure() -> None:
    """The django-q2 schedule that runs webhook_sweep_task every few minutes (idempotent, also when
    workers call it at once); an existing one is left as it is."""
    from django_q.models import Schedule

    from integrations.schedules import schedule_named_ensure

    schedule_named_ensure(
        name=SWEEP_SCHEDULE_NAME,
        update=False,
        defaults={"func": SWEEP_TASK, "schedule_type": Schedule.MINUTES, "minutes": 5, "repeats": -1},
    )
