"""Partner connections to HaloPSA: create, change, delete, enable/pause, and test them.

Every change keeps the connection's hourly schedule in step (integrations/schedules.py) and is
recorded in the audit trail when a person made it. Creating a connection never fails because
HaloPSA is unreachable: the version is detected best-effort and the partner can test later.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from integrations.halopsa.client import HaloClient
from integrations.halopsa.exceptions import (
    HaloAuthError,
    HaloBadResponse,
    HaloConnectionError,
    HaloError,
    HaloNotFound,
    HaloPermissionError,
    HaloTimeout,
    UnsafeURLError,
)
from integrations.models import Connection, Partner
from integrations.schedules import schedule_ensure, schedule_minute_pick, schedule_remove
from integrations.services.audit import audit_record

logger = logging.getLogger(__name__)

# What a partner may set on a connection (everything else is ours).
EDITABLE_FIELDS = (
    "name", "base_url", "auth_url", "client_id", "client_secret", "tenant", "enabled", "paused",
    "invoices_created_since", "invoice_number_field", "billing_contact_rule", "default_currency",
)
SECRET_FIELDS = ("client_secret",)
# Changing these means talking to a different HaloPSA (or as someone else): re-detect the version.
ENDPOINT_FIELDS = ("base_url", "auth_url", "client_id", "client_secret", "tenant")


@dataclass
class ConnectionTestResult:
    ok: bool
    version: str = ""
    # "" | "bad_url" | "refused_address" | "bad_credentials" | "permission" | "timeout" | "unreachable" | "bad_response"
    failure: str = ""
    message: str = ""


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - set(EDITABLE_FIELDS))
    if unknown:
        raise ValidationError(f"Unknown connection field(s): {', '.join(unknown)}.")


def connection_create(*, partner: Partner, user=None, detect_version: bool = True, **fields: Any) -> Connection:
    """Create a connection with its hourly schedule (spread over the hour); detect the HaloPSA
    version if HaloPSA answers. Raises ValidationError for bad values."""
    _check_fields(fields)
    connection = Connection(partner=partner, **fields)
    connection.full_clean()
    with transaction.atomic():
        connection.save()
        connection.schedule_minute = schedule_minute_pick(connection.pk)
        Connection.objects.filter(pk=connection.pk).update(schedule_minute=connection.schedule_minute)
        schedule_ensure(connection)
        if user is not None:
            audit_record(user=user, action="connection.create", obj=connection, partner=partner,
                         summary=f"Created HaloPSA connection {connection.name}", base_url=connection.base_url)
    if detect_version:
        connection_detect_version(connection=connection)
    return connection


def connection_update(*, connection: Connection, user=None, **fields: Any) -> Connection:
    """Change a connection's settings. A changed billing-contact rule or invoice-number field
    makes the next sync rewrite every record (their fingerprints are cleared)."""
    _check_fields(fields)
    changed = [name for name, value in fields.items() if getattr(connection, name) != value]
    for name, value in fields.items():
        setattr(connection, name, value)
    connection.full_clean()
    with transaction.atomic():
        connection.save()
        schedule_ensure(connection)
        _reread_after_change(connection, changed)
        if user is not None and changed:
            audit_record(user=user, action="connection.update", obj=connection,
                         summary=f"Changed HaloPSA connection {connection.name}: {', '.join(changed)}",
                         fields=[n for n in changed], values={n: str(fields[n]) for n in changed if n not in SECRET_FIELDS})
    if set(ENDPOINT_FIELDS) & set(changed):
        connection_detect_version(connection=connection)
    return connection


def _reread_after_change(connection: Connection, changed: list[str]) -> None:
    """Settings that change how records map: clear fingerprints and cursors, so the next sync
    (even an incremental one) re-reads those entities in full and rewrites every record."""
    from integrations.models import Customer, Invoice, SyncCursor

    if "billing_contact_rule" in changed:
        Customer.objects.filter(connection=connection).update(fingerprint="")
        SyncCursor.objects.filter(connection=connection, entity__in=["customers", "contacts"]).update(changed_since=None)
    if {"invoice_number_field", "default_currency", "invoices_created_since"} & set(changed):
        Invoice.objects.filter(connection=connection).update(fingerprint="")
        SyncCursor.objects.filter(connection=connection, entity="invoices").update(changed_since=None)


def connection_delete(*, connection: Connection, user=None) -> None:
    """Delete a connection, its schedule, and everything synced through it (stored PDFs included)."""
    from integrations.models import Contact, Customer, Invoice, InvoiceLine, InvoicePdf, Payment, PushJob

    name, partner_id, pk = connection.name, connection.partner_id, connection.pk
    files = list(InvoicePdf.objects.filter(invoice__connection=connection).exclude(file="").values_list("file", flat=True))
    with transaction.atomic():
        schedule_remove(pk)
        if user is not None:
            audit_record(user=user, action="connection.delete", partner=partner_id,
                         summary=f"Deleted HaloPSA connection {name}", connection_id=pk)
        # Children first: invoices PROTECT their customer and payments PROTECT their invoice.
        PushJob.objects.filter(connection=connection).delete()
        Payment.objects.filter(connection=connection).delete()
        InvoicePdf.objects.filter(invoice__connection=connection).delete()
        InvoiceLine.objects.filter(invoice__connection=connection).delete()
        Invoice.objects.filter(connection=connection).delete()
        Contact.objects.filter(customer__connection=connection).delete()
        Customer.objects.filter(connection=connection).delete()
        connection.delete()

    def _remove_files() -> None:
        from django.core.files.storage import default_storage

        for file_name in files:
            try:
                default_storage.delete(file_name)
            except OSError:  # already gone: nothing to clean
                logger.warning("could not delete %s", file_name)

    transaction.on_commit(_remove_files)


def connection_set_state(*, connection: Connection, user=None, enabled: bool | None = None, paused: bool | None = None) -> Connection:
    """Enable/disable (schedule created/removed) or pause/resume (scheduled syncs skipped)."""
    changes = {}
    if enabled is not None and enabled != connection.enabled:
        changes["enabled"] = bool(enabled)
    if paused is not None and paused != connection.paused:
        changes["paused"] = bool(paused)
    if not changes:
        return connection
    for name, value in changes.items():
        setattr(connection, name, value)
    with transaction.atomic():
        Connection.objects.filter(pk=connection.pk).update(**changes, updated_at=timezone.now())
        schedule_ensure(connection)
        if user is not None:
            words = []
            if "enabled" in changes:
                words.append("enabled" if changes["enabled"] else "disabled")
            if "paused" in changes:
                words.append("paused" if changes["paused"] else "resumed")
            audit_record(user=user, action="connection.state", obj=connection,
                         summary=f"HaloPSA connection {connection.name} {' and '.join(words)}", **changes)
    return connection


def _failure_kind(exc: Exception) -> str:
    if isinstance(exc, UnsafeURLError):
        return "refused_address" if exc.refused_address else "bad_url"
    if isinstance(exc, HaloAuthError):
        return "bad_credentials"
    if isinstance(exc, HaloPermissionError):
        return "permission"
    if isinstance(exc, HaloTimeout):
        return "timeout"
    if isinstance(exc, HaloConnectionError):
        return "unreachable"
    if isinstance(exc, HaloNotFound):
        return "bad_url"  # the address answers, but not with HaloPSA's API
    if isinstance(exc, HaloBadResponse):
        return "bad_response"
    return "unreachable" if isinstance(exc, HaloError) and exc.status is None else "bad_response"


def _failure_message(kind: str, exc: Exception) -> str:
    if kind == "bad_url" and isinstance(exc, HaloNotFound):
        return "That address does not serve the HaloPSA API. Use your HaloPSA web address, e.g. https://yourcompany.halopsa.com."
    return getattr(exc, "message", "") or str(exc) or "The HaloPSA connection test failed."


def connection_test(*, connection: Connection) -> ConnectionTestResult:
    """Check the connection the way a sync uses it: token + version, then one list call (which
    needs the API application's read permission). Stores the outcome on the connection."""
    version = ""
    try:
        # A person is waiting on the answer: one retry, not the sync's patient backoff.
        client = HaloClient.for_connection(connection, max_retries=1)
        version = client.version()
        _save_version(connection, version)
        next(iter(client.invoice_pages(include_lines=False)), None)
        result = ConnectionTestResult(ok=True, version=version, message=f"Connected to HaloPSA {version}.")
    except ValueError as exc:  # the URL cannot even be parsed
        result = ConnectionTestResult(ok=False, version=version, failure="bad_url", message=getattr(exc, "message", str(exc)))
    except HaloError as exc:
        kind = _failure_kind(exc)
        result = ConnectionTestResult(ok=False, version=version, failure=kind, message=_failure_message(kind, exc))
    now = timezone.now()
    Connection.objects.filter(pk=connection.pk).update(last_test_ok=result.ok, last_test_at=now, last_test_message=result.message[:2000])
    connection.last_test_ok, connection.last_test_at, connection.last_test_message = result.ok, now, result.message[:2000]
    return result


def connection_detect_version(*, connection: Connection) -> str:
    """Best effort: HaloPSA's version ("" when it cannot be read now; never raises)."""
    try:
        version = HaloClient.for_connection(connection, max_retries=1).version()
    except (HaloError, ValueError) as exc:
        logger.info("version detection for connection %s failed: %s", connection.pk, getattr(exc, "message", exc))
        return ""
    except Exception:  # never let creation fail on an unexpected client problem
        logger.exception("version detection for connection %s failed", connection.pk)
        return ""
    _save_version(connection, version)
    return version


def _save_version(connection: Connection, version: str) -> None:
    now = timezone.now()
    Connection.objects.filter(pk=connection.pk).update(halopsa_version=version[:40], version_checked_at=now)
    connection.halopsa_version, connection.version_checked_at = version[:40], now
