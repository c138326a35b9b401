"""Pure unit tests: error-body parsing, Retry-After, query dates, Decimal JSON, address rules, budget."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime

import pytest
import requests
from django.core.cache.backends.locmem import LocMemCache

from integrations.halopsa.budget import RequestBudget
from integrations.halopsa.client import (
    HaloClient,
    dumps_json,
    extract_error_message,
    format_query_datetime,
    parse_json,
    parse_retry_after,
)
from integrations.halopsa.exceptions import HaloRateLimited, UnsafeURLError
from integrations.halopsa.outbound import address_refusal, validate_url


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "invalid_client", "error_description": "Invalid client credentials"}, "Invalid client credentials"),
        ({"error": "invalid_client"}, "invalid_client"),
        ({"ClassName": "System.Exception", "Message": "Invoice is locked"}, "Invoice is locked"),
        (
            {"Message": "The request is invalid.", "MessageDetail": "id must be set"},
            "The request is invalid. id must be set",
        ),
        ({"message": "lower case key"}, "lower case key"),
        ({"resultCode": 3, "errorMessage": "Amount exceeds the balance"}, "Amount exceeds the balance"),
        ("Something went wrong", "Something went wrong"),
        ({"id": "Invoice 12 not found"}, "id: Invoice 12 not found"),
        ({"[0].amount": ["must be positive"]}, "[0].amount: must be positive"),
        ([{"Message": "first"}, {"Message": "second"}], "first"),
        ({"errors": {"date": ["bad date"]}}, "date: bad date"),
        ({}, ""),
        (None, ""),
        (42, ""),
    ],
)
def test_extract_error_message_handles_every_halo_body_shape(body, expected):
    assert extract_error_message(body) == expected


def test_extract_error_message_parses_raw_bytes_and_strips_html():
    assert extract_error_message(b'{"Message": "from bytes"}') == "from bytes"
    assert extract_error_message(b'"bare json string"') == "bare json string"
    assert extract_error_message(b"<html><body><h1>502 Bad Gateway</h1></body></html>") == "502 Bad Gateway"
    assert extract_error_message(b"Rate Limit Reached - 300 Requests per rolling 5 minute window") == (
        "Rate Limit Reached - 300 Requests per rolling 5 minute window"
    )


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(header, now=now.timestamp()) == pytest.approx(30.0)


def test_query_datetimes_are_utc_without_offset():
    aware = datetime(2026, 3, 1, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_query_datetime(aware) == "2026-03-01T12:30:05"
    assert format_query_datetime(datetime(2026, 3, 1, 9, 0)) == "2026-03-01T09:00:00"
    assert format_query_datetime(date(2026, 3, 1)) == "2026-03-01T00:00:00"


def test_json_numbers_are_decimal_both_ways():
    parsed = parse_json(b'{"total": 1234.10, "id": 7, "tiny": 0.1}')
    assert parsed == {"total": Decimal("1234.10"), "id": 7, "tiny": Decimal("0.1")}
    assert isinstance(parsed["id"], int)
    body = dumps_json([{"amount": Decimal("1234.10"), "n": Decimal("0.10000000000000001"), "ref": "x"}])
    assert body == b'[{"amount":1234.10,"n":0.10000000000000001,"ref":"x"}]'
    with pytest.raises(ValueError):
        dumps_json({"amount": Decimal("NaN")})


def test_request_bodies_keep_the_bytes_the_standard_library_wrote():
    # orjson writes the body; HaloPSA still gets what json.dumps(ensure_ascii) sent: text past
    # printable ASCII escaped (surrogate pairs beyond the BMP), dates in the query form, key order.
    payload = [
        {
            "reference": "Zoë \u2028 \x7f \U0001f600",
            "date": date(2026, 3, 1),
            7: True,
            "when": datetime(2026, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))),
            "none": None,
            "amounts": (Decimal("-0.00"), Decimal("1E+3"), Decimal("5E-8")),
        }
    ]
    assert dumps_json(payload) == (
        b'[{"reference":"Zo\\u00eb \\u2028 \\u007f \\ud83d\\ude00","date":"2026-03-01T00:00:00","7":true,'
        b'"when":"2026-03-01T12:30:00","none":null,"amounts":[-0.00,1000,0.00000005]}]'
    )
    with pytest.raises(TypeError):
        dumps_json({"at": time(9, 0)})


@pytest.mark.parametrize(
    "payload",
    [
        {
            "total": Decimal("1234.10"),
            "big": Decimal("1E+3"),
            "lines": [{"q": Decimal("0.0000001")}],
            "ok": True,
            "n": None,
            "zero": Decimal("0E-10"),
            "small": Decimal("0.000001"),
            "neg": Decimal("-5E-8"),
        },
        parse_json(b'{"bad": NaN, "worse": [-Infinity], "fine": 1.5}'),  # NaN is not JSON: stored as text
        {1: "int key", "date": date(2026, 1, 2), "when": datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)},
        {"huge": 2**70, "text": "Zoë \u00e9 \u2028"},
        [Decimal("-0.00"), 7, -1.25],
    ],
)
def test_payload_encoder_stores_what_json_safe_gives(payload):
    from integrations.halopsa.payloads import PayloadEncoder, json_safe

    stored = json.dumps(payload, cls=PayloadEncoder)

    assert json.loads(stored, parse_constant=_no_constant) == json.loads(json.dumps(json_safe(payload)))


def _no_constant(name):
    raise AssertionError(f"{name} written into a JSON column")


def test_nan_and_infinity_literals_parse_to_floats_the_mapping_refuses_and_store_as_text():
    from integrations.halopsa.mapping import MappingError, parse_money
    from integrations.halopsa.payloads import PayloadEncoder

    parsed = parse_json(b'{"total": NaN, "due": Infinity}')

    assert isinstance(parsed["total"], float) and parsed["total"] != parsed["total"]
    with pytest.raises(MappingError, match="total is not a number: 'nan'"):
        parse_money(parsed["total"], "total")
    assert json.loads(json.dumps(parsed, cls=PayloadEncoder)) == {"total": "nan", "due": "inf"}


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:a00:1::1",
        "64:ff9b::a00:1",
        "224.0.0.1",
        "198.18.0.1",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert address_refusal(address, allow_private=False) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert address_refusal(address, allow_private=False) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"])
def test_metadata_addresses_are_refused_even_when_private_networks_are_allowed(address):
    assert address_refusal(address, allow_private=True) is not None
    assert address_refusal("127.0.0.1", allow_private=True) is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://halo.example.com", "https://"),
        ("ftp://halo.example.com", "https://"),
        ("https://user:pw@halo.example.com", "user name or password"),
        ("https://user@halo.example.com", "user name or password"),
        ("https://", "no host"),
        ("https://127.0.0.1", "does not call"),
        ("https://[::1]:8443", "does not call"),
        ("https://halo.example.com:99999", "not a valid URL"),
    ],
)
def test_validate_url_refuses_unsafe_urls(url, fragment):
    with pytest.raises(UnsafeURLError) as caught:
        validate_url(url, allow_private=False)
    assert fragment in caught.value.message
    assert caught.value.permanent
    assert caught.value.refused_address == (fragment == "does not call")


def test_validate_url_allows_http_loopback_only_with_the_setting():
    validate_url("http://127.0.0.1:8080", allow_private=True)
    validate_url("https://acme.halopsa.com", allow_private=False)


def _response(status: int, body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    return response


def test_expired_token_detection_covers_401_and_the_400_some_instances_send():
    looks = HaloClient._looks_like_expired_token
    assert looks(_response(401, b'{"Message": "Authorization has been denied for this request."}'))
    assert looks(_response(400, b'{"error": "invalid_token", "error_description": "The token is expired"}'))
    assert looks(_response(400, b'{"Message": "Token has expired"}'))
    assert not looks(_response(400, b'{"Message": "Amount must be positive"}'))
    assert not looks(_response(403, b'{"Message": "token expired"}'))


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _budget(clock: FakeClock, **kwargs) -> RequestBudget:
    cache = LocMemCache("budget-test", {})
    cache.clear()
    return RequestBudget("conn:1", cache=cache, clock=clock, sleep=clock.sleep, **kwargs)


def test_budget_keeps_headroom_and_refuses_long_waits():
    clock = FakeClock()
    budget = _budget(clock, limit=20, window=60, max_wait=5)
    assert budget.capacity == 19
    for _ in range(19):
        budget.acquire()
        clock.now += 0.1
    with pytest.raises(HaloRateLimited) as caught:
        budget.acquire()
    assert 50 < caught.value.retry_after <= 62
    assert clock.slept == []


def test_budget_waits_for_a_slot_when_the_wait_is_short():
    clock = FakeClock()
    budget = _budget(clock, limit=10, window=10, max_wait=30)
    for _ in range(9):
        budget.acquire()
    budget.acquire()  # the 10th waits until the first bucket leaves the window
    assert len(clock.slept) >= 1
    assert 9.5 <= sum(clock.slept) <= 11


def test_budget_is_a_rolling_window_shared_by_key():
    clock = FakeClock()
    cache = LocMemCache("budget-shared", {})
    cache.clear()
    first = RequestBudget("conn:7", limit=5, window=100, max_wait=0, cache=cache, clock=clock, sleep=clock.sleep)
    second = RequestBudget("conn:7", limit=5, window=100, max_wait=0, cache=cache, clock=clock, sleep=clock.sleep)
    other = RequestBudget("conn:8", limit=5, window=100, max_wait=0, cache=cache, clock=clock, sleep=clock.sleep)
    for _ in range(2):
        first.acquire()
        second.acquire()
    with pytest.raises(HaloRateLimited):
        first.acquire()  # capacity 4 (5 less 5 % headroom) used by the two clients together
    other.acquire()  # another connection has its own budget
    clock.now += 105
    first.acquire()  # the window rolled on


def test_budget_fails_open_when_the_cache_is_broken():
    class Broken:
        def add(self, *a, **k):
            raise RuntimeError("no cache table")

    clock = FakeClock()
    budget = RequestBudget("conn:1", limit=1, window=10, cache=Broken(), clock=clock, sleep=clock.sleep)
    for _ in range(5):
        budget.acquire()
    assert clock.slept == []
