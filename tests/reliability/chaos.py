"""Shared pieces of the chaos tests: the fault mix, and our export compared with HaloPSA's truth."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from halosandbox import SandboxServer

CHAOS_DATASET = {"customers": 200, "contacts": 800, "billing_contacts": 250, "invoices": 2500, "max_lines": 6}
# Worker processes read with this timeout; "slow" faults sleep longer, so they are timeouts.
READ_TIMEOUT = 1.0
SLOW_DELAY = 1.6
STATUS_BY_PAYMENTSTATUS = {0: "open", 1: "partially_paid", 2: "paid"}
LIST_PATHS = ("/api/Invoice", "/api/Client", "/api/Users")


def add_sync_faults(srv: SandboxServer) -> None:
    """Every transport and data fault the issue lists, at ratios that leave most requests alone.

    One request gets at most one fault (the first rule that fires). With roughly one request in
    four faulted and five client retries, a request fails for good about once in 4,000 tries:
    some runs fail and are repeated, which is part of what is being tested.
    """
    # One of each rarer kind for sure (the first /api/Users reads of the killed worker), then ratios.
    srv.add_fault("slow", delay=SLOW_DELAY, count=1, path="/api/Users", method="GET")
    srv.add_fault("drop", count=1, path="/api/Users", method="GET")
    srv.add_fault("status", status=429, retry_after=0.2, ratio=0.04, path="/api/")
    srv.add_fault("status", status=503, ratio=0.03, path="/api/")
    srv.add_fault("status", status=502, ratio=0.02, path="/api/")
    srv.add_fault("status", status=500, ratio=0.01, path="/api/")
    srv.add_fault("slow", delay=SLOW_DELAY, ratio=0.02, path="/api/", method="GET")  # > READ_TIMEOUT: a timeout
    srv.add_fault("drop", ratio=0.03, path="/api/")
    srv.add_fault("expire_token", ratio=0.03, path="/api/")
    for path in LIST_PATHS:
        # Not on /api/Attachment: half a PDF with a correct Content-Length is not a transport fault.
        srv.add_fault("malformed_json", ratio=0.02, path=path, method="GET")
        srv.add_fault("malformed_record", ratio=0.04, path=path, method="GET")
    srv.add_fault("status", status=503, ratio=0.2, path="/auth/token")


def fired(entries: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.get("fault"):
            key = entry["fault"] if entry["fault"] != "status" else f"status {entry['status']}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _money(value: Any) -> str:
    return str(Decimal(str(value)).quantize(Decimal("0.01")))


def _qty(value: Any) -> str:
    return str(Decimal(str(value)).quantize(Decimal("0.0001")))


def truth_view(truth: dict[str, Any]) -> dict[str, Any]:
    """HaloPSA's ground truth reduced to what the export shows, amounts as exact cent strings."""
    customers = {
        c["halopsa_id"]: {
            "name": c["name"],
            "billing_contacts": sorted((b["name"], b["email"]) for b in c["billing_contacts"]),
        }
        for c in truth["customers"]
    }
    invoices = {}
    for inv in truth["invoices"]:
        invoices[inv["halopsa_id"]] = {
            "number": inv["number"],
            "customer_halopsa_id": inv["customer_halopsa_id"],
            "invoice_date": inv["invoice_date"],
            "due_date": inv["due_date"],
            "currency": inv["currency"],
            "total": _money(inv["total"]),
            "tax": _money(inv["tax"]),
            "amount_paid": _money(inv["amount_paid"]),
            "balance": "0.00" if inv["voided"] else _money(inv["balance"]),  # a void invoice owes nothing here
            "status": "void" if inv["voided"] else STATUS_BY_PAYMENTSTATUS[inv["paymentstatus"]],
            "lines": [
                (
                    line["halopsa_id"],
                    line["description"],
                    _qty(line["quantity"]),
                    _qty(line["unit_price"]),
                    _money(line["net_amount"]),
                    _money(line["tax_amount"]),
                )
                for line in inv["lines"]
            ],
            "payments": sorted(
                (p["halopsa_id"], _money(p["amount"]), p["date"], p["reference"]) for p in inv["payments"]
            ),
        }
    return {"customers": customers, "invoices": invoices}


def export_view(export: dict[str, Any]) -> dict[str, Any]:
    """`export_connection` output in the shape of `truth_view`; raises on a duplicated HaloPSA id."""
    customers: dict[int, Any] = {}
    for c in export["customers"]:
        if c["halopsa_id"] is None:
            continue  # the connection's "unknown" customer has no HaloPSA counterpart
        assert c["halopsa_id"] not in customers, f"customer {c['halopsa_id']} exported twice"
        assert not c["deleted_in_halopsa"] and not c["archived"], c
        customers[c["halopsa_id"]] = {
            "name": c["name"],
            "billing_contacts": sorted((b["name"], b["email"]) for b in c["billing_contacts"]),
        }
    invoices: dict[int, Any] = {}
    for inv in export["invoices"]:
        assert inv["halopsa_id"] not in invoices, f"invoice {inv['halopsa_id']} exported twice"
        assert not inv["deleted_in_halopsa"] and not inv["archived"], inv["halopsa_id"]
        invoices[inv["halopsa_id"]] = {
            "number": inv["number"],
            "customer_halopsa_id": inv["customer_halopsa_id"],
            "invoice_date": inv["invoice_date"],
            "due_date": inv["due_date"],
            "currency": inv["currency"],
            "total": inv["total"],
            "tax": inv["tax"],
            "amount_paid": inv["amount_paid"],
            "balance": inv["balance"],
            "status": inv["status"],
            "lines": [
                (
                    line["halopsa_id"],
                    line["description"],
                    _qty(line["quantity"]),
                    _qty(line["unit_price"]),
                    line["net_amount"],
                    line["tax_amount"],
                )
                for line in inv["lines"]
            ],
            "payments": sorted((p["halopsa_id"], p["amount"], p["date"], p["reference"]) for p in inv["payments"]),
        }
    return {"customers": customers, "invoices": invoices}


def differences(ours: dict[str, Any], truth: dict[str, Any], limit: int = 10) -> list[str]:
    """Readable differences between two views (empty when equal)."""
    found: list[str] = []
    for kind in ("customers", "invoices"):
        missing = sorted(set(truth[kind]) - set(ours[kind]))
        extra = sorted(set(ours[kind]) - set(truth[kind]))
        if missing:
            found.append(f"{kind} missing: {missing[:limit]} ({len(missing)})")
        if extra:
            found.append(f"{kind} not in HaloPSA: {extra[:limit]} ({len(extra)})")
        for key in sorted(set(truth[kind]) & set(ours[kind])):
            if ours[kind][key] != truth[kind][key]:
                fields = [f for f in truth[kind][key] if ours[kind][key].get(f) != truth[kind][key][f]]
                found.append(
                    f"{kind} {key} differs in {fields}: ours {[ours[kind][key][f] for f in fields]} "
                    f"vs HaloPSA {[truth[kind][key][f] for f in fields]}"
                )
    return found[: limit * 3]
