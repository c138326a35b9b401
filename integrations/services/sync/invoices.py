"""Invoices with their lines and payments: read a few pages at a time, written in batches (one
query loads a batch's existing rows; new rows go in with one bulk INSERT per table, changed rows
are bulk-updated, an unchanged row costs no write)."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Mapping

from django.db import transaction

from integrations.conf import halo_settings
from integrations.halopsa import mapping
from integrations.halopsa.exceptions import HaloError, HaloNotFound
from integrations.models import Customer, Invoice, InvoiceLine, Origin, Payment, PushJob
from integrations.services.bulk_db import insert_rows
from integrations.services.reconcile import (
    link_platform_payments,
    payment_unpushed_adjustment,
    status_conflict_winner,
    status_push_on_the_way,
)
from integrations.services.sync.config import CHUNK, ENTITY_INVOICES
from integrations.services.sync.context import Mapped, RunContext
from integrations.services.sync.customers import CustomersSync, customer_unknown
from integrations.services.sync.deletions import flag_missing
from integrations.services.sync.feeds import FEEDS, changed_pages, count_repeated, note_repeated
from integrations.services.sync.pdfs import PdfsSync

# Invoices are written when this much time passed since the last write, even if fewer than
# write_batch_size() are waiting (slow or rate-limited pages are never held back long).
WRITE_BATCH_SECONDS = 2.0

INVOICE_UPDATE_FIELDS = [
    "customer",
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
    "status_changed_locally_at",
    "is_credit_note",
    "halopsa_client_id",
    "customer_assigned_at",
    "customer_assigned_by",
    "pdf_attachment_id",
    "remote_updated_at",
    "fingerprint",
    "raw",
    "last_seen_at",
    "deleted_in_halopsa_at",
    "updated_at",
]
PAYMENT_UPDATE_FIELDS = ["kind", "amount", "paid_on", "method", "reference", "fingerprint", "raw"]

# What one written invoice brings to its lines and payments: (invoice pk, mapped row, links).
Written = list[tuple[int, dict[str, Any], dict[int, Payment]]]


def write_batch_size() -> int:
    """Mapped invoices written per transaction (HALOPSA_SYNC_WRITE_BATCH, default 1,000 = 10 pages)."""
    return max(1, halo_settings().sync_write_batch)


def _pks_by_halopsa_id(rows: Iterable[tuple[int | None, int]]) -> dict[int, int]:
    """{halopsa_id: pk} from (halopsa_id, pk) rows read by `halopsa_id__in` (so never None)."""
    return {halopsa_id: pk for halopsa_id, pk in rows if halopsa_id is not None}


def insert_invoices(connection_id: int, rows: list[Mapping[str, Any]]) -> dict[int, int]:
    """INSERT new invoices of one connection; returns {halopsa_id: pk} (read back by the unique
    (connection, halopsa_id): executemany and COPY return none)."""
    if not rows:
        return {}
    insert_rows(Invoice, rows)
    inserted = (
        Invoice.objects.filter(connection_id=connection_id, halopsa_id__in=[r["halopsa_id"] for r in rows])
        .order_by()
        .values_list("halopsa_id", "pk")
    )
    return _pks_by_halopsa_id(inserted)


def _customer_outdated(invoice: Invoice, row: dict[str, Any], customers: dict[int, int]) -> bool:
    """The invoice sits with another customer than HaloPSA's although that customer is here now
    (it could not be read when the invoice was written); a person's assignment is left alone."""
    customer_id = customers.get(row["halopsa_client_id"]) if row["halopsa_client_id"] else None
    return customer_id is not None and invoice.customer_assigned_at is None and invoice.customer_id != customer_id


class InvoicesSync:
    """Reads HaloPSA invoices (lines and payments embedded) into ours. A client an invoice names
    that we have not seen yet is read then (`customers`); a one-invoice sync brings its PDF
    (`pdfs`)."""

    def __init__(self, ctx: RunContext, *, customers: CustomersSync, pdfs: PdfsSync) -> None:
        self.ctx = ctx
        self.customers = customers
        self.pdfs = pdfs

    # -- reads ---------------------------------------------------------------------------------

    def read(self, *, since: datetime | None, payment_statuses: list[int] | None, detect_deletions: bool) -> None:
        """Invoices are written a few pages at a time (`write_batch_size` records, or whatever
        arrived within WRITE_BATCH_SECONDS): a commit per 100-row page cost a full sync as much as
        inserting its rows. When HaloPSA fails mid-way the pages read so far are written before
        the run fails; a killed worker loses at most the pages not yet written (the rerun reads
        them again)."""
        ctx = self.ctx
        ctx.reading = "invoices"
        seen: set[int] = set()
        pending: Mapped = []
        pending_records, pending_since, batch = 0, time.monotonic(), write_batch_size()
        if payment_statuses:
            source = ctx.pages(ctx.client.invoice_pages(include_lines=True, payment_statuses=payment_statuses))
        else:
            source = changed_pages(
                ctx, FEEDS[ENTITY_INVOICES], since, functools.partial(ctx.client.invoice_pages, include_lines=True)
            )
        pages = iter(source)
        while True:
            try:
                page = next(pages)
            except StopIteration:
                break
            except HaloError:
                if pending_records:
                    self.store(pending, pending_records)
                raise
            count_repeated(ctx, ENTITY_INVOICES, page)
            pending.extend(self._map(page.records, seen))
            pending_records += len(page.records)
            if len(pending) >= batch or time.monotonic() - pending_since >= WRITE_BATCH_SECONDS:
                self.store(pending, pending_records)
                pending, pending_records, pending_since = [], 0, time.monotonic()
        if pending_records:
            self.store(pending, pending_records)
        note_repeated(ctx, ENTITY_INVOICES)
        if detect_deletions:
            flag_missing(ctx, Invoice, seen, write_found=lambda payload: self.page([payload]))

    def one(self, halopsa_id: int, *, with_pdf: bool) -> None:
        ctx = self.ctx
        try:
            payload = ctx.client.get_invoice(halopsa_id, include_lines=True)
        except HaloNotFound:
            ctx.flag_gone(Invoice, halopsa_id)
            return
        ctx.grow_total(1)
        self.page([payload])
        if with_pdf:
            self.pdfs.one(halopsa_id)

    def page(self, records: list[Any]) -> set[int]:
        """Upsert HaloPSA invoices with their lines and payments now. Returns the ids seen."""
        seen: set[int] = set()
        self.store(self._map(records, seen), len(records))
        return seen

    def _map(self, records: list[Any], seen: set[int]) -> Mapped:
        """Map HaloPSA invoices to (row, payload); adds every readable id to `seen`. A record that
        cannot be mapped becomes a sync error; credit notes and invoices older than the
        connection's "created since" are left out."""
        connection = self.ctx.connection
        map_one = functools.partial(
            mapping.map_invoice,
            number_field=connection.invoice_number_field,
            default_currency=connection.default_currency,
        )
        return [
            (row, payload)
            for row, payload in self.ctx.map_records(ENTITY_INVOICES, records, map_one, seen)
            # credit notes are not invoices here (applied credit shows as a credit payment); invoices
            # older than the connection's "invoices created since" are never imported
            if not row["is_credit_note"]
            and not (
                connection.invoices_created_since
                and row["invoice_date"] is not None
                and row["invoice_date"] < connection.invoices_created_since
            )
        ]

    # -- writes --------------------------------------------------------------------------------

    def store(self, mapped: Mapped, records: int) -> None:
        """Write mapped invoices in one transaction; `records` is how many HaloPSA records they
        came from (progress)."""
        ctx = self.ctx
        if not mapped:
            with transaction.atomic():
                ctx.page_done(records)
            return
        client_ids = {r["halopsa_client_id"] for r, _ in mapped if r["halopsa_client_id"]}
        names = {r["halopsa_client_id"]: str(p.get("client_name") or "") for r, p in mapped if r["halopsa_client_id"]}
        customers = self._customers_for(client_ids, names)  # may call HaloPSA: outside the transaction
        ctx.store(
            lambda items, page_records: self._write(items, customers, page_records),
            mapped,
            ENTITY_INVOICES,
            page_records=records,
        )

    def _customers_for(self, client_ids: set[int], names: dict[int, str]) -> dict[int, int]:
        """{HaloPSA client id: customer pk} for the client ids of an invoice batch; clients we
        have not seen yet are fetched (one call each) - one HaloPSA deleted is kept as a flagged
        customer."""
        ctx = self.ctx
        # Only the pk is used (the invoice's foreign key). No ORDER BY (see _write).
        customers = _pks_by_halopsa_id(
            Customer.objects.filter(connection=ctx.connection, halopsa_id__in=client_ids)
            .order_by()
            .values_list("halopsa_id", "pk")
        )
        for client_id in sorted(client_ids - set(customers)):
            customer: Customer | None
            try:
                payload = ctx.client.get_client(client_id)
            except HaloNotFound:
                customer, created = Customer.objects.get_or_create(
                    connection=ctx.connection,
                    halopsa_id=client_id,
                    defaults={
                        "name": names.get(client_id) or f"HaloPSA client {client_id}",
                        "deleted_in_halopsa_at": ctx.now,
                        "last_seen_at": ctx.now,
                    },
                )
                ctx.counts.created += int(created)
            else:
                with ctx.beside_phase(1):
                    self.customers.page([payload])
                customer = Customer.objects.filter(connection=ctx.connection, halopsa_id=client_id).first()
            if customer is not None:
                customers[client_id] = customer.pk
        return customers

    def unknown_customer(self) -> Customer:
        if self.ctx.unknown is None:
            self.ctx.unknown = customer_unknown(self.ctx.connection)
        return self.ctx.unknown

    def _write(self, mapped: Mapped, customers: dict[int, int], page_records: int) -> None:
        ctx = self.ctx
        connection = ctx.connection
        with transaction.atomic():
            existing = {
                # raw is only ever replaced (a changed invoice gets the new payload), never read.
                # No ORDER BY: the model's default (-invoice_date) made SQLite walk the
                # (connection, invoice_date) index through every invoice of the connection on
                # every page, which made a full sync quadratic (benchmarks/README.md, "History").
                i.halopsa_id: i
                for i in Invoice.objects.filter(
                    connection=connection, halopsa_id__in=[r["halopsa_id"] for r, _ in mapped]
                )
                .defer("raw")
                .order_by()
            }
            payments_by_invoice: dict[int, list[Payment]] = defaultdict(list)
            if existing:
                for payment in (
                    Payment.objects.filter(invoice_id__in=[i.pk for i in existing.values()]).defer("raw").order_by()
                ):
                    payments_by_invoice[payment.invoice_id].append(payment)
            to_create: list[Mapping[str, Any]] = []  # new invoices as column values (no model instances)
            to_update: list[Invoice] = []
            work: list[tuple[Invoice | None, dict[str, Any], dict[int, Payment]]] = []
            for row, payload in mapped:
                invoice = existing.get(row["halopsa_id"])
                if invoice is not None and invoice.origin != Origin.HALOPSA:
                    ctx.counts.unchanged += 1
                    continue
                local_payments = payments_by_invoice.get(invoice.pk, []) if invoice is not None else []
                links = self._link(row, local_payments)
                adjustment = (
                    Decimal("0.00")
                    if invoice is None
                    else payment_unpushed_adjustment(
                        invoice=invoice,
                        payments=local_payments,
                        remote_payment_ids=(p["halopsa_id"] for p in row["payments"]),
                        remote_references=(p.get("reference") or "" for p in row["payments"]),
                    )
                )
                effective = (
                    row["fingerprint"]
                    if adjustment == 0
                    else mapping.fingerprint({"remote": row["fingerprint"], "unpushed": adjustment})
                )
                if (
                    invoice is not None
                    and invoice.fingerprint == effective
                    and invoice.deleted_in_halopsa_at is None
                    and not links
                    and not _customer_outdated(invoice, row, customers)
                    and invoice.status_changed_locally_at is None
                ):  # a status set here is re-checked: it may have settled
                    ctx.counts.unchanged += 1
                    continue
                values = self._values(invoice, row, payload, customers, adjustment, effective)
                if invoice is None:
                    values.update(connection_id=connection.pk, halopsa_id=row["halopsa_id"], origin=Origin.HALOPSA)
                    to_create.append(values)
                else:
                    for name, value in values.items():
                        setattr(invoice, name, value)
                    to_update.append(invoice)
                work.append((invoice, row, links))
            created_ids = insert_invoices(connection.pk, to_create)
            Invoice.objects.bulk_update(to_update, INVOICE_UPDATE_FIELDS)
            ctx.counts.created += len(to_create)
            ctx.counts.updated += len(to_update)
            written = [
                (invoice.pk if invoice is not None else created_ids[row["halopsa_id"]], row, links)
                for invoice, row, links in work
            ]
            self._write_lines(written, replace=[i.pk for i in to_update])
            self._write_payments(written, payments_by_invoice)
            ctx.resolve_errors(ENTITY_INVOICES, [r["halopsa_id"] for r, _ in mapped])
            ctx.page_done(page_records)

    @staticmethod
    def _link(row: dict[str, Any], local_payments: list[Payment]) -> dict[int, Payment]:
        """Our platform payments HaloPSA lists before their push recorded its id, linked now."""
        links = link_platform_payments(row["payments"], local_payments)
        for halopsa_id, payment in links.items():
            # Recorded now so the in-flight rule (payment_unpushed_adjustment) already sees it as in HaloPSA.
            Payment.objects.filter(pk=payment.pk, halopsa_id__isnull=True).update(halopsa_id=halopsa_id)
            payment.halopsa_id = halopsa_id
        return links

    def _values(
        self,
        invoice: Invoice | None,
        row: dict[str, Any],
        payload: Any,
        customers: dict[int, int],
        adjustment: Decimal,
        effective_fingerprint: str,
    ) -> dict[str, Any]:
        """The invoice's column values (by attname) from HaloPSA's row: a new invoice (None) is
        inserted with them, an existing one takes them before its bulk_update."""
        ctx = self.ctx
        client_id = row["halopsa_client_id"]
        values: dict[str, Any] = {}
        # Customer: HaloPSA's client; none -> "unknown". A person's assignment out of the unknown
        # queue stands until HaloPSA itself gives the invoice a (different) real client.
        halo_customer_id = customers.get(client_id) if client_id else None
        if invoice is not None and invoice.customer_assigned_at is not None:
            if client_id and client_id != invoice.halopsa_client_id and halo_customer_id is not None:
                values.update(customer_id=halo_customer_id, customer_assigned_at=None, customer_assigned_by_id=None)
        else:
            values["customer_id"] = halo_customer_id or self.unknown_customer().pk
        # Status follows the amounts (docs/push-rules.md, "Status"): HaloPSA's, corrected by
        # pushes still on their way, and never contradicted by a status set here.
        amount_paid = row["amount_paid"] + adjustment
        balance = row["balance"] - adjustment
        remote_status = row["status"]
        voided = remote_status == mapping.STATUS_VOID
        if invoice is not None and invoice.status_changed_locally_at is not None:
            # A status set here counts only while its push is on the way; once HaloPSA has had it,
            # HaloPSA's amounts and void flag decide (a mark as paid whose payment was deleted
            # there is open again).
            pending = status_push_on_the_way(invoice=invoice, read_started_at=ctx.started_at)
            if (
                pending
                and status_conflict_winner(
                    invoice=invoice, remote_status=remote_status, remote_modified_at=row["remote_updated_at"]
                )
                == "local"
            ):
                voided = pending == mapping.STATUS_VOID
                if pending == mapping.STATUS_PAID and balance > 0:
                    amount_paid, balance = amount_paid + balance, Decimal("0.00")  # what the mark as paid settles
            else:
                values["status_changed_locally_at"] = None
        status = mapping.invoice_status(total=row["total"], amount_paid=amount_paid, balance=balance, voided=voided)
        if voided:
            balance = Decimal("0.00")  # a void invoice owes nothing; HaloPSA's amountdue stays in `raw`
        for name in (
            "number",
            "invoice_date",
            "due_date",
            "currency",
            "subtotal",
            "tax",
            "total",
            "is_credit_note",
            "pdf_attachment_id",
            "remote_updated_at",
        ):
            values[name] = row[name]
        values.update(
            halopsa_client_id=client_id,
            amount_paid=amount_paid,
            balance=balance,
            status=status,
            remote_status=remote_status,
            fingerprint=effective_fingerprint,
            raw=payload,
            last_seen_at=ctx.now,
            updated_at=ctx.now,
            deleted_in_halopsa_at=None,
        )
        return values

    def _write_lines(self, written: Written, *, replace: list[int]) -> None:
        """Lines of every written invoice are replaced as a whole (two statements per page)."""
        for start in range(0, len(replace), CHUNK):
            InvoiceLine.objects.filter(invoice_id__in=replace[start : start + CHUNK]).delete()
        lines = []
        for invoice_id, row, _ in written:
            for line in row["lines"]:  # the mapped line becomes the row (no copy: lines are most rows)
                line["invoice_id"] = invoice_id
                lines.append(line)
        insert_rows(InvoiceLine, lines)

    def _write_payments(self, written: Written, payments_by_invoice: dict[int, list[Payment]]) -> None:
        """Mirror HaloPSA's embedded payments: create new, update changed, remove vanished ones.

        Platform payments are matched by halopsa_id or, before their push recorded the id, by
        reference; they keep source "platform" and are never removed here (one deleted in HaloPSA
        is marked voided, see below).
        """
        to_create: list[Mapping[str, Any]] = []
        to_update: list[Payment] = []
        to_delete: list[int] = []
        vanished_platform: list[int] = []
        for invoice_id, row, links in written:
            local = payments_by_invoice.get(invoice_id, [])
            by_halopsa_id = {p.halopsa_id: p for p in local if p.halopsa_id is not None}
            remote_ids = set()
            for remote in row["payments"]:
                remote_ids.add(remote["halopsa_id"])
                current = by_halopsa_id.get(remote["halopsa_id"]) or links.get(remote["halopsa_id"])
                if current is not None and current.source == Origin.PLATFORM:
                    continue  # ours: amount and reference are what we pushed
                if current is None:
                    # The mapped payment is also its raw record (what HaloPSA sent, as we read it).
                    to_create.append(
                        {
                            **remote,
                            "invoice_id": invoice_id,
                            "connection_id": self.ctx.connection.pk,
                            "source": Origin.HALOPSA,
                            "raw": remote,
                        }
                    )
                elif current.fingerprint != remote["fingerprint"]:
                    current.kind, current.amount, current.paid_on = remote["kind"], remote["amount"], remote["paid_on"]
                    current.method, current.reference, current.fingerprint = (
                        remote["method"],
                        remote["reference"],
                        remote["fingerprint"],
                    )
                    current.raw = remote
                    to_update.append(current)
            to_delete.extend(p.pk for p in local if p.source == Origin.HALOPSA and p.halopsa_id not in remote_ids)
            vanished_platform.extend(
                p.pk
                for p in local
                if p.source == Origin.PLATFORM
                and p.halopsa_id is not None
                and p.voided_at is None
                and p.halopsa_id not in remote_ids
            )
        if to_delete:
            Payment.objects.filter(pk__in=to_delete).delete()
        if vanished_platform:
            self._void_platform_payments_deleted_in_halopsa(vanished_platform)
        Payment.objects.bulk_update(to_update, PAYMENT_UPDATE_FIELDS)
        insert_rows(Payment, to_create)

    def _void_platform_payments_deleted_in_halopsa(self, payment_ids: list[int]) -> None:
        """A platform payment HaloPSA no longer lists was deleted there: mark it voided (the
        balance already follows HaloPSA). Only when its post finished before this run started: a
        page read before a push landed does not list that payment yet, and must not void it."""
        ctx = self.ctx
        confirmed = PushJob.objects.filter(
            payment_id__in=payment_ids,
            kind=PushJob.Kind.PAYMENT_CREATE,
            state=PushJob.State.DONE,
            done_at__lt=ctx.started_at,
        ).values_list("payment_id", flat=True)
        ctx.counts.updated += Payment.objects.filter(pk__in=list(confirmed), voided_at__isnull=True).update(
            voided_at=ctx.now
        )
