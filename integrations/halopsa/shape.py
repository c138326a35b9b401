"""What one HaloPSA instance's API looks like, as learned by the shape probe (integrations/halopsa/probe.py).

HaloPSA's shapes are only partly documented (docs/halopsa-facts.md): list envelopes, where the
billing flag lives, whether a date filter is honoured, which paymentstatus codes mean "unpaid".
Each connection stores what its own instance showed (`Connection.halo_shape`, a dict written by
`HaloShape.as_dict`), and the sync and push read it through `HaloShape.of(connection)`.

Every field starts as UNKNOWN, and "unknown" is never read as "no": code that needs a fact it
does not have either finds it out itself (a runtime check) or takes the path that is correct
whatever the answer (a full read instead of a filtered one). Pure standard library, no ORM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

UNKNOWN = ""

# Whether a query filter is honoured (probed with a value that must match nothing).
FILTER_WORKS = "works"
FILTER_IGNORED = "ignored"

# Where a user's billing flag (`canaccessinvoices`) is found.
FLAG_ON_LIST = "list"  # on GET /Users list rows
FLAG_ON_LIST_WITH_BILLINGINFO = "list_billinginfo"  # on list rows when includebillinginfo=true
FLAG_ON_DETAIL = "detail"  # only on GET /Users/{id}
FLAG_NOWHERE = "none"  # not found: user billing contacts are blocked (accounts contacts still sync)

# How an invoice's payments are listed exactly (the exactly-once lookup of a payment push).
PAYMENTS_VIA_INVOICE = "invoice"  # `payments` of GET /Invoice/{id}?includedetails=true
PAYMENTS_VIA_LIST = "list"  # GET /InvoicePayment?invoice_id=N (rows checked against the id)
PAYMENTS_NOWHERE = "none"  # neither: payment pushes are blocked (never post blind)

# The key of GET /InvoicePayment's rows: a key name, or this for a bare JSON array.
BARE_ARRAY = "[]"

# Features the probe can block (`HaloShape.problems`); everything else keeps working.
FEATURE_BILLING_CONTACTS = "billing_contacts"  # user billing contacts (accounts contacts still sync)
FEATURE_PAYMENT_PUSH = "payment_push"  # posting platform payments (and deleting them) in HaloPSA

# Halo's own "unpaid" view sends paymentstatuses=0,-1 (-1 is the database default); 1 is taken
# as "partially paid" until an instance shows otherwise.
DEFAULT_UNPAID_CODES = (-1, 0, 1)


@dataclass
class HaloShape:
    checked_at: str = UNKNOWN  # ISO time of the last probe (our clock; for display only)
    version: str = UNKNOWN

    # GET /Invoice `datesearch=last_modified&start_date=...` (SW25 only; older instances ignore it)
    invoice_datesearch: str = UNKNOWN
    # GET /Invoice `order=last_modified&orderdesc=true` (the fallback when datesearch is ignored)
    invoice_order_by_modified: str = UNKNOWN
    # GET /Client and /Users `lastupdatefromdate=...` (unverified as date filters, halopsa-facts §11.6)
    client_updated_filter: str = UNKNOWN
    user_updated_filter: str = UNKNOWN
    # GET /Client `order=alastupdate` and /Users `order=ulastupdate` with orderdesc=true (their
    # fallback when lastupdatefromdate is ignored; the sync records "ignored" when it sees it)
    client_order_by_updated: str = UNKNOWN
    user_order_by_updated: str = UNKNOWN

    billing_flag_source: str = UNKNOWN
    # The flag's name where it was found (canaccessinvoices, or an alternative the probe found).
    billing_flag_field: str = "canaccessinvoices"

    payments_lookup: str = UNKNOWN
    payments_list_key: str = UNKNOWN  # BARE_ARRAY or the envelope key seen on GET /InvoicePayment
    # GET /InvoicePayment `invoice_id=N`: only invoice N's rows (works) or others' too (ignored).
    payments_list_filter: str = UNKNOWN

    # paymentstatus code (as text) -> counts seen in a sample: {"-1": {"seen": 3, "unpaid": 3, "paid": 0}}
    paymentstatus_codes: dict[str, dict[str, int]] = field(default_factory=dict)

    # HaloPSA's timestamps carry no offset and may be in the instance's local time: seconds to add
    # to our clock to get HaloPSA's, measured from HaloPSA's own stamp on a write of ours (None
    # until measured). Only comparisons of a HaloPSA time with one of ours need it; cursors never do.
    clock_offset_seconds: float | None = None
    clock_offset_measured_at: str = UNKNOWN  # ISO time (our clock) of that measurement

    # Top-level fields a sampled record lacked although the portal reads them, per entity.
    missing_fields: dict[str, list[str]] = field(default_factory=dict)
    # Features the probe blocked, each with a message a partner can act on:
    # {"feature": "billing_contacts" | "payment_push" | "incremental_invoices" | ..., "message": "..."}
    problems: list[dict[str, str]] = field(default_factory=list)
    # Probe calls that failed, recorded instead of raised: [{"call": "GET /api/Webhook", "message": "..."}]
    probe_errors: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> HaloShape:
        """Tolerant of old, partial or damaged dicts: unknown keys are dropped, and a value of the
        wrong type is dropped too, so missing and unreadable facts stay UNKNOWN."""
        if not isinstance(data, dict):
            return cls()
        defaults = cls()
        kept: dict[str, Any] = {}
        for name in (f.name for f in fields(cls)):
            if name not in data:
                continue
            value, default = data[name], getattr(defaults, name)
            if name == "clock_offset_seconds":
                readable = value is None or (
                    isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                )
            else:
                readable = isinstance(value, type(default))
            if readable and isinstance(value, list):
                value = [item for item in value if isinstance(item, dict)]  # problems, probe_errors
            if readable:
                kept[name] = value
        return cls(**kept)

    @classmethod
    def of(cls, connection: Any) -> HaloShape:
        return cls.from_dict(getattr(connection, "halo_shape", None))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def unpaid_codes(self) -> tuple[int, ...]:
        """paymentstatus codes a "fetch unpaid invoices" asks for: the defaults plus every code
        the probe saw on an invoice with money still due."""
        codes = set(DEFAULT_UNPAID_CODES)
        for code, counts in self.paymentstatus_codes.items():
            try:
                number = int(code)
            except (TypeError, ValueError):
                continue
            if isinstance(counts, dict) and counts.get("unpaid", 0):
                codes.add(number)
        return tuple(sorted(codes))

    def halo_time_on_our_clock(self, value: datetime | None) -> datetime | None:
        """A HaloPSA timestamp (parsed as if it were UTC, as mapping.py does) moved onto our clock,
        or None when it cannot be: no value, or no offset measured yet."""
        offset = self.clock_offset_seconds
        if value is None or isinstance(offset, bool) or not isinstance(offset, (int, float)):
            return None
        return value - timedelta(seconds=offset)

    def blocked(self, feature: str) -> str:
        """The message of a blocked feature, or "" when it is not blocked."""
        for problem in self.problems:
            if problem.get("feature") == feature:
                return problem.get("message", "") or f"{feature} is blocked"
        return ""
