"""Every HALOPSA_* setting in one place: its type, its default and why it exists.

syncportal/settings.py takes each from the environment where its variable is given, else the
default here (`settings_from_env`); a settings module (tests, benchmarks) may assign any of them.
Code reads them through `halo_settings()`: read and checked once, and again only after a setting
changes (Django's `setting_changed`, which `override_settings` and pytest-django's `settings`
fixture send), so a test's override is seen at once and a bad value fails at start-up
(`check_halo_settings`, a system check), not in the middle of a sync.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

PREFIX = "HALOPSA_"
UNMEASURED_CLOCK_CHOICES = ("keep_local", "assume_utc")


# Numbers that must be above 0; every other number must not be negative.
MUST_BE_POSITIVE = frozenset(
    {
        "connect_timeout",
        "read_timeout",
        "request_deadline",
        "rate_window",
        "sync_lease_ttl",
        "sync_run_seconds",
        "pdf_phase_seconds",
    }
)


@dataclass(frozen=True)
class HaloSettings:
    # --- Outbound HTTP (integrations/halopsa/transport.py) ---
    # Plain http and loopback/private addresses are refused for partner-supplied HaloPSA URLs
    # unless this is on (local sandbox and tests only; the deploy check refuses it in production).
    allow_private_networks: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_retries: int = 5
    retry_base_delay: float = 1.0  # seconds before the first retry; doubled after each
    # The partner types the HaloPSA URL, so the server may be slow or hostile on purpose
    # (docs/reliability.md). One whole exchange (connect, answer and body together: a read
    # timeout never trips on a body trickling a byte a second) may take this long; HaloPSA's
    # slowest healthy pages take tens of seconds.
    request_deadline: float = 120.0
    # Largest answer read, streamed and refused beyond this: a page of 100 invoices with their
    # lines is a few MB, and parsed JSON takes several times its size in memory.
    max_response_bytes: int = 64 * 1024 * 1024
    # A list may run this many pages (or a tenth, if more) past its first record_count before its
    # read stops with an error: records added during a long read fit, an endless list does not.
    list_extra_pages: int = 10

    # --- Request budget (integrations/halopsa/budget.py) ---
    # Hosted HaloPSA allows about 300 requests per rolling 5 minutes (docs/halopsa-facts.md §8;
    # sources vary); 0 turns the client-side budget off.
    rate_limit: int = 300
    rate_window: float = 300.0
    budget_max_wait: float = 30.0  # longest wait for budget before a request gives up (rate limited)

    # --- Webhooks (docs/webhooks.md) ---
    webhook_max_body: int = 256 * 1024
    # A connection authenticates deliveries one way: Basic, or an HMAC signature (base64
    # HMAC-SHA256 of the raw body) in this header when it has an HMAC secret.
    webhook_hmac_header: str = "Token"
    # HaloPSA's authentication_type for Basic is unconfirmed (only 0 = none and 3 = HMAC are
    # known), so the webhook registered through the API uses this number.
    webhook_basic_auth_type: int = 1
    # HaloPSA's eventno per event the portal subscribes to ("invoice updated=123, ..." in the
    # environment). Unknown for invoice, client, user and payment events, so empty by default:
    # registering then attaches no events and the connection page lists the ones to tick by hand.
    webhook_eventnos: Mapping[str, int] = field(default_factory=dict)

    # --- Pushes (docs/push-rules.md) ---
    # After a payment POST whose outcome is unknown, wait this long before looking it up and
    # posting again, so HaloPSA has surely finished committing it.
    push_settle_seconds: float = 300.0
    # HaloPSA's timestamps carry no offset and may be the instance's local time: the push measures
    # its clock from HaloPSA's stamp on our writes, again after this many hours (a DST change).
    clock_offset_refresh_hours: float = 24.0
    # Until an offset is measured, the status conflict rule keeps the status set here
    # ("keep_local") or compares as if HaloPSA's clock were UTC ("assume_utc").
    unmeasured_clock: str = "keep_local"

    # --- Shape probe (integrations/halopsa/probe.py) ---
    # Invoices sampled for their paymentstatus codes and the newest-first check.
    probe_invoice_sample: int = 50
    # User fields taken as the invoice-access flag when canaccessinvoices is nowhere (how HaloPSA
    # flags a billing contact is unverified, docs/halopsa-facts.md §11.8).
    billing_flag_alternatives: tuple[str, ...] = ("sendaccountsemails", "invoice_access_level")

    # --- Sync (docs/sync-rules.md) ---
    # PDFs cost one request each and come last: at most this many per run, this share of the
    # request budget (the rest stays free for pushes and webhook fetches) and this long per run.
    pdf_batch: int = 2000
    pdf_budget_share: float = 0.9
    pdf_phase_seconds: float = 1200.0
    # Invoices written per transaction (10 HaloPSA pages): fewer commits, and SQLite's write lock
    # is still held only briefly each time (benchmarks/README.md, "History").
    sync_write_batch: int = 1000
    # Incremental reads start this long before each cursor (HaloPSA's own change times); an
    # instance on local time with daylight saving may want 4200 (70 min).
    sync_cursor_overlap_seconds: float = 600.0
    # A cursor never goes further than this ahead of our clock: one record stamped in the far
    # future must not stop incremental reads (capping only makes a read longer).
    sync_cursor_max_ahead_hours: float = 24.0
    # Where users' list rows lack the billing flag: GET /Users/{id} calls one run may make, for
    # users whose list row changed; the rest wait for the next run.
    sync_user_details_per_run: int = 250
    # One run stops cleanly after this long (what it read is saved) and never later than 90 % of
    # the worker's task timeout, so a slow HaloPSA never gets the worker killed.
    sync_run_seconds: float = 1500.0
    # Records a full read did not list are flagged deleted only once HaloPSA confirms it: up to
    # this many are read one by one, more are checked against one id-only list.
    sync_deletion_checks: int = 20
    # The per-connection sync lease: how long it lives unrenewed, how often a run renews it
    # (None: a twentieth of the TTL) and how long a run waits for another to finish.
    sync_lease_ttl: int = 600
    sync_lease_renew_seconds: float | None = None
    sync_lease_wait: float = 5.0

    def __post_init__(self) -> None:
        if self.unmeasured_clock not in UNMEASURED_CLOCK_CHOICES:
            raise ImproperlyConfigured(
                f"HALOPSA_UNMEASURED_CLOCK must be keep_local or assume_utc, not {self.unmeasured_clock!r}."
            )
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            # A zero timeout, window, lease or run length would stop every request or sync; a
            # negative count, wait or overlap would silently change what is read (a negative
            # cursor overlap skips records).
            if spec.name in MUST_BE_POSITIVE and value <= 0:
                raise ImproperlyConfigured(f"{setting_name(spec.name)} must be more than 0.")
            if value < 0:
                raise ImproperlyConfigured(f"{setting_name(spec.name)} must not be negative.")
        if not 0 <= self.pdf_budget_share <= 1:
            raise ImproperlyConfigured("HALOPSA_PDF_BUDGET_SHARE must be between 0 and 1.")

    @property
    def lease_renew_interval(self) -> float:
        return self.sync_lease_renew_seconds if self.sync_lease_renew_seconds is not None else self.sync_lease_ttl / 20


def setting_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def parse_webhook_eventnos(text: str) -> dict[str, int]:
    """ "invoice updated=123, client created=45" -> {"invoice updated": 123, "client created": 45}."""
    numbers: dict[str, int] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, separator, number = pair.rpartition("=")
        if not separator or not name.strip() or not number.strip().isdigit():
            raise ImproperlyConfigured(
                f"HALOPSA_WEBHOOK_EVENTNOS: {pair!r} is not 'event name=number' (e.g. 'invoice updated=123')."
            )
        numbers[" ".join(name.lower().split())] = int(number)
    return numbers


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    """A value from a settings module or the environment, as the field's type."""
    name = setting_name(spec.name)
    try:
        if spec.name == "webhook_eventnos":
            return (
                parse_webhook_eventnos(value)
                if isinstance(value, str)
                else {str(k): int(v) for k, v in dict(value).items()}
            )
        if spec.type == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(item).strip() for item in items if str(item).strip())
        if value is None:
            if "None" in str(spec.type):
                return None
            raise ValueError("no value")
        if spec.type == "bool":
            if isinstance(value, str):
                if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if spec.type == "int":
            return int(value)
        if spec.type.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name}: {value!r} is not a valid {spec.type}.") from exc


def settings_from(source: Mapping[str, Any]) -> HaloSettings:
    """The settings given in `source` (HALOPSA_* names), defaults for the others."""
    given = {
        spec.name: _coerce(spec, source[setting_name(spec.name)])
        for spec in dataclasses.fields(HaloSettings)
        if setting_name(spec.name) in source
    }
    return HaloSettings(**given)


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Every HALOPSA_* setting, from the environment where its variable is given, else its
    default, for a settings module to `globals().update(...)`. Checked as a whole."""
    names = {setting_name(spec.name) for spec in dataclasses.fields(HaloSettings)}
    values = settings_from({name: value for name, value in environ.items() if name in names})
    return {setting_name(spec.name): getattr(values, spec.name) for spec in dataclasses.fields(HaloSettings)}


@functools.cache
def halo_settings() -> HaloSettings:
    """The HALOPSA_* settings in force (read once; re-read after a setting changes)."""
    names = [setting_name(spec.name) for spec in dataclasses.fields(HaloSettings)]
    return settings_from({name: getattr(settings, name) for name in names if hasattr(settings, name)})


@receiver(setting_changed)
def _reread_after_a_change(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(PREFIX) or setting == "Q_CLUSTER":
        halo_settings.cache_clear()
