"""Every HaloPSA wire-shape decision the sandbox makes, in one place.

`docs/halopsa-facts.md` ("halopsa-facts §N" below) confirms paths, parameter names and most field
names, but several details are marked unverified there. Each guess below says so and cites the
section, so that correcting the simulator after meeting a real tenant means editing this file only.

This module is pure standard library (no Django) and holds:
- profiles: the plausible variants of a real instance halopsa-facts cannot rule out (issue 16),
- enums (payment status, payment type, webhook auth type),
- envelope keys of list endpoints,
- date and money formatting,
- the functions that turn internal records into API JSON (clients, users, invoices, lines, payments),
- webhook event names and the small entity objects they carry,
- error bodies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .records import Client, Invoice, Line, Payment, User

# ---------------------------------------------------------------------------------------------
# Credentials and versions

#: Client credentials the sandbox accepts. Shapes follow [PAN]: the id is a GUID, the secret is
#: two GUIDs joined by "-" (73 characters).
SANDBOX_CLIENT_ID = "5c0a7e6e-2f4b-4d0b-9a55-3d9a1f6c2b10"
SANDBOX_CLIENT_SECRET = "8b0f3c2e-91a4-4c7e-b5d2-6e1f0a9c3d47-2d6e9f10-7a3b-4e58-8c21-b94f05d7e6a3"
DEFAULT_VERSION = "2.130.1"
#: Real-time (webhook) sync exists only from this version on, per [ALT] (halopsa-facts §6 "Version gating").
#: No Halo release note confirms it; the sandbox gates every webhook on it.
WEBHOOK_MIN_VERSION = "2.122.1"


def parse_version(version: str) -> tuple[int, ...]:
    """Numeric version tuple: "v2.99" -> (2, 99); compares 2.99 < 2.122.1 correctly."""
    parts = re.findall(r"\d+", str(version or ""))
    return tuple(int(p) for p in parts) or (0,)


def version_supports_webhooks(version: str) -> bool:
    return parse_version(version) >= parse_version(WEBHOOK_MIN_VERSION)


# ---------------------------------------------------------------------------------------------
# Enums (halopsa-facts §11.3: none of these integers is confirmed by Halo)

#: `InvoiceHeader.paymentstatus`. Only "0 (and -1) = unpaid" is hinted by Halo's UI filter
#: `paymentstatuses=0,-1` [HAPI #33]; 1 and 2 are our guess. Only the `unpaid_minus_one` profile
#: serves -1 (the database default, "not computed yet").
PAYMENTSTATUS_NOT_COMPUTED = -1
PAYMENTSTATUS_UNPAID = 0
PAYMENTSTATUS_PARTIALLY_PAID = 1
PAYMENTSTATUS_PAID = 2

#: `InvoicePayment.type` (SW25 field, values unverified). 0 = money received, 1 = credit note
#: applied (row carries `credit_note_id`, inferred from field names, halopsa-facts §5). 2 would be a deposit:
#: deposits are out of scope ([ALT] does not sync them) and the sandbox never generates any.
PAYMENT_TYPE_PAYMENT = 0
PAYMENT_TYPE_CREDIT = 1
PAYMENT_TYPE_DEPOSIT = 2  # documented only; never produced

#: `Webhook.authentication_type` (halopsa-facts §6; only 0 and 3 are confirmed, §11.3): 0 = no
#: authentication; 1 = Basic (`basic_username`/`basic_password`; the guide names the option, its
#: number is a guess); 3 = HMAC-SHA256 of the raw body, base64, in the header named by
#: `authentication_header`, keyed by `basic_password` [DJPSA]. Each type sends only its own proof:
#: a type-3 delivery carries the signature and no Basic `Authorization` header.
WEBHOOK_AUTH_NONE = 0
WEBHOOK_AUTH_BASIC = 1
WEBHOOK_AUTH_HMAC = 3

#: Invoices with no customer: Halo stores client id 0 and an empty name (unverified; halopsa-facts §3.3 gives no
#: example). Clients that treat 0/"" as "no customer" work against either guess.
NO_CLIENT_ID = 0
NO_CLIENT_NAME = ""

# ---------------------------------------------------------------------------------------------
# Lists and paging (halopsa-facts §2)

#: Array keys inside list envelopes. `invoicepayments` is a guess: GET /InvoicePayment has no
#: declared response schema (halopsa-facts §2, §11.7; profiles `payments_key_payments`,
#: `payments_bare_array`). `webhooks` is a guess too (GET /Webhook is a bare array in some
#: clients) - the sandbox returns a bare array for /Webhook, see server.py.
ENVELOPE_KEYS = {
    "clients": "clients",
    "users": "users",
    "invoices": "invoices",
    "payments": "invoicepayments",
}
#: Observed server-side page cap (HAPI #90, seen on /tickets; assumed for every list, halopsa-facts §11.10).
PAGE_CAP = 100
#: Page size used when `pageinate=true` comes without `page_size` (unverified).
DEFAULT_PAGE_SIZE = 50

# Filter semantics (implemented in server.py/store.py; documented here with the other guesses):
# - `lastupdatefromdate`/`lastupdatetodate` on /Client and /Users filter `alastupdate`/`ulastupdate`,
#   inclusive. The specs type them oddly as bool; their use as date filters is unverified (halopsa-facts §11.6).
# - /Invoice `datesearch` in {invoice_date, last_modified, duedate} with `start_date`/`end_date`
#   (inclusive, compared to the millisecond; a bare date means midnight UTC). Unknown datesearch
#   values are ignored; dates without datesearch filter invoice_date (unverified).
# - `paymentstatuses` is a comma list matched literally (-1 matches nothing; 0,-1 = unpaid view).
# - Default order is by id ascending; `order` accepts id, invoice_date, duedate, last_modified,
#   client_id, client_name, date_created (invoices) / name, alastupdate, ulastupdate (others);
#   anything else falls back to id. Deleted records simply disappear (no `includedeleted`, halopsa-facts §3.6).
# - POST creates answer 201, updates 200; POST /Invoice and /Webhook answer a single object for a
#   one-item array, POST /InvoicePayment always an array (unverified, halopsa-facts §11.7). DELETEs answer
#   200 with an empty body.

#: Halo's hosted throttle text [WR51]. The number follows the configured limit.
RATE_LIMIT_MESSAGE = "Rate Limit Reached - {limit} Requests per rolling {minutes} minute window"


def rate_limit_message(limit: int, window_seconds: float) -> str:
    minutes = window_seconds / 60
    minutes_text = str(int(minutes)) if float(minutes).is_integer() else f"{minutes:g}"
    return RATE_LIMIT_MESSAGE.format(limit=limit, minutes=minutes_text)


# ---------------------------------------------------------------------------------------------
# Dates. Halo sends local-style timestamps without an offset (halopsa-facts §2); the sandbox's clock is UTC, so
# every timestamp it serves is UTC without a suffix (the `local_clock` profile moves them). `invoice_date`/`duedate`/`date` come without
# fractions, `last_modified`/`alastupdate`/`ulastupdate`/`datecreated` with milliseconds ([PYH]
# parses the former with `%Y-%m-%dT%H:%M:%S` and `last_modified` with `.%f`).

EPOCH = datetime(1970, 1, 1)


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(value: datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def format_date(ms: int) -> str:
    """`2026-10-10T10:00:00` (no fraction, no offset)."""
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S")


def format_timestamp(ms: int) -> str:
    """`2026-10-10T10:00:00.123` (milliseconds, no offset)."""
    value = ms_to_datetime(ms)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def format_webhook_timestamp(ms: int) -> str:
    """`2026-09-25T06:41:08.7895915Z`: 7 fractional digits and Z, as in the live body [DOTMARC]."""
    value = ms_to_datetime(ms)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}0000Z"


_DATE_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?\s*(Z|[+-]\d{2}:?\d{2})?\s*$",
    re.IGNORECASE,
)


def parse_query_date(text: str, *, read_offset: bool = True) -> int | None:
    """Parse a query-string or body date into epoch ms (UTC). Accepts `2026-10-10`,
    `2026-10-10T10:00:00`, fractions (1-7 digits), `Z` or `+hh:mm` (ignored when `read_offset`
    is false). Returns None when unparseable (Halo ignores what it cannot bind, so callers treat
    None as "no filter")."""
    match = _DATE_RE.match(str(text or ""))
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        value = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        return None
    ms = datetime_to_ms(value)
    if fraction:
        ms += int((fraction + "000")[:3])
    if read_offset and offset and offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        ms -= sign * (int(digits[:2]) * 60 + int(digits[2:])) * 60_000
    return ms


# ---------------------------------------------------------------------------------------------
# Money: Decimal inside, JSON numbers with two decimals on the wire (`1234.50`, not a string).

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


def money(value: Any) -> Decimal:
    """Decimal rounded half-up to cents. Raises ValueError on junk."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise ValueError(f"not an amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


_MONEY_MARK = "\u0000money:"
_MONEY_MARK_RE = re.compile(r'"\\u0000money:(-?\d+(?:\.\d+)?)"')


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _MONEY_MARK + format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _unmark(match: re.Match) -> str:
    return match.group(1)


def dumps(payload: Any) -> bytes:
    """JSON with Decimals as bare numbers keeping their digits (2 decimals for money)."""
    text = json.dumps(payload, default=_json_default, separators=(",", ":"))
    if "\\u0000money:" in text:
        text = _MONEY_MARK_RE.sub(_unmark, text)
    return text.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Records -> API JSON


def client_to_api(client: Client) -> dict[str, Any]:
    """`Area` fields the portal needs (halopsa-facts §4.1)."""
    return {
        "id": client.id,
        "name": client.name,
        "inactive": client.inactive,
        "toplevel_id": client.toplevel_id,
        "toplevel_name": client.toplevel_name,
        "accountsid": client.accountsid,
        "accountsemailaddress": client.accountsemailaddress,
        "accountsccemailaddress": "",
        "accountsbccemailaddress": "",
        "accountsfirstname": client.accountsfirstname,
        "accountslastname": client.accountslastname,
        "main_site_id": client.main_site_id,
        "main_site_name": "Main",
        "main_contact_name": client.main_contact_name,
        "datecreated": format_timestamp(client.datecreated_ms),
        "alastupdate": format_timestamp(client.lastupdate_ms),
        "currencyisocode": client.currency,
        "paymentterms": client.paymentterms,
        "website": client.website,
        "customfields": [],
    }


def user_to_api(user: User, client_name: str, site_name: str = "Main") -> dict[str, Any]:
    """`Users_List` + the `Users` fields the billing-contact rule reads (halopsa-facts §4.2). `site_id` is a
    double in the spec, hence `12.0`, with `site_id_int` beside it."""
    return {
        "id": user.id,
        "name": f"{user.firstname} {user.surname}".strip(),
        "firstname": user.firstname,
        "surname": user.surname,
        "initials": (user.firstname[:1] + user.surname[:1]).upper(),
        "emailaddress": user.emailaddress,
        "phonenumber": user.phonenumber,
        "client_id": user.client_id,
        "client_name": client_name,
        "site_id": float(user.site_id),
        "site_id_int": user.site_id,
        "site_name": site_name,
        "inactive": user.inactive,
        "isimportantcontact": False,
        "ismaincontact": user.ismaincontact,
        "iscontractcontact": False,
        "canaccessinvoices": user.canaccessinvoices,
        "neversendemails": False,
        "isserviceaccount": False,
        "datecreated": format_timestamp(user.datecreated_ms),
        "ulastupdate": format_timestamp(user.lastupdate_ms),
        "customfields": [],
    }


def line_to_api(line: Line, invoice_id: int) -> dict[str, Any]:
    """`InvoiceDetail` (halopsa-facts §3.4)."""
    return {
        "id": line.id,
        "ihid": invoice_id,
        "item_code": line.item_code,
        "item_shortdescription": line.description,
        "item_longdescription": line.longdescription,
        "qty_order": line.qty,
        "unit_price": line.unit_price,
        "net_amount": line.net_amount,
        "tax_rate": line.tax_rate,
        "tax_amount": line.tax_amount,
        "total_price": line.total_price,
        "net_total": line.net_amount,
        "total_tax": line.tax_amount,
        "sequenceid": line.sequenceid,
    }


PAYMENT_METHOD_NAMES = {0: "Bank Transfer", 1: "Credit Card", 2: "Cheque", 3: "Credit Note"}


def payment_to_api(payment: Payment, invoice: Invoice, client_name: str) -> dict[str, Any]:
    """`InvoicePayment_List` (SW25, halopsa-facts §5). Credit applications are rows with `type` 1 and
    `credit_note_id` set (inferred, halopsa-facts §5 last bullet)."""
    return {
        "id": payment.id,
        "invoice_id": payment.invoice_id,
        "invoice_invoicenumber": invoice.invoicenumber,
        "client_id": invoice.client_id,
        "client_name": client_name,
        "date": format_date(payment.date_ms),
        "amount": payment.amount,
        "type": payment.type,
        "credit_note_id": payment.credit_note_id,
        "method": payment.method,
        "payment_method": payment.method,
        "payment_method_name": payment.method_name,
        "status": 0,
        "reference": payment.reference,
        "thirdpartyid": payment.thirdpartyid,
        "posted": False,
    }


def invoice_to_api(invoice: Invoice, client_name: str, *, include_lines: bool) -> dict[str, Any]:
    """`InvoiceHeader` fields the portal needs (halopsa-facts §3.3). `payments` is always embedded; `lines`
    only when asked for (`includelines` on the list, `includedetails` on GET by id)."""
    total = invoice.total
    amountpaid = invoice.amountpaid
    amountdue = total - amountpaid
    body: dict[str, Any] = {
        "id": invoice.id,
        "invoicenumber": invoice.invoicenumber,
        "thirdpartyinvoicenumber": invoice.thirdpartyinvoicenumber,
        "client_id": invoice.client_id,
        "client_name": client_name,
        "invoice_date": format_date(invoice.invoice_date_ms),
        "duedate": format_date(invoice.duedate_ms),
        "date_created": format_timestamp(invoice.date_created_ms),
        "last_modified": format_timestamp(invoice.last_modified_ms),
        "currency_code_name": invoice.currency,
        "total": total,
        "tax_total": invoice.tax_total,
        "amountpaid": amountpaid,
        "amountdue": amountdue,
        "amount_remaining": amountdue,
        "paymentstatus": invoice.paymentstatus,
        "voided": invoice.voided,
        "posted": invoice.posted,
        "disabled": False,
        # Credit notes are invoice records with a negative total; `invoicetype` values are
        # unverified (halopsa-facts §11.3) - 0 invoice, 1 credit note is our guess.
        "invoicetype": 1 if invoice.is_credit_note else 0,
        "creditlinkedtoinvoiceid": invoice.creditlinkedtoinvoiceid,
        "pdf_attachment_id": invoice.pdf_attachment_id,
        "pdf_attachment_date_created": format_timestamp(invoice.pdf_created_ms),
        "payments": [payment_to_api(p, invoice, client_name) for p in invoice.payments],
    }
    if include_lines:
        body["lines"] = [line_to_api(line, invoice.id) for line in invoice.lines]
    return body


# ---------------------------------------------------------------------------------------------
# Profiles (issue 16): the plausible real-HaloPSA variants where halopsa-facts is unsure. A
# profile is a set of variant names; the default profile (no variant) is the shape above. The
# data never changes with the profile (the ground truth is the same), only what the wire shows.
# Each variant names its evidence; server.py applies them (`to_wire` below does the record shapes).

PROFILE_VARIANTS: dict[str, str] = {
    # Both specs' `Users_List` lacks `canaccessinvoices`; only the full `Users` (GET /Users/{id})
    # has it (halopsa-facts §4.2).
    "flag_on_detail": "GET /Users list rows have no canaccessinvoices (whatever includebillinginfo "
    "says); GET /Users/{id} has it",
    # `includebillinginfo` on GET /Users is "Include billing information in the response" (halopsa-facts §4.2);
    # that it adds this flag is a guess.
    "flag_with_billinginfo": "GET /Users list rows carry canaccessinvoices only with includebillinginfo=true; "
    "the detail always does",
    # GET /InvoicePayment has no declared response schema (halopsa-facts §2, §11.7); Status/Priority/Agent
    # lists are bare arrays [DJPSA].
    "payments_bare_array": "GET /InvoicePayment answers a bare array of every matching row (no envelope, "
    "no record_count, paging ignored)",
    "payments_key_payments": "GET /InvoicePayment's envelope key is `payments`, not `invoicepayments`",
    # What `search` matches is undocumented (halopsa-facts §2 "Search", §5).
    "search_ignores_reference": "GET /InvoicePayment search matches the invoice number and client name, "
    "never reference/thirdpartyid",
    # Unknown or unbound parameters are silently ignored (halopsa-facts §2); `invoice_id` on /InvoicePayment is
    # spec text only (halopsa-facts §5).
    "payment_invoice_filter_ignored": "GET /InvoicePayment ignores invoice_id (answers every payment)",
    # Fields can be omitted (halopsa-facts §2 last bullet); HaloPSA leaves null fields out (issue 16 item 8).
    "nulls_omitted": 'every object the API returns leaves out keys whose value is null or ""',
    # Halo's own unpaid view sends paymentstatuses=0,-1 [HAPI #33] (halopsa-facts §3.2, §3.6, §11.3).
    "unpaid_minus_one": "invoices with nothing paid carry paymentstatus -1, amountdue 0 and no "
    "amount_remaining; paymentstatuses=-1 matches them, 0 does not",
    # `datesearch`/`start_date`/`end_date` are SW25 only (halopsa-facts §3.2, §9); older instances ignore them.
    "no_datesearch": "GET /Invoice ignores datesearch/start_date/end_date (order=last_modified works)",
    # The specs type these as bool with an odd description; use as filters unverified (halopsa-facts §4.1, §11.6).
    "no_lastupdate_filter": "GET /Client and /Users ignore lastupdatefromdate/lastupdatetodate",
    # Timestamps come without an offset (halopsa-facts §2 "Date formats"), so they are in whatever frame the
    # instance's clock is.
    "local_clock": "every timestamp served is UTC + clock_offset_minutes (no offset written) and query "
    "dates are read in that frame; calendar dates and webhook `timestamp` unaffected",
}
ALL_PROFILE = "all"
DEFAULT_PROFILE_NAME = "default"
#: `local_clock`'s default: the instance runs 7 hours behind our (UTC) clock.
DEFAULT_CLOCK_OFFSET_MINUTES = -420
#: Offsets beyond this are refused (a month either way; tests use days).
MAX_CLOCK_OFFSET_MINUTES = 30 * 24 * 60


@dataclass(frozen=True)
class Profile:
    variants: frozenset[str] = frozenset()
    clock_offset_minutes: int = DEFAULT_CLOCK_OFFSET_MINUTES

    def has(self, variant: str) -> bool:
        if variant not in PROFILE_VARIANTS:
            raise KeyError(f"unknown profile variant {variant!r}")
        return variant in self.variants

    @property
    def name(self) -> str:
        """`default`, `all`, or the variant names in PROFILE_VARIANTS order, comma-separated."""
        if not self.variants:
            return DEFAULT_PROFILE_NAME
        if self.variants == frozenset(PROFILE_VARIANTS):
            return ALL_PROFILE
        return ",".join(v for v in PROFILE_VARIANTS if v in self.variants)

    @property
    def clock_offset_ms(self) -> int:
        """How far the instance's clock is from UTC (0 unless `local_clock`)."""
        return self.clock_offset_minutes * 60_000 if "local_clock" in self.variants else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.name,
            "variants": [v for v in PROFILE_VARIANTS if v in self.variants],
            "clock_offset_minutes": self.clock_offset_minutes,
        }


DEFAULT_PROFILE = Profile()


def parse_profile(text: str | None, clock_offset_minutes: Any = None) -> Profile:
    """`"default"` (or empty), `"all"`, or comma-separated variant names; raises ValueError naming
    the valid ones. `clock_offset_minutes` (whole minutes; None = -420) only matters with
    `local_clock`."""
    if text is not None and not isinstance(text, str):
        raise ValueError(f"profile must be a string, not {type(text).__name__}")
    variants: set[str] = set()
    for part in (text or "").split(","):
        name = part.strip().lower()
        if name in ("", DEFAULT_PROFILE_NAME):
            continue
        if name == ALL_PROFILE:
            variants.update(PROFILE_VARIANTS)
        elif name in PROFILE_VARIANTS:
            variants.add(name)
        else:
            raise ValueError(
                f"unknown HaloPSA profile {part.strip()!r}; use {DEFAULT_PROFILE_NAME!r}, "
                f"{ALL_PROFILE!r} or a comma-separated list of: {', '.join(PROFILE_VARIANTS)}"
            )
    if clock_offset_minutes is None:
        offset = DEFAULT_CLOCK_OFFSET_MINUTES
    elif isinstance(clock_offset_minutes, bool) or not isinstance(clock_offset_minutes, (int, str)):
        raise ValueError(f"clock_offset_minutes must be a whole number of minutes, not {clock_offset_minutes!r}")
    else:
        try:
            offset = int(clock_offset_minutes)
        except ValueError as exc:
            raise ValueError(
                f"clock_offset_minutes must be a whole number of minutes, not {clock_offset_minutes!r}"
            ) from exc
    if abs(offset) > MAX_CLOCK_OFFSET_MINUTES:
        raise ValueError(f"clock_offset_minutes must be within ±{MAX_CLOCK_OFFSET_MINUTES} (30 days), not {offset}")
    return Profile(frozenset(variants), offset)


def users_list_has_flag(profile: Profile, include_billing_info: bool) -> bool:
    """Whether GET /Users list rows carry `canaccessinvoices`. `flag_on_detail` wins over
    `flag_with_billinginfo` when both are on (the `all` profile)."""
    if profile.has("flag_on_detail"):
        return False
    if profile.has("flag_with_billinginfo"):
        return include_billing_info
    return True


def payments_envelope_key(profile: Profile) -> str | None:
    """The array key of GET /InvoicePayment, or None for a bare array (`payments_bare_array` wins
    over `payments_key_payments`)."""
    if profile.has("payments_bare_array"):
        return None
    return "payments" if profile.has("payments_key_payments") else ENVELOPE_KEYS["payments"]


def internal_paymentstatuses(wire: frozenset[int] | None, profile: Profile) -> frozenset[int] | None:
    """`paymentstatuses` as sent -> the statuses the sandbox stores. With `unpaid_minus_one`,
    unpaid invoices are -1 on the wire, so -1 selects them and 0 selects nothing."""
    if wire is None or not profile.has("unpaid_minus_one"):
        return wire
    kept = {s for s in wire if s not in (PAYMENTSTATUS_UNPAID, PAYMENTSTATUS_NOT_COMPUTED)}
    if PAYMENTSTATUS_NOT_COMPUTED in wire:
        kept.add(PAYMENTSTATUS_UNPAID)
    return frozenset(kept)


def parse_instance_date(text: str | None, profile: Profile) -> int | None:
    """A query-string date as the instance reads it, in epoch ms UTC. With `local_clock` the
    instance reads every date as its own wall-clock time: an offset or `Z` is not converted
    (a clock that merely disagrees with ours could not be corrected by it anyway; unverified,
    halopsa-facts §2 "Query-string dates", §11.6)."""
    if not text:
        return None
    offset = profile.clock_offset_ms
    if not offset:
        return parse_query_date(text)
    local = parse_query_date(text, read_offset=False)
    return None if local is None else local - offset


#: Timestamps (not calendar dates) among the fields served; `local_clock` moves these.
#: `invoice_date`, `duedate` and a payment's `date` are calendar dates and stay.
TIMESTAMP_KEYS = frozenset(
    {"datecreated", "alastupdate", "ulastupdate", "date_created", "last_modified", "pdf_attachment_date_created"}
)


def _shift_timestamp(text: Any, offset_ms: int) -> Any:
    ms = parse_query_date(text) if isinstance(text, str) else None
    if ms is None:
        return text
    return format_timestamp(ms + offset_ms) if "." in text else format_date(ms + offset_ms)


def to_wire(payload: Any, profile: Profile) -> Any:
    """An API answer built in the default shape (an object, an envelope, a list), as an instance
    with `profile` serves it: timestamps moved (`local_clock`), unpaid invoices as -1
    (`unpaid_minus_one`), null/"" keys left out (`nulls_omitted`), at every depth (embedded
    lines and payments too). Returns a new structure; the default profile returns `payload`."""
    if not profile.variants:
        return payload
    return _to_wire(payload, profile.clock_offset_ms, profile.has("unpaid_minus_one"), profile.has("nulls_omitted"))


def _to_wire(value: Any, offset_ms: int, unpaid_minus_one: bool, omit_empty: bool) -> Any:
    if isinstance(value, list):
        return [_to_wire(item, offset_ms, unpaid_minus_one, omit_empty) for item in value]
    if not isinstance(value, dict):
        return value
    body = {key: _to_wire(item, offset_ms, unpaid_minus_one, omit_empty) for key, item in value.items()}
    if offset_ms:
        for key in TIMESTAMP_KEYS.intersection(body):
            body[key] = _shift_timestamp(body[key], offset_ms)
    # An invoice record (lines and payments have no `paymentstatus`/`amountdue`).
    if unpaid_minus_one and body.get("paymentstatus") == PAYMENTSTATUS_UNPAID and "amountdue" in body:
        body["paymentstatus"] = PAYMENTSTATUS_NOT_COMPUTED
        body["amountdue"] = ZERO
        body.pop("amount_remaining", None)
    if omit_empty:
        body = {key: item for key, item in body.items() if item is not None and item != ""}
    return body


# ---------------------------------------------------------------------------------------------
# Webhooks (halopsa-facts §6). Event names are lower-case words like the live "ticket status changed"
# [DOTMARC]; invoice/client/user/payment names, their `eventno` values and the entity keys are
# unverified (halopsa-facts §11.4).
#
# How the sandbox's /api/Webhook treats `events` (both specs: an array of `UnameNotification`
# objects, whose event is the integer `eventno`; DJPSA attaches events by `eventno` too):
# - each item must be an object; a plain string (an event name) is refused with 400, because a
#   real instance cannot bind a string to an object and a client sending names would otherwise
#   believe it attached events that it did not;
# - an object whose `eventno` (an integer, or digits in a string) is in WEBHOOK_EVENTNOS is attached
#   and answered as a full object (webhook_event_object); an object with any other or no `eventno`
#   is dropped without an error (what HaloPSA does with it is unknown): a client sees it missing
#   when it reads the webhook back with GET /Webhook/{id};
# - on an update (a POST with the `id` of an existing webhook) a given `events` replaces the list
#   and a missing `events` keeps it (HaloPSA's update semantics are unverified).
# The control API (`/_sandbox/webhooks`) plays a person ticking events in HaloPSA's UI, by name.
# A webhook with no events delivers nothing (HaloPSA requires at least one, [WHG]).

#: The sandbox's own event catalogue: event name -> `eventno`. The numbers are the sandbox's
#: guesses (real ones are unknown, halopsa-facts §11.4; "61" = "Ticket updated" is the only one seen, in
#: DJPSA), chosen far from it so they cannot be mistaken for real values. "payment updated" can be
#: attached but the sandbox never emits it (its payments are created or deleted, never edited).
WEBHOOK_EVENTNOS = {
    "invoice created": 9101,
    "invoice updated": 9102,
    "invoice deleted": 9103,
    "client created": 9111,
    "client updated": 9112,
    "client deleted": 9113,
    "user created": 9121,
    "user updated": 9122,
    "user deleted": 9123,
    "payment created": 9131,
    "payment updated": 9132,
    "payment deleted": 9133,
}
WEBHOOK_EVENTS = tuple(WEBHOOK_EVENTNOS)
WEBHOOK_EVENT_NAMES_BY_NUMBER = {number: name for name, number in WEBHOOK_EVENTNOS.items()}
#: `UnameNotification.type` / `delivery_method` of an event attached to a webhook, as DJPSA posts
#: them to /api/Notification ("-2" and "6"; meaning unverified).
WEBHOOK_EVENT_TYPE = -2
WEBHOOK_EVENT_DELIVERY_METHOD = 6


def webhook_eventno(value: Any) -> int | None:
    """An `eventno` as an int (HaloPSA clients send ints or digit strings); None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def webhook_event_object(eventno: int, webhook_id: str, row_id: int) -> dict[str, Any]:
    """An attached event as GET /Webhook answers it (a `UnameNotification`, SW24/SW25)."""
    return {
        "id": row_id,
        "name": WEBHOOK_EVENT_NAMES_BY_NUMBER[eventno],
        "eventno": eventno,
        "webhook_id": webhook_id,
        "type": WEBHOOK_EVENT_TYPE,
        "delivery_method": WEBHOOK_EVENT_DELIVERY_METHOD,
    }


#: The key under which the small entity object travels, per event entity.
WEBHOOK_ENTITY_KEYS = {"invoice": "invoice", "client": "client", "user": "user", "payment": "payment"}


def invoice_webhook_object(invoice: Invoice, client_name: str) -> dict[str, Any]:
    """ "Small object with key fields only" payload option [WHG]."""
    return {
        "id": invoice.id,
        "invoicenumber": invoice.invoicenumber,
        "client_id": invoice.client_id,
        "client_name": client_name,
        "total": invoice.total,
        "amountdue": invoice.amountdue,
        "paymentstatus": invoice.paymentstatus,
        "voided": invoice.voided,
        "last_modified": format_timestamp(invoice.last_modified_ms),
    }


def client_webhook_object(client: Client) -> dict[str, Any]:
    return {"id": client.id, "name": client.name, "inactive": client.inactive}


def user_webhook_object(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": f"{user.firstname} {user.surname}".strip(),
        "client_id": user.client_id,
        "emailaddress": user.emailaddress,
        "canaccessinvoices": user.canaccessinvoices,
        "inactive": user.inactive,
    }


def payment_webhook_object(payment: Payment) -> dict[str, Any]:
    return {
        "id": payment.id,
        "invoice_id": payment.invoice_id,
        "amount": payment.amount,
        "type": payment.type,
        "credit_note_id": payment.credit_note_id,
    }


# ---------------------------------------------------------------------------------------------
# Error bodies (halopsa-facts §8: Halo's bodies are not uniform; these are the common forms)


def error_message(message: str) -> dict[str, str]:
    """`{"Message": ...}` as ASP.NET Web API answers 400/401/404."""
    return {"Message": message}


def oauth_error(error: str, description: str) -> dict[str, str]:
    """OAuth-style body of the token endpoint (`invalid_client` per [HAPI #19])."""
    return {"error": error, "error_description": description}


UNAUTHORIZED_MESSAGE = "Authorization has been denied for this request."
NOT_FOUND_ROUTE_MESSAGE = "No HTTP resource was found that matches the request URI."
