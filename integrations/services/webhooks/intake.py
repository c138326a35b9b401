"""Receiving a webhook delivery: authenticate it by the connection's one scheme (Basic, or an
HMAC signature when the connection has an HMAC secret), parse it, and store it before anything
else, deduplicated on HaloPSA's delivery id; its processing is queued on commit (processing.py)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Any, Callable, TypeVar

from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from integrations.conf import halo_settings
from integrations.halopsa.payloads import parse_json, storable
from integrations.models import Connection, WebhookEvent
from integrations.services.webhooks.common import REALTIME_MIN_VERSION_TEXT, WebhookError, as_halo_id
from integrations.services.webhooks.processing import webhook_event_enqueue

T = TypeVar("T")

WEBHOOK_SCHEME_BASIC = "basic"
WEBHOOK_SCHEME_HMAC = "hmac"
WEBHOOK_SCHEMES = (WEBHOOK_SCHEME_BASIC, WEBHOOK_SCHEME_HMAC)

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


def webhook_hmac_header() -> str:
    """Header carrying base64(HMAC-SHA256(secret, raw body)); "Token" as in DJPSA (docs/halopsa-facts.md §6)."""
    return halo_settings().webhook_hmac_header


def webhook_auth_scheme(connection: Connection) -> str:
    """The connection's one webhook authentication: HMAC when it has an HMAC secret, else Basic."""
    return WEBHOOK_SCHEME_HMAC if connection.webhook_hmac_secret else WEBHOOK_SCHEME_BASIC


def webhook_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def webhook_request_authenticate(*, connection: Connection, authorization: str, body: bytes, signature: str) -> bool:
    """True when the delivery carries the proof of the connection's scheme, and only that counts.

    HMAC: a valid signature of the raw body. HaloPSA's type-3 webhook sends the signature and no
    Basic credentials [DJPSA] (halopsa-facts §6), so Basic credentials are neither needed nor enough.
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


def webhook_event_accept(
    *, connection: Connection, payload: dict[str, Any], body: bytes, headers: dict[str, str] | None = None
) -> tuple[WebhookEvent, bool]:
    """Store an authenticated delivery and queue its processing; (event, created).

    A delivery already stored (same HaloPSA delivery id, or same body) returns the stored event
    and created=False, and nothing else happens. Deliveries that cannot be processed (HaloPSA too
    old for real time, paused connection, event we do not handle) are stored as IGNORED with the
    reason, so the partner sees them.
    """
    return db_retry(lambda: _accept(connection=connection, payload=payload, body=body, headers=headers))


def _accept(
    *, connection: Connection, payload: dict[str, Any], body: bytes, headers: dict[str, str] | None
) -> tuple[WebhookEvent, bool]:
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
                webhook_event_enqueue(event.pk)
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
        number = as_halo_id(value)
        if number is not None:
            return number
    return None


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
