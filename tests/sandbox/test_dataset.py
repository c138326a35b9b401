"""The seeded generator: determinism, coverage of the tiny dataset, bench size without blowing up,
and ground truth that agrees with what the API serves."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import requests

from halosandbox import Store
from halosandbox.dataset import resolve_dataset
from tests.plugins.sandbox import halo_session_for

BENCH = {"customers": 2000, "contacts": 10000, "billing_contacts": 3000, "invoices": 100_000, "max_lines": 8}


def test_same_seed_same_data_different_seed_different_data():
    a, b, c = Store("demo", seed=5), Store("demo", seed=5), Store("demo", seed=6)
    assert a.ground_truth() == b.ground_truth()
    assert a.ground_truth() != c.ground_truth()


def test_record_is_independent_of_request_order():
    store = Store({"customers": 30, "invoices": 300}, seed=9)
    forward = [store.invoice_json(store.get_invoice(i)) for i in range(1, 301)]
    backward = [store.invoice_json(store.get_invoice(i)) for i in range(300, 0, -1)]
    assert forward == list(reversed(backward))


def test_tiny_covers_every_case():
    truth = Store("tiny", seed=1).ground_truth()
    customers = {c["halopsa_id"]: c for c in truth["customers"]}
    assert len(customers) == 3 and customers[3]["inactive"] is True
    assert customers[2]["billing_contacts"] == [
        {"name": "Grace Lin", "email": "grace.lin@bluebirdlogistics.example"},
        {"name": "Hugo Berg", "email": "hugo.berg@bluebirdlogistics.example"},
    ]
    assert customers[1]["billing_contacts"][0] == {"name": "Alice Moreno", "email": "accounts@acmedental.example"}
    invoices = {i["halopsa_id"]: i for i in truth["invoices"]}
    statuses = {i["paymentstatus"] for i in invoices.values()}
    assert statuses == {0, 1, 2}
    assert any(i["customer_halopsa_id"] is None and i["customer_name"] == "" for i in invoices.values())
    assert any(i["voided"] for i in invoices.values())
    assert any(p["type"] == 1 for i in invoices.values() for p in i["payments"])
    assert len({line["tax_rate"] for line in invoices[1]["lines"]}) == 3
    assert [n["credited_invoice_id"] for n in truth["credit_notes"]] == [4]
    for invoice in invoices.values():
        paid = sum((Decimal(p["amount"]) for p in invoice["payments"]), Decimal("0"))
        assert Decimal(invoice["amount_paid"]) == paid
        assert Decimal(invoice["balance"]) == Decimal(invoice["total"]) - paid
        assert Decimal(invoice["total"]) == sum(Decimal(line["total"]) for line in invoice["lines"])
        assert Decimal(invoice["tax"]) == sum(Decimal(line["tax_amount"]) for line in invoice["lines"])


def test_demo_mix():
    store = Store("demo", seed=1)
    truth = store.ground_truth()
    assert len(truth["customers"]) == 25
    assert len(truth["invoices"]) + len(truth["credit_notes"]) == 120
    statuses = [i["paymentstatus"] for i in truth["invoices"]]
    assert statuses.count(0) > 20 and statuses.count(1) > 5 and statuses.count(2) > 10
    assert truth["credit_notes"]
    assert {i["currency"] for i in truth["invoices"]} >= {"USD"}
    line_counts = [len(i["lines"]) for i in truth["invoices"]]
    assert min(line_counts) >= 1 and max(line_counts) <= 12 and max(line_counts) > 5


def test_custom_sizes_are_validated():
    with pytest.raises(ValueError):
        resolve_dataset({"customers": 0})
    with pytest.raises(ValueError):
        resolve_dataset({"customers": 5, "contacts": 2, "billing_contacts": 3})
    with pytest.raises(ValueError):
        resolve_dataset({"invoices": 5, "colour": "blue"})
    with pytest.raises(ValueError):
        resolve_dataset("huge")


def test_ground_truth_matches_the_api(halo_sandbox_factory):
    server = halo_sandbox_factory(dataset="demo", seed=4, rate_limit=0)
    session = halo_session_for(server)
    unpaid = [
        i
        for i in server.store.query_invoice_ids(paymentstatuses=frozenset({0}))
        if not server.store.get_invoice(i).voided
    ]
    server.store.add_payment(unpaid[0], "1.00")
    server.store.apply_credit(unpaid[1], "2.00")
    server.store.delete_invoice(unpaid[2])
    truth = {i["halopsa_id"]: i for i in server.store.ground_truth()["invoices"]}
    served = []
    page = 1
    while True:
        body = json.loads(
            session.get(
                f"{server.url}/api/Invoice",
                params={"pageinate": "true", "page_size": 100, "page_no": page, "includelines": "true"},
            ).text,
            parse_float=Decimal,
        )
        served += body["invoices"]
        if page * 100 >= body["record_count"]:
            break
        page += 1
    assert {i["id"] for i in served} == set(truth)
    for invoice in served:
        expected = truth[invoice["id"]]
        assert str(invoice["total"]) == expected["total"]
        assert str(invoice["amountdue"]) == expected["balance"]
        assert [line["id"] for line in invoice["lines"]] == [line["halopsa_id"] for line in expected["lines"]]
        assert [str(p["amount"]) for p in invoice["payments"]] == [p["amount"] for p in expected["payments"]]
    over_http = requests.get(f"{server.url}/_sandbox/ground_truth", timeout=30).json()
    assert over_http == json.loads(json.dumps(server.store.ground_truth()))


def test_reset_via_control_api(halo_sandbox, halo_session):
    url = halo_sandbox.url
    halo_sandbox.store.delete_invoice(1)
    described = requests.post(f"{url}/_sandbox/reset", json={"dataset": "demo", "seed": 2}, timeout=30).json()
    assert described["dataset"] == "demo" and described["invoices"] == 120
    assert halo_session.get(f"{url}/api/Invoice/1").status_code == 200  # token survives a reset
    requests.post(f"{url}/_sandbox/reset", json={}, timeout=30)  # same dataset and seed again
    assert requests.get(f"{url}/_sandbox/", timeout=10).json()["seed"] == 2


def test_bench_size_is_lazy_and_fast(halo_sandbox_factory):
    started = time.monotonic()
    server = halo_sandbox_factory(dataset=BENCH, seed=1, rate_limit=0)
    build_seconds = time.monotonic() - started
    session = halo_session_for(server)
    started = time.monotonic()
    body = session.get(
        f"{server.url}/api/Invoice",
        params={"pageinate": "true", "page_size": 100, "page_no": 500, "includelines": "true"},
    ).json()
    first_page_seconds = time.monotonic() - started
    assert 90_000 < body["record_count"] < 100_000  # credit notes excluded by default
    assert len(body["invoices"]) == 100
    lines = sum(len(i["lines"]) for i in body["invoices"])
    assert 100 <= lines <= 800
    started = time.monotonic()
    for page in range(1, 21):
        session.get(
            f"{server.url}/api/Invoice",
            params={"pageinate": "true", "page_size": 100, "page_no": page, "includelines": "true"},
        )
    per_page = (time.monotonic() - started) / 20
    # Nothing was materialised beyond the pages asked for.
    assert server.store.overrides == {}
    assert build_seconds < 10 and first_page_seconds < 5 and per_page < 0.5, (
        build_seconds,
        first_page_seconds,
        per_page,
    )
    users = session.get(f"{server.url}/api/Users", params={"includeinactive": "true", "pageinate": "true"}).json()
    assert users["record_count"] == 10_000
    billing = sum(u.canaccessinvoices for u in server.store.users.values())
    assert billing == 3000
