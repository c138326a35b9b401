"""Setting a connection's webhook up: its URL and authentication, registering it in HaloPSA and
reading it back (what is attached, what a person must still tick), the manual steps, and a test
delivery signed as HaloPSA would sign it."""

from __future__ import annotations

import base64
import json
import re
import secrets
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from integrations.conf import halo_settings
from integrations.halopsa.exceptions import HaloError, HaloNotFound
from integrations.halopsa.payloads import storable
from integrations.models import Connection
from integrations.services.audit import audit_record
from integrations.services.webhooks.common import REALTIME_MIN_VERSION_TEXT, WebhookError, as_halo_id
from integrations.services.webhooks.intake import (
    WEBHOOK_SCHEME_BASIC,
    WEBHOOK_SCHEME_HMAC,
    WEBHOOK_SCHEMES,
    webhook_auth_scheme,
    webhook_event_entity,
    webhook_hmac_header,
    webhook_signature,
)
from integrations.services.webhooks.processing import webhook_sweep_schedule_ensure

URL_NAME = "halopsa-webhook"
# HaloPSA's Webhook.authentication_type for an HMAC signature in a named header [DJPSA] (docs/halopsa-facts.md
# §6). The number for Basic is unconfirmed: settings.HALOPSA_WEBHOOK_BASIC_AUTH_TYPE.
HALO_AUTH_TYPE_HMAC = 3

# The HaloPSA events the portal subscribes to. Names follow the live "ticket status changed" form
# (lower-case words, halopsa-facts §6); the invoice/client/user/payment names are UNVERIFIED against a
# real tenant - correct them here (and in docs/webhooks.md) once confirmed. HaloPSA attaches events
# to a webhook by number (`eventno`), also unknown: settings.HALOPSA_WEBHOOK_EVENTNOS.
SUBSCRIBED_EVENTS: tuple[str, ...] = (
    "invoice created",
    "invoice updated",
    "invoice deleted",
    "client created",
    "client updated",
    "client deleted",
    "user created",
    "user updated",
    "user deleted",
    "payment created",
    "payment updated",
    "payment deleted",
)
# HaloPSA's webhook ids are GUIDs (halopsa-facts §6); anything else is not put into a URL.
_SUBSCRIPTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def webhook_halo_auth_type(connection: Connection) -> int:
    """HaloPSA's `authentication_type` for the connection's scheme."""
    if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC:
        return HALO_AUTH_TYPE_HMAC
    return halo_settings().webhook_basic_auth_type


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
    audit_record(
        user=user,
        action="webhook.auth_scheme",
        obj=connection,
        summary=f"Webhook authentication of {connection.name} set to {scheme}",
        scheme=scheme,
    )
    return connection


def webhook_event_numbers() -> dict[str, int]:
    """HaloPSA's eventno per subscribed event, as far as known (settings.HALOPSA_WEBHOOK_EVENTNOS).

    Real numbers are unknown (halopsa-facts §11.4); events without one are ticked by hand. A
    configured name the portal does not subscribe to is refused, so a typo is not silently lost.
    """
    configured = dict(halo_settings().webhook_eventnos)
    unknown = sorted(set(configured) - set(SUBSCRIBED_EVENTS))
    if unknown:
        raise WebhookError(
            f"HALOPSA_WEBHOOK_EVENTNOS names {', '.join(repr(name) for name in unknown)}, which the portal does "
            f"not subscribe to. Known events: {', '.join(SUBSCRIBED_EVENTS)}."
        )
    return {name: configured[name] for name in SUBSCRIBED_EVENTS if name in configured}


def _halo_event(eventno: int) -> dict[str, Any]:
    # A UnameNotification (SW24/SW25 `Webhook.events`); type -2 and delivery_method 6 are what
    # DJPSA sends when it attaches an event to a webhook through /api/Notification (halopsa-facts §6).
    return {"eventno": eventno, "type": -2, "delivery_method": 6}


def webhook_subscription_spec(connection: Connection, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The HaloPSA `Webhook` object for this connection (fields: halopsa-facts §6). `events` omitted
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
        # header, and sends no Basic credentials [DJPSA] (halopsa-facts §6).
        spec.update(
            authentication_header=webhook_hmac_header(),
            basic_username="",
            basic_password=connection.webhook_hmac_secret,
        )
    else:
        spec.update(basic_username=connection.webhook_username, basic_password=connection.webhook_password)
    if events is not None:
        spec["events"] = events
    return spec


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
    have = {as_halo_id(event.get("eventno")) for event in attached}
    missing = [_halo_event(number) for number in eventnos.values() if number not in have]
    spec = webhook_subscription_spec(connection, events=attached + missing if missing else None)
    if existing:
        spec["id"] = existing["id"]
    result = client.create_webhook(spec)
    webhook_sweep_schedule_ensure()
    subscription_id = str((result or {}).get("id") or (existing or {}).get("id") or "")[:64]
    check = _subscription_check(client, connection, subscription_id, eventnos)
    Connection.objects.filter(pk=connection.pk).update(
        webhook_subscription_id=subscription_id, webhook_subscription_check=check
    )
    connection.webhook_subscription_id = subscription_id
    connection.webhook_subscription_check = check
    audit_record(
        user=user,
        action="webhook.subscribe",
        obj=connection,
        summary=f"Registered the HaloPSA webhook for {connection.name}",
        subscription_id=subscription_id,
        url=url,
        updated=bool(existing),
        attached=check["attached"],
        to_tick=check["to_tick"],
        problems=check["problems"],
    )
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


def _subscription_check(
    client, connection: Connection, subscription_id: str, eventnos: dict[str, int]
) -> dict[str, Any]:
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
        numbers = [as_halo_id(event.get("eventno")) for event in events if isinstance(event, dict)]
        check["attached"] = [name for name in SUBSCRIBED_EVENTS if eventnos.get(name) in numbers]
        check["other_events"] = [
            storable(str(event.get("name") or f"eventno {event.get('eventno')}"))[:100]
            for event in events
            if isinstance(event, dict) and as_halo_id(event.get("eventno")) not in names_by_number
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
        problems.append(
            f"Its authentication type in HaloPSA is {webhook.get('authentication_type')!r}, "
            f"not {expected_type} ({_scheme_label(connection)})."
        )
    if (
        webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC
        and str(webhook.get("authentication_header") or "") != webhook_hmac_header()
    ):
        problems.append(
            f"Its signature header in HaloPSA is {webhook.get('authentication_header')!r}, "
            f"not {webhook_hmac_header()!r}."
        )
    if webhook.get("active") is not True or webhook.get("disabled") is True:
        problems.append("It is not active in HaloPSA.")
    check["complete"] = not problems and not check["to_tick"]
    return check


def webhook_subscription_outcome(check: dict[str, Any]) -> tuple[bool, str]:
    """(complete, what to tell the person who pressed Register), from a registration check."""
    if not check.get("verified"):
        return False, (
            f"The webhook was sent to HaloPSA but is not confirmed: {check.get('error')} "
            "Check it in HaloPSA with the set-up steps."
        )
    attached, to_tick = check.get("attached") or [], check.get("to_tick") or []
    if check.get("events_listed"):
        parts = [
            (
                f"Webhook registered in HaloPSA and read back: {len(attached)} of {len(SUBSCRIBED_EVENTS)} "
                "events attached."
            )
        ]
    else:
        parts = ["Webhook registered in HaloPSA and read back, but its events are unknown."]
    if to_tick:
        parts.append("Tick by hand in HaloPSA: " + ", ".join(to_tick) + ".")
    parts.extend(check.get("problems") or [])
    return bool(check.get("complete")), " ".join(parts)


def _scheme_label(connection: Connection) -> str:
    return "HMAC signature" if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC else "Basic"


def webhook_test_delivery(
    connection: Connection, *, event: str = "invoice updated", object_id: int = 1, secret: str | None = None
) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of a HaloPSA-shaped delivery authenticated as HaloPSA would for the
    connection's scheme: Basic credentials only, or the HMAC signature only.

    For `manage.py send_test_webhook`: checks the endpoint end to end, like `stripe trigger`.
    `secret` replaces the password or HMAC secret (to see a 401).
    """
    import uuid

    entity = webhook_event_entity(event, {}) or "invoice"
    payload = {
        "id": str(uuid.uuid4()),
        "webhook_id": connection.webhook_subscription_id or str(uuid.uuid4()),
        "notification_id": 0,
        "escmsg_id": str(uuid.uuid4()),
        "event": event,
        "message": f"Test delivery from manage.py send_test_webhook ({event} {object_id})",
        "object_id": object_id,
        "agent_id": 0,
        "timestamp": timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        entity: {"id": object_id},
    }
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if webhook_auth_scheme(connection) == WEBHOOK_SCHEME_HMAC:
        headers[webhook_hmac_header()] = webhook_signature(
            connection.webhook_hmac_secret if secret is None else secret, body
        )
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
        authentication = (
            f"Authentication: HMAC (authentication type {HALO_AUTH_TYPE_HMAC}), "
            f'header "{webhook_hmac_header()}", '
            "with the secret shown here (HaloPSA signs each body with HMAC-SHA256; no username)."
        )
    else:
        authentication = "Authentication: Basic Authentication, with the username and password shown here."
    steps = [
        "In HaloPSA go to Configuration > Integrations > Webhooks and click New.",
        'Name it "syncportal", type "Standard webhook", method POST, content type application/json.',
        f"Payload URL: {url}",
        authentication,
        'Payload: "Small object with key fields only" (the portal re-reads every record from the API).',
        "Leave batching off, so each delivery carries one event.",
        "Events: tick "
        + ", ".join(f'"{name}"' for name in SUBSCRIBED_EVENTS)
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
