"""Fixtures for push tests: a connection to the sandbox and invoices mirrored from it.

The invoices are copied from the sandbox's own JSON through the shared mapping (what a pull
would store), so these tests do not depend on the sync service.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Callable

import pytest

from integrations.halopsa.mapping import map_invoice
from integrations.halopsa.shape import HaloShape
from integrations.models import Customer, Invoice, Origin, Payment


@pytest.fixture
def conn(partner, halo_sandbox, make_connection):
    return make_connection(partner, halo_sandbox)


def halo_invoice(srv, halopsa_id: int) -> dict[str, Any]:
    """The sandbox's invoice as the API serves it (Decimal amounts)."""
    return srv.store.invoice_json(srv.store.get_invoice(halopsa_id), include_lines=False)


def halo_payments(srv, halopsa_id: int, reference: str | None = None) -> list[dict[str, Any]]:
    rows = halo_invoice(srv, halopsa_id)["payments"]
    return [row for row in rows if reference is None or row["reference"] == reference]


def mirror_invoice(connection, srv, halopsa_id: int) -> Invoice:
    """Store (or refresh) one sandbox invoice and its payments as a pull would."""
    payload = halo_invoice(srv, halopsa_id)
    # read without lines: say "none" (map_invoice refuses a missing list)
    mapped = map_invoice({**payload, "lines": []})
    client_id = mapped["halopsa_client_id"]
    if client_id:
        customer, _ = Customer.objects.get_or_create(
            connection=connection, halopsa_id=client_id, defaults={"name": payload["client_name"]}
        )
    else:
        customer, _ = Customer.objects.get_or_create(
            connection=connection, is_unknown=True, defaults={"name": Customer.UNKNOWN_NAME}
        )
    fields = {
        k: mapped[k]
        for k in (
            "number",
            "invoice_date",
            "due_date",
            "currency",
            "subtotal",
            "tax",
            "total",
            "amount_paid",
            "balance",
            "status",
            "remote_status",
            "is_credit_note",
            "halopsa_client_id",
            "remote_updated_at",
            "fingerprint",
        )
    }
    invoice, _ = Invoice.objects.update_or_create(
        connection=connection,
        halopsa_id=halopsa_id,
        defaults={**fields, "customer": customer, "origin": Origin.HALOPSA},
    )
    for row in mapped["payments"]:
        if Payment.objects.filter(connection=connection, halopsa_id=row["halopsa_id"]).exists():
            continue
        Payment.objects.create(
            invoice=invoice,
            connection=connection,
            halopsa_id=row["halopsa_id"],
            source=Origin.HALOPSA,
            kind=row["kind"],
            amount=row["amount"],
            paid_on=row["paid_on"],
            method=row["method"],
            reference=row["reference"],
        )
    return invoice


@pytest.fixture
def mirror(conn, halo_sandbox) -> Callable[[int], Invoice]:
    return lambda halopsa_id: mirror_invoice(conn, halo_sandbox, halopsa_id)


@pytest.fixture
def portal_invoice(conn) -> Invoice:
    """An invoice created in the portal (never in HaloPSA)."""
    customer = Customer.objects.create(connection=conn, origin=Origin.PLATFORM, name="Walk-in Customer")
    return Invoice.objects.create(
        connection=conn,
        customer=customer,
        origin=Origin.PLATFORM,
        number="P-1",
        currency="USD",
        subtotal=Decimal("200.00"),
        total=Decimal("200.00"),
        balance=Decimal("200.00"),
    )


def assert_ledgers_agree(srv, invoice: Invoice) -> None:
    """Our balance and amount paid equal HaloPSA's, to the cent."""
    invoice.refresh_from_db()
    remote = halo_invoice(srv, invoice.halopsa_id)
    assert invoice.balance == remote["amountdue"]
    assert invoice.amount_paid == remote["amountpaid"]


def clock_known(connection, srv) -> HaloShape:
    """Store the sandbox's true clock offset on the connection, as an earlier push would have
    measured it (tests/push/test_clock.py measures it for real)."""
    from django.utils import timezone

    from integrations.services.connections import connection_shape_update

    return connection_shape_update(
        connection=connection,
        clock_offset_seconds=srv.profile.clock_offset_ms / 1000,
        clock_offset_measured_at=timezone.now().isoformat(),
    )
