"""Inbound HaloPSA webhooks: authenticate, store, process, replay, set up, report health.

A webhook is only a hint that a record changed. It is authenticated by the connection's one scheme
(Basic, or an HMAC signature when the connection has an HMAC secret), stored before anything else,
deduplicated on HaloPSA's delivery id, and processed in a django-q2 task that re-fetches the
*current* record from HaloPSA through the sync service. Amounts and statuses in the webhook body are
never used, so duplicates and out-of-order deliveries cannot change anything twice. The hourly poll
stays the source of truth (see docs/webhooks.md).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count, F, Q, Sum
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_q.tasks import async_task

from integrations.halopsa.exceptions import HaloError, HaloNotFound
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
# real tenant - correct them here (and in docs/webhooks.md) once confirmed. HaloPSA attaches events
# to a webhook by number (`eventno`), also unknown: settings.HALOPSA_WEBHOOK_EVENTNOS.
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


WEBHOOK_SCHEME_BASIC = "basic"
WEBHOOK_SCHEME_HMAC = "hmac"
WEBHOOK_SCHEMES = (WEBHOOK_SCHEME_BASIC, WEBHOOK_SCHEME_HMAC)
# HaloPSA's Webhook.authentication_type for an HMAC signature in a named header [DJPSA] (reference
# §6). The number for Basic is unconfirmed: settings.HALOPSA_WEBHOOK_BASIC_AUTH_TYPE.
HALO_AUTH_TYPE_HMAC = 3


def webhook_hmac_header() -> str:
    """Header carrying base64(HMAC-SHA256(secret, raw body)); "Token" as in DJPSA (reference §6)."""
    return settings.HALOPSA_WEBHOOK_HMAC_HEADER


def webhook_auth_scheme(connection: Connection) -> str:
    """The connection's one webhook authentication: HMAC when it has an HMAC secret, else Basic."""
    return WEBHOOK_SCHEME_HMAC if connection.webhook_hmac_secret else WEBHOOK_SCHEME_BASIC


def webhook_halo_auth_type(connection: Connection) -> int:
    """HaloPSA's `authentication_type` for the connection's scheme."""
    if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC:
        return HALO_AUTH_TYPE_HMAC
    return settings.HALOPSA_WEBHOOK_BASIC_AUTH_TYPE


def webhook_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def webhook_request_authenticate(*, connection: Connection, authorization: str, body: bytes, signature: str) -> bool:
    """True when the delivery carries the proof of the connection's scheme, and only that counts.

    HMAC: a valid signature of the raw body. HaloPSA's type-3 webhook sends the signature and no
    Basic credentials [DJPSA] (reference §6), so Basic credentials are neither needed nor enough.
    Basic: the right username and password; a signature header is not looked at.
    Comparisons are constant-time, and both Basic parts are always compared, so neither the
    response nor its timing tells which part was wrong.
    """
    if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC:
        expected_signature = webhook_signature(connection.webhook_hmac_secret, body).encode()
        return hmac.compare_digest((signature or "").strip().encode("utf-8", "replace"), expected_signature)
    username, password = _basic_credentials(authorization)
    expected_password = (connection.webhook_password or "").encode()
    ok_username = hmac.compare_digest(username, (connection.webhook_username or "").encode())
    ok_password = hmac.compare_digest(password, expected_password)
    return ok_username & ok_password & bool(expected_password)


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


def webhook_auth_scheme_set(*, connection: Connection, scheme: str, user=None) -> Connection:
    """Switch how the connection's webhooks authenticate: "basic" or "hmac" (a new random secret).

    Asking for the scheme already in force changes nothing. The webhook in HaloPSA must be changed
    to match (by hand, or "Register" again), so the last registration check is cleared.
    """
    if scheme not in WEBHOOK_SCHEMES:
        raise WebhookError(f"Unknown webhook authentication {scheme!r}: use one of {', '.join(WEBHOOK_SCHEMES)}.")
    if webhook_auth_scheme(connection) == scheme:
        return connection
    connection.webhook_hmac_secret = secrets.token_urlsafe(32) if scheme == WEBHOOK_SCHEME_HMAC else ""
    connection.webhook_subscription_check = {}
    connection.save(update_fields=["webhook_hmac_secret", "webhook_subscription_check", "updated_at"])
    audit_record(user=user, action="webhook.auth_scheme", obj=connection,
                 summary=f"Webhook authentication of {connection.name} set to {scheme}", scheme=scheme)
    return connection


def webhook_event_numbers() -> dict[str, int]:
    """HaloPSA's eventno per subscribed event, as far as known (settings.HALOPSA_WEBHOOK_EVENTNOS).

    Real numbers are unknown (reference §11 item 4); events without one are ticked by hand. A
    configured name the portal does not subscribe to is refused, so a typo is not silently lost.
    """
    configured = dict(settings.HALOPSA_WEBHOOK_EVENTNOS or {})
    unknown = sorted(set(configured) - set(SUBSCRIBED_EVENTS))
    if unknown:
        raise WebhookError(
            f"HALOPSA_WEBHOOK_EVENTNOS names {', '.join(repr(name) for name in unknown)}, which the portal does "
            f"not subscribe to. Known events: {', '.join(SUBSCRIBED_EVENTS)}."
        )
    return {name: configured[name] for name in SUBSCRIBED_EVENTS if name in configured}


def _halo_event(eventno: int) -> dict[str, Any]:
    # A UnameNotification (SW24/SW25 `Webhook.events`); type -2 and delivery_method 6 are what
    # DJPSA sends when it attaches an event to a webhook through /api/Notification (reference §6).
    return {"eventno": eventno, "type": -2, "delivery_method": 6}


def webhook_subscription_spec(connection: Connection, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The HaloPSA `Webhook` object for this connection (fields: reference §6). `events` omitted
    when None, so an update leaves the events a person ticked in HaloPSA alone."""
    spec: dict[str, Any] = {
        "name": "syncportal",
        "type": 0,  # standard webhook
        "url": webhook_endpoint_url(connection),
        "method": 0,  # POST: what DJPSA registers against real HaloPSA (the field is an enum)
        "content_type": "application/json",
        "authentication_type": webhook_halo_auth_type(connection),
        "active": True,
        "batch_method": 0,  # one event per delivery
    }
    if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC:
        # Type 3 signs the raw body with HMAC-SHA256 keyed by `basic_password` into the named
        # header, and sends no Basic credentials [DJPSA] (reference §6).
        spec.update(authentication_header=webhook_hmac_header(), basic_username="",
                    basic_password=connection.webhook_hmac_secret)
    else:
        spec.update(basic_username=connection.webhook_username, basic_password=connection.webhook_password)
    if events is not None:
        spec["events"] = events
    return spec


# HaloPSA's webhook ids are GUIDs (reference §6); anything else is not put into a URL.
_SUBSCRIPTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def webhook_subscription_create(*, connection: Connection, user) -> dict[str, Any]:
    """Register (or update) this connection's webhook in HaloPSA, then read it back and report.

    Events go as UnameNotification objects for the events whose eventno is configured
    (webhook_event_numbers); an update keeps the events already attached. Then GET /Webhook/{id}
    shows what HaloPSA really holds: the returned (and stored) check lists the events attached,
    the events a person must still tick in HaloPSA, and any problem (URL, authentication, not
    active). It never claims more than that read showed. Raises WebhookError or HaloError when
    nothing could be registered.
    """
    from integrations.halopsa.client import HaloClient

    if not connection.halopsa_version:
        raise WebhookError("Test the connection first, so the portal knows the HaloPSA version.")
    if not connection.is_realtime:
        raise WebhookError(
            f"HaloPSA {connection.halopsa_version} is older than {REALTIME_MIN_VERSION_TEXT}: this "
            "connection syncs hourly and does not use webhooks."
        )
    eventnos = webhook_event_numbers()
    client = HaloClient.for_connection(connection)
    url = webhook_endpoint_url(connection)
    existing = _existing_subscription(client, connection.webhook_subscription_id, url)
    attached = [event for event in (existing or {}).get("events") or [] if isinstance(event, dict)]
    have = {_as_id(event.get("eventno")) for event in attached}
    missing = [_halo_event(number) for number in eventnos.values() if number not in have]
    spec = webhook_subscription_spec(connection, events=attached + missing if missing else None)
    if existing:
        spec["id"] = existing["id"]
    result = client.create_webhook(spec)
    webhook_sweep_schedule_ensure()
    subscription_id = str((result or {}).get("id") or (existing or {}).get("id") or "")[:64]
    check = _subscription_check(client, connection, subscription_id, eventnos)
    Connection.objects.filter(pk=connection.pk).update(webhook_subscription_id=subscription_id,
                                                       webhook_subscription_check=check)
    connection.webhook_subscription_id = subscription_id
    connection.webhook_subscription_check = check
    audit_record(user=user, action="webhook.subscribe", obj=connection,
                 summary=f"Registered the HaloPSA webhook for {connection.name}",
                 subscription_id=subscription_id, url=url, updated=bool(existing),
                 attached=check["attached"], to_tick=check["to_tick"], problems=check["problems"])
    return check


def _existing_subscription(client, stored_id: str, url: str) -> dict[str, Any] | None:
    """Our webhook in HaloPSA (the stored id, else one pointing at our URL), with its events."""
    found = None
    for webhook in client.list_webhooks() or []:
        webhook_id = str(webhook.get("id") or "")
        if not _SUBSCRIPTION_ID.fullmatch(webhook_id):
            continue
        if stored_id and webhook_id.lower() == stored_id.lower():
            found = webhook
            break
        if found is None and webhook.get("url") == url:
            found = webhook
    if found is None:
        return None
    try:  # list rows may leave the events out; the one webhook has them
        return client.get_webhook(str(found["id"]))
    except HaloNotFound:
        return None


def _subscription_check(client, connection: Connection, subscription_id: str,
                        eventnos: dict[str, int]) -> dict[str, Any]:
    """What GET /Webhook/{id} shows, against what this connection needs (stored as JSON)."""
    check: dict[str, Any] = {
        "checked_at": timezone.now().isoformat(),
        "subscription_id": subscription_id,
        "verified": False,  # HaloPSA answered GET /Webhook/{id}
        "error": "",
        "attached": [],  # subscribed events HaloPSA shows attached (by a known eventno)
        "to_tick": list(SUBSCRIBED_EVENTS),  # what a person must still tick in HaloPSA
        "other_events": [],  # attached events whose eventno the portal does not know
        "events_listed": False,  # HaloPSA's answer had an `events` list at all
        "problems": [],
        "complete": False,
    }
    if not _SUBSCRIPTION_ID.fullmatch(subscription_id):
        check["error"] = "HaloPSA did not answer with the webhook's id, so the portal could not read it back."
        return check
    try:
        webhook = client.get_webhook(subscription_id)
    except HaloError as exc:
        check["error"] = f"The webhook could not be read back from HaloPSA: {exc.message}"
        return check
    check["verified"] = True
    events = webhook.get("events")
    if isinstance(events, list):
        check["events_listed"] = True
        names_by_number = {number: name for name, number in eventnos.items()}
        numbers = [_as_id(event.get("eventno")) for event in events if isinstance(event, dict)]
        check["attached"] = [name for name in SUBSCRIBED_EVENTS if eventnos.get(name) in numbers]
        check["other_events"] = [
            storable(str(event.get("name") or f"eventno {event.get('eventno')}"))[:100]
            for event in events if isinstance(event, dict) and _as_id(event.get("eventno")) not in names_by_number
        ]
        check["to_tick"] = [name for name in SUBSCRIBED_EVENTS if name not in check["attached"]]
    problems = check["problems"]
    if not check["events_listed"]:
        problems.append("HaloPSA did not list the webhook's events, so which are attached is unknown.")
    url = webhook_endpoint_url(connection)
    if webhook.get("url") != url:
        problems.append(f"Its URL in HaloPSA is {storable(str(webhook.get('url') or '(none)'))[:300]!r}, not {url!r}.")
    expected_type = webhook_halo_auth_type(connection)
    if str(webhook.get("authentication_type")) != str(expected_type):
        problems.append(f"Its authentication type in HaloPSA is {webhook.get('authentication_type')!r}, "
                        f"not {expected_type} ({_scheme_label(connection)}).")
    if (webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC
            and str(webhook.get("authentication_header") or "") != webhook_hmac_header()):
        problems.append(f"Its signature header in HaloPSA is {webhook.get('authentication_header')!r}, "
                        f"not {webhook_hmac_header()!r}.")
    if webhook.get("active") is not True or webhook.get("disabled") is True:
        problems.append("It is not active in HaloPSA.")
    check["complete"] = not problems and not check["to_tick"]
    return check


def webhook_subscription_outcome(check: dict[str, Any]) -> tuple[bool, str]:
    """(complete, what to tell the person who pressed Register), from a registration check."""
    if not check.get("verified"):
        return False, (f"The webhook was sent to HaloPSA but is not confirmed: {check.get('error')} "
                       "Check it in HaloPSA with the set-up steps.")
    attached, to_tick = check.get("attached") or [], check.get("to_tick") or []
    if check.get("events_listed"):
        parts = [f"Webhook registered in HaloPSA and read back: {len(attached)} of {len(SUBSCRIBED_EVENTS)} "
                 "events attached."]
    else:
        parts = ["Webhook registered in HaloPSA and read back, but its events are unknown."]
    if to_tick:
        parts.append("Tick by hand in HaloPSA: " + ", ".join(to_tick) + ".")
    parts.extend(check.get("problems") or [])
    return bool(check.get("complete")), " ".join(parts)


def _scheme_label(connection: Connection) -> str:
    return "HMAC signature" if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC else "Basic"


def webhook_test_delivery(connection: Connection, *, event: str = "invoice updated", object_id: int = 1,
                          secret: str | None = None) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of a HaloPSA-shaped delivery authenticated as HaloPSA would for the
    connection's scheme: Basic credentials only, or the HMAC signature only.

    For `manage.py send_test_webhook`: checks the endpoint end to end, like `stripe trigger`.
    `secret` replaces the password or HMAC secret (to see a 401).
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
    headers = {"Content-Type": "application/json"}
    if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC:
        headers[webhook_hmac_header()] = webhook_signature(
            connection.webhook_hmac_secret if secret is None else secret, body)
    else:
        password = connection.webhook_password if secret is None else secret
        token = base64.b64encode(f"{connection.webhook_username}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return webhook_endpoint_url(connection), headers, body


def webhook_setup_instructions(connection: Connection) -> dict[str, Any]:
    """How to create the webhook in HaloPSA by hand: the main path (the dashboard renders it).

    Only the secret of the connection's scheme is given: the Basic username and password, or
    the HMAC secret.
    """
    url = webhook_endpoint_url(connection)
    hmac_scheme = webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC
    if hmac_scheme:
        authentication = (f'Authentication: HMAC (authentication type {HALO_AUTH_TYPE_HMAC}), '
                          f'header "{webhook_hmac_header()}", '
                          "with the secret shown here (HaloPSA signs each body with HMAC-SHA256; no username).")
    else:
        authentication = "Authentication: Basic Authentication, with the username and password shown here."
    steps = [
        "In HaloPSA go to Configuration > Integrations > Webhooks and click New.",
        'Name it "syncportal", type "Standard webhook", method POST, content type application/json.',
        f"Payload URL: {url}",
        authentication,
        'Payload: "Small object with key fields only" (the portal re-reads every record from the API).',
        "Leave batching off, so each delivery carries one event.",
        "Events: tick " + ", ".join(f'"{name}"' for name in SUBSCRIBED_EVENTS)
        + " (HaloPSA's labels may differ slightly: pick its invoice, client, user and payment "
        "created/updated/deleted events).",
        "Save, then change an invoice in HaloPSA: the event appears under Webhook events here within seconds.",
    ]
    return {
        "url": url,
        "method": "POST",
        "content_type": "application/json",
        "scheme": WEBHOOK_SCHEME_HMAC if hmac_scheme else WEBHOOK_SCHEME_BASIC,
        "authentication": "HMAC" if hmac_scheme else "Basic",
        "authentication_type": webhook_halo_auth_type(connection),
        "username": "" if hmac_scheme else connection.webhook_username,
        "password": "" if hmac_scheme else connection.webhook_password,
        "hmac_header": webhook_hmac_header() if hmac_scheme else "",
        "hmac_secret": connection.webhook_hmac_secret if hmac_scheme else "",
        "events": list(SUBSCRIBED_EVENTS),
        "batching": "off",
        "realtime": connection.is_realtime,
        "version": connection.halopsa_version,
        "mode": "real time" if connection.is_realtime else "hourly",
        "min_version": REALTIME_MIN_VERSION_TEXT,
        "subscription_id": connection.webhook_subscription_id,
        "subscription_check": _check_for_display(connection.webhook_subscription_check),
        "can_create_subscription": connection.is_realtime,
        "steps": steps,
    }


def _check_for_display(check: dict[str, Any] | None) -> dict[str, Any] | None:
    if not check:
        return None
    checked_at = parse_datetime(str(check.get("checked_at") or ""))
    return {**check, "checked_at": checked_at, "outcome": webhook_subscription_outcome(check)[1]}


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
