"""Fault injection: every mode, count and ratio, path/method matching, bad control requests."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import requests


def _fault(server, **body):
    response = requests.post(f"{server.url}/_sandbox/faults", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def test_status_fault_for_next_k_requests_with_retry_after(halo_sandbox, halo_session):
    url = halo_sandbox.url
    _fault(halo_sandbox, mode="status", status=429, retry_after=3, count=2, path="/api/Invoice")
    first = halo_session.get(f"{url}/api/Invoice")
    assert first.status_code == 429 and first.headers["Retry-After"] == "3"
    assert halo_session.get(f"{url}/api/Client").status_code == 200  # other path unaffected
    assert halo_session.get(f"{url}/api/invoice").status_code == 429  # prefix is case-insensitive
    assert halo_session.get(f"{url}/api/Invoice").status_code == 200  # count used up


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_faults(halo_sandbox, halo_session, status):
    _fault(halo_sandbox, mode="status", status=status)
    response = halo_session.get(f"{halo_sandbox.url}/api/Client")
    assert response.status_code == status and "Retry-After" not in response.headers
    assert halo_sandbox.request_log[-1]["status"] == status and halo_sandbox.request_log[-1]["fault"] == "status"


def test_method_filter(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="status", status=500, method="POST")
    assert halo_session.get(f"{halo_sandbox.url}/api/Invoice").status_code == 200
    response = halo_session.post(f"{halo_sandbox.url}/api/InvoicePayment", json=[{"invoice_id": 1, "amount": 1}])
    assert response.status_code == 500
    # nothing was recorded
    assert halo_sandbox.store.get_invoice(1).amountpaid == 0


def test_slow_fault(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="slow", delay=0.4)
    started = time.monotonic()
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 200
    assert time.monotonic() - started >= 0.4
    with pytest.raises(requests.exceptions.ReadTimeout):
        _fault(halo_sandbox, mode="slow", delay=1.0)
        halo_session.get(f"{halo_sandbox.url}/api/Client", timeout=0.3)


def test_drop_closes_without_response(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        halo_session.get(f"{halo_sandbox.url}/api/Client")
    assert halo_sandbox.request_log[-1]["fault"] == "drop"
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 200  # server still fine


def test_lost_response_commits_the_payment(halo_sandbox, halo_session):
    url = halo_sandbox.url
    before = halo_sandbox.store.get_invoice(1).amountdue
    _fault(halo_sandbox, mode="lost_response", path="/api/InvoicePayment", method="POST")
    with pytest.raises(requests.exceptions.ConnectionError):
        halo_session.post(
            f"{url}/api/InvoicePayment", json=[{"invoice_id": 1, "amount": "25.00", "thirdpartyid": "ALT-PAY-1"}]
        )
    # The write happened even though the client never saw a response; it can find it by thirdpartyid.
    assert halo_sandbox.store.get_invoice(1).amountdue == before - Decimal("25.00")
    found = halo_session.get(f"{url}/api/InvoicePayment", params={"invoice_id": 1, "search": "ALT-PAY-1"}).json()
    assert found["record_count"] == 1 and found["invoicepayments"][0]["thirdpartyid"] == "ALT-PAY-1"


def test_malformed_json_is_truncated_200(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="malformed_json")
    response = halo_session.get(f"{halo_sandbox.url}/api/Invoice")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.text)


def test_malformed_record_keeps_page_valid(halo_sandbox, halo_session):
    clean = halo_session.get(f"{halo_sandbox.url}/api/Invoice").json()["invoices"]
    _fault(halo_sandbox, mode="malformed_record", count=4)
    broken = []
    for _ in range(4):
        page = halo_session.get(f"{halo_sandbox.url}/api/Invoice").json()  # still valid JSON
        assert len(page["invoices"]) == len(clean)
        bad = [i for i in page["invoices"] if "id" not in i or i.get("total") == "abc"]
        assert len(bad) == 1
        broken.append("id" in bad[0])
    assert halo_session.get(f"{halo_sandbox.url}/api/Invoice").json()["invoices"] == clean


def test_malformed_record_on_single_object(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="malformed_record", path="/api/Invoice/1")
    body = halo_session.get(f"{halo_sandbox.url}/api/Invoice/1").json()
    assert "id" not in body or body["total"] == "abc"


def test_expire_token_fault(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="expire_token", path="/api/")
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 401
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 401  # token really gone


def test_ratio_faults_are_seeded(halo_sandbox_factory):
    from tests.plugins.sandbox import halo_session_for

    outcomes = []
    for _ in range(2):
        server = halo_sandbox_factory(seed=7, rate_limit=0)
        session = halo_session_for(server)
        server.add_fault("status", status=503, ratio=0.3, path="/api/Client")
        outcomes.append([session.get(f"{server.url}/api/Client").status_code for _ in range(40)])
    assert outcomes[0] == outcomes[1]
    assert 4 <= outcomes[0].count(503) <= 20


def test_fault_list_and_clear(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="status", status=500, count=5)
    assert requests.get(f"{halo_sandbox.url}/_sandbox/faults", timeout=10).json()[0]["count"] == 5
    requests.delete(f"{halo_sandbox.url}/_sandbox/faults", timeout=10)
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 200


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/_sandbox/faults", {"mode": "explode"}),
        ("POST", "/_sandbox/faults", {"mode": "status", "count": -1}),
        ("POST", "/_sandbox/faults", {"mode": "status", "ratio": 3}),
        ("PATCH", "/_sandbox/invoices/abc", {"amount": 1}),
        ("PATCH", "/_sandbox/invoices/1", {"amount": "lots"}),
        ("PATCH", "/_sandbox/invoices/1", {"no_such_field": 1}),
        ("PATCH", "/_sandbox/clients/1", {"colour": "red"}),
        ("POST", "/_sandbox/invoices/1/payments", {"amount": -5}),
        ("POST", "/_sandbox/reset", {"dataset": "nope"}),
        ("PUT", "/_sandbox/version", {}),
        ("POST", "/_sandbox/webhooks", {"url": "ftp://x"}),
    ],
)
def test_bad_control_requests_get_400_and_server_survives(halo_sandbox, halo_session, method, path, body):
    response = requests.request(method, f"{halo_sandbox.url}{path}", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 200


def test_control_body_not_json_and_unknown_endpoint(halo_sandbox):
    response = requests.post(f"{halo_sandbox.url}/_sandbox/faults", data=b"{nope", timeout=10)
    assert response.status_code == 400
    assert requests.get(f"{halo_sandbox.url}/_sandbox/nothing", timeout=10).status_code == 404
    assert requests.delete(f"{halo_sandbox.url}/_sandbox/invoices/999", timeout=10).status_code == 404


# --- a hostile or broken server (issue 17 items 9-12) ---------------------------------------------


def _invoice_page(session, server, page_no, **params):
    query = {"pageinate": "true", "page_size": 3, "page_no": page_no, **params}
    return session.get(f"{server.url}/api/Invoice", params=query)


def test_query_match_fires_only_on_the_named_parameters(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="status", status=500, path="/api/Invoice", query={"page_no": "2"})
    assert _invoice_page(halo_session, halo_sandbox, 1).status_code == 200
    assert _invoice_page(halo_session, halo_sandbox, 2).status_code == 500


def test_trickle_sends_the_same_body_a_few_bytes_at_a_time(halo_sandbox, halo_session):
    expected = halo_session.get(f"{halo_sandbox.url}/api/InstanceInfo").content
    _fault(halo_sandbox, mode="trickle", chunk=len(expected) // 4 + 1, delay=0.05)
    started = time.monotonic()
    response = halo_session.get(f"{halo_sandbox.url}/api/InstanceInfo", stream=True)
    assert response.headers["Content-Length"] == str(len(expected))
    pieces = list(response.iter_content(None))
    assert b"".join(pieces) == expected and time.monotonic() - started >= 0.15  # 4 pieces, 0.05 s apart
    assert halo_sandbox.request_log[-1]["fault"] == "trickle"


@pytest.mark.parametrize("declare_length", [True, False])
def test_huge_body_is_streamed_with_or_without_its_length(halo_sandbox, halo_session, declare_length):
    _fault(halo_sandbox, mode="huge_body", size=300_000, declare_length=declare_length)
    response = halo_session.get(f"{halo_sandbox.url}/api/Invoice")
    assert response.status_code == 200 and len(response.content) == 300_000
    assert ("Content-Length" in response.headers) is declare_length
    assert response.json()["invoices"][0]["id"] == 1


def test_endless_pages_repeat_the_first_page_and_claim_far_more(halo_sandbox, halo_session):
    truth = _invoice_page(halo_session, halo_sandbox, 1).json()
    _fault(halo_sandbox, mode="endless_pages", path="/api/Invoice", count=2)
    second, third = (_invoice_page(halo_session, halo_sandbox, n).json() for n in (2, 3))
    for page, number in ((second, 2), (third, 3)):
        assert [r["id"] for r in page["invoices"]] == [r["id"] for r in truth["invoices"]]
        assert page["page_no"] == number and page["record_count"] == truth["record_count"] * 1000


@pytest.mark.parametrize("shift", [1, -1])
def test_page_drift_moves_pages_from_the_second_on(halo_sandbox, halo_session, shift):
    ids = [r["id"] for n in (1, 2, 3) for r in _invoice_page(halo_session, halo_sandbox, n).json()["invoices"]]
    _fault(halo_sandbox, mode="page_drift", shift=shift, path="/api/Invoice", ratio=1)
    first = _invoice_page(halo_session, halo_sandbox, 1).json()
    second = _invoice_page(halo_session, halo_sandbox, 2).json()
    assert [r["id"] for r in first["invoices"]] == ids[:3]  # page 1 as it was
    # Added rows: the last row of page 1 comes again; deleted ones: the first row of page 2 is skipped.
    assert [r["id"] for r in second["invoices"]] == (ids[2:5] if shift == 1 else ids[4:7])
    assert second["record_count"] == first["record_count"] + shift
    assert halo_sandbox.store.get_invoice(ids[3]) is not None  # the data did not change


def test_invalid_utf8_breaks_one_record_of_a_valid_page(halo_sandbox, halo_session):
    _fault(halo_sandbox, mode="invalid_utf8", path="/api/Invoice")
    raw = halo_session.get(f"{halo_sandbox.url}/api/Invoice").content
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert raw.count(b'"Caf\xe9"') == 1
    page = json.loads(raw.decode("utf-8", "replace"))
    assert sum(r["client_name"] == "Caf\ufffd" for r in page["invoices"]) == 1


def test_new_modes_validate_their_options(halo_sandbox):
    for body in (
        {"mode": "trickle", "chunk": 0},
        {"mode": "huge_body", "size": -1},
        {"mode": "status", "query": "page_no=2"},
    ):
        assert requests.post(f"{halo_sandbox.url}/_sandbox/faults", json=body, timeout=10).status_code == 400
