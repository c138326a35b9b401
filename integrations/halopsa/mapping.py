"""HaloPSA payloads -> the field values we store. The one place that reads HaloPSA field names.

Pure functions: no ORM, no HTTP. Everything returned is plain data (Decimal, date, datetime,
str, int, bool, lists and dicts of those), so the sync service can compare and bulk-write it and
tests can call it with literal payload dicts.

A record we cannot map raises `MappingError`; the sync stores it as a SyncError with the payload
and goes on with the rest of the batch.

Rules that live here (documented in docs/sync-rules.md):
- the billing-contact rule (`billing_contacts_for_client`, `billing_user_contact`,
  `accounts_contact`), where a user's billing flag that is not on the record is unknown, never
  false (`billing_flag`, `BillingFlagUnknown`);
- invoice status and balance from HaloPSA's paymentstatus/voided/amounts (`invoice_status`);
- each record's last-change time, which cursors are made of (`updated_at`);
- HaloPSA leaves null fields out: a missing key reads as null everywhere; only the fields a
  record cannot be stored without are required (invoice: id, total, number, lines; client: id,
  name; user: id);
- an invoice that contradicts itself is refused, never stored as a guess (`_check_amounts`, `_currency`):
  lines that are not there although every read asks for them, a negative amount paid, a balance
  above the total, a currency that is not a currency; so is any record holding text that was not
  UTF-8 (`refuse_invalid_text`).
- what counts as a credit note (skipped as an invoice; its application shows up as a credit
  payment on the invoice it pays) and which embedded payments are kept (deposits are not).
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

import orjson

from .payloads import INVALID_TEXT_KEY

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
# HaloPSA returns "empty" dates as sentinels such as 1900-01-01; anything up to this is "no date".
DATE_SENTINEL_LIMIT = datetime(1980, 1, 1, tzinfo=timezone.utc)

# Connection.BillingContactRule values (kept as strings so this module stays ORM-free).
RULE_ACCOUNTS_AND_INVOICE_USERS = "accounts_and_invoice_users"
RULE_ACCOUNTS_ONLY = "accounts_only"
RULE_INVOICE_USERS_ONLY = "invoice_users_only"
BILLING_CONTACT_RULES = (RULE_ACCOUNTS_AND_INVOICE_USERS, RULE_ACCOUNTS_ONLY, RULE_INVOICE_USERS_ONLY)

# Invoice.Status values.
STATUS_OPEN = "open"
STATUS_PARTIALLY_PAID = "partially_paid"
STATUS_PAID = "paid"
STATUS_VOID = "void"

# InvoicePayment.type (SW25; values unverified, see halosandbox/shapes.py).
PAYMENT_TYPE_PAYMENT = 0
PAYMENT_TYPE_CREDIT = 1
PAYMENT_TYPE_DEPOSIT = 2
# InvoiceHeader.invoicetype: 1 = credit note (unverified guess shared with the sandbox).
INVOICE_TYPE_CREDIT_NOTE = 1

# InvoiceHeader.paymentstatus 2 is taken as paid (unverified, docs/halopsa-facts.md §11.3); -1 (the database
# default) and 0 are unpaid: Halo's own "unpaid" view asks for paymentstatuses=0,-1 (halopsa-facts §3.2, §3.6).
PAYMENTSTATUS_PAID = 2

INVOICE_NUMBER_FIELDS = ("invoicenumber", "thirdpartyinvoicenumber")
# The user flag that makes a user a billing contact (halopsa-facts §4.2; a connection's HaloShape may
# name another one the probe found).
BILLING_FLAG_FIELD = "canaccessinvoices"
# Each record's last-change time (halopsa-facts §3.3, §4.1, §4.2): cursors are high-water marks of these.
CLIENT_UPDATED_AT = "alastupdate"
USER_UPDATED_AT = "ulastupdate"
INVOICE_UPDATED_AT = "last_modified"
UPDATED_AT_FIELDS = {"client": CLIENT_UPDATED_AT, "user": USER_UPDATED_AT, "invoice": INVOICE_UPDATED_AT}
# ISO 4217 currencies an invoice can be in (funds, metals and test codes left out), plus codes
# retired since 2007 that old invoices may still carry.
ISO_CURRENCIES = frozenset(
    {
        "AED",
        "AFN",
        "ALL",
        "AMD",
        "ANG",
        "AOA",
        "ARS",
        "AUD",
        "AWG",
        "AZN",
        "BAM",
        "BBD",
        "BDT",
        "BGN",
        "BHD",
        "BIF",
        "BMD",
        "BND",
        "BOB",
        "BRL",
        "BSD",
        "BTN",
        "BWP",
        "BYN",
        "BZD",
        "CAD",
        "CDF",
        "CHF",
        "CLP",
        "CNY",
        "COP",
        "CRC",
        "CUC",
        "CUP",
        "CVE",
        "CZK",
        "DJF",
        "DKK",
        "DOP",
        "DZD",
        "EGP",
        "ERN",
        "ETB",
        "EUR",
        "FJD",
        "FKP",
        "GBP",
        "GEL",
        "GHS",
        "GIP",
        "GMD",
        "GNF",
        "GTQ",
        "GYD",
        "HKD",
        "HNL",
        "HTG",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "IQD",
        "IRR",
        "ISK",
        "JMD",
        "JOD",
        "JPY",
        "KES",
        "KGS",
        "KHR",
        "KMF",
        "KPW",
        "KRW",
        "KWD",
        "KYD",
        "KZT",
        "LAK",
        "LBP",
        "LKR",
        "LRD",
        "LSL",
        "LYD",
        "MAD",
        "MDL",
        "MGA",
        "MKD",
        "MMK",
        "MNT",
        "MOP",
        "MRU",
        "MUR",
        "MVR",
        "MWK",
        "MXN",
        "MYR",
        "MZN",
        "NAD",
        "NGN",
        "NIO",
        "NOK",
        "NPR",
        "NZD",
        "OMR",
        "PAB",
        "PEN",
        "PGK",
        "PHP",
        "PKR",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RSD",
        "RUB",
        "RWF",
        "SAR",
        "SBD",
        "SCR",
        "SDG",
        "SEK",
        "SGD",
        "SHP",
        "SLE",
        "SLL",
        "SOS",
        "SRD",
        "SSP",
        "STN",
        "SVC",
        "SYP",
        "SZL",
        "THB",
        "TJS",
        "TMT",
        "TND",
        "TOP",
        "TRY",
        "TTD",
        "TWD",
        "TZS",
        "UAH",
        "UGX",
        "USD",
        "UYU",
        "UZS",
        "VED",
        "VES",
        "VND",
        "VUV",
        "WST",
        "XAF",
        "XCD",
        "XCG",
        "XOF",
        "XPF",
        "YER",
        "ZAR",
        "ZMW",
        "ZWG",
        "ZWL",
        # retired since 2007
        "BYR",
        "EEK",
        "HRK",
        "LTL",
        "LVL",
        "MRO",
        "SKK",
        "STD",
        "VEF",
        "ZMK",
    }
)


class MappingError(ValueError):
    """A HaloPSA record we cannot store as it is; the message says which field and why."""

    def __init__(self, message: str, *, halopsa_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.halopsa_id = halopsa_id


class BillingFlagUnknown(MappingError):
    """The user could be a billing contact, but the record does not carry the billing flag
    (GET /Users list rows lack it in both specs, halopsa-facts §4.2; HaloPSA leaves nulls out).
    Unknown is not false: the sync finds the flag elsewhere or leaves the user's contacts alone."""


# --- scalars -------------------------------------------------------------------------------


def _to_decimal(value: Any, field: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise MappingError(f"{field} is not a number: {value!r}")
    if isinstance(value, float):
        # Only reached when a payload was parsed without parse_float=Decimal; repr() is the
        # shortest round-trip form, so 0.1 stays 0.1 rather than 0.1000000000000000055...
        value = repr(value)
    try:
        amount = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        raise MappingError(f"{field} is not a number: {value!r}") from None
    if not amount.is_finite():
        raise MappingError(f"{field} is not a number: {value!r}")
    return amount


_MONEY_LIMIT = Decimal("1e12")
_DECIMAL_LIMIT = Decimal("1e10")
_RATE_LIMIT = Decimal("1000")
_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(9)}
_QUANTITY = _QUANTA[4]  # parse_decimal's default places
_QUANTITY_ZERO = Decimal("0.0000")


def _missing(value: Any) -> bool:
    """None or "", HaloPSA's "no value". Never a Decimal: comparing one with "" costs ABC checks."""
    return value is None or (type(value) is not Decimal and value == "")


def _quantized(value: Any, field: str, quantum: Decimal, limit: Decimal, default: Decimal | None) -> Decimal:
    """parse_money and parse_decimal: `value` below `limit`, rounded half-up to `quantum`."""
    kind = type(value)
    if kind is Decimal and value.is_finite():  # what parse_json gives
        amount = value
    elif kind is int:  # exact, like _to_decimal's str() round trip
        amount = Decimal(value)
    elif _missing(value) and default is not None:
        return default
    else:
        amount = _to_decimal(value, field)
    if abs(amount) >= limit:
        raise MappingError(f"{field} is out of range: {value!r}")
    return amount.quantize(quantum, ROUND_HALF_UP)


def parse_money(value: Any, field: str = "amount", *, default: Decimal | None = None) -> Decimal:
    """A money amount as Decimal with exactly two places (half-up, once, at the boundary).

    `default` is returned for a missing value (None or ""); without it a missing value is an error.
    """
    return _quantized(value, field, CENT, _MONEY_LIMIT, default)


def parse_decimal(
    value: Any, field: str, *, places: int = 4, default: Decimal | None = None, limit: Decimal = _DECIMAL_LIMIT
) -> Decimal:
    """A quantity/price/rate with `places` decimals (our columns keep 4), below `limit`."""
    quantum = _QUANTA.get(places) or Decimal(1).scaleb(-places)
    return _quantized(value, field, quantum, limit, default)


_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)
# The shape HaloPSA sends, which datetime.fromisoformat reads as _DATETIME_RE does (ASCII digits,
# no offset, hours 0-23, fromisoformat truncates a 7th fraction digit too), many times faster
# (figures: benchmarks/README.md, "History").
_PLAIN_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ](?:[01]\d|2[0-3]):\d{2}:\d{2}(?:\.\d{1,7})?\Z", re.ASCII)


def parse_halo_datetime(value: Any, field: str = "date") -> datetime | None:
    """HaloPSA timestamp -> aware UTC datetime; None for missing values and the <=1980 sentinels.

    HaloPSA sends local-style timestamps without an offset ("2026-10-10T10:00:00", with up to 7
    fraction digits); hosted instances run in UTC, so a naive value is taken as UTC. An explicit
    "Z"/offset is honoured.
    """
    if value is None or value == "":
        return None
    parsed = None
    if type(value) is str and _PLAIN_DATETIME_RE.match(value):
        try:
            parsed = datetime.fromisoformat(value + "+00:00")  # naive is UTC; cheaper than .replace(tzinfo=)
        except ValueError:  # e.g. February 30th: the general parser words the error
            pass
    if parsed is None:
        parsed = _parse_datetime(value, field)
    if parsed <= DATE_SENTINEL_LIMIT:
        return None
    return parsed


def _parse_datetime(value: Any, field: str) -> datetime:
    """Any timestamp _DATETIME_RE accepts (or a datetime) -> aware UTC datetime, sentinels included."""
    if isinstance(value, datetime):
        parsed = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    match = _DATETIME_RE.match(str(value).strip())
    if not match:
        raise MappingError(f"{field} is not a date: {value!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        parsed = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=timezone.utc,
        )
    except ValueError:
        raise MappingError(f"{field} is not a date: {value!r}") from None
    if offset and offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        parsed -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return parsed


def parse_halo_date(value: Any, field: str = "date") -> date | None:
    """The calendar date of a HaloPSA timestamp (invoice_date, duedate, payment date)."""
    parsed = parse_halo_datetime(value, field)
    return parsed.date() if parsed is not None else None


def updated_at(record: Any, kind: str) -> datetime | None:
    """A HaloPSA record's last-change time (`kind` "client", "user" or "invoice"), or None when
    it has none we can read (missing, null, a sentinel, or not a date)."""
    name = UPDATED_AT_FIELDS[kind]
    value = record.get(name) if isinstance(record, Mapping) else None
    try:
        return parse_halo_datetime(value, name)
    except MappingError:
        return None


def parse_id(value: Any, field: str = "id", *, required: bool = True) -> int | None:
    """A HaloPSA integer id; 0/None/"" mean "none" when not required."""
    if type(value) is int:  # what parse_json gives: no Decimal round trip
        result = value
    elif value is None or value == "" or isinstance(value, bool):
        if required:
            raise MappingError(f"{field} is missing")
        return None
    else:
        try:
            number = Decimal(str(value).strip())
            if number != number.to_integral_value():
                raise InvalidOperation
            result = int(number)
        except (InvalidOperation, ValueError, OverflowError):  # OverflowError: Infinity
            raise MappingError(f"{field} is not an id: {value!r}") from None
    if result >= 2**63:  # our id columns are 64-bit
        raise MappingError(f"{field} is out of range: {value!r}")
    if result <= 0:
        if required:
            raise MappingError(f"{field} is not a valid id: {value!r}")
        return None
    return result


def _text(value: Any, limit: int | None = None) -> str:
    if type(value) is str:
        text = value.strip()
    elif value is None:
        return ""
    else:
        text = str(value).strip()
    return text[:limit] if limit else text


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _record(payload: Any, what: str) -> Mapping[str, Any]:
    if type(payload) is not dict and not isinstance(payload, Mapping):  # the ABC check is slow
        raise MappingError(f"{what} is not an object: {type(payload).__name__}")
    return payload


def refuse_invalid_text(record: Mapping[str, Any], what: str) -> None:
    """A record in which HaloPSA sent bytes that are not UTF-8 (marked by the client,
    payloads.INVALID_TEXT_KEY) is not stored: its text would be a guess. Says which fields."""
    fields = record.get(INVALID_TEXT_KEY)
    if fields:
        listed = ", ".join(str(f) for f in fields[:5]) if isinstance(fields, list) else str(fields)
        raise MappingError(
            f"{what}: HaloPSA sent text that is not valid UTF-8 in {listed} (shown as U+FFFD in the payload)",
            halopsa_id=_payload_halopsa_id(record),
        )


def _payload_halopsa_id(record: Mapping[str, Any]) -> int | None:
    try:
        return parse_id(record.get("id"), required=False)
    except MappingError:
        return None


# --- fingerprints --------------------------------------------------------------------------


def fingerprint(content: Mapping[str, Any]) -> str:
    """sha256 of the mapped content written as JSON by orjson (Decimals as exact numbers): the
    same content, built by this module (so with its keys in the same order), gives the same
    fingerprint.

    The text keeps every distinction we store: Decimal exponents ("1.50" vs "1.5"), a date vs a
    datetime and its offset, None vs "", text exactly. orjson writes it in C, which a full sync
    of invoices with their lines feels (benchmarks/README.md, "History"). Content orjson
    refuses (a lone surrogate in text, an integer beyond 64 bits) is fingerprinted through its
    repr instead, which is as stable. A change of this format only makes the next sync rewrite
    each record once."""
    try:
        text = orjson.dumps(content, default=_exact_decimal)
    except TypeError:  # orjson.JSONEncodeError
        text = repr(content).encode("utf-8", "backslashreplace")
    return hashlib.sha256(text).hexdigest()


def _exact_decimal(value: Any) -> orjson.Fragment:
    """orjson's hook: mapped content holds nothing else it does not write itself."""
    if type(value) is Decimal:
        return orjson.Fragment(str(value))  # a bare number: never equal to the text "1.50"
    raise TypeError(f"{type(value).__name__} is not fingerprinted")


# --- customers and billing contacts ----------------------------------------------------------


def map_client(payload: Any) -> dict[str, Any]:
    """A HaloPSA client (`Area`) -> Customer fields + fingerprint.

    The accounts-contact fields are part of the fingerprint, so a change of the accounts contact
    rewrites the customer's contacts too.
    """
    record = _record(payload, "client")
    halopsa_id = parse_id(record.get("id"), "client id")
    refuse_invalid_text(record, f"client {halopsa_id}")
    name = _text(record.get("name"), 300)
    if not name:
        raise MappingError(f"client {halopsa_id} has no name", halopsa_id=halopsa_id)
    try:
        mapped = {
            "halopsa_id": halopsa_id,
            "name": name,
            "inactive": _flag(record.get("inactive")),
            "remote_updated_at": parse_halo_datetime(record.get(CLIENT_UPDATED_AT), CLIENT_UPDATED_AT),
        }
        accounts = accounts_contact(record, RULE_ACCOUNTS_AND_INVOICE_USERS)
    except MappingError as exc:
        raise MappingError(f"client {halopsa_id}: {exc.message}", halopsa_id=halopsa_id) from None
    mapped["fingerprint"] = fingerprint({**mapped, "accounts": accounts})
    return mapped


def _contact(key: str, user_id: int | None, source: str, name: str, email: str) -> dict[str, Any]:
    content = {
        "halopsa_key": key,
        "halopsa_user_id": user_id,
        "source": source,
        "name": name[:300],
        "email": email[:300],
    }
    return {**content, "fingerprint": fingerprint(content)}


def accounts_contact(client: Mapping[str, Any], rule: str) -> dict[str, Any] | None:
    """The client's accounts contact as a billing contact, or None (no e-mail, or the rule
    excludes it). Key "accounts"."""
    if rule not in BILLING_CONTACT_RULES:
        raise MappingError(f"unknown billing contact rule {rule!r}")
    if rule == RULE_INVOICE_USERS_ONLY:
        return None
    email = _text(client.get("accountsemailaddress"))
    if not email:
        return None
    name = f"{_text(client.get('accountsfirstname'))} {_text(client.get('accountslastname'))}".strip()
    return _contact("accounts", None, "accounts_contact", name, email)


def billing_flag(user: Any, field: str = BILLING_FLAG_FIELD) -> bool | None:
    """The user's billing flag: True or False, or None when the record does not carry it (the
    key is missing or null): unknown, which is never read as false."""
    value = user.get(field) if isinstance(user, Mapping) else None
    if _missing(value):
        return None
    return _flag(value)


def billing_user_contact(
    user: Mapping[str, Any], rule: str, *, can_access_invoices: bool | None = None, flag_field: str = BILLING_FLAG_FIELD
) -> dict[str, Any] | None:
    """A HaloPSA user as a billing contact, or None when the rule says it is not one.

    Default rule: an active user with the billing flag (`canaccessinvoices`) and an e-mail
    address. Key "user:<id>". The flag is `can_access_invoices` when given (read elsewhere, e.g.
    from the user's detail), else the record's `flag_field`. A user who would qualify but whose
    flag is unknown raises BillingFlagUnknown; one who cannot qualify anyway (inactive, no
    address, the rule leaves users out) is None whatever the flag.
    """
    if rule not in BILLING_CONTACT_RULES:
        raise MappingError(f"unknown billing contact rule {rule!r}")
    if rule == RULE_ACCOUNTS_ONLY:
        return None
    user = _record(user, "user")
    user_id = parse_id(user.get("id"), "user id")
    refuse_invalid_text(user, f"user {user_id}")
    if _flag(user.get("inactive")):
        return None
    email = _text(user.get("emailaddress"))
    if not email:
        return None
    flag = can_access_invoices if can_access_invoices is not None else billing_flag(user, flag_field)
    if flag is None:
        raise BillingFlagUnknown(
            f"user {user_id}: {flag_field} is not on the record (unknown, not false)", halopsa_id=user_id
        )
    if not flag:
        return None
    name = _text(user.get("name")) or f"{_text(user.get('firstname'))} {_text(user.get('surname'))}".strip()
    return _contact(f"user:{user_id}", user_id, "invoice_user", name, email)


def billing_contacts_for_client(
    client: Mapping[str, Any], users: Iterable[Mapping[str, Any]], rule: str
) -> list[dict[str, Any]]:
    """THE billing-contact rule: who at this client receives invoices.

    - `accounts_and_invoice_users` (default): the client's accounts contact
      (`accountsemailaddress` with `accountsfirstname`/`accountslastname`) plus every active user
      of the client whose `canaccessinvoices` is true;
    - `accounts_only`: the accounts contact only;
    - `invoice_users_only`: the users only.
    Contacts without an e-mail address are skipped (we could not send them anything), and one
    address appears once (case-insensitive; the accounts contact wins). Sorted by e-mail.
    Users of other clients in `users` are ignored. A user whose flag is unknown raises
    BillingFlagUnknown (never read as false).
    """
    client = _record(client, "client")
    client_id = parse_id(client.get("id"), "client id")
    found: dict[str, dict[str, Any]] = {}
    accounts = accounts_contact(client, rule)
    if accounts is not None:
        found[accounts["email"].lower()] = accounts
    for user in users:
        if parse_id(user.get("client_id"), "user client_id", required=False) != client_id:
            continue
        contact = billing_user_contact(user, rule)
        if contact is not None:
            found.setdefault(contact["email"].lower(), contact)
    return [found[key] for key in sorted(found)]


# --- invoices ----------------------------------------------------------------------------------


def is_credit_note(payload: Mapping[str, Any]) -> bool:
    """Credit notes are invoice records in HaloPSA; we do not store them as invoices."""
    try:
        invoice_type = int(payload.get("invoicetype") or 0)
    except (TypeError, ValueError, OverflowError):
        invoice_type = 0
    linked = payload.get("creditlinkedtoinvoiceid")
    return invoice_type == INVOICE_TYPE_CREDIT_NOTE or (isinstance(linked, (int, Decimal)) and linked > 0)


def invoice_status(
    *, total: Decimal, amount_paid: Decimal, balance: Decimal, voided: bool, paymentstatus: int | None = None
) -> str:
    """open | partially_paid | paid | void, from HaloPSA's voided flag and the amounts.

    The amounts decide, never `paymentstatus` alone: the status shown must not contradict the
    balance shown (issue 17). Nothing (or less than nothing) left to collect is paid; something
    paid, or a balance below the total, is partially paid. `balance` is map_invoice's, which
    already reads paymentstatus where HaloPSA's amountdue is ambiguous (0 with nothing paid).
    `paymentstatus` is accepted for the callers' convenience and otherwise unused.
    """
    if voided:
        return STATUS_VOID
    if balance == 0 or (balance < 0) != (total < 0):
        return STATUS_PAID
    if amount_paid != 0 or balance != total:
        return STATUS_PARTIALLY_PAID
    return STATUS_OPEN


def map_line(payload: Any, sequence: int) -> dict[str, Any]:
    # parse_decimal/parse_money's rules through _quantized directly: this runs for every line.
    line = _record(payload, "invoice line")
    get = line.get
    quantity = _quantized(get("qty_order"), "line qty_order", _QUANTITY, _DECIMAL_LIMIT, _QUANTITY_ZERO)
    unit_price = _quantized(get("unit_price"), "line unit_price", _QUANTITY, _DECIMAL_LIMIT, _QUANTITY_ZERO)
    net = get("net_amount", get("net_total"))
    description = _text(get("item_shortdescription")) or _text(get("item_longdescription"))
    raw_sequence = str(get("sequenceid") or "")
    return {
        "halopsa_id": parse_id(get("id"), "line id", required=False),
        # isdecimal, not isdigit ("²" is a digit int() refuses); the column is a 32-bit integer.
        "sequence": int(raw_sequence) if raw_sequence.isdecimal() and len(raw_sequence) < 10 else sequence,
        "description": description,
        "quantity": quantity,
        "unit_price": unit_price,
        "net_amount": _quantized(
            net if not _missing(net) else quantity * unit_price, "line net_amount", CENT, _MONEY_LIMIT, None
        ),
        "tax_amount": _quantized(get("tax_amount", get("total_tax")), "line tax_amount", CENT, _MONEY_LIMIT, ZERO),
        "tax_rate": _quantized(get("tax_rate"), "line tax_rate", _QUANTITY, _RATE_LIMIT, _QUANTITY_ZERO),
    }


def map_payment(payload: Any) -> dict[str, Any] | None:
    """An embedded InvoicePayment -> Payment fields; None for rows we do not mirror (deposits,
    zero amounts). A credit application (credit_note_id set, or type 1) is kind "credit".
    `paid_on` is None when HaloPSA's date cannot be read (`payment_date`)."""
    row = _record(payload, "payment")
    halopsa_id = parse_id(row.get("id"), "payment id")
    try:
        payment_type = int(row.get("type") or 0)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        raise MappingError(f"payment {halopsa_id} type is not a number: {row.get('type')!r}") from None
    if payment_type == PAYMENT_TYPE_DEPOSIT:
        return None
    amount = parse_money(row.get("amount"), f"payment {halopsa_id} amount", default=ZERO)  # null: nothing applied
    if amount == 0:
        return None
    if amount < 0:
        # Refunds would need their own type; the Payment model holds money applied to an invoice.
        raise MappingError(f"payment {halopsa_id} has a negative amount ({amount}); refunds are not supported")
    credit_note_id = parse_id(row.get("credit_note_id"), "payment credit_note_id", required=False)
    paid_on = payment_date(row.get("date"))
    mapped = {
        "halopsa_id": halopsa_id,
        "kind": "credit" if (credit_note_id or payment_type == PAYMENT_TYPE_CREDIT) else "payment",
        "amount": amount,
        "paid_on": paid_on,
        "method": _text(row.get("payment_method_name"), 60),
        "reference": _text(row.get("reference"), 100),
        "thirdpartyid": _text(row.get("thirdpartyid"), 100),
    }
    if paid_on is None and not _missing(row.get("date")):
        mapped["date_as_sent"] = _text(row.get("date"), 40)  # what HaloPSA sent, for the raw record
    mapped["fingerprint"] = fingerprint(mapped)
    return mapped


def payment_date(value: Any) -> date | None:
    """A HaloPSA payment's date, or None ("date unknown") when it is missing, one of HaloPSA's
    "no date" sentinels (up to 1980, e.g. 0001-01-01) or not a date at all.

    Never an error: a payment's date is not what its invoice's balance rests on, and one bad date
    (a 0001-01-01 posted by hand once) must not stop that invoice from syncing ever again."""
    try:
        return parse_halo_date(value, "payment date")
    except MappingError:
        return None


def map_invoice(payload: Any, *, number_field: str = "invoicenumber", default_currency: str = "USD") -> dict[str, Any]:
    """A HaloPSA invoice (`InvoiceHeader` with lines and payments) -> Invoice fields.

    Returns a dict with the Invoice columns plus "lines" (InvoiceLine fields), "payments"
    (Payment fields, deposits left out), "is_credit_note" and "fingerprint" (over all of it).
    Amounts come from HaloPSA as they are (total, tax_total, amountpaid, amountdue), so applied
    credits and partial payments are in the balance exactly as HaloPSA computed them.
    """
    record = _record(payload, "invoice")
    halopsa_id = parse_id(record.get("id"), "invoice id")
    assert halopsa_id is not None  # required: parse_id raises instead
    refuse_invalid_text(record, f"invoice {halopsa_id}")
    try:
        return _map_invoice(record, halopsa_id, number_field, default_currency)
    except MappingError as exc:
        raise MappingError(f"invoice {halopsa_id}: {exc.message}", halopsa_id=halopsa_id) from None


def _map_invoice(
    record: Mapping[str, Any], halopsa_id: int, number_field: str, default_currency: str
) -> dict[str, Any]:
    if number_field not in INVOICE_NUMBER_FIELDS:
        raise MappingError(f"unknown invoice number field {number_field!r}")
    number = _text(record.get(number_field), 100)
    if not number and number_field != "invoicenumber":
        number = _text(record.get("invoicenumber"), 100)  # fall back rather than store no number
    if not number:
        # Without a number nobody could tell which invoice it is (the sandbox numbers every one).
        raise MappingError("has no invoice number (invoicenumber)")
    total = parse_money(record.get("total"), "total")
    tax = parse_money(record.get("tax_total"), "tax_total", default=ZERO)
    amount_paid = parse_money(record.get("amountpaid"), "amountpaid", default=ZERO)
    due = record.get("amountdue", record.get("amount_remaining"))
    balance = parse_money(due, "amountdue") if not _missing(due) else total - amount_paid
    voided = _flag(record.get("voided"))
    raw_status: Any = record.get("paymentstatus")  # any JSON value; absent (None) or "" means no status
    try:
        paymentstatus = int(raw_status) if raw_status not in (None, "") else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        raise MappingError(f"paymentstatus is not a number: {raw_status!r}") from None
    if balance == 0 and amount_paid == 0 and total > 0 and paymentstatus != PAYMENTSTATUS_PAID:
        # amountdue 0 with nothing paid is HaloPSA's default (paymentstatus -1, the database
        # default: halopsa-facts §3.6), not "paid": the balance is what is not paid yet.
        balance = total - amount_paid
    currency = _currency(record, default_currency)
    raw_lines = record.get("lines")
    if raw_lines is None:
        # Every read asks for the lines (includelines, includedetails) and lines are replaced as a
        # whole: storing "none" would delete the invoice's lines here. A caller that does not want
        # them passes [] (the push's balance check).
        raise MappingError("lines are missing although they were asked for (includelines)")
    if not isinstance(raw_lines, list):
        raise MappingError(f"lines is not a list: {type(raw_lines).__name__}")
    lines = [map_line(line, index) for index, line in enumerate(raw_lines, start=1)]
    raw_payments = record.get("payments") or []
    if not isinstance(raw_payments, list):
        raise MappingError(f"payments is not a list: {type(raw_payments).__name__}")
    payments = [p for p in (map_payment(row) for row in raw_payments) if p is not None]
    credit_note = is_credit_note(record)
    if not credit_note:  # credit notes are not stored; their amounts follow other rules
        _check_amounts(total, amount_paid, balance)
    status = invoice_status(
        total=total, amount_paid=amount_paid, balance=balance, voided=voided, paymentstatus=paymentstatus
    )
    mapped: dict[str, Any] = {
        "halopsa_id": halopsa_id,
        "number": number,
        "invoice_date": parse_halo_date(record.get("invoice_date"), "invoice_date"),
        "due_date": parse_halo_date(record.get("duedate"), "duedate"),
        "currency": currency,
        "subtotal": total - tax,
        "tax": tax,
        "total": total,
        "amount_paid": amount_paid,
        "balance": balance,
        "status": status,
        "remote_status": status,
        "is_credit_note": credit_note,
        "halopsa_client_id": parse_id(record.get("client_id"), "client_id", required=False),
        "pdf_attachment_id": parse_id(record.get("pdf_attachment_id"), "pdf_attachment_id", required=False),
        "remote_updated_at": parse_halo_datetime(record.get(INVOICE_UPDATED_AT), INVOICE_UPDATED_AT),
        "lines": lines,
        "payments": payments,
    }
    mapped["fingerprint"] = fingerprint(mapped)
    return mapped


def _currency(record: Mapping[str, Any], default_currency: str) -> str:
    """`currency_code_name` when given (it must be an ISO 4217 code), else `currency` when it is
    one, else the connection's default: `currency` may hold a symbol such as "$" (halopsa-facts §3.3),
    which says nothing certain. A code that is no currency is an error, never replaced by the
    default (the amounts would be stored in the wrong money)."""
    named = _text(record.get("currency_code_name"))
    if named:
        code = named.upper()
        if code not in ISO_CURRENCIES:
            raise MappingError(f"currency_code_name is not a currency: {named[:40]!r}")
        return code
    code = _text(record.get("currency")).upper()
    if code in ISO_CURRENCIES:
        return code
    if len(code) == 3 and code.isascii() and code.isalpha():
        raise MappingError(f"currency is not a currency: {code!r}")
    return default_currency  # none given, or a symbol


def _check_amounts(total: Decimal, amount_paid: Decimal, balance: Decimal) -> None:
    """An invoice's amounts must not contradict each other (credit notes are not checked)."""
    if total >= 0 and amount_paid < 0:
        raise MappingError(f"amountpaid is negative ({amount_paid}) on an invoice of {total}")
    if total > 0 and balance > total:
        raise MappingError(f"the balance ({balance}) is more than the total ({total})")


# --- status mapping for pushes (owned by the push engineer; used by integrations/services/push.py)

HALO_ACTION_VOID = "void"  # POST /api/Invoice/{id}/void
HALO_ACTION_UPDATE = "update"  # POST /api/Invoice [{"id": id, **fields}]


def invoice_status_to_halo(status: str) -> tuple[str, dict[str, Any]]:
    """How HaloPSA is told that an invoice has our `status` (open | paid | void).

    - void: the SW25 void route;
    - paid: `markaspaid` on the invoice (halopsa-facts §3.6: semantics unverified; the sandbox records
      a payment of the amount due, which the next pull mirrors);
    - open (also partially paid): un-void with `voided: false` (unverified; a paid invoice is
      re-opened in HaloPSA only by deleting its payments, which the push service refuses to guess).
    """
    if status == STATUS_VOID:
        return HALO_ACTION_VOID, {}
    if status == STATUS_PAID:
        return HALO_ACTION_UPDATE, {"markaspaid": True}
    if status in (STATUS_OPEN, STATUS_PARTIALLY_PAID):
        return HALO_ACTION_UPDATE, {"voided": False}
    raise MappingError(f"no HaloPSA status for {status!r}")
