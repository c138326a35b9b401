"""Bad input never crashes anything (issue 9, item 3), found with Hypothesis.

- The webhook endpoint, with valid Basic auth, gets random bytes, random JSON, HaloPSA-shaped
  deliveries with wrong types, huge strings and any unicode: it never answers >= 500, stores an
  event exactly when it accepts (2xx), stores nothing when it refuses (4xx), and a stored event is
  processed to an end state without an exception.
- The mapping (integrations/halopsa/mapping.py) on HaloPSA payloads with fields replaced by junk
  (wrong types, missing, negative and absurd amounts, NaN/Infinity, 1e308, huge strings): maps
  or raises MappingError, never anything else; what it maps fits our columns.
- A sync against a sandbox serving such a record goes on: the run is succeeded or partial, at
  most that record fails, and every other record equals HaloPSA's.
- HaloPSA answers holding bytes that are not UTF-8 (issue 17 item 12): parsed with the client's
  tolerant decoding, they parse or raise ValueError, only records holding such bytes are marked,
  and a marked record is refused by the mapping, never stored.

Deterministic: `derandomize=True`, no example database; example counts stay modest.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from halosandbox import SandboxServer
from integrations.halopsa import mapping
from integrations.halopsa.client import parse_json
from integrations.halopsa.mapping import MappingError

FUZZ = hsettings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
BIGINT = 2**63
INT32 = 2**31

# --- junk values ---------------------------------------------------------------------------------

JUNK_TEXT = [
    "",
    " ",
    "abc",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "1e308",
    "-1e308",
    "1e-308",
    "0x10",
    "1_000",
    "12.345",
    "-0.00",
    "9" * 40,
    "²",
    "١٢٣",
    "٣.٥",
    "½",
    "1,000.00",
    "$12.00",
    "12.00 USD",
    "\x00",
    "\ud800",
    "2026-13-45T25:61:61",
    "0000-00-00T00:00:00",
    "9999-12-31T23:59:59",
    "1899-12-30T00:00:00",
    "2026-02-29",
    "true",
    "null",
    "[]",
    "{}",
    "💸" * 50,
]
NASTY = [
    None,
    True,
    False,
    0,
    -1,
    2**31,
    2**63,
    10**30,
    -(10**12),
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "abc",
    "NaN",
    "Infinity",
    "1e308",
    "²",
    "١٢٣",
    "99999999999",
    "5000",
    "-5000",
    "12.345",
    "2026-13-45T25:61:61",
    "9999-12-31T23:59:59",
    "\x00",
    [],
    {},
    [1],
    {"id": 1},
    "x" * 70_000,
]
# One draw in three is a known troublemaker; the rest is anything.
scalars = st.one_of(
    st.sampled_from([v for v in NASTY if not isinstance(v, (list, dict))]),
    st.sampled_from([v for v in NASTY if not isinstance(v, (list, dict))]),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(10**12)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf")]),
    st.sampled_from(JUNK_TEXT),
    st.text(max_size=40),
    st.builds(lambda: "x" * 70_000),  # a huge string (built, so failure reports stay short)
)
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def _to_wire(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    return value


def over_the_wire(payload: Any) -> Any:
    """What HaloPSA's JSON becomes in our hands: text (NaN/Infinity allowed, as .NET may send),
    parsed by the client's parser (numbers as Decimal). A lone surrogate goes out as the bytes
    surrogatepass gives, which are not UTF-8: the client marks the record holding them."""
    text = json.dumps(_to_wire(payload), allow_nan=True, ensure_ascii=False)
    return parse_json(text.encode("utf-8", "surrogatepass"), mark_invalid_text=True)


# --- HaloPSA-shaped payloads -----------------------------------------------------------------------

_SAMPLES: dict[str, Any] = {}


def samples() -> dict[str, Any]:
    if not _SAMPLES:
        store = SandboxServer(dataset="tiny", seed=1, port=0).store  # not started: only its records
        _SAMPLES["invoice"] = json.loads(json.dumps(store.invoice_json(store.get_invoice(2)), default=str))
        _SAMPLES["client"] = json.loads(json.dumps(store.client_json(store.get_client(1)), default=str))
        _SAMPLES["user"] = json.loads(json.dumps(store.user_json(store.get_user(1)), default=str))
    return _SAMPLES


INVOICE_FIELDS = [
    "id",
    "invoicenumber",
    "thirdpartyinvoicenumber",
    "client_id",
    "client_name",
    "invoice_date",
    "duedate",
    "last_modified",
    "currency_code_name",
    "currency",
    "total",
    "tax_total",
    "amountpaid",
    "amountdue",
    "amount_remaining",
    "paymentstatus",
    "voided",
    "invoicetype",
    "creditlinkedtoinvoiceid",
    "pdf_attachment_id",
    "lines",
    "payments",
]
LINE_FIELDS = [
    "id",
    "sequenceid",
    "qty_order",
    "unit_price",
    "net_amount",
    "tax_amount",
    "tax_rate",
    "item_shortdescription",
    "item_longdescription",
]
PAYMENT_FIELDS = ["id", "type", "amount", "credit_note_id", "date", "reference", "thirdpartyid", "payment_method_name"]
CLIENT_FIELDS = [
    "id",
    "name",
    "inactive",
    "alastupdate",
    "accountsemailaddress",
    "accountsfirstname",
    "accountslastname",
]
USER_FIELDS = ["id", "client_id", "name", "firstname", "surname", "emailaddress", "inactive", "canaccessinvoices"]

DELETE = object()
_NAMES = itertools.count(1)
mutation_value = st.one_of(st.just(DELETE), junk)


@st.composite
def mutated(draw, kind: str) -> Any:
    """A sample record with 1-4 fields (top level, a line or a payment) deleted or set to junk."""
    record = copy.deepcopy(samples()[kind])
    fields = {"invoice": INVOICE_FIELDS, "client": CLIENT_FIELDS, "user": USER_FIELDS}[kind]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        target, names = record, fields
        if kind == "invoice":
            where = draw(st.sampled_from(["top", "top", "line", "payment"]))
            if (
                where == "line"
                and isinstance(record.get("lines"), list)
                and record["lines"]
                and isinstance(record["lines"][0], dict)
            ):
                target, names = record["lines"][draw(st.integers(0, len(record["lines"]) - 1))], LINE_FIELDS
            elif (
                where == "payment"
                and isinstance(record.get("payments"), list)
                and record["payments"]
                and isinstance(record["payments"][0], dict)
            ):
                target, names = record["payments"][draw(st.integers(0, len(record["payments"]) - 1))], PAYMENT_FIELDS
        name = draw(st.sampled_from(names))
        value = draw(mutation_value)
        if value is DELETE:
            target.pop(name, None)
        else:
            target[name] = value
    if draw(st.integers(0, 20)) == 0:
        return draw(junk)  # sometimes not a record at all
    return record


# --- what mapped rows must satisfy (our columns) -----------------------------------------------------


def _id_ok(value: Any, *, required: bool) -> bool:
    if value is None:
        return not required
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < BIGINT


def _money_ok(value: Any) -> bool:  # DecimalField(max_digits=14, decimal_places=2)
    return (
        isinstance(value, Decimal)
        and value.is_finite()
        and value == value.quantize(Decimal("0.01"))
        and abs(value) < Decimal("1e12")
    )


def _decimal4_ok(value: Any, below: str) -> bool:
    return (
        isinstance(value, Decimal)
        and value.is_finite()
        and value == value.quantize(Decimal("0.0001"))
        and abs(value) < Decimal(below)
    )


def _text_ok(value: Any, limit: int | None) -> bool:
    return isinstance(value, str) and (limit is None or len(value) <= limit)


def assert_invoice_fits(row: dict[str, Any]) -> None:
    assert _id_ok(row["halopsa_id"], required=True)
    assert _id_ok(row["halopsa_client_id"], required=False) and _id_ok(row["pdf_attachment_id"], required=False)
    for name in ("subtotal", "tax", "total", "amount_paid", "balance"):
        assert _money_ok(row[name]), (name, row[name])
    assert _text_ok(row["number"], 100) and len(row["currency"]) == 3
    assert row["status"] in ("open", "partially_paid", "paid", "void")
    for line in row["lines"]:
        assert _id_ok(line["halopsa_id"], required=False)
        assert isinstance(line["sequence"], int) and -INT32 <= line["sequence"] < INT32
        assert _decimal4_ok(line["quantity"], "1e10") and _decimal4_ok(line["unit_price"], "1e10")
        assert _decimal4_ok(line["tax_rate"], "1e3"), line["tax_rate"]  # DecimalField(max_digits=7, decimal_places=4)
        assert _money_ok(line["net_amount"]) and _money_ok(line["tax_amount"])
        assert _text_ok(line["description"], None)
    for payment in row["payments"]:
        assert _id_ok(payment["halopsa_id"], required=True)
        assert _money_ok(payment["amount"]) and payment["amount"] > 0
        assert payment["kind"] in ("payment", "credit")
        assert _text_ok(payment["method"], 60) and _text_ok(payment["reference"], 100)
    json.dumps(row["fingerprint"])


# --- mapping fuzz ------------------------------------------------------------------------------------


@FUZZ
@given(payload=mutated("invoice"), number_field=st.sampled_from(["invoicenumber", "thirdpartyinvoicenumber"]))
def test_map_invoice_maps_or_raises_mapping_error(payload, number_field):
    try:
        row = mapping.map_invoice(over_the_wire(payload), number_field=number_field, default_currency="USD")
    except MappingError as exc:
        assert exc.message
        return
    assert_invoice_fits(row)


@FUZZ
@given(payload=mutated("client"))
def test_map_client_and_its_accounts_contact_map_or_raise_mapping_error(payload):
    record = over_the_wire(payload)
    try:
        row = mapping.map_client(record)
    except MappingError as exc:
        assert exc.message
        return
    assert _id_ok(row["halopsa_id"], required=True) and _text_ok(row["name"], 300) and row["name"]
    contact = mapping.accounts_contact(record, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS)
    if contact is not None:
        assert _text_ok(contact["email"], 300) and _text_ok(contact["name"], 300)


@FUZZ
@given(payload=mutated("user"), rule=st.sampled_from(mapping.BILLING_CONTACT_RULES))
def test_billing_user_contact_maps_or_raises_mapping_error(payload, rule):
    record = over_the_wire(payload)
    try:
        contact = mapping.billing_user_contact(record, rule)
    except MappingError as exc:
        assert exc.message
        return
    if contact is not None:
        assert _id_ok(contact["halopsa_user_id"], required=True)
        assert _text_ok(contact["email"], 300) and _text_ok(contact["name"], 300)


@FUZZ
@given(value=junk)
def test_scalar_parsers_return_or_raise_mapping_error(value):
    value = over_the_wire({"v": value})["v"]
    for parse in (
        lambda v: mapping.parse_money(v, "amount"),
        lambda v: mapping.parse_decimal(v, "qty"),
        lambda v: mapping.parse_halo_datetime(v, "date"),
        lambda v: mapping.parse_id(v, "id", required=False),
    ):
        try:
            parse(value)
        except MappingError:
            pass


def test_every_field_set_to_every_nasty_value_maps_or_raises_mapping_error():
    """The exhaustive companion of the Hypothesis tests: each field of an invoice (top level, a
    line, a payment), a client and a user, set to each nasty value in turn, or deleted."""
    problems = []
    targets = [
        ("invoice", None, INVOICE_FIELDS),
        ("invoice", "lines", LINE_FIELDS),
        ("invoice", "payments", PAYMENT_FIELDS),
        ("client", None, CLIENT_FIELDS),
        ("user", None, USER_FIELDS),
    ]
    for kind, nested, fields in targets:
        for name in fields:
            for value in [DELETE, *NASTY]:
                record = copy.deepcopy(samples()[kind])
                target = record[nested][0] if nested else record
                if value is DELETE:
                    target.pop(name, None)
                else:
                    target[name] = value
                wire = over_the_wire(record)
                try:
                    if kind == "invoice":
                        assert_invoice_fits(mapping.map_invoice(wire))
                    elif kind == "client":
                        mapping.map_client(wire)
                        mapping.accounts_contact(wire, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS)
                    else:
                        for rule in mapping.BILLING_CONTACT_RULES:
                            mapping.billing_user_contact(wire, rule)
                except MappingError:
                    pass
                except Exception as exc:  # noqa: BLE001 - collecting every failure is the point
                    shown = "<deleted>" if value is DELETE else repr(value)[:40]
                    problems.append(
                        f"{kind}{'.' + nested if nested else ''}.{name}={shown}: {type(exc).__name__}: {str(exc)[:80]}"
                    )
    assert not problems, "\n".join(problems)


# --- bytes that are not UTF-8 ------------------------------------------------------------------------


@FUZZ
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {"id": st.integers(1, 10**6), "name": st.binary(max_size=12), "client_name": st.binary(max_size=6)}
        ),
        min_size=1,
        max_size=5,
    )
)
def test_invalid_utf8_fails_only_the_records_holding_it(records):
    from integrations.halopsa.payloads import INVALID_TEXT_KEY

    def quoted(raw: bytes) -> bytes:  # raw bytes inside a JSON string (quotes, backslashes, controls escaped)
        return b'"' + b"".join(b"\\u%04x" % b if b < 0x20 or b in b'"\\' else bytes([b]) for b in raw) + b'"'

    rows = b",".join(
        b'{"id":%d,"name":%s,"client_name":%s}' % (r["id"], quoted(r["name"]), quoted(r["client_name"]))
        for r in records
    )
    body = b'{"record_count":%d,"clients":[%s]}' % (len(records), rows)
    parsed = parse_json(body, mark_invalid_text=True)
    for raw, row in zip(records, parsed["clients"]):
        bad = [field for field in ("name", "client_name") if not _is_utf8(raw[field])]
        assert row.get(INVALID_TEXT_KEY, []) == bad
        if bad:
            with pytest.raises(MappingError, match="not valid UTF-8"):
                mapping.map_client(row)
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # storable text: no lone surrogate left


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- webhook endpoint fuzz -------------------------------------------------------------------------

DELIVERY_KEYS = [
    "id",
    "event",
    "object_id",
    "webhook_id",
    "timestamp",
    "message",
    "invoice",
    "client",
    "user",
    "payment",
]
EVENTS = [
    "invoice updated",
    "invoice created",
    "client updated",
    "user deleted",
    "payment created",
    "ticket updated",
    "",
]


@st.composite
def webhook_bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "delivery", "delivery", "huge"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        value = draw(junk)
        return json.dumps(_to_wire(value), allow_nan=True, ensure_ascii=draw(st.booleans())).encode(
            "utf-8", "surrogatepass"
        )
    body: dict[str, Any] = {
        "id": draw(st.one_of(st.uuids().map(str), junk)),
        "event": draw(st.one_of(st.sampled_from(EVENTS), junk)),
    }
    for key in draw(st.lists(st.sampled_from(DELIVERY_KEYS), max_size=5)):
        body[key] = draw(st.one_of(junk, st.fixed_dictionaries({"id": junk})))
    if kind == "huge":
        body["message"] = draw(st.sampled_from(["é" * 120_000, "x" * 255_000, "\U0001f4b8" * 70_000]))
    return json.dumps(_to_wire(body), allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


@pytest.fixture
def realtime(partner, make_connection, halo_sandbox):
    return make_connection(partner, halo_sandbox, halopsa_version="2.200.1")


def _basic(connection) -> str:
    return "Basic " + base64.b64encode(f"{connection.webhook_username}:{connection.webhook_password}".encode()).decode()


@pytest.mark.django_db
@hsettings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    body=webhook_bodies(),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/octet-stream"]),
)
def test_webhook_endpoint_never_fails_and_stores_only_what_it_accepts(client, realtime, body, content_type):
    from django.urls import reverse

    from integrations.models import WebhookEvent
    from integrations.services.webhooks import webhook_event_process

    assert realtime.is_realtime
    before = set(WebhookEvent.objects.filter(connection=realtime).values_list("pk", flat=True))
    response = client.generic(
        "POST",
        reverse("halopsa-webhook", kwargs={"key": realtime.webhook_key}),
        body,
        content_type=content_type,
        HTTP_AUTHORIZATION=_basic(realtime),
    )
    assert response.status_code < 500, response.content
    assert response.status_code in (200, 202, 400, 413), response.status_code
    assert response["Content-Type"].startswith("application/json")
    new = WebhookEvent.objects.filter(connection=realtime).exclude(pk__in=before)
    if response.status_code == 202:
        event = new.get()
        assert response.json()["event_id"] == event.pk
        # Processing re-fetches from HaloPSA (the sandbox): it ends in a state, never an exception.
        processed = webhook_event_process(event_id=event.pk)
        assert processed.state in ("processed", "ignored", "failed", "received"), processed.state
    elif response.status_code == 200:
        assert response.json()["status"] in ("duplicate", "ignored")
        assert new.count() <= 1
    else:
        assert not new.exists()
        assert response.json()["error"]


# --- a sync meeting such a record ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.sandbox(rate_limit=0)
@hsettings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    mutations=st.lists(st.tuples(st.sampled_from(INVOICE_FIELDS), mutation_value), min_size=1, max_size=3),
    pick=st.integers(min_value=0, max_value=10),
)
@example(mutations=[("paymentstatus", float("inf"))], pick=0)
@example(mutations=[("total", float("nan")), ("id", DELETE)], pick=1)
@example(mutations=[("lines", [{"id": 9, "sequenceid": "²", "tax_rate": "5000", "unit_price": 1e308}])], pick=2)
def test_a_sync_serving_one_junk_invoice_goes_on_with_the_rest(
    partner, make_connection, halo_sandbox, monkeypatch, mutations, pick
):
    """One invoice of an /api/Invoice page is replaced by a junk mutation of itself on the wire."""
    from halosandbox import server as sandbox_server
    from integrations.models import Invoice, SyncError, SyncRun
    from integrations.services.sync import sync_execute
    from tests.reliability.chaos import _money

    corrupted: list[Any] = []

    def corrupt(payload: Any, rng_value: int) -> Any:
        rows = payload.get("invoices") if isinstance(payload, dict) else None
        if not rows:
            return payload
        index = pick % len(rows)
        record = json.loads(json.dumps(rows[index], default=str))
        for name, value in mutations:
            if value is DELETE:
                record.pop(name, None)
            else:
                record[name] = value
        corrupted.append(rows[index].get("id"))
        rows[index] = _to_wire(record)
        return payload

    monkeypatch.setattr(sandbox_server, "_corrupt_one_record", corrupt)
    halo_sandbox.clear_faults()
    halo_sandbox.add_fault("malformed_record", path="/api/Invoice", method="GET", count=1)
    connection = make_connection(partner, halo_sandbox, name=f"fuzz {next(_NAMES)}")
    run = sync_execute(run=SyncRun.objects.create(connection=connection, scope="full", trigger="cli"))

    assert run.state in ("succeeded", "partial"), run.message
    assert run.failed <= 1 and run.failed == SyncError.objects.filter(run=run).count()
    truth = {i["halopsa_id"]: i for i in halo_sandbox.store.ground_truth()["invoices"]}
    ours = {i.halopsa_id: i for i in Invoice.objects.filter(connection=connection)}
    for halopsa_id, expected in truth.items():
        if halopsa_id in corrupted:
            continue
        assert halopsa_id in ours, f"invoice {halopsa_id} was not synced"
        owed = "0.00" if expected["voided"] else _money(expected["balance"])  # a void invoice owes nothing here
        assert (str(ours[halopsa_id].total), str(ours[halopsa_id].balance)) == (_money(expected["total"]), owed)
