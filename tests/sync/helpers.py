"""Helpers for the pull-sync tests: compare our copy with the sandbox's ground truth, count writes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext

# Tables whose rows are our copy of HaloPSA data (writes to them are what "no DB write" is about).
MIRROR_TABLES = (
    "integrations_customer",
    "integrations_contact",
    "integrations_invoice",
    "integrations_invoiceline",
    "integrations_payment",
    "integrations_invoicepdf",
)

STATUS_BY_PAYMENTSTATUS = {0: "open", 1: "partially_paid", 2: "paid"}


def mirror_writes(queries: CaptureQueriesContext) -> list[str]:
    """INSERT/UPDATE/DELETE statements against the mirrored tables."""
    found = []
    for query in queries.captured_queries:
        sql = query["sql"].lstrip().upper()
        if sql.startswith(("INSERT", "UPDATE", "DELETE")) and any(
            f'"{t.upper()}"' in sql or t.upper() in sql for t in MIRROR_TABLES
        ):
            found.append(query["sql"])
    return found


def capture_queries() -> CaptureQueriesContext:
    return CaptureQueriesContext(db_connection)


def _money(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _qty(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.0001"))


def truth_snapshot(srv, *, number_field: str = "number") -> dict[str, Any]:
    """The sandbox's ground truth in the shape of `db_snapshot`."""
    truth = srv.store.ground_truth()
    customers = {
        c["halopsa_id"]: {
            "name": c["name"],
            "inactive": c["inactive"],
            "billing_contacts": sorted((b["name"], b["email"]) for b in c["billing_contacts"]),
        }
        for c in truth["customers"]
    }
    invoices = {}
    for inv in truth["invoices"]:
        invoices[inv["halopsa_id"]] = {
            "number": inv[number_field],
            "customer_halopsa_id": inv["customer_halopsa_id"],
            "invoice_date": inv["invoice_date"],
            "due_date": inv["due_date"],
            "currency": inv["currency"],
            "total": _money(inv["total"]),
            "tax": _money(inv["tax"]),
            "amount_paid": _money(inv["amount_paid"]),
            # A void invoice owes nothing here (issue 17); HaloPSA's amountdue stays in `raw`.
            "balance": Decimal("0.00") if inv["voided"] else _money(inv["balance"]),
            "status": "void" if inv["voided"] else STATUS_BY_PAYMENTSTATUS[inv["paymentstatus"]],
            "pdf_attachment_id": inv["pdf_attachment_id"] or None,
            "lines": [
                (
                    line["halopsa_id"],
                    line["description"],
                    _qty(line["quantity"]),
                    _qty(line["unit_price"]),
                    _money(line["net_amount"]),
                    _money(line["tax_amount"]),
                    _qty(line["tax_rate"]),
                )
                for line in inv["lines"]
            ],
            "payments": sorted(
                (
                    p["halopsa_id"],
                    _money(p["amount"]),
                    p["date"],
                    "credit" if (p["type"] == 1 or p["credit_note_id"]) else "payment",
                    p["reference"],
                )
                for p in inv["payments"]
            ),
        }
    return {"customers": customers, "invoices": invoices}


def db_snapshot(connection) -> dict[str, Any]:
    """Our copy of the connection's HaloPSA data (rows flagged deleted in HaloPSA left out)."""
    from integrations.models import Customer, Invoice

    customers = {}
    for c in Customer.objects.filter(
        connection=connection, halopsa_id__isnull=False, deleted_in_halopsa_at__isnull=True
    ).prefetch_related("billing_contacts"):
        customers[c.halopsa_id] = {
            "name": c.name,
            "inactive": c.inactive,
            "billing_contacts": sorted((b.name, b.email) for b in c.billing_contacts.all()),
        }
    invoices = {}
    qs = Invoice.objects.filter(connection=connection, halopsa_id__isnull=False, deleted_in_halopsa_at__isnull=True)
    for inv in qs.select_related("customer").prefetch_related("lines", "payments"):
        invoices[inv.halopsa_id] = {
            "number": inv.number,
            "customer_halopsa_id": inv.customer.halopsa_id,
            "invoice_date": inv.invoice_date.isoformat() if inv.invoice_date else None,
            "due_date": inv.due_date.isoformat() if inv.due_date else None,
            "currency": inv.currency,
            "total": inv.total,
            "tax": inv.tax,
            "amount_paid": inv.amount_paid,
            "balance": inv.balance,
            "status": inv.status,
            "pdf_attachment_id": inv.pdf_attachment_id,
            "lines": [
                (
                    line.halopsa_id,
                    line.description,
                    line.quantity,
                    line.unit_price,
                    line.net_amount,
                    line.tax_amount,
                    line.tax_rate,
                )
                for line in sorted(inv.lines.all(), key=lambda line: (line.sequence, line.pk))
            ],
            "payments": sorted(
                (p.halopsa_id, p.amount, p.paid_on.isoformat(), p.kind, p.reference)
                for p in inv.payments.all()
                if p.voided_at is None
            ),
        }
    return {"customers": customers, "invoices": invoices}


def assert_matches_truth(connection, srv, **kwargs) -> None:
    ours, truth = db_snapshot(connection), truth_snapshot(srv, **kwargs)
    assert ours["customers"] == truth["customers"]
    assert sorted(ours["invoices"]) == sorted(truth["invoices"])
    for halopsa_id, expected in truth["invoices"].items():
        assert ours["invoices"][halopsa_id] == expected, f"invoice {halopsa_id}"


def export_snapshot(exported: dict[str, Any]) -> dict[str, Any]:
    """`manage.py export_connection`'s JSON in the shape of `truth_snapshot`, for the fields the
    export carries (rows deleted in HaloPSA and the "unknown" customer left out)."""
    customers = {
        c["halopsa_id"]: {
            "name": c["name"],
            "billing_contacts": sorted((b["name"], b["email"]) for b in c["billing_contacts"]),
        }
        for c in exported["customers"]
        if c["halopsa_id"] is not None and not c["deleted_in_halopsa"]
    }
    invoices = {}
    for inv in exported["invoices"]:
        if inv["halopsa_id"] is None or inv["deleted_in_halopsa"]:
            continue
        invoices[inv["halopsa_id"]] = {
            "number": inv["number"],
            "customer_halopsa_id": inv["customer_halopsa_id"],
            "invoice_date": inv["invoice_date"],
            "due_date": inv["due_date"],
            "currency": inv["currency"],
            "total": Decimal(inv["total"]),
            "tax": Decimal(inv["tax"]),
            "amount_paid": Decimal(inv["amount_paid"]),
            "balance": Decimal(inv["balance"]),
            "status": inv["status"],
            "lines": [
                (
                    line["halopsa_id"],
                    line["description"],
                    Decimal(line["quantity"]),
                    Decimal(line["unit_price"]),
                    Decimal(line["net_amount"]),
                    Decimal(line["tax_amount"]),
                )
                for line in inv["lines"]
            ],
            "payments": sorted(
                (p["halopsa_id"], Decimal(p["amount"]), p["date"], p["reference"]) for p in inv["payments"]
            ),
        }
    return {"customers": customers, "invoices": invoices}


def truth_as_exported(srv) -> dict[str, Any]:
    """`truth_snapshot` cut to what `export_snapshot` holds."""
    truth = truth_snapshot(srv)
    customers = {
        k: {"name": v["name"], "billing_contacts": v["billing_contacts"]} for k, v in truth["customers"].items()
    }
    invoices = {}
    for halopsa_id, inv in truth["invoices"].items():
        invoices[halopsa_id] = {
            **{
                k: inv[k]
                for k in (
                    "number",
                    "customer_halopsa_id",
                    "invoice_date",
                    "due_date",
                    "currency",
                    "total",
                    "tax",
                    "amount_paid",
                    "balance",
                    "status",
                )
            },
            "lines": [line[:6] for line in inv["lines"]],
            "payments": sorted((p[0], p[1], p[2], p[4]) for p in inv["payments"]),
        }
    return {"customers": customers, "invoices": invoices}


def list_queries(srv, path: str) -> list[dict[str, str]]:
    """The query strings of the sandbox's logged GETs of exactly `path` (a list, not /path/{id})."""
    return [e["query"] for e in srv.request_log if e["method"] == "GET" and e["path"].lower() == path.lower()]
