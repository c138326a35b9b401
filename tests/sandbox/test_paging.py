"""HaloPSA paging conventions: pageinate/page_size/page_no, 100-row cap, record_count, envelopes."""

from __future__ import annotations

import pytest

from tests.plugins.sandbox import halo_session_for


def _page(session, url, path, **params):
    response = session.get(f"{url}{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def exact_server(halo_sandbox_factory):
    # 200 clients exactly; 200 invoice records when credit notes are included.
    server = halo_sandbox_factory(dataset={"customers": 200, "contacts": 250, "invoices": 200, "max_lines": 3})
    session = halo_session_for(server)
    yield server, session
    session.close()


def test_exact_multiple_of_page_size_has_no_extra_page(exact_server):
    server, session = exact_server
    first = _page(
        session, server.url, "/api/Client", pageinate="true", page_size=100, page_no=1, includeinactive="true"
    )
    second = _page(
        session, server.url, "/api/Client", pageinate="true", page_size=100, page_no=2, includeinactive="true"
    )
    third = _page(
        session, server.url, "/api/Client", pageinate="true", page_size=100, page_no=3, includeinactive="true"
    )
    assert first["record_count"] == second["record_count"] == third["record_count"] == 200
    assert (first["page_no"], first["page_size"]) == (1, 100)
    assert len(first["clients"]) == len(second["clients"]) == 100
    assert third["clients"] == []
    ids = [c["id"] for c in first["clients"] + second["clients"]]
    assert ids == sorted(set(ids)) and len(ids) == 200


def test_page_size_above_cap_is_served_as_100_with_full_record_count(exact_server):
    server, session = exact_server
    body = _page(
        session, server.url, "/api/Invoice", pageinate="true", page_size=1000, page_no=1, includecredits="true"
    )
    assert body["record_count"] == 200
    assert body["page_size"] == 100
    assert len(body["invoices"]) == 100


def test_last_partial_page(exact_server):
    server, session = exact_server
    body = _page(session, server.url, "/api/Client", pageinate="true", page_size=30, page_no=7, includeinactive="true")
    assert body["record_count"] == 200
    assert len(body["clients"]) == 20  # 6 * 30 = 180, 20 left
    pages = [
        _page(session, server.url, "/api/Client", pageinate="true", page_size=30, page_no=n, includeinactive="true")
        for n in range(1, 8)
    ]
    ids = [c["id"] for page in pages for c in page["clients"]]
    assert len(ids) == len(set(ids)) == 200


def test_empty_result_still_has_envelope(halo_sandbox, halo_session):
    body = _page(
        halo_session, halo_sandbox.url, "/api/Invoice", pageinate="true", page_size=50, page_no=1, client_id=99999
    )
    assert body == {"page_no": 1, "page_size": 50, "record_count": 0, "invoices": []}


def test_page_beyond_end_is_empty_and_bad_numbers_fall_back(halo_sandbox, halo_session):
    body = _page(halo_session, halo_sandbox.url, "/api/Users", pageinate="true", page_size=5, page_no=99)
    assert body["users"] == [] and body["record_count"] > 0
    body = _page(halo_session, halo_sandbox.url, "/api/Users", pageinate="true", page_size="abc", page_no="-3")
    assert body["page_no"] == 1 and body["page_size"] == 50


def test_without_pageinate_all_rows_or_count(halo_sandbox, halo_session):
    body = _page(halo_session, halo_sandbox.url, "/api/Invoice")
    assert body["record_count"] == len(body["invoices"]) == 7  # 8 records minus 1 credit note
    assert "page_no" not in body
    body = _page(halo_session, halo_sandbox.url, "/api/Invoice", count=2)
    assert len(body["invoices"]) == 2 and body["record_count"] == 7


def test_paths_are_case_insensitive_and_unknown_params_ignored(halo_sandbox, halo_session):
    a = _page(halo_session, halo_sandbox.url, "/api/invoice")
    b = _page(halo_session, halo_sandbox.url, "/API/INVOICE", no_such_filter="x", datesearch="bogus")
    assert a == b


def test_ordering(halo_sandbox, halo_session):
    body = _page(halo_session, halo_sandbox.url, "/api/Invoice", order="id", orderdesc="true")
    ids = [i["id"] for i in body["invoices"]]
    assert ids == sorted(ids, reverse=True)
    body = _page(halo_session, halo_sandbox.url, "/api/Invoice", order="last_modified")
    stamps = [i["last_modified"] for i in body["invoices"]]
    assert stamps == sorted(stamps)
