"""Partner connections to HaloPSA: create, change, delete, enable/pause, test and probe them.

Every change keeps the connection's hourly schedule in step (integrations/schedules.py) and is
recorded in the audit trail when a person made it. Saving checks the URL with the outbound
rules (integrations/halopsa/outbound.py: https unless private networks are allowed, no private
or link-local address, no user:password@) and refuses a second connection of one partner to the
same HaloPSA (normalised URL) and client id (also a database constraint on `base_url_key`).
The dashboard's form also has the credentials checked before saving (`check_credentials`: token
and version through HaloClient) and starts the first sync (`start_sync`); the `add_connection`
command does neither, so it never fails because HaloPSA is unreachable (the version is detected
best-effort and the partner can test later).
Testing runs the shape probe (integrations/halopsa/probe.py) and stores what it learned on the
connection (`halo_shape`), where the sync and the push read it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from integrations.halopsa import shape as halo_shape
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
from integrations.halopsa.outbound import validate_url
from integrations.halopsa.probe import ProbeResult, probe_shape
from integrations.halopsa.shape import HaloShape
from integrations.models import Connection, Incident, Partner, SyncRun, halopsa_url_key
from integrations.schedules import schedule_ensure, schedule_minute_pick, schedule_remove
from integrations.services.audit import audit_record
from integrations.services.incidents import incident_resolve

logger = logging.getLogger(__name__)

# What a partner may set on a connection (everything else is ours).
EDITABLE_FIELDS = (
    "name",
    "base_url",
    "auth_url",
    "client_id",
    "client_secret",
    "tenant",
    "enabled",
    "paused",
    "invoices_created_since",
    "invoice_number_field",
    "billing_contact_rule",
    "default_currency",
)
SECRET_FIELDS = ("client_secret",)
# Changing these means talking to a different HaloPSA (or as someone else): re-detect the version.
ENDPOINT_FIELDS = ("base_url", "auth_url", "client_id", "client_secret", "tenant")


# Why a test (or the check before saving) failed, in a partner's words.
FAILURE_LABELS = {
    "bad_url": "Bad URL",
    "refused_address": "Address refused",
    "bad_credentials": "Bad credentials",
    "permission": "Missing API permission",
    "timeout": "Timed out",
    "unreachable": "Unreachable",
    "bad_response": "Unexpected response",
}
# Failures only an edit of the connection (its URL or credentials) can fix: health "Reconnect".
RECONNECT_FAILURES = ("bad_credentials", "bad_url", "refused_address")
# The form field a failed check before saving belongs to (others are about the whole form).
_FAILURE_FIELDS = {
    "bad_url": "base_url",
    "refused_address": "base_url",
    "unreachable": "base_url",
    "timeout": "base_url",
    "bad_response": "base_url",
    "bad_credentials": "client_secret",
}


@dataclass
class ConnectionTestResult:
    ok: bool
    version: str = ""
    # "" | "bad_url" | "refused_address" | "bad_credentials" | "permission" | "timeout" | "unreachable" | "bad_response"
    failure: str = ""
    message: str = ""
    # Features the shape probe found blocked: [{"feature": ..., "message": ...}] (HaloShape.problems).
    problems: list[dict[str, str]] = field(default_factory=list)

    @property
    def failure_label(self) -> str:
        return FAILURE_LABELS.get(self.failure, self.failure or "Failed")


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - set(EDITABLE_FIELDS))
    if unknown:
        raise ValidationError(f"Unknown connection field(s): {', '.join(unknown)}.")


def connection_create(
    *,
    partner: Partner,
    user=None,
    detect_version: bool = True,
    check_credentials: bool = False,
    start_sync: bool = False,
    **fields: Any,
) -> Connection:
    """Create a connection with its hourly schedule (spread over the hour). Raises ValidationError
    for bad values, an unsafe URL, or a HaloPSA (URL and client id) the partner is already
    connected to. With `check_credentials`, HaloPSA must accept the credentials first (nothing is
    saved otherwise); with `start_sync`, the first (full) sync is queued once it is saved.
    Without a check, the version is detected best-effort when `detect_version`."""
    _check_fields(fields)
    connection = Connection(partner=partner, **fields)
    connection.clean_fields()  # "Enter a valid URL" before the rules for the URLs we call
    _check_endpoint(connection)
    connection.full_clean()
    checked = _check_credentials_or_refuse(connection) if check_credentials else None
    with transaction.atomic():
        _save_refusing_duplicates(connection)
        connection.schedule_minute = schedule_minute_pick(connection.pk)
        Connection.objects.filter(pk=connection.pk).update(schedule_minute=connection.schedule_minute)
        schedule_ensure(connection)
        if user is not None:
            audit_record(
                user=user,
                action="connection.create",
                obj=connection,
                partner=partner,
                summary=f"Created HaloPSA connection {connection.name}",
                base_url=connection.base_url,
            )
    if checked is not None:
        _record_check(connection, checked)
    elif detect_version:
        connection_detect_version(connection=connection)
    if start_sync and connection.enabled:
        from integrations.services.sync import sync_queue  # sync imports this module's probe lazily too

        sync_queue(connection=connection, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.MANUAL, user=user)
    return connection


def connection_update(
    *, connection: Connection, user=None, check_credentials: bool = False, **fields: Any
) -> Connection:
    """Change a connection's settings. A changed URL is checked like a new one; with
    `check_credentials`, a change of what identifies the HaloPSA or the API application (URL,
    client id, secret, tenant) is saved only once HaloPSA accepts it. On a refusal nothing is
    saved and `connection` keeps its stored values. A changed billing-contact rule or
    invoice-number field makes the next sync rewrite every record (their fingerprints are cleared)."""
    _check_fields(fields)
    changed = [name for name, value in fields.items() if getattr(connection, name) != value]
    before = {name: getattr(connection, name) for name in (*fields, "base_url_key")}
    for name, value in fields.items():
        setattr(connection, name, value)
    endpoint_changed = bool(set(ENDPOINT_FIELDS) & set(changed))
    try:
        connection.clean_fields()
        _check_endpoint(connection, urls=[name for name in ("base_url", "auth_url") if name in changed])
        connection.full_clean()
        checked = _check_credentials_or_refuse(connection) if check_credentials and endpoint_changed else None
        with transaction.atomic():
            _save_refusing_duplicates(connection)
            schedule_ensure(connection)
            _reread_after_change(connection, changed)
            if user is not None and changed:
                audit_record(
                    user=user,
                    action="connection.update",
                    obj=connection,
                    summary=f"Changed HaloPSA connection {connection.name}: {', '.join(changed)}",
                    fields=list(changed),
                    values={n: str(fields[n]) for n in changed if n not in SECRET_FIELDS},
                )
    except ValidationError:
        for name, value in before.items():  # the page goes on showing the stored connection
            setattr(connection, name, value)
        raise
    if checked is not None:
        _record_check(connection, checked)
    elif endpoint_changed:
        connection_detect_version(connection=connection)
    return connection


def _check_endpoint(connection: Connection, urls: list[str] | None = None) -> None:
    """The URLs the portal will call pass the outbound rules, and the partner has no other
    connection to this HaloPSA with this client id. Sets the normalised `base_url_key`."""
    errors: dict[str, list[str]] = {}
    for name in ("base_url", "auth_url") if urls is None else urls:
        value = getattr(connection, name)
        if not value:
            continue
        try:
            validate_url(value)
        except UnsafeURLError as exc:
            errors.setdefault(name, []).append(
                exc.message
                if name == "base_url"
                else exc.message.replace("The HaloPSA URL", "The authorisation server URL")
            )
    connection.base_url_key = halopsa_url_key(connection.base_url)
    twin = connection_endpoint_twin(connection)
    if twin is not None:
        errors.setdefault("base_url", []).append(
            f"You already have a connection to this HaloPSA with this client ID: “{twin.name}”. Edit that one instead."
        )
    if errors:
        raise ValidationError(errors)


def connection_endpoint_twin(connection: Connection) -> Connection | None:
    """The partner's other connection to the same HaloPSA (normalised URL) with the same client
    id, if any. Compared here rather than by `base_url_key` alone, so rows stored without a key
    (created with the ORM directly, or duplicates older than the constraint) count too."""
    if not connection.partner_id:
        return None
    key = halopsa_url_key(connection.base_url)
    others = (
        Connection.objects.filter(partner_id=connection.partner_id, client_id=connection.client_id)
        .exclude(pk=connection.pk)
        .only("pk", "name", "base_url")
        .order_by("pk")
    )
    return next((other for other in others if halopsa_url_key(other.base_url) == key), None)


def _save_refusing_duplicates(connection: Connection) -> None:
    """Save; a twin saved meanwhile by another request trips the database constraint instead."""
    try:
        with transaction.atomic():
            connection.save()
    except IntegrityError as exc:
        if "connection_endpoint_unique" in str(exc) or "base_url_key" in str(exc):
            raise ValidationError(
                {"base_url": "You already have a connection to this HaloPSA with this client ID."}
            ) from None
        if "connection_name_unique" in str(exc) or ".name" in str(exc):
            raise ValidationError({"name": "You already have a connection with this name."}) from None
        raise


def connection_check_credentials(*, connection: Connection) -> ConnectionTestResult:
    """Ask HaloPSA for a token and its version with the connection's values, saved or not (what a
    sync does first). Stores nothing."""
    # A connection not saved yet spends the request budget of its HaloPSA URL, not a shared one.
    budget_key = f"conn:{connection.pk}" if connection.pk else f"check:{halopsa_url_key(connection.base_url)}"
    try:
        with HaloClient.for_connection(connection, max_retries=1, budget_key=budget_key) as client:
            version = client.version()
    except ValueError as exc:  # the URL cannot even be parsed
        return ConnectionTestResult(ok=False, failure="bad_url", message=getattr(exc, "message", str(exc)))
    except HaloError as exc:
        kind = _failure_kind(exc)
        return ConnectionTestResult(ok=False, failure=kind, message=_failure_message(kind, exc))
    return ConnectionTestResult(ok=True, version=version, message=f"HaloPSA {version} accepted the credentials.")


def _check_credentials_or_refuse(connection: Connection) -> ConnectionTestResult:
    result = connection_check_credentials(connection=connection)
    if not result.ok:
        message = f"HaloPSA did not accept this connection — {result.failure_label}: {result.message}"
        raise ValidationError({_FAILURE_FIELDS.get(result.failure, NON_FIELD_ERRORS): message})
    return result


def _record_check(connection: Connection, result: ConnectionTestResult) -> None:
    """A passed check before saving counts as a passed test of the credentials: the version is
    stored, and an open "credentials rejected" alert is over."""
    _save_version(connection, result.version)
    _save_test(connection, result)
    incident_resolve(connection, Incident.Kind.CREDENTIALS_REJECTED)


def _reread_after_change(connection: Connection, changed: list[str]) -> None:
    """Settings that change how records map: clear fingerprints and cursors, so the next sync
    (even an incremental one) re-reads those entities in full and rewrites every record."""
    from integrations.models import Customer, Invoice, SyncCursor

    if "billing_contact_rule" in changed:
        Customer.objects.filter(connection=connection).update(fingerprint="")
        SyncCursor.objects.filter(connection=connection, entity__in=["customers", "contacts"]).update(
            changed_since=None
        )
    if {"invoice_number_field", "default_currency", "invoices_created_since"} & set(changed):
        Invoice.objects.filter(connection=connection).update(fingerprint="")
        SyncCursor.objects.filter(connection=connection, entity="invoices").update(changed_since=None)


def connection_delete(*, connection: Connection, user=None) -> None:
    """Delete a connection, its schedule, and everything synced through it (stored PDFs included)."""
    from integrations.models import Contact, Customer, Invoice, InvoiceLine, InvoicePdf, Payment, PushJob

    name, partner_id, pk = connection.name, connection.partner_id, connection.pk
    files = list(
        InvoicePdf.objects.filter(invoice__connection=connection).exclude(file="").values_list("file", flat=True)
    )
    with transaction.atomic():
        schedule_remove(pk)
        if user is not None:
            audit_record(
                user=user,
                action="connection.delete",
                partner=partner_id,
                summary=f"Deleted HaloPSA connection {name}",
                connection_id=pk,
            )
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


def connection_set_state(
    *, connection: Connection, user=None, enabled: bool | None = None, paused: bool | None = None
) -> Connection:
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
            audit_record(
                user=user,
                action="connection.state",
                obj=connection,
                summary=f"HaloPSA connection {connection.name} {' and '.join(words)}",
                **changes,
            )
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
    """Check the connection the way a sync uses it: token + version, then the shape probe, whose
    invoice list needs the API application's read permission. Stores the outcome on the
    connection, and what the probe learned (even when the invoice list failed)."""
    version = ""
    problems: list[dict[str, str]] = []
    try:
        # A person is waiting on the answer: one retry, not the sync's patient backoff.
        with HaloClient.for_connection(connection, max_retries=1) as client:
            probed = connection_probe(connection=connection, client=client)
        version, problems = probed.shape.version, probed.shape.problems
        if probed.invoice_error is not None:
            raise probed.invoice_error  # the invoices are what the portal is for: the test fails, as before
        blocked = f" {len(problems)} feature(s) blocked: see the connection page." if problems else ""
        result = ConnectionTestResult(
            ok=True, version=version, message=f"Connected to HaloPSA {version}.{blocked}", problems=problems
        )
    except ValueError as exc:  # the URL cannot even be parsed
        result = ConnectionTestResult(
            ok=False, version=version, failure="bad_url", message=getattr(exc, "message", str(exc))
        )
    except HaloError as exc:
        kind = _failure_kind(exc)
        result = ConnectionTestResult(
            ok=False, version=version, failure=kind, message=_failure_message(kind, exc), problems=problems
        )
    _save_test(connection, result)
    if result.ok:  # HaloPSA accepted the credentials just now
        incident_resolve(connection, Incident.Kind.CREDENTIALS_REJECTED)
    return result


def _save_test(connection: Connection, result: ConnectionTestResult) -> None:
    values = {
        "last_test_ok": result.ok,
        "last_test_at": timezone.now(),
        "last_test_message": result.message[:2000],
        "last_test_failure": result.failure,
    }
    Connection.objects.filter(pk=connection.pk).update(**values)
    for name, value in values.items():
        setattr(connection, name, value)


def connection_probe(*, connection: Connection, client: HaloClient | None = None) -> ProbeResult:
    """Run the shape probe against the connection's HaloPSA and store what it learned
    (`halo_shape`, `shape_checked_at`, and the version). Called by `connection_test` and by the
    sync before a connection's first run. Raises HaloError only when the token or GET
    /InstanceInfo fails; then nothing is stored."""
    owned = client is None
    client = client or HaloClient.for_connection(connection)
    try:
        probed = probe_shape(client)
    finally:
        if owned:
            client.close()
    shape = probed.shape
    _save_version(connection, shape.version)
    now = timezone.now()
    with transaction.atomic():
        # The clock offset is measured by the push on its own writes, never by this read-only probe: keep it.
        stored = HaloShape.of(Connection.objects.select_for_update().filter(pk=connection.pk).first())
        shape.clock_offset_seconds = stored.clock_offset_seconds
        shape.clock_offset_measured_at = stored.clock_offset_measured_at
        Connection.objects.filter(pk=connection.pk).update(halo_shape=shape.as_dict(), shape_checked_at=now)
    connection.halo_shape, connection.shape_checked_at = shape.as_dict(), now
    logger.info(
        "shape probe of connection %s: %d requests; payments lookup %s, list key %s, billing flag %s; %d problem(s), "
        "%d failed call(s)",
        connection.pk,
        probed.requests,
        shape.payments_lookup or "unknown",
        shape.payments_list_key or "unknown",
        shape.billing_flag_source or "unknown",
        len(shape.problems),
        len(shape.probe_errors),
    )
    return probed


def connection_shape_update(*, connection: Connection, **fields: Any) -> HaloShape:
    """Set some HaloShape fields on the stored shape (what a push learned: the payments lookup that
    worked, the clock offset), leaving the others as stored. The row is locked while it is
    rewritten (PostgreSQL; SQLite serialises writers anyway)."""
    with transaction.atomic():
        current = Connection.objects.select_for_update().filter(pk=connection.pk).first()
        if current is None:
            return HaloShape.of(connection)
        shape = HaloShape.of(current)
        for name, value in fields.items():
            if not hasattr(shape, name):
                raise ValueError(f"HaloShape has no field {name!r}")
            setattr(shape, name, value)
        Connection.objects.filter(pk=connection.pk).update(halo_shape=shape.as_dict())
    connection.halo_shape = shape.as_dict()
    return shape


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


# --- what the probe learned, in a partner's words (the connection page) ------------------------


@dataclass
class ShapeFact:
    label: str
    text: str
    warn: bool = False


@dataclass
class ShapeStatusCode:
    code: str
    seen: int
    unpaid: int
    paid: int
    looks: str  # "unpaid" | "paid" | "mixed" | "" (void, credits or unreadable only)
    fetched_as_unpaid: bool  # asked for by "Fetch unpaid invoices"


@dataclass
class ShapeSummary:
    checked_at: Any
    version: str
    billing: list[ShapeFact]
    reads: list[ShapeFact]
    payments: list[ShapeFact]
    clock: ShapeFact
    codes: list[ShapeStatusCode]
    missing: list[ShapeFact]
    problems: list[dict[str, str]]
    failed_calls: list[dict[str, str]]


_ENTITY_LABELS = {
    "client": "Customers",
    "user": "Users",
    "invoice": "Invoices",
    "invoice line": "Invoice lines",
    "payment": "Payments",
}
# label, date-filter fact and its name, order fact and its name (as the sync reads them).
_INCREMENTAL_READS = (
    ("Customers", "client_updated_filter", "lastupdatefromdate", "client_order_by_updated", "order=alastupdate"),
    ("Users", "user_updated_filter", "lastupdatefromdate", "user_order_by_updated", "order=ulastupdate"),
    ("Invoices", "invoice_datesearch", "datesearch=last_modified", "invoice_order_by_modified", "order=last_modified"),
)


def connection_shape_summary(*, connection: Connection) -> ShapeSummary | None:
    """What the shape probe (and the pushes since) learned about the connection's HaloPSA, worded
    for the connection page; None before anything was learned."""
    shape = HaloShape.of(connection)
    if connection.shape_checked_at is None and not shape.checked_at and shape.clock_offset_seconds is None:
        return None
    return ShapeSummary(
        checked_at=connection.shape_checked_at,
        version=shape.version,
        billing=_billing_facts(connection, shape),
        reads=[_read_fact(shape, *row) for row in _INCREMENTAL_READS],
        payments=_payments_facts(shape),
        clock=_clock_fact(shape),
        codes=_status_codes(shape),
        missing=[
            ShapeFact(_ENTITY_LABELS.get(entity, entity), ", ".join(names))
            for entity, names in sorted(shape.missing_fields.items())
            if isinstance(names, list)
        ],
        problems=list(shape.problems),
        failed_calls=list(shape.probe_errors),
    )


def _billing_facts(connection: Connection, shape: HaloShape) -> list[ShapeFact]:
    rule = ShapeFact("Rule in force", connection.get_billing_contact_rule_display())
    field_name = shape.billing_flag_field or "canaccessinvoices"
    source = {
        halo_shape.FLAG_ON_LIST: f"Read from {field_name} on HaloPSA's user list.",
        halo_shape.FLAG_ON_LIST_WITH_BILLINGINFO: f"Read from {field_name} on the user list when billing information is "
        "asked for (includebillinginfo).",
        halo_shape.FLAG_ON_DETAIL: f"Read from {field_name} on each user's own record (GET /Users/{{id}}), again only for "
        "users that changed.",
        halo_shape.FLAG_NOWHERE: "Nowhere: HaloPSA shows no invoice-access flag, so users are not synced as billing "
        "contacts (each customer's accounts contact still is).",
    }.get(shape.billing_flag_source, "Not found out yet: the next sync finds out where it is.")
    if connection.billing_contact_rule == Connection.BillingContactRule.ACCOUNTS_ONLY:
        source += " (Not used: the rule takes the accounts contact only.)"
    return [
        rule,
        ShapeFact("Who can access invoices", source, warn=shape.billing_flag_source == halo_shape.FLAG_NOWHERE),
    ]


def _read_fact(
    shape: HaloShape, label: str, filter_fact: str, filter_name: str, order_fact: str, order_name: str
) -> ShapeFact:
    honoured, ordered = getattr(shape, filter_fact), getattr(shape, order_fact)
    if honoured == halo_shape.FILTER_WORKS:
        return ShapeFact(label, f"Changed records only, filtered by {filter_name}.")
    if honoured == halo_shape.FILTER_IGNORED and ordered == halo_shape.FILTER_IGNORED:
        return ShapeFact(label, f"Full reads: HaloPSA ignores both {filter_name} and {order_name}.", warn=True)
    if honoured == halo_shape.FILTER_IGNORED:
        checked = "" if ordered == halo_shape.FILTER_WORKS else " (the order is checked as pages arrive)"
        return ShapeFact(
            label, f"Newest first ({order_name}) until the last sync's mark: HaloPSA ignores {filter_name}{checked}."
        )
    return ShapeFact(label, f"Not found out yet: the next sync checks {filter_name} first.")


def _payments_facts(shape: HaloShape) -> list[ShapeFact]:
    lookup = {
        halo_shape.PAYMENTS_VIA_INVOICE: "In the invoice's own payments (GET /Invoice/{id}?includedetails=true), the read "
        "the balance check makes anyway.",
        halo_shape.PAYMENTS_VIA_LIST: "With GET /InvoicePayment?invoice_id=…, every row checked to be the invoice's.",
        halo_shape.PAYMENTS_NOWHERE: "Nowhere: HaloPSA lists no invoice's payments exactly, so payments are not posted.",
    }.get(
        shape.payments_lookup,
        "Not found out yet: the first payment push tries the invoice's own payments, then GET /InvoicePayment.",
    )
    if shape.payments_list_key == halo_shape.BARE_ARRAY:
        key = "A bare JSON array."
    elif shape.payments_list_key:
        key = f"An object with the rows under “{shape.payments_list_key}”."
    else:
        key = "Not seen yet."
    if shape.payments_list_filter == halo_shape.FILTER_IGNORED:
        key += " Its invoice_id filter is ignored, so it is never used to look a payment up."
    return [
        ShapeFact(
            "Looking up a payment before posting it", lookup, warn=shape.payments_lookup == halo_shape.PAYMENTS_NOWHERE
        ),
        ShapeFact("GET /InvoicePayment answers", key),
    ]


def _clock_fact(shape: HaloShape) -> ShapeFact:
    offset = shape.clock_offset_seconds
    if isinstance(offset, bool) or not isinstance(offset, (int, float)):
        return ShapeFact(
            "HaloPSA's clock",
            "Not measured yet: it is measured on the next payment or status pushed. "
            "Until then a status changed on both sides keeps the one set here.",
        )
    minutes = round(abs(offset) / 60)
    if minutes == 0:
        text = "Agrees with ours (within a minute)."
    else:
        days, rest = divmod(minutes, 24 * 60)
        hours, mins = divmod(rest, 60)
        amount = " ".join(
            part
            for part in (f"{days} d" if days else "", f"{hours} h" if hours else "", f"{mins} min" if mins else "")
            if part
        )
        text = f"{amount} {'ahead of' if offset > 0 else 'behind'} ours; HaloPSA's times are moved onto our clock before they are compared."
    when = shape.clock_offset_measured_at[:16].replace("T", " ")
    return ShapeFact("HaloPSA's clock", f"{text} Measured {when} UTC." if when else text)


def _status_codes(shape: HaloShape) -> list[ShapeStatusCode]:
    unpaid_codes = {str(code) for code in shape.unpaid_codes}
    rows = []
    for code, counts in shape.paymentstatus_codes.items():
        if not isinstance(counts, dict):
            continue
        unpaid, paid = int(counts.get("unpaid", 0) or 0), int(counts.get("paid", 0) or 0)
        looks = "mixed" if unpaid and paid else "unpaid" if unpaid else "paid" if paid else ""
        rows.append(
            ShapeStatusCode(
                code=str(code),
                seen=int(counts.get("seen", 0) or 0),
                unpaid=unpaid,
                paid=paid,
                looks=looks,
                fetched_as_unpaid=str(code) in unpaid_codes,
            )
        )
    return sorted(
        rows,
        key=lambda row: (not row.code.lstrip("-").isdigit(), int(row.code) if row.code.lstrip("-").isdigit() else 0),
    )
