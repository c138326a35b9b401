"""`_insert_rows` (the full sync's executemany INSERT) writes exactly what bulk_create writes."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from django.db import connection as db

from integrations.halopsa.payloads import NonFiniteNumber
from integrations.models import Customer, Invoice, InvoiceLine, Payment
from integrations.services.sync import _insert_invoices, _insert_rows

pytestmark = pytest.mark.django_db


def _columns(model, pk):
    """Every column of one row as the database holds it (raw SQL: no field conversion)."""
    table = model._meta.db_table
    with db.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} WHERE id = %s", [pk])
        names = [c[0] for c in cursor.description]
        return dict(zip(names, cursor.fetchone()))


def _same_row(model, ours, theirs, *, ignore=("id", "halopsa_id", "created_at", "updated_at")):
    a, b = _columns(model, ours), _columns(model, theirs)
    for name in ignore:
        a.pop(name, None), b.pop(name, None)
    assert a == b


def test_invoices_lines_and_payments_match_bulk_create(partner, make_connection):
    connection = make_connection(partner)
    customer = Customer.objects.create(connection=connection, halopsa_id=1, name="Acme")
    raw = {
        "id": 10,
        "total": Decimal("120.50"),
        "tiny": Decimal("1E-7"),
        "nested": [{"x": Decimal("0.10")}],
        "nan": NonFiniteNumber("NaN"),
    }
    values = {
        "connection_id": connection.pk,
        "origin": "halopsa",
        "customer_id": customer.pk,
        "number": "INV-1",
        "invoice_date": date(2026, 1, 31),
        "due_date": None,
        "currency": "EUR",
        "subtotal": Decimal("100.00"),
        "tax": Decimal("20.50"),
        "total": Decimal("120.50"),
        "amount_paid": Decimal("0.00"),
        "balance": Decimal("120.50"),
        "status": "open",
        "remote_status": "open",
        "is_credit_note": False,
        "halopsa_client_id": 1,
        "pdf_attachment_id": 77,
        "remote_updated_at": datetime(2026, 2, 1, 10, 30, 5, 123456, tzinfo=timezone.utc),
        "fingerprint": "f" * 64,
        "raw": raw,
        "last_seen_at": datetime(2026, 2, 2, tzinfo=timezone.utc),
    }
    ids = _insert_invoices(connection.pk, [{**values, "halopsa_id": 10}])
    theirs = Invoice.objects.bulk_create([Invoice(**values, halopsa_id=11)])[0]
    _same_row(Invoice, ids[10], theirs.pk)
    assert Invoice.objects.get(pk=ids[10]).raw == {
        "id": 10,
        "total": "120.50",
        "tiny": "0.0000001",
        "nested": [{"x": "0.10"}],
        "nan": "nan",
    }

    line = {
        "halopsa_id": None,
        "sequence": 2,
        "description": "Support – März",
        "quantity": Decimal("1.5000"),
        "unit_price": Decimal("80.3333"),
        "net_amount": Decimal("120.50"),
        "tax_amount": Decimal("0.00"),
        "tax_rate": Decimal("0.0000"),
    }
    _insert_rows(InvoiceLine, [{"invoice_id": ids[10], **line}])
    theirs_line = InvoiceLine.objects.bulk_create([InvoiceLine(invoice_id=theirs.pk, **line)])[0]
    ours_line = InvoiceLine.objects.get(invoice_id=ids[10])
    _same_row(InvoiceLine, ours_line.pk, theirs_line.pk, ignore=("id", "invoice_id"))

    payment = {
        "invoice_id": ids[10],
        "connection_id": connection.pk,
        "source": "halopsa",
        "kind": "credit",
        "amount": Decimal("10.00"),
        "paid_on": date(2026, 2, 3),
        "method": "",
        "reference": "R-1",
        "fingerprint": "p" * 64,
        "raw": {"amount": Decimal("10.00"), "paid_on": date(2026, 2, 3)},
    }
    _insert_rows(Payment, [{**payment, "halopsa_id": 5, "not_a_column": "ignored"}])
    theirs_payment = Payment.objects.bulk_create([Payment(**payment, halopsa_id=6)])[0]
    _same_row(Payment, Payment.objects.get(halopsa_id=5).pk, theirs_payment.pk)


def test_a_model_with_a_per_row_default_is_refused(partner, make_connection):
    from integrations.models import SyncRun

    with pytest.raises(ValueError, match="per-row default"):
        _insert_rows(SyncRun, [{"connection_id": make_connection(partner).pk}])
