"""Unit tests of integrations/halopsa/mapping.py: literal HaloPSA payloads in, field values out."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from integrations.halopsa import mapping
from integrations.halopsa.mapping import MappingError


def invoice_payload(**overrides):
    payload = {
        "id": 42,
        "invoicenumber": "10042",
        "thirdpartyinvoicenumber": "QB-1042",
        "client_id": 7,
        "client_name": "Acme Dental Group",
        "invoice_date": "2026-09-01T00:00:00",
        "duedate": "2026-10-01T00:00:00",
        "last_modified": "2026-09-02T10:11:12.345",
        "currency_code_name": "USD",
        "total": Decimal("1234.50"),
        "tax_total": Decimal("34.50"),
        "amountpaid": Decimal("200.00"),
        "amountdue": Decimal("1034.50"),
        "paymentstatus": 1,
        "voided": False,
        "invoicetype": 0,
        "creditlinkedtoinvoiceid": 0,
        "pdf_attachment_id": 1000042,
        "lines": [
            {
                "id": 4201,
                "sequenceid": 1,
                "item_shortdescription": "Managed services",
                "qty_order": Decimal("10.00"),
                "unit_price": Decimal("100.00"),
                "net_amount": Decimal("1000.00"),
                "tax_rate": Decimal("0"),
                "tax_amount": Decimal("0.00"),
            },
            {
                "id": 4202,
                "sequenceid": 2,
                "item_shortdescription": "Firewall",
                "qty_order": Decimal("1.00"),
                "unit_price": Decimal("200.00"),
                "net_amount": Decimal("200.00"),
                "tax_rate": Decimal("17.25"),
                "tax_amount": Decimal("34.50"),
            },
        ],
        "payments": [
            {
                "id": 421,
                "invoice_id": 42,
                "date": "2026-09-05T00:00:00",
                "amount": Decimal("150.00"),
                "type": 0,
                "credit_note_id": 0,
                "reference": "PMT-42-1",
                "thirdpartyid": "",
                "payment_method_name": "Bank Transfer",
            },
            {
                "id": 422,
                "invoice_id": 42,
                "date": "2026-09-06T00:00:00",
                "amount": Decimal("50.00"),
                "type": 1,
                "credit_note_id": 43,
                "reference": "Credit note 10043",
                "thirdpartyid": "",
                "payment_method_name": "Credit Note",
            },
        ],
    }
    payload.update(overrides)
    return payload


# --- scalars --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (Decimal("1234.5"), Decimal("1234.50")),
        ("1234.505", Decimal("1234.51")),
        (10, Decimal("10.00")),
        ("-0.005", Decimal("-0.01")),
        (0.1, Decimal("0.10")),
    ],
)
def test_parse_money_quantizes_to_cents(value, expected):
    result = mapping.parse_money(value)
    assert result == expected
    assert result.as_tuple().exponent == -2


@pytest.mark.parametrize("value", ["abc", None, "", "NaN", "Infinity", True, [1], "1e20"])
def test_parse_money_refuses_junk(value):
    with pytest.raises(MappingError):
        mapping.parse_money(value, "total")


def test_parse_money_default_only_for_missing_values():
    assert mapping.parse_money(None, default=Decimal("0.00")) == Decimal("0.00")
    with pytest.raises(MappingError, match="tax_total is not a number"):
        mapping.parse_money("x", "tax_total", default=Decimal("0.00"))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-10-10T10:00:00", datetime(2026, 10, 10, 10, 0, tzinfo=timezone.utc)),
        ("2026-10-10T10:00:00.1234567", datetime(2026, 10, 10, 10, 0, 0, 123456, tzinfo=timezone.utc)),
        ("2026-10-10T10:00:00Z", datetime(2026, 10, 10, 10, 0, tzinfo=timezone.utc)),
        ("2026-10-10T12:00:00+02:00", datetime(2026, 10, 10, 10, 0, tzinfo=timezone.utc)),
        ("2026-10-10", datetime(2026, 10, 10, tzinfo=timezone.utc)),
        ("1900-01-01T00:00:00", None),
        ("1980-01-01T00:00:00", None),
        (None, None),
        ("", None),
    ],
)
def test_parse_halo_datetime_naive_is_utc_and_sentinels_are_none(value, expected):
    assert mapping.parse_halo_datetime(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00", "2026-02-30"])
def test_parse_halo_datetime_refuses_junk(value):
    with pytest.raises(MappingError, match="not a date"):
        mapping.parse_halo_datetime(value, "duedate")


@pytest.mark.parametrize(
    "value, money, quantity",
    [
        # parse_json's Decimals and ints take a fast path; strings the general one: same values and exponents.
        (Decimal("1.5"), "1.50", "1.5000"),
        ("1.5", "1.50", "1.5000"),
        (Decimal("2.345"), "2.35", "2.3450"),
        (Decimal("-0.005"), "-0.01", "-0.0050"),
        (Decimal("-0"), "-0.00", "-0.0000"),
        (Decimal("1E+2"), "100.00", "100.0000"),
        (7, "7.00", "7.0000"),
        (" 7 ", "7.00", "7.0000"),
        (Decimal("0.00005"), "0.00", "0.0001"),
    ],
)
def test_money_and_decimals_keep_their_exponent_whatever_the_input_type(value, money, quantity):
    assert str(mapping.parse_money(value)) == money
    assert str(mapping.parse_decimal(value, "qty")) == quantity
    assert str(mapping.parse_decimal(value, "qty", places=1)) == str(
        Decimal(quantity).quantize(Decimal("0.1"), "ROUND_HALF_UP")
    )


@pytest.mark.parametrize(
    "value, message",
    [
        (True, "total is not a number: True"),
        (None, "total is not a number: None"),
        (Decimal("NaN"), "total is not a number: Decimal('NaN')"),
        (Decimal("sNaN"), "total is not a number: Decimal('sNaN')"),
        (Decimal("-Infinity"), "total is not a number: Decimal('-Infinity')"),
        ("Infinity", "total is not a number: 'Infinity'"),
        (float("inf"), "total is not a number: 'inf'"),
        (Decimal("1E+12"), "total is out of range: Decimal('1E+12')"),
        (-(10**12), "total is out of range: -1000000000000"),
        ("1e12", "total is out of range: '1e12'"),
    ],
)
def test_parse_money_rejections_are_worded_the_same_on_every_path(value, message):
    with pytest.raises(MappingError) as info:
        mapping.parse_money(value, "total")
    assert info.value.message == message


def test_parse_decimal_limit_applies_to_decimals_and_ints():
    assert mapping.parse_decimal(Decimal("999.99994"), "rate", limit=Decimal("1000")) == Decimal("999.9999")
    for value in (Decimal("1000"), 1000, "1000"):
        with pytest.raises(MappingError, match=r"^rate is out of range: "):
            mapping.parse_decimal(value, "rate", limit=Decimal("1000"))


@pytest.mark.parametrize(
    "value, required, expected",
    [
        (5, True, 5),
        ("5", True, 5),
        (Decimal("5"), True, 5),
        (Decimal("5.0"), True, 5),
        (0, False, None),
        ("0", False, None),
        (-3, False, None),
        (2**63 - 1, True, 2**63 - 1),
        (0, True, "id is not a valid id: 0"),
        (-3, True, "id is not a valid id: -3"),
        (2**63, True, "id is out of range: 9223372036854775808"),
        (True, True, "id is missing"),
        (False, False, None),
        (Decimal("Infinity"), True, "id is not an id: Decimal('Infinity')"),
        (5.5, True, "id is not an id: 5.5"),
    ],
)
def test_parse_id_int_fast_path_matches_the_general_path(value, required, expected):
    if isinstance(expected, str):
        with pytest.raises(MappingError) as info:
            mapping.parse_id(value, required=required)
        assert info.value.message == expected
    else:
        result = mapping.parse_id(value, required=required)
        assert result == expected and type(result) is type(expected)


TRICKY_TIMESTAMPS = [
    "2026-10-10T10:00:00",
    "2026-10-10T10:00:00.1",
    "2026-10-10T10:00:00.382",
    "2026-10-10T10:00:00.123456",
    "2026-10-10T10:00:00.1234567",
    "2026-10-10 10:00:00",
    "2026-10-10",
    "2024-02-29T23:59:59",
    "1980-01-01T00:00:00",
    "1980-01-01T00:00:00.0000001",
    "1980-01-01T00:00:00.000001",
    "1900-01-01T00:00:00",
    "0001-01-01T00:00:00",
    "2026-10-10 10:00:00.1",
    "2026-10-10T10:00:00.000",
    "2026-10-10T10:00:00Z",
    "2026-10-10T10:00:00z",
    "2026-10-10T12:00:00+02:00",
    "2026-10-10T02:00:00-0800",
    "1980-01-01T01:00:00+01:00",
    "1980-01-01T00:30:00-00:31",
    "2026-10-10T10:00",
    " 2026-10-10T10:00:00 ",
    "2026-10-10t10:00:00",
    "2026-10-10T10:00:00 Z",
    "٢٠٢٦-١٠-١٠T10:00:00",
]


@pytest.mark.parametrize("value", TRICKY_TIMESTAMPS)
def test_parse_halo_datetime_fast_path_agrees_with_the_general_parser(value):
    general = mapping._parse_datetime(value, "date")
    expected = None if general <= mapping.DATE_SENTINEL_LIMIT else general
    assert mapping.parse_halo_datetime(value) == expected
    assert mapping.parse_halo_date(value) == (expected.date() if expected else None)
    if expected is not None:
        assert mapping.parse_halo_datetime(value).tzinfo is timezone.utc


def test_parse_halo_datetime_fast_path_takes_halopsa_shapes_only():
    for value in ("2026-10-10T10:00:00", "2026-10-10T10:00:00.1234567", "2026-10-10 10:00:00.1"):
        assert mapping._PLAIN_DATETIME_RE.match(value)
    for value in (
        "2026-10-10",
        "2026-10-10T10:00:00Z",
        "2026-10-10T10:00:00+01:00",
        "2026-10-10T24:00:00",
        "2026-W41-1T10:00:00",
        "2026-10-10T10:00:00\n",
        "2026-10-10T10:00:00.12345678",
        "٢٠٢٦-١٠-١٠T10:00:00",
    ):
        assert not mapping._PLAIN_DATETIME_RE.match(value)


@pytest.mark.parametrize(
    "value",
    [
        "2026-02-30T00:00:00",
        "2026-10-10T24:00:00",
        "2026-10-10T23:59:60",
        "0000-01-01T00:00:00",
        "2026-10-10T10:00:00.12345678",
        "2026-W41-1T10:00:00",
        "2026-10-10T10:00+01",
    ],
)
def test_parse_halo_datetime_bad_values_are_worded_the_same_on_every_path(value):
    with pytest.raises(MappingError) as info:
        mapping.parse_halo_datetime(value, "duedate")
    assert info.value.message == f"duedate is not a date: {value!r}"


def test_fingerprint_is_stable_and_content_sensitive():
    a = mapping.fingerprint({"a": date(2026, 1, 1), "b": Decimal("1.50"), "c": None})
    same = mapping.fingerprint({"a": date(2026, 1, 1), "b": Decimal("1.50"), "c": None})
    # Everything we store tells apart: the amount, its exponent, date vs datetime, None vs "".
    others = [
        {"a": date(2026, 1, 1), "b": Decimal("1.51"), "c": None},
        {"a": date(2026, 1, 1), "b": Decimal("1.5"), "c": None},
        {"a": datetime(2026, 1, 1, tzinfo=timezone.utc), "b": Decimal("1.50"), "c": None},
        {"a": date(2026, 1, 1), "b": Decimal("1.50"), "c": ""},
        {"a": date(2026, 1, 1), "b": Decimal("1.50"), "c": "\udc80"},  # a lone surrogate still hashes
        {"a": date(2026, 1, 1), "b": Decimal("1.50"), "c": 2**70},  # so does an integer beyond 64 bits
        {"a": date(2026, 1, 1), "b": "1.50", "c": None},  # text is not the amount it reads as
    ]
    assert a == same
    assert len({a, *(mapping.fingerprint(o) for o in others)}) == 1 + len(others)
    assert len(a) == 64
    assert mapping.fingerprint(others[-2]) == mapping.fingerprint(dict(others[-2]))  # the fallback is stable too


# --- customers and billing contacts ---------------------------------------------------------

CLIENT = {
    "id": 7,
    "name": "Acme Dental Group",
    "inactive": False,
    "alastupdate": "2026-09-01T08:00:00.000",
    "accountsemailaddress": "accounts@acme.example",
    "accountsfirstname": "Alice",
    "accountslastname": "Moreno",
}
USERS = [
    {
        "id": 1,
        "client_id": 7,
        "name": "Dana Whitfield",
        "emailaddress": "dana@acme.example",
        "canaccessinvoices": True,
        "inactive": False,
    },
    {
        "id": 2,
        "client_id": 7,
        "name": "Evan Price",
        "emailaddress": "evan@acme.example",
        "canaccessinvoices": False,
        "inactive": False,
    },
    {
        "id": 3,
        "client_id": 7,
        "name": "Ivan Petrov",
        "emailaddress": "ivan@acme.example",
        "canaccessinvoices": True,
        "inactive": True,
    },
    {
        "id": 4,
        "client_id": 8,
        "name": "Other Client",
        "emailaddress": "o@other.example",
        "canaccessinvoices": True,
        "inactive": False,
    },
    {"id": 5, "client_id": 7, "name": "No Mail", "emailaddress": "", "canaccessinvoices": True, "inactive": False},
    {
        "id": 6,
        "client_id": 7,
        "name": "Accounts Twin",
        "emailaddress": "ACCOUNTS@acme.example",
        "canaccessinvoices": True,
        "inactive": False,
    },
]


def test_map_client():
    mapped = mapping.map_client(CLIENT)
    assert mapped["halopsa_id"] == 7
    assert mapped["name"] == "Acme Dental Group"
    assert mapped["inactive"] is False
    assert mapped["remote_updated_at"] == datetime(2026, 9, 1, 8, tzinfo=timezone.utc)
    changed = mapping.map_client({**CLIENT, "accountsemailaddress": "new@acme.example"})
    assert changed["fingerprint"] != mapped["fingerprint"]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"name": "No id"}, "client id is missing"),
        ({"id": "x", "name": "Bad id"}, "client id is not an id"),
        ({"id": 3, "name": "  "}, "client 3 has no name"),
        ("not a dict", "client is not an object"),
    ],
)
def test_map_client_malformed(payload, message):
    with pytest.raises(MappingError, match=message):
        mapping.map_client(payload)


def test_default_billing_rule_accounts_contact_plus_active_invoice_users():
    contacts = mapping.billing_contacts_for_client(CLIENT, USERS, "accounts_and_invoice_users")
    assert [(c["name"], c["email"], c["halopsa_key"]) for c in contacts] == [
        ("Alice Moreno", "accounts@acme.example", "accounts"),  # wins over the user with the same address
        ("Dana Whitfield", "dana@acme.example", "user:1"),
    ]
    assert contacts[1]["halopsa_user_id"] == 1 and contacts[1]["source"] == "invoice_user"


def test_other_billing_rules():
    only_accounts = mapping.billing_contacts_for_client(CLIENT, USERS, "accounts_only")
    assert [c["email"] for c in only_accounts] == ["accounts@acme.example"]
    only_users = mapping.billing_contacts_for_client(CLIENT, USERS, "invoice_users_only")
    assert [c["email"] for c in only_users] == ["ACCOUNTS@acme.example", "dana@acme.example"]
    with pytest.raises(MappingError, match="unknown billing contact rule"):
        mapping.billing_contacts_for_client(CLIENT, USERS, "everyone")


def test_client_without_accounts_email_has_only_users():
    client = {**CLIENT, "accountsemailaddress": "", "accountsfirstname": "", "accountslastname": ""}
    assert [c["email"] for c in mapping.billing_contacts_for_client(client, USERS, "accounts_and_invoice_users")] == [
        "ACCOUNTS@acme.example",
        "dana@acme.example",
    ]


def test_contact_fingerprint_changes_with_name():
    a = mapping.billing_user_contact(USERS[0], "accounts_and_invoice_users")
    b = mapping.billing_user_contact({**USERS[0], "name": "Dana W."}, "accounts_and_invoice_users")
    assert a["fingerprint"] != b["fingerprint"]
    assert mapping.billing_user_contact({**USERS[0], "canaccessinvoices": False}, "accounts_and_invoice_users") is None


def test_unicode_names_survive():
    client = {**CLIENT, "name": "Zürich Ärzte 診療所", "accountsfirstname": "Zoë", "accountslastname": "Ørsted"}
    assert mapping.map_client(client)["name"] == "Zürich Ärzte 診療所"
    assert mapping.billing_contacts_for_client(client, [], "accounts_only")[0]["name"] == "Zoë Ørsted"


# --- invoices -------------------------------------------------------------------------------


def test_map_invoice_fields_lines_and_payments():
    mapped = mapping.map_invoice(invoice_payload())
    assert mapped["halopsa_id"] == 42
    assert mapped["number"] == "10042"
    assert mapped["invoice_date"] == date(2026, 9, 1)
    assert mapped["due_date"] == date(2026, 10, 1)
    assert mapped["currency"] == "USD"
    assert (mapped["total"], mapped["tax"], mapped["subtotal"]) == (
        Decimal("1234.50"),
        Decimal("34.50"),
        Decimal("1200.00"),
    )
    assert (mapped["amount_paid"], mapped["balance"]) == (Decimal("200.00"), Decimal("1034.50"))
    assert mapped["status"] == "partially_paid"
    assert mapped["halopsa_client_id"] == 7
    assert mapped["pdf_attachment_id"] == 1000042
    assert mapped["is_credit_note"] is False
    assert [line["halopsa_id"] for line in mapped["lines"]] == [4201, 4202]
    assert mapped["lines"][1]["tax_rate"] == Decimal("17.2500")
    assert mapped["lines"][1]["tax_amount"] == Decimal("34.50")
    assert [(p["halopsa_id"], p["kind"], p["amount"]) for p in mapped["payments"]] == [
        (421, "payment", Decimal("150.00")),
        (422, "credit", Decimal("50.00")),
    ]
    assert mapped["payments"][0]["paid_on"] == date(2026, 9, 5)


def test_invoice_number_field_is_per_connection():
    assert mapping.map_invoice(invoice_payload(), number_field="thirdpartyinvoicenumber")["number"] == "QB-1042"
    # An invoice without a third-party number still gets HaloPSA's number rather than none.
    assert (
        mapping.map_invoice(invoice_payload(thirdpartyinvoicenumber=""), number_field="thirdpartyinvoicenumber")[
            "number"
        ]
        == "10042"
    )


@pytest.mark.parametrize(
    "overrides, status",
    [
        ({"amountpaid": Decimal("0"), "amountdue": Decimal("1234.50"), "paymentstatus": 0, "payments": []}, "open"),
        ({"amountpaid": Decimal("1234.50"), "amountdue": Decimal("0"), "paymentstatus": 2}, "paid"),
        ({"voided": True}, "void"),
    ],
)
def test_invoice_status(overrides, status):
    assert mapping.map_invoice(invoice_payload(**overrides))["status"] == status


def test_deposits_and_zero_payments_are_left_out():
    payments = [
        {"id": 1, "date": "2026-09-05T00:00:00", "amount": Decimal("10.00"), "type": 2},
        {"id": 2, "date": "2026-09-05T00:00:00", "amount": Decimal("0.00"), "type": 0},
        {"id": 3, "date": "2026-09-05T00:00:00", "amount": Decimal("5.00"), "type": 0},
    ]
    assert [p["halopsa_id"] for p in mapping.map_invoice(invoice_payload(payments=payments))["payments"]] == [3]


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_net_amount_and_amount_due_are_computed(missing):
    line = {
        "id": 1,
        "qty_order": Decimal("2"),
        "unit_price": Decimal("1.255"),
        "net_amount": missing,
        "net_total": Decimal("9"),
    }
    mapped = mapping.map_invoice(invoice_payload(lines=[line], amountdue=missing, amount_remaining=Decimal("1")))
    assert str(mapped["lines"][0]["net_amount"]) == "2.51"  # 2 x 1.2550, not net_total: net_amount is there, empty
    assert str(mapped["balance"]) == "1034.50"


def test_balance_falls_back_to_total_minus_paid():
    payload = invoice_payload()
    del payload["amountdue"]
    assert mapping.map_invoice(payload)["balance"] == Decimal("1034.50")


def test_credit_note_is_recognised_and_keeps_its_negative_total():
    mapped = mapping.map_invoice(
        invoice_payload(
            id=43,
            invoicetype=1,
            creditlinkedtoinvoiceid=42,
            total=Decimal("-50.00"),
            tax_total=Decimal("0"),
            amountpaid=Decimal("-50.00"),
            amountdue=Decimal("0.00"),
            payments=[],
            paymentstatus=2,
            lines=[
                {
                    "id": 4301,
                    "sequenceid": 1,
                    "item_shortdescription": "Credit",
                    "qty_order": 1,
                    "unit_price": Decimal("-50.00"),
                    "net_amount": Decimal("-50.00"),
                    "tax_amount": 0,
                }
            ],
        )
    )
    assert mapped["is_credit_note"] is True
    assert mapped["total"] == Decimal("-50.00")
    assert mapped["lines"][0]["net_amount"] == Decimal("-50.00")


def test_negative_payment_is_a_clear_error():
    payments = [{"id": 9, "date": "2026-09-05T00:00:00", "amount": Decimal("-5.00"), "type": 1, "credit_note_id": 43}]
    with pytest.raises(MappingError, match="invoice 42: payment 9 has a negative amount"):
        mapping.map_invoice(invoice_payload(payments=payments))


def test_empty_lines_and_missing_optional_fields():
    # (lines: null is refused: tests/sync/test_inconsistent_records.py)
    payload = invoice_payload(
        lines=[],
        payments=None,
        tax_total=None,
        currency_code_name=None,
        client_id=0,
        pdf_attachment_id=0,
        duedate="1900-01-01T00:00:00",
    )
    mapped = mapping.map_invoice(payload, default_currency="EUR")
    assert mapped["lines"] == [] and mapped["payments"] == []
    assert mapped["tax"] == Decimal("0.00")
    assert mapped["currency"] == "EUR"
    assert mapped["halopsa_client_id"] is None
    assert mapped["pdf_attachment_id"] is None
    assert mapped["due_date"] is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"total": "abc"}, "invoice 42: total is not a number: 'abc'"),
        ({"total": None}, "invoice 42: total is not a number"),
        ({"lines": "nope"}, "invoice 42: lines is not a list"),
        ({"lines": [{"id": 1, "qty_order": "many"}]}, "invoice 42: line qty_order is not a number"),
        ({"invoice_date": "someday"}, "invoice 42: invoice_date is not a date"),
    ],
)
def test_map_invoice_malformed(overrides, message):
    with pytest.raises(MappingError) as info:
        mapping.map_invoice(invoice_payload(**overrides))
    assert str(info.value).startswith(message)
    assert info.value.halopsa_id == 42


def test_map_invoice_missing_id():
    payload = invoice_payload()
    del payload["id"]
    with pytest.raises(MappingError, match="invoice id is missing") as info:
        mapping.map_invoice(payload)
    assert info.value.halopsa_id is None


def test_unicode_line_descriptions():
    lines = [
        {"id": 1, "item_shortdescription": "Überstunden – 東京 ✓", "qty_order": 1, "unit_price": 1, "net_amount": 1}
    ]
    assert mapping.map_invoice(invoice_payload(lines=lines))["lines"][0]["description"] == "Überstunden – 東京 ✓"


def test_fingerprint_ignores_nothing_that_we_store():
    base = mapping.map_invoice(invoice_payload())
    assert mapping.map_invoice(invoice_payload())["fingerprint"] == base["fingerprint"]
    for change in ({"duedate": "2026-11-01T00:00:00"}, {"pdf_attachment_id": 5}, {"client_id": 8}):
        assert mapping.map_invoice(invoice_payload(**change))["fingerprint"] != base["fingerprint"]


def test_payload_parsed_as_json_with_decimal():
    text = json.dumps({**invoice_payload(), "total": 0, "tax_total": 0}, default=str).replace(
        '"total": 0', '"total": 1234.5'
    )
    payload = json.loads(text, parse_float=Decimal)
    assert mapping.map_invoice(payload)["total"] == Decimal("1234.50")
