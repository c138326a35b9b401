"""Inbound HaloPSA webhooks: authenticate, store, process, replay, set up, report health.

A webhook is only a hint that a record changed. It is authenticated (Basic, plus an HMAC where
configured), stored before anything else, deduplicated on HaloPSA's delivery id, and processed in
a django-q2 task that re-fetches the *current* record from HaloPSA through the sync service. Amounts
and statuses in the webhook body are never used, so duplicates and out-of-order deliveries cannot
change anything twice. The hourly poll stays the source of truth (see docs/webhooks.md).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count, F, Q, Sum
from django.urls import reverse
from django.utils import timezone
from django_q.tasks import async_task

from integrations.halopsa.exceptions import HaloError
from integrations.halopsa.payloads import parse_json, storable
from integrations.models import REALTIME_MIN_VERSION, Connection, Contact, Payment, SyncRun, WebhookEvent
from integrations.services.audit import audit_record

logger = logging.getLogger(__name__)
T = TypeVar("T")

WEBHOOK_TASK = "integrations.tasks.webhooks.webhook_event_task"
SWEEP_TASK = "integrations.tasks.webhooks.webhook_sweep_task"
SWEEP_SCHEDULE_NAME = "webhook-sweep"
SWEEP_AFTER = timedelta(minutes=5)
# An event still waiting after this many attempts is FAILED (a person can replay it).
MAX_ATTEMPTS = 10
# Seconds to wait for another sync's lease before giving the event back to the sweep.
LEASE_WAIT_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.5, 2.0)
URL_NAME = "halopsa-webhook"
REALTIME_MIN_VERSION_TEXT = ".".join(str(part) for part in REALTIME_MIN_VERSION)

# The HaloPSA events the portal subscribes to. Names follow the live "ticket status changed" form
# (lower-case words, reference §6); the invoice/client/user/payment names are UNVERIFIED against a
# real tenant - correct them here (and in docs/webhooks.md) once confirmed.
SUBSCRIBED_EVENTS: tuple[str, ...] = (
    "invoice created", "invoice updated", "invoice deleted",
    "client created", "client updated", "client deleted",
    "user created", "user updated", "user deleted",
    "payment created", "payment updated", "payment deleted",
)

# Words in an event name -> our entity. Checked in this order: a payment event names its invoice
# ("payment applied to invoice") and a user event its client, so the narrower entity wins.
_ENTITY_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("payment", ("payment", "payments")),
    ("user", ("user", "users", "contact", "contacts")),
    ("invoice", ("invoice", "invoices")),
    ("client", ("client", "clients", "customer", "customers")),
)
ENTITIES = tuple(entity for entity, _ in _ENTITY_WORDS)

# Headers never stored with an event: credentials and signatures.
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie"}
_MAX_HEADER_VALUE = 500


class WebhookError(Exception):
    """A refused webhook action, with a message a partner can act on."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


# --- Receiving ---------------------------------------------------------------------------------


def webhook_hmac_header() -> str:
    """Header carrying base64(HMAC-SHA256(secret, raw body)); "Token" as in DJPSA (reference §6)."""
    return getattr(settings, "HALOPSA_WEBHOOK_HMAC_HEADER", "Token")


def webhook_request_authenticate(*, connection: Connection, authorization: str, body: bytes, signature: str) -> bool:
    """True when the Basic credentials (and the HMAC, if the connection has a secret) are right.

    Every comparison runs whatever the earlier ones found, in constant time, so neither the
    response nor its timing tells which part was wrong.
    """
    username, password = _basic_credentials(authorization)
    expected_password = (connection.webhook_password or "").encode()
    ok_username = hmac.compare_digest(username, (connection.webhook_username or "").encode())
    ok_password = hmac.compare_digest(password, expected_password)
    ok = ok_username & ok_password & bool(expected_password)
    secret = connection.webhook_hmac_secret or ""
    if secret:
        expected_signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        ok &= hmac.compare_digest((signature or "").strip().encode("utf-8", "replace"), expected_signature)
    return ok


def _basic_credentials(authorization: str) -> tuple[bytes, bytes]:
    """(username, password) from an `Authorization: Basic ...` header; empty when absent or garbled."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return b"", b""
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return b"", b""
    username, separator, password = decoded.partition(b":")
    if not separator:
        return b"", b""
    return username, password


def webhook_payload_parse(body: bytes) -> dict[str, Any]:
    """The delivery as a dict (numbers as Decimal). Raises WebhookError with a clear message."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookError("The body is not UTF-8 text; HaloPSA webhooks send JSON.") from exc
    try:
        payload = parse_json(text, allow_constants=False)
    except (ValueError, RecursionError) as exc:
        raise WebhookError("The body is not valid JSON.") from exc
    if isinstance(payload, list):
        raise WebhookError("Batched deliveries are not supported: turn batching off on the HaloPSA webhook.")
    if not isinstance(payload, dict):
        raise WebhookError("The body must be a JSON object.")
    return payload


def db_retry(operation: Callable[[], T], *, attempts: int = 6, delay: float = 0.05) -> T:
    """Run a short database operation, retrying transient lock errors.

    A burst of deliveries writes concurrently; SQLite answers some writes with "database is
    locked" instead of waiting. Storing the event must not fail for that, so the write is
    retried with a short backoff (never inside an outer transaction, which would be broken).
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except OperationalError:
            if attempt == attempts or transaction.get_connection().in_atomic_block:
                raise
            time.sleep(delay * attempt)
    raise AssertionError("unreachable")


def webhook_connection_for_key(key) -> Connection | None:
    return db_retry(lambda: Connection.objects.filter(webhook_key=key).first())


def webhook_event_accept(*, connection: Connection, payload: dict[str, Any], body: bytes,
                         headers: dict[str, str] | None = None) -> tuple[WebhookEvent, bool]:
    """Store an authenticated delivery and queue its processing; (event, created).

    A delivery already stored (same HaloPSA delivery id, or same body) returns the stored event
    and created=False, and nothing else happens. Deliveries that cannot be processed (HaloPSA too
    old for real time, paused connection, event we do not handle) are stored as IGNORED with the
    reason, so the partner sees them.
    """
    return db_retry(lambda: _accept(connection=connection, payload=payload, body=body, headers=headers))


def _accept(*, connection: Connection, payload: dict[str, Any], body: bytes,
            headers: dict[str, str] | None) -> tuple[WebhookEvent, bool]:
    event_name = storable(str(payload.get("event") or "").strip()[:200])
    entity = webhook_event_entity(event_name, payload)
    object_id = _object_id(payload, entity)
    dedupe_key = _dedupe_key(payload, body)
    ignored_reason = _ignored_reason(connection, entity, object_id, event_name)
    state = WebhookEvent.State.IGNORED if ignored_reason else WebhookEvent.State.RECEIVED
    now = timezone.now()
    try:
        with transaction.atomic():
            event = WebhookEvent.objects.create(
                connection=connection,
                dedupe_key=dedupe_key,
                event=event_name,
                entity=entity,
                object_id=object_id,
                payload=payload,
                headers=_safe_headers(headers or {}),
                state=state,
                error=ignored_reason,
                received_at=now,
                processed_at=now if ignored_reason else None,
            )
            if state == WebhookEvent.State.RECEIVED:
                _enqueue(event.pk)
    except IntegrityError:
        existing = WebhookEvent.objects.filter(connection=connection, dedupe_key=dedupe_key).first()
        if existing is None:  # not a duplicate after all: let the caller report the failure
            raise
        return existing, False
    return event, True


def webhook_event_entity(event_name: str, payload: dict[str, Any]) -> str:
    """invoice|client|user|payment from the event name, else from the object key; "" if neither."""
    words = event_name.lower().replace("_", " ").replace("-", " ").split()
    for entity, names in _ENTITY_WORDS:
        if any(word in names for word in words):
            return entity
    for entity in ENTITIES:
        if isinstance(payload.get(entity), dict):
            return entity
    return ""


def _object_id(payload: dict[str, Any], entity: str) -> int | None:
    """HaloPSA's id of the record: `object_id`, else the entity object's `id`."""
    candidates = [payload.get("object_id")]
    obj = payload.get(entity) if entity else None
    if isinstance(obj, dict):
        candidates.append(obj.get("id"))
    for value in candidates:
        number = _as_id(value)
        if number is not None:
            return number
    return None


def _as_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, Decimal) and value == value.to_integral_value():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    # Positive and within a BigIntegerField.
    return number if 0 < number < 2**63 else None


def _dedupe_key(payload: dict[str, Any], body: bytes) -> str:
    """HaloPSA's delivery id (kept across its retries), else the body's sha256."""
    delivery_id = payload.get("id")
    if isinstance(delivery_id, (str, int)) and not isinstance(delivery_id, bool):
        text = storable(str(delivery_id).strip())
        if text and len(text) <= 90:
            return f"id:{text}"
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _ignored_reason(connection: Connection, entity: str, object_id: int | None, event_name: str) -> str:
    if not connection.is_realtime:
        version = connection.halopsa_version or "an unknown version"
        return (
            f"HaloPSA {version} is older than {REALTIME_MIN_VERSION_TEXT}, so this connection syncs "
            "hourly; the event is kept but not processed."
        )
    if connection.paused:
        return "The connection is paused; the first sync after resuming picks up this change."
    if not entity:
        return f"Event {event_name or '(no name)'!r} is not one the portal handles."
    if object_id is None:
        return "The delivery carries no record id (object_id)."
    return ""


def _safe_headers(headers: dict[str, str]) -> dict[str, str]:
    secret = {*_SECRET_HEADERS, webhook_hmac_header().lower()}
    return {
        storable(str(name)[:100]): storable(str(value)[:_MAX_HEADER_VALUE])
        for name, value in headers.items()
        if str(name).lower() not in secret
    }


def _enqueue(event_id: int) -> None:
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


# --- Processing --------------------------------------------------------------------------------


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
        .filter(Q(state=WebhookEvent.State.RECEIVED)
                | Q(state=WebhookEvent.State.PROCESSING, claimed_at__lt=now - _claim_ttl()))
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
        return _finish(event, claimed_at=now, state=WebhookEvent.State.FAILED,
                       error=f"Unexpected error while processing ({type(exc).__name__}).")
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
            return WebhookEvent.State.RECEIVED, "Waiting: another sync of this connection is running; retried automatically."
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
    from integrations.services.leases import lease_is_held
    from integrations.services.sync import LEASE_CONFLICT_MESSAGE, lease_name, sync_record

    name = lease_name(connection.pk)
    for delay in (*LEASE_WAIT_DELAYS, None):
        if not lease_is_held(name):
            run = sync_record(connection=connection, entity=entity, halopsa_id=halopsa_id,
                              trigger=SyncRun.Trigger.WEBHOOK)
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
    if event.entity == "invoice":
        return [("invoices", event.object_id)]
    if event.entity == "client":
        return [("customers", event.object_id)]
    if event.entity == "payment":
        # The payment's invoice holds it (payments are embedded in invoices): resync the invoice.
        invoice_id = _as_id(obj.get("invoice_id"))
        if invoice_id is None:
            payment = (Payment.objects.filter(connection=event.connection, halopsa_id=event.object_id)
                       .select_related("invoice").first())
            invoice_id = payment.invoice.halopsa_id if payment is not None else None
        return [("invoices", invoice_id)] if invoice_id is not None else []
    if event.entity == "user":
        # A user is a billing contact of its client: resync that client (its contacts with it),
        # and the client we had the user under, in case the user moved.
        client_ids = []
        client_id = _as_id(obj.get("client_id"))
        if client_id is not None:
            client_ids.append(client_id)
        known = (Contact.objects.filter(customer__connection=event.connection, halopsa_user_id=event.object_id)
                 .values_list("customer__halopsa_id", flat=True))
        client_ids.extend(cid for cid in known if cid is not None and cid not in client_ids)
        return [("customers", cid) for cid in client_ids]
    return []


def _no_target_reason(event: WebhookEvent) -> str:
    if event.entity == "payment":
        return "The payment's invoice is unknown (not in the delivery, not synced yet); the hourly sync will pick it up."
    if event.entity == "user":
        return "The user belongs to no known customer; nothing to update."
    return "Nothing to sync for this event."


def _coalesce(event: WebhookEvent, *, fetched_after: datetime) -> int:
    """Events for the same record received before our fetch are served by it: mark them done."""
    if event.object_id is None:
        return 0
    return WebhookEvent.objects.filter(
        connection_id=event.connection_id, entity=event.entity, object_id=event.object_id,
        state=WebhookEvent.State.RECEIVED, received_at__lte=fetched_after,
    ).exclude(pk=event.pk).update(
        state=WebhookEvent.State.PROCESSED, processed_at=timezone.now(),
        error=f"Covered by the fetch of event {event.pk}.",
    )


def _finish(event: WebhookEvent, *, claimed_at: datetime, state: str, error: str) -> WebhookEvent:
    now = timezone.now()
    # Only the claim we hold may finish the event (a stale worker must not overwrite a newer one).
    WebhookEvent.objects.filter(pk=event.pk, state=WebhookEvent.State.PROCESSING, claimed_at=claimed_at).update(
        state=state, error=error, processed_at=None if state == WebhookEvent.State.RECEIVED else now,
    )
    event.refresh_from_db()
    return event


def webhook_event_replay(*, event: WebhookEvent, user) -> WebhookEvent:
    """Queue a FAILED event again (a person asked for it). Raises WebhookError otherwise."""
    if event.state != WebhookEvent.State.FAILED:
        raise WebhookError(f"Only failed events can be replayed; this one is {event.get_state_display().lower()}.")
    with transaction.atomic():
        reset = WebhookEvent.objects.filter(pk=event.pk, state=WebhookEvent.State.FAILED).update(
            state=WebhookEvent.State.RECEIVED, error="", claimed_at=None, processed_at=None,
        )
        if not reset:
            raise WebhookError("The event changed meanwhile; reload the page.")
        audit_record(user=user, action="webhook.replay", obj=event,
                     summary=f"Replayed webhook event {event.pk} ({event.event or event.entity})",
                     connection_id=event.connection_id)
        _enqueue(event.pk)
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
    """The django-q2 schedule that runs webhook_sweep_task every few minutes (idempotent)."""
    from django_q.models import Schedule

    Schedule.objects.get_or_create(
        name=SWEEP_SCHEDULE_NAME,
        defaults={"func": SWEEP_TASK, "schedule_type": Schedule.MINUTES, "minutes": 5, "repeats": -1},
    )


# --- Set-up ------------------------------------------------------------------------------------


def webhook_endpoint_url(connection: Connection) -> str:
    return settings.SITE_URL + reverse(URL_NAME, kwargs={"key": connection.webhook_key})


def webhook_subscription_spec(connection: Connection) -> dict[str, Any]:
    """The HaloPSA `Webhook` object for this connection (fields: reference §6)."""
    spec: dict[str, Any] = {
        "name": "syncportal",
        "type": 0,  # standard webhook
        "url": webhook_endpoint_url(connection),
        "method": 0,  # POST: what DJPSA registers against real HaloPSA (the field is an enum)
        "content_type": "application/json",
        "authentication_type": 1,  # Basic
        "basic_username": connection.webhook_username,
        "basic_password": connection.webhook_password,
        "active": True,
        "batch_method": 0,  # one event per delivery
        # Event names are unverified (see SUBSCRIBED_EVENTS); real HaloPSA may need them attached
        # through POST /api/Notification instead (reference §6).
        "events": list(SUBSCRIBED_EVENTS),
    }
    if connection.webhook_hmac_secret:
        # Type 3 signs the body with HMAC-SHA256 keyed by `basic_password` into the named header
        # [DJPSA]; HaloPSA has one secret field, so the HMAC secret is also the Basic password.
        spec.update(authentication_type=3, authentication_header=webhook_hmac_header(),
                    basic_password=connection.webhook_hmac_secret)
    return spec


def webhook_subscription_create(*, connection: Connection, user) -> dict[str, Any]:
    """Register (or update) this connection's webhook in HaloPSA through its API.

    Idempotent: an existing subscription (stored id, or one already pointing at our URL) is
    updated rather than duplicated. Raises WebhookError or HaloError with a clear message.
    """
    from integrations.halopsa.client import HaloClient

    if not connection.halopsa_version:
        raise WebhookError("Test the connection first, so the portal knows the HaloPSA version.")
    if not connection.is_realtime:
        raise WebhookError(
            f"HaloPSA {connection.halopsa_version} is older than {REALTIME_MIN_VERSION_TEXT}: this "
            "connection syncs hourly and does not use webhooks."
        )
    if connection.webhook_hmac_secret and connection.webhook_password != connection.webhook_hmac_secret:
        # See webhook_subscription_spec: with HMAC, HaloPSA sends the one secret as Basic password too.
        connection.webhook_password = connection.webhook_hmac_secret
        Connection.objects.filter(pk=connection.pk).update(webhook_password=connection.webhook_password)
    client = HaloClient.for_connection(connection)
    spec = webhook_subscription_spec(connection)
    existing_id = connection.webhook_subscription_id or _find_subscription(client, spec["url"])
    if existing_id:
        spec["id"] = existing_id
    result = client.create_webhook(spec)
    webhook_sweep_schedule_ensure()
    if isinstance(result, list):  # POST /api/Webhook takes and may answer an array
        result = result[0] if result else {}
    subscription_id = str((result or {}).get("id") or existing_id or "")[:64]
    Connection.objects.filter(pk=connection.pk).update(webhook_subscription_id=subscription_id)
    connection.webhook_subscription_id = subscription_id
    audit_record(user=user, action="webhook.subscribe", obj=connection,
                 summary=f"Registered the HaloPSA webhook for {connection.name}",
                 subscription_id=subscription_id, url=spec["url"], updated=bool(existing_id))
    return {key: value for key, value in (result or {}).items() if key != "basic_password"}


def _find_subscription(client, url: str) -> str:
    for webhook in client.list_webhooks() or []:
        if isinstance(webhook, dict) and webhook.get("url") == url and webhook.get("id"):
            return str(webhook["id"])
    return ""


def webhook_test_delivery(connection: Connection, *, event: str = "invoice updated", object_id: int = 1,
                          password: str | None = None) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of a HaloPSA-shaped delivery signed with the connection's credentials.

    For `manage.py send_test_webhook`: checks the endpoint end to end, like `stripe trigger`.
    `password` overrides the real one (to see a 401).
    """
    import uuid

    entity = webhook_event_entity(event, {}) or "invoice"
    payload = {
        "id": str(uuid.uuid4()), "webhook_id": connection.webhook_subscription_id or str(uuid.uuid4()),
        "notification_id": 0, "escmsg_id": str(uuid.uuid4()), "event": event,
        "message": f"Test delivery from manage.py send_test_webhook ({event} {object_id})",
        "object_id": object_id, "agent_id": 0,
        "timestamp": timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        entity: {"id": object_id},
    }
    body = json.dumps(payload).encode()
    secret = connection.webhook_password if password is None else password
    token = base64.b64encode(f"{connection.webhook_username}:{secret}".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
    if connection.webhook_hmac_secret:
        key = connection.webhook_hmac_secret if password is None else password
        headers[webhook_hmac_header()] = base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()
    return webhook_endpoint_url(connection), headers, body


def webhook_setup_instructions(connection: Connection) -> dict[str, Any]:
    """What the partner needs to create the webhook in HaloPSA by hand (dashboard renders it)."""
    url = webhook_endpoint_url(connection)
    hmac_header = webhook_hmac_header() if connection.webhook_hmac_secret else ""
    steps = [
        "In HaloPSA go to Configuration > Integrations > Webhooks and click New.",
        'Name it "syncportal", type "Standard webhook", method POST, content type application/json.',
        f"Payload URL: {url}",
        "Authentication: Basic Authentication, with the username and password shown here.",
        'Payload: "Small object with key fields only" (the portal re-reads every record from the API).',
        "Leave batching off, so each delivery carries one event.",
        "Events: tick " + ", ".join(f'"{name}"' for name in SUBSCRIBED_EVENTS) + ".",
        "Save, then change an invoice in HaloPSA: the event appears under Webhook events here within seconds.",
    ]
    if hmac_header:
        steps.insert(4, f'HMAC is on: sign the body with HMAC-SHA256 (base64) in the "{hmac_header}" header, '
                        "using the password shown here as the secret.")
    return {
        "url": url,
        "method": "POST",
        "content_type": "application/json",
        "authentication": "Basic",
        "username": connection.webhook_username,
        "password": connection.webhook_password,
        "hmac_header": hmac_header,
        "events": list(SUBSCRIBED_EVENTS),
        "batching": "off",
        "realtime": connection.is_realtime,
        "version": connection.halopsa_version,
        "mode": "real time" if connection.is_realtime else "hourly",
        "min_version": REALTIME_MIN_VERSION_TEXT,
        "subscription_id": connection.webhook_subscription_id,
        "can_create_subscription": connection.is_realtime,
        "steps": steps,
    }


# --- Health (dashboard) ------------------------------------------------------------------------


def webhook_health(connection: Connection, *, now: datetime | None = None, polls: int = 5) -> dict[str, Any]:
    """Is real time working? Last event, events of the last 24 h by state, what the polls fixed.

    A real-time connection whose hourly polls keep fixing records is missing webhooks.
    """
    now = now or timezone.now()
    since = now - timedelta(hours=24)
    last = WebhookEvent.objects.filter(connection=connection).order_by("-received_at", "-id").first()
    by_state = {state: 0 for state in WebhookEvent.State.values}
    for row in (WebhookEvent.objects.filter(connection=connection, received_at__gte=since)
                .values("state").annotate(n=Count("id"))):
        by_state[row["state"]] = row["n"]
    finished = (SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL, SyncRun.State.FAILED)
    scheduled = SyncRun.objects.filter(connection=connection, trigger=SyncRun.Trigger.SCHEDULE, state__in=finished)
    recent_polls = [
        {"run_id": run.pk, "finished_at": run.finished_at, "state": run.state, "fixed_by_poll": run.fixed_by_poll}
        for run in scheduled.order_by("-queued_at", "-id")[:polls]
    ]
    fixed_24h = scheduled.filter(queued_at__gte=since).aggregate(total=Sum("fixed_by_poll"))["total"] or 0
    fixed_last = recent_polls[0]["fixed_by_poll"] if recent_polls else 0
    warnings = []
    if connection.is_realtime:
        if fixed_last:
            warnings.append(
                f"The last hourly sync fixed {fixed_last} record(s) that webhooks missed: check the webhook in "
                "HaloPSA (Configuration > Integrations > Webhooks > Deliveries)."
            )
        if last is None:
            warnings.append("No webhook received yet: set up the webhook in HaloPSA.")
        if by_state[WebhookEvent.State.FAILED]:
            warnings.append(f"{by_state[WebhookEvent.State.FAILED]} webhook event(s) failed in the last 24 hours; replay them.")
    return {
        "realtime": connection.is_realtime,
        "mode": "real time" if connection.is_realtime else "hourly",
        "version": connection.halopsa_version,
        "subscription_id": connection.webhook_subscription_id,
        "last_event_at": last.received_at if last else None,
        "last_event": ({"id": last.pk, "event": last.event, "entity": last.entity, "object_id": last.object_id,
                        "state": last.state} if last else None),
        "events_24h": by_state,
        "events_24h_total": sum(by_state.values()),
        "recent_polls": recent_polls,
        "fixed_by_last_poll": fixed_last,
        "fixed_by_polls_24h": fixed_24h,
        "warnings": warnings,
        "healthy": not warnings,
    }
