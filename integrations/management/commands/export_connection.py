"""`manage.py export_connection ID`: the connection's synced data as one JSON object on stdout.

{"customers": [{"id", "halopsa_id", "name", "archived", "deleted_in_halopsa",
                "billing_contacts": [{"name", "email"}]}],
 "invoices": [{"id", "halopsa_id", "number", "customer_name", "customer_halopsa_id", "invoice_date",
               "due_date", "currency", "total", "tax", "amount_paid", "balance", "status", "archived",
               "deleted_in_halopsa", "pdf_sha256",
               "lines": [{"halopsa_id", "description", "quantity", "unit_price", "net_amount", "tax_amount"}],
               "payments": [{"id", "halopsa_id", "amount", "date", "source", "reference"}]}]}

Amounts and quantities are decimal strings as stored ("1234.50"), dates YYYY-MM-DD, `id` is the
portal's id, HaloPSA ids of records without a HaloPSA counterpart are null. Voided platform
payments are left out (they no longer count). Rows are streamed in chunks (a constant number of
queries per chunk), so 100k invoices export without holding them all in memory.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Prefetch

from integrations.models import Connection, Contact, Customer, Invoice, InvoiceLine, Payment

CHUNK = 500


def _decimal(value: Any) -> str | None:
    return None if value is None else str(value)


def _date(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def export_customers(connection: Connection) -> Iterator[dict[str, Any]]:
    customers = (
        Customer.objects.filter(connection=connection)
        .prefetch_related(Prefetch("billing_contacts", queryset=Contact.objects.order_by("email", "id")))
        .order_by("id")
    )
    for customer in customers.iterator(chunk_size=CHUNK):
        yield {
            "id": customer.pk,
            "halopsa_id": customer.halopsa_id,
            "name": customer.name,
            "archived": customer.archived,
            "deleted_in_halopsa": customer.deleted_in_halopsa,
            "billing_contacts": [
                {"name": c.name, "email": c.email}
                for c in sorted(customer.billing_contacts.all(), key=lambda c: (c.email.lower(), c.pk))
            ],
        }


def export_invoices(connection: Connection) -> Iterator[dict[str, Any]]:
    invoices = (
        Invoice.objects.filter(connection=connection)
        .select_related("customer", "pdf")
        # One prefetch_related per Prefetch: the stubs can't type a mix of models in one call.
        .prefetch_related(Prefetch("lines", queryset=InvoiceLine.objects.order_by("sequence", "id")))
        .prefetch_related(
            Prefetch("payments", queryset=Payment.objects.filter(voided_at__isnull=True).order_by("paid_on", "id"))
        )
        .order_by("id")
    )
    for invoice in invoices.iterator(chunk_size=CHUNK):
        pdf = getattr(invoice, "pdf", None)  # no PDF yet: the reverse accessor raises, getattr gives None
        yield {
            "id": invoice.pk,
            "halopsa_id": invoice.halopsa_id,
            "number": invoice.number,
            "customer_name": invoice.customer.name,
            "customer_halopsa_id": invoice.customer.halopsa_id,
            "invoice_date": _date(invoice.invoice_date),
            "due_date": _date(invoice.due_date),
            "currency": invoice.currency,
            "total": _decimal(invoice.total),
            "tax": _decimal(invoice.tax),
            "amount_paid": _decimal(invoice.amount_paid),
            "balance": _decimal(invoice.balance),
            "status": invoice.status,
            "archived": invoice.archived,
            "deleted_in_halopsa": invoice.deleted_in_halopsa,
            "pdf_sha256": pdf.sha256 if pdf is not None else None,
            "lines": [
                {
                    "halopsa_id": line.halopsa_id,
                    "description": line.description,
                    "quantity": _decimal(line.quantity),
                    "unit_price": _decimal(line.unit_price),
                    "net_amount": _decimal(line.net_amount),
                    "tax_amount": _decimal(line.tax_amount),
                }
                for line in invoice.lines.all()
            ],
            "payments": [
                {
                    "id": p.pk,
                    "halopsa_id": p.halopsa_id,
                    "amount": _decimal(p.amount),
                    "date": _date(p.paid_on),
                    "source": p.source,
                    "reference": p.reference,
                }
                for p in invoice.payments.all()
            ],
        }


class Command(BaseCommand):
    help = "Print a connection's synced customers and invoices as one JSON object."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("connection_id", type=int)

    def handle(self, *args, **options) -> None:
        connection = Connection.objects.filter(pk=options["connection_id"]).first()
        if connection is None:
            raise CommandError(f"Connection {options['connection_id']} does not exist.")
        write = self.stdout.write
        # One JSON object on one line, written piece by piece.
        write('{"customers": [', ending="")
        for index, row in enumerate(export_customers(connection)):
            write(("" if index == 0 else ", ") + json.dumps(row, ensure_ascii=False), ending="")
        write('], "invoices": [', ending="")
        for index, row in enumerate(export_invoices(connection)):
            write(("" if index == 0 else ", ") + json.dumps(row, ensure_ascii=False), ending="")
        write("]}")
