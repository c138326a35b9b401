"""A slow, huge, endless or garbled HaloPSA cannot hold a worker or its memory (issue 17 items 9, 10, 12).

The partner types the HaloPSA URL, so the server may be their own. Each test gives the client
small limits and a server that misbehaves on purpose (the sandbox's fault modes, or a stub on
127.0.0.1), and checks that the client ends with a clear error well within the limit.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from decimal import Decimal

import pytest

from integrations.halopsa.client import Page
from integrations.halopsa.exceptions import HaloBadResponse, HaloDeadlineReached, HaloTimeout
from integrations.halopsa.payloads import INVALID_TEXT_KEY, parse_json

# --- one whole request, however slowly it arrives ------------------------------------------------


def test_a_body_trickling_in_ends_at_the_request_deadline(halo_sandbox, make_client, sleeps):
    # One byte every 20 ms: never a read timeout (1 s), but the 7 invoices' page would take minutes.
    halo_sandbox.add_fault("trickle", path="/api/Invoice", chunk=1, delay=0.02, count=5)
    client = make_client(halo_sandbox, read_timeout=1, request_deadline=0.5, max_retries=3)
    started = time.monotonic()
    with pytest.raises(HaloTimeout) as caught:
        list(client.iter_invoices())
    elapsed = time.monotonic() - started
    assert "longer than 0.5 seconds" in caught.value.message and "/api/Invoice" in caught.value.message
    # Tried twice (a whole deadline is retried once), each cut at the deadline.
    assert halo_sandbox.count_requests("/api/Invoice") == 2 and client.stats.retries == 1
    assert elapsed < 5


def test_a_slow_request_keeps_its_connection_pool_usable(halo_sandbox, make_client):
    halo_sandbox.add_fault("trickle", path="/api/Invoice", chunk=1, delay=0.02, count=1)
    client = make_client(halo_sandbox, request_deadline=0.3, max_retries=0)
    with pytest.raises(HaloTimeout):
        client.get_invoice(1)
    assert client.get_invoice(1)["id"] == 1  # a fresh connection, the same client


def test_headers_trickling_in_end_at_the_request_deadline(make_client):
    """The deadline covers the status line and headers too, not only the body."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def trickle_headers():
        while not stop.is_set():
            try:
                server.settimeout(0.1)
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10_000:
                        conn.sendall(bytes([byte]))
                        time.sleep(0.02)
                        if stop.is_set():
                            break
                except OSError:
                    pass

    thread = threading.Thread(target=trickle_headers, daemon=True)
    thread.start()
    try:
        client = make_client(
            None,
            base_url=f"http://127.0.0.1:{server.getsockname()[1]}",
            read_timeout=1,
            request_deadline=0.4,
            max_retries=0,
        )
        client._token = type("T", (), {"value": "t", "expires_at": time.monotonic() + 60})()
        started = time.monotonic()
        with pytest.raises(HaloTimeout):
            client.get_client(1)
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join(5)
        server.close()


# --- the size of an answer -----------------------------------------------------------------------


@pytest.mark.parametrize("declare_length", [True, False])
def test_an_answer_larger_than_the_cap_is_refused_without_reading_it_whole(halo_sandbox, make_client, declare_length):
    halo_sandbox.add_fault("huge_body", path="/api/Invoice", size=5_000_000, declare_length=declare_length, count=5)
    client = make_client(halo_sandbox, max_response_bytes=200_000)
    with pytest.raises(HaloBadResponse) as caught:
        list(client.iter_invoices())
    assert (
        "larger than the 0.190735 MB" in caught.value.message and "HALOPSA_MAX_RESPONSE_BYTES" in caught.value.message
    )
    assert halo_sandbox.count_requests("/api/Invoice") == 1  # refused, not retried
    # By its Content-Length nothing is read; without one, reading stops at the cap (one chunk past at most).
    assert client.stats.bytes < (1_000 if declare_length else 200_000 + 64 * 1024)


def test_an_answer_under_the_cap_is_read_as_usual(halo_sandbox, make_client):
    client = make_client(halo_sandbox, max_response_bytes=200_000)
    assert len(list(client.iter_invoices())) == len(halo_sandbox.store.query_invoice_ids())


# --- paging that does not end ----------------------------------------------------------------------


def test_pages_that_repeat_stop_the_read_at_the_second_page(halo_sandbox, make_client):
    halo_sandbox.add_fault("endless_pages", path="/api/Invoice", ratio=1)
    client = make_client(halo_sandbox)
    with pytest.raises(HaloBadResponse) as caught:
        list(client.invoice_pages(page_size=3))
    assert "page 2 of /api/Invoice" in caught.value.message and "already sent" in caught.value.message
    assert halo_sandbox.count_requests("/api/Invoice") == 2


def _fresh_rows_forever(stub, *, claimed: int):
    """A list that says it holds `claimed` records (more on each page), and serves new ids on every
    page (up to 60 pages, so a client without a bound still ends)."""

    def page(query):
        number = int(query["page_no"])
        rows = [] if number > 60 else [{"id": number * 1000 + i, "name": f"c{number}-{i}"} for i in range(100)]
        body = {"page_no": number, "page_size": 100, "record_count": claimed + number * 100, "clients": rows}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    stub.routes[("GET", "/api/Client")] = page


def test_a_list_running_past_its_record_count_stops(stub_halo, make_client, settings):
    settings.HALOPSA_LIST_EXTRA_PAGES = 3
    _fresh_rows_forever(stub_halo, claimed=150)  # page 1 says 250 records: 3 pages, 3 more allowed
    client = make_client(None, base_url=stub_halo.url)
    read = []
    with pytest.raises(HaloBadResponse) as caught:
        for page in client.client_pages():
            read.append(page.page_no)
    assert read == [1, 2, 3, 4, 5, 6]
    assert "went on past page 6" in caught.value.message and "250 records" in caught.value.message


def test_the_margin_grows_with_a_long_list(stub_halo, make_client, settings):
    settings.HALOPSA_LIST_EXTRA_PAGES = 1
    _fresh_rows_forever(stub_halo, claimed=4_900)  # 50 pages said: a tenth (5) more allowed, not 1
    client = make_client(None, base_url=stub_halo.url)
    with pytest.raises(HaloBadResponse, match="past page 55"):
        list(client.client_pages())


def test_rows_repeated_by_page_drift_are_read_once(halo_sandbox, make_client):
    ids = list(halo_sandbox.store.query_invoice_ids())
    halo_sandbox.add_fault("page_drift", path="/api/Invoice", shift=1, ratio=1)  # a row added before page 2
    pages = list(make_client(halo_sandbox).invoice_pages(page_size=3))
    read = [r["id"] for page in pages for r in page.records]
    assert read == ids  # each once, in order, none lost
    # Only the page after the insertion repeats a row: the later ones moved with it.
    assert [page.repeated for page in pages] == [0, 1, 0]


def test_a_page_of_the_default_shape_reports_no_repeats():
    assert Page(records=[], record_count=0, page_no=1).repeated == 0


# --- the caller's own deadline (a sync run's end) -------------------------------------------------------


def test_no_request_starts_after_the_callers_deadline(halo_sandbox, make_client):
    client = make_client(halo_sandbox, deadline=time.monotonic() - 1)
    with pytest.raises(HaloDeadlineReached):
        client.get_client(1)
    assert halo_sandbox.count_requests() == 0


def test_a_retry_that_would_wait_past_the_deadline_is_not_waited_for(halo_sandbox, make_client, sleeps):
    halo_sandbox.add_fault("status", status=429, retry_after=60, path="/api/Client/1", count=1)
    client = make_client(halo_sandbox, deadline=time.monotonic() + 30)
    with pytest.raises(HaloDeadlineReached) as caught:
        client.get_client(1)
    assert "GET /api/Client/1" in caught.value.message
    assert sleeps.calls == []


def test_a_request_is_cut_at_the_callers_deadline(halo_sandbox, make_client):
    halo_sandbox.add_fault("trickle", path="/api/Client/1", chunk=1, delay=0.05, count=3)
    client = make_client(halo_sandbox, request_deadline=60)
    client.get_json("InstanceInfo")  # the token, before the deadline is set
    client.deadline = time.monotonic() + 0.4
    started = time.monotonic()
    with pytest.raises(HaloDeadlineReached):
        client.get_client(1)
    assert time.monotonic() - started < 5
    assert halo_sandbox.count_requests("/api/Client/1") == 1  # no retry after the caller's time ran out


def test_the_budget_is_not_waited_for_past_the_deadline(halo_sandbox, make_client, sleeps):
    client = make_client(
        halo_sandbox, rate_limit=3, rate_window=300, budget_max_wait=600, deadline=time.monotonic() + 30
    )
    with pytest.raises(HaloDeadlineReached, match="request budget"):
        for _ in range(5):  # the window's few slots are spent, then the next wait (about 300 s) is not started
            client.get_client(1)
    assert sleeps.calls == []


# --- text that is not UTF-8 ------------------------------------------------------------------------------


@pytest.mark.default_wire_shape(reason="the fault writes into client_name, which nulls_omitted may leave out")
def test_a_byte_that_is_not_utf8_marks_its_record_and_spares_the_page(halo_sandbox, make_client):
    halo_sandbox.add_fault("invalid_utf8", path="/api/Invoice", count=5)
    records = list(make_client(halo_sandbox).iter_invoices())
    marked = [r for r in records if INVALID_TEXT_KEY in r]
    assert len(records) == len(halo_sandbox.store.query_invoice_ids()) and len(marked) == 1
    assert marked[0][INVALID_TEXT_KEY] == ["client_name"] and marked[0]["client_name"] == "Caf\ufffd"
    assert halo_sandbox.count_requests("/api/Invoice") == 1  # read once: nothing to retry


def test_marking_names_nested_fields_keys_and_leaves_valid_pages_alone():
    body = (
        b'{"record_count":2,"columns":["\xff"],"invoices":[{"id":1,"lines":[{"d":"ok"},{"d":"x\xfe"}],'
        b'"k\xe9y":1},{"id":2,"client_name":"fine","total":1.5}]}'
    )
    parsed = parse_json(body, mark_invalid_text=True)
    first, second = parsed["invoices"]
    assert first[INVALID_TEXT_KEY] == ["lines[1].d", "k\ufffdy"] and first["lines"][1]["d"] == "x\ufffd"
    assert INVALID_TEXT_KEY not in second and second["total"] == Decimal("1.5")
    assert parsed["columns"] == ["\ufffd"]  # outside any record: replaced, nothing fails
    single = parse_json(b'{"id":7,"name":"Caf\xe9"}', mark_invalid_text=True)
    assert single[INVALID_TEXT_KEY] == ["name"]
    with pytest.raises(ValueError):
        parse_json(body)  # without marking (webhook bodies): refused as before
    valid = b'{"record_count":1,"invoices":[{"id":1,"client_name":"Caf\xc3\xa9"}]}'
    assert INVALID_TEXT_KEY not in parse_json(valid, mark_invalid_text=True)["invoices"][0]


# --- id-only lists (the deletion sweep's second look) ------------------------------------------------------


def test_listed_ids_reads_a_whole_list_in_one_call(halo_sandbox, make_client):
    client = make_client(halo_sandbox)
    assert client.listed_ids("invoices") == set(halo_sandbox.store.query_invoice_ids())
    assert client.listed_ids("clients") == {c["id"] for c in client.iter_clients()}
    assert [e["query"].get("idonly") for e in halo_sandbox.request_log if e["path"] == "/api/Invoice"] == ["true"]


def test_listed_ids_refuses_an_answer_that_is_not_the_whole_list(stub_halo, make_client):
    stub_halo.route("GET", "/api/Invoice", 200, {"record_count": 300, "invoices": [{"id": 1}, {"id": 2}]})
    with pytest.raises(HaloBadResponse, match="2 of the 300"):
        make_client(None, base_url=stub_halo.url).listed_ids("invoices")
