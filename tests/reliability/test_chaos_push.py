"""Chaos push (issue 9, item 2): payments recorded on the platform reach HaloPSA exactly once
although the payment endpoint fails in every way, a POST's answer is lost, and the push worker is
SIGKILLed mid-push.

Out of process, as operated: `record_payment` (the management command) records the payments with
the queue unavailable to them (the jobs wait in the outbox), a worker process runs the product's
sweep (`push_due_dispatch`, tasks inline) and is SIGKILLed once HaloPSA has received a third of
the POSTs; ten minutes later (the clock of the abandoned job is moved, nothing else) the sweep
resumes. Jobs that end "needs review" (a lost answer whose look-up also failed) are retried the
way a person does it from the dashboard. Afterwards:
- every platform payment is in HaloPSA exactly once (counted by its reference), for its amount,
  and linked to that HaloPSA payment; HaloPSA holds no other new payment;
- every push job is done; a clean full pull then equals HaloPSA's ground truth (ledgers agree).
"""

from __future__ import annotations

import json
import subprocess
import time
from decimal import Decimal

import pytest

from halosandbox import SandboxServer
from tests.reliability.chaos import READ_TIMEOUT, SLOW_DELAY, differences, export_view, fired, truth_view
from tests.reliability.procs import BASE_DIR, PYTHON, ProcessWorld, sigkill_when

PUSH_DATASET = {"customers": 12, "contacts": 30, "billing_contacts": 12, "invoices": 150, "max_lines": 2}
PAYMENTS = 40
MAX_CYCLES = 4
# A failed attempt is retried after this much real time at the earliest (the product waits 30 s
# and more): longer than the sandbox takes to commit a POST whose answer timed out (SLOW_DELAY).
SETTLE = str(2 * SLOW_DELAY)

pytestmark = pytest.mark.slow


def add_push_faults(srv: SandboxServer) -> None:
    srv.add_fault("lost_response", count=1, path="/api/InvoicePayment", method="POST")  # one for sure
    srv.add_fault("lost_response", ratio=0.15, path="/api/InvoicePayment", method="POST")
    # timeout, then lands
    srv.add_fault("slow", delay=SLOW_DELAY, ratio=0.06, path="/api/InvoicePayment", method="POST")
    srv.add_fault("drop", ratio=0.08, path="/api/InvoicePayment")
    srv.add_fault("status", status=503, ratio=0.08, path="/api/InvoicePayment")
    srv.add_fault("status", status=500, ratio=0.04, path="/api/InvoicePayment")
    srv.add_fault("status", status=429, retry_after=0.2, ratio=0.05, path="/api/")
    srv.add_fault("status", status=502, ratio=0.05, path="/api/Invoice/", method="GET")
    srv.add_fault("expire_token", ratio=0.03, path="/api/")


def _payments_by_reference(srv: SandboxServer) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for invoice in srv.store.ground_truth()["invoices"]:
        for payment in invoice["payments"]:
            for key in {payment["reference"], payment["thirdpartyid"]} - {"", None}:
                found.setdefault(key, []).append({**payment, "invoice": invoice["halopsa_id"]})
    return found


def _tool(world: ProcessWorld, *args: str, **env: str) -> dict:
    result = subprocess.run(
        [PYTHON, "-m", "tests.reliability.push_tool", *args],
        env={**world.env, **env},
        cwd=str(BASE_DIR),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_chaos_pushes_end_with_exactly_one_payment_each_in_halopsa(tmp_path):
    figures: dict = {"payments": PAYMENTS}
    started = time.monotonic()
    world = ProcessWorld(tmp_path, HALOPSA_READ_TIMEOUT=str(READ_TIMEOUT))
    srv = SandboxServer(dataset=PUSH_DATASET, seed=11, port=0, rate_limit=0).start()
    try:
        world.setup_database()
        connection_id = world.add_connection(srv.url, srv.client_id, srv.client_secret)
        assert (
            json.loads(world.manage("sync_connection", str(connection_id), "--full").stdout.splitlines()[-1])["state"]
            == "succeeded"
        )
        payments_before = sum(len(v) for v in _payments_by_reference(srv).values())
        references_before = set(_payments_by_reference(srv))

        # Payments of a few euros on open invoices, two on some invoices (pushes per invoice are serialised).
        open_invoices = [
            i
            for i in world.export(connection_id)["invoices"]
            if i["status"] in ("open", "partially_paid") and Decimal(i["balance"]) >= Decimal("20.00")
        ]
        assert len(open_invoices) >= PAYMENTS * 2 // 3
        plan = []
        for n in range(PAYMENTS):
            invoice = open_invoices[n % (PAYMENTS * 2 // 3)]
            plan.append(
                {
                    "invoice": invoice["halopsa_id"],
                    "amount": f"{1 + n % 7}.{(13 * n) % 100:02d}",
                    "reference": f"CHAOS-PAY-{n:03d}",
                }
            )
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        recorded = _tool(world, "record", str(connection_id), str(tmp_path / "plan.json"), Q_SYNC="false")
        assert len(recorded["recorded"]) == PAYMENTS
        assert srv.count_requests("/api/InvoicePayment", "POST") == 0  # all waiting in the outbox

        add_push_faults(srv)
        srv.clear_request_log()
        worker = world.spawn(
            [PYTHON, "-m", "tests.reliability.push_tool", "work", str(connection_id), "500", SETTLE],
            "push-worker.log",
            Q_SYNC="true",
        )
        sigkill_when(
            worker,
            lambda: srv.count_requests("/api/InvoicePayment", "POST") >= PAYMENTS // 3,
            log=tmp_path / "push-worker.log",
            timeout=300,
            message="a third of the payment POSTs",
        )
        killed = world.probe("state", connection_id)
        figures["jobs_when_killed"] = {
            s: sum(1 for j in killed["push_jobs"] if j["state"] == s) for s in {j["state"] for j in killed["push_jobs"]}
        }
        assert any(j["state"] != "done" for j in killed["push_jobs"])

        # Ten minutes later: the abandoned job's lease is over; the sweep resumes under the same faults.
        time.sleep(float(SETTLE))  # a POST the killed worker had sent lands before anyone looks again
        world.probe("expire-push-leases", connection_id)
        cycles = []
        for _ in range(MAX_CYCLES):
            cycles.append(_tool(world, "work", str(connection_id), "300", SETTLE, Q_SYNC="true"))
            jobs = world.probe("state", connection_id)["push_jobs"]
            if all(j["state"] == "done" for j in jobs):
                break
            cycles.append(_tool(world, "retry-review", str(connection_id), Q_SYNC="false"))
        figures["faults_fired"] = fired(list(srv.request_log))
        figures["cycles"] = cycles
        state = world.probe("state", connection_id)
        assert [j for j in state["push_jobs"] if j["state"] != "done"] == []
        assert {"lost_response", "slow", "drop", "status 503"} <= set(figures["faults_fired"]), figures["faults_fired"]

        # Exactly one HaloPSA payment per platform payment, with its amount, linked both ways.
        in_halo = _payments_by_reference(srv)
        for row, ours in zip(plan, state["platform_payments"]):
            assert ours["reference"] == row["reference"]
            matches = in_halo.get(row["reference"], [])
            assert len(matches) == 1, (row, matches)
            assert (matches[0]["invoice"], Decimal(matches[0]["amount"])) == (row["invoice"], Decimal(row["amount"]))
            assert ours["halopsa_id"] == matches[0]["halopsa_id"]
        assert set(in_halo) - references_before == {row["reference"] for row in plan}
        assert sum(len(v) for v in in_halo.values()) == payments_before + PAYMENTS
        assert state["duplicates"]["payment_references"] == 0 and state["duplicates"]["payments"] == 0

        # The pull agrees: our ledgers equal HaloPSA's to the cent.
        srv.clear_faults()
        world.manage("sync_connection", str(connection_id), "--full")
        truth = truth_view(srv.store.ground_truth())
        assert differences(export_view(world.export(connection_id)), truth) == []
        figures["seconds"] = round(time.monotonic() - started, 1)
        figures["posts"] = srv.count_requests("/api/InvoicePayment", "POST")
        print("CHAOS PUSH FIGURES", json.dumps(figures))
    finally:
        srv.stop()
        world.close()
