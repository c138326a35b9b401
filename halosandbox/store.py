"""Mutable state of the sandbox: the generated dataset plus everything changed since.

Generated invoices are rebuilt on demand (see dataset.py); an invoice is copied into
`self.overrides` the first time it changes and lives there from then on. Clients and users are
small and held in full. Every change goes through a method here, which:
- bumps the record's last-update timestamp (invoices also get a new `pdf_attachment_id`),
- bumps `revision` (invalidates cached list queries),
- emits a webhook event to the registered listeners (the server's webhook dispatcher).

The same methods back the control API (`/_sandbox/...`) and tests that mutate `srv.store`.
All public methods are thread-safe (one re-entrant lock) and return API-shaped dicts.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from array import array
from collections import OrderedDict
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping

from . import shapes
from .dataset import (
    ATTACHMENT_ID_OFFSET,
    DAY_MS,
    KIND_CREDIT_NOTE,
    KIND_DELETED,
    KIND_INVOICE,
    LINE_IDS_PER_INVOICE,
    PAYMENT_IDS_PER_INVOICE,
    DatasetSpec,
    InvoiceFactory,
    build_invoice_heads,
    generate_clients,
    generate_users,
    invoice_number,
    resolve_dataset,
    thirdparty_number,
)
from .records import Client, Invoice, Line, Payment, User
from .shapes import PAYMENT_METHOD_NAMES, PAYMENT_TYPE_CREDIT, PAYMENT_TYPE_PAYMENT, ZERO, money

EventListener = Callable[[dict], None]


class SandboxError(Exception):
    """A request the sandbox refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotFound(SandboxError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 404)


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _decimal(value: Any, name: str) -> Decimal:
    try:
        return Decimal(str(value))
    except Exception as exc:
        raise SandboxError(f"{name} is not a number: {value!r}") from exc


def _date_ms(value: Any, name: str) -> int:
    ms = shapes.parse_query_date(str(value))
    if ms is None:
        raise SandboxError(f"{name} is not a date: {value!r}")
    return ms


class Store:
    spec: DatasetSpec  # set by reset()
    seed: int

    def __init__(
        self,
        dataset: str | Mapping[str, Any] | DatasetSpec = "tiny",
        seed: int = 1,
        version: str = shapes.DEFAULT_VERSION,
    ) -> None:
        self.lock = threading.RLock()
        self.version = version
        self.webhooks: dict[str, dict[str, Any]] = {}
        self._listeners: list[EventListener] = []
        self._last_ms = 0
        self.reset(dataset, seed)

    # -----------------------------------------------------------------------------------------
    # Dataset lifecycle

    def reset(self, dataset: str | Mapping[str, Any] | DatasetSpec | None = None, seed: int | None = None) -> None:
        """Regenerate from (dataset, seed); keeps version, webhooks and listeners."""
        spec = resolve_dataset(dataset if dataset is not None else self.spec)
        seed = int(seed if seed is not None else self.seed)
        with self.lock:
            self.spec, self.seed = spec, seed
            self.anchor_ms = shapes.datetime_to_ms(spec.anchor)
            original_clients = generate_clients(spec, seed)
            self.clients: dict[int, Client] = {k: copy.copy(v) for k, v in original_clients.items()}
            self.deleted_clients: dict[int, Client] = {}
            self.users: dict[int, User] = generate_users(spec, seed, original_clients)
            self.deleted_users: dict[int, User] = {}
            original_heads = build_invoice_heads(spec, seed)
            self.factory = InvoiceFactory(spec, seed, original_heads, original_clients)
            self.heads = original_heads.copy()
            self.generated_invoices = len(original_heads)
            self.overrides: dict[int, Invoice] = {}
            self.payment_owner: dict[int, int] = {}  # payment id -> invoice id (overridden invoices)
            self.attachment_owner: dict[int, int] = {}  # attachment id -> invoice id (overridden)
            n = self.generated_invoices
            self._next_client_id = max(self.clients, default=0) + 1
            self._next_user_id = max(self.users, default=0) + 1
            self._next_line_id = (n + 1) * LINE_IDS_PER_INVOICE
            self._next_payment_id = (n + 1) * PAYMENT_IDS_PER_INVOICE
            self._next_attachment_id = ATTACHMENT_ID_OFFSET + n + 1
            self.revision = 0
            self._query_cache: OrderedDict[tuple, array] = OrderedDict()

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def now_ms(self) -> int:
        """Wall clock (UTC), but strictly increasing and never before the dataset's anchor, so a
        change is always newer than every generated timestamp and than the previous change."""
        with self.lock:
            now = max(int(time.time() * 1000), self.anchor_ms + DAY_MS, self._last_ms + 1)
            self._last_ms = now
            return now

    def _emit(self, event: str, entity: str, object_id: int, obj: dict[str, Any]) -> None:
        payload = {
            "event": event,
            "entity": entity,
            "object_id": object_id,
            "object": obj,
            "timestamp_ms": self._last_ms or self.now_ms(),
        }
        for listener in list(self._listeners):
            try:
                listener(payload)
            except Exception:  # a broken listener must never break the change itself
                pass

    def _changed(self) -> None:
        self.revision += 1
        self._query_cache.clear()

    # -----------------------------------------------------------------------------------------
    # Lookups

    def client_name(self, client_id: int, fallback: str = "") -> str:
        client = self.clients.get(client_id) or self.deleted_clients.get(client_id)
        return client.name if client else fallback

    def invoice_client_name(self, invoice: Invoice) -> str:
        if invoice.client_id == shapes.NO_CLIENT_ID:
            return shapes.NO_CLIENT_NAME
        return self.client_name(invoice.client_id, invoice.client_name_snapshot)

    def get_client(self, client_id: int) -> Client | None:
        return self.clients.get(client_id)

    def get_user(self, user_id: int) -> User | None:
        return self.users.get(user_id)

    def invoice_count(self) -> int:
        return len(self.heads)

    def get_invoice(self, invoice_id: int) -> Invoice | None:
        """The current invoice (or credit note), or None when missing/deleted."""
        with self.lock:
            if not 1 <= invoice_id <= len(self.heads) or self.heads.kind[invoice_id - 1] == KIND_DELETED:
                return None
            invoice = self.overrides.get(invoice_id)
            return invoice if invoice is not None else self.factory.build(invoice_id)

    def _require_invoice(self, invoice_id: int) -> Invoice:
        invoice = self.get_invoice(int(invoice_id))
        if invoice is None:
            raise NotFound(f"Invoice {invoice_id} not found")
        return invoice

    def _mutable_invoice(self, invoice_id: int) -> Invoice:
        invoice = self._require_invoice(invoice_id)
        if invoice.id not in self.overrides:
            self.overrides[invoice.id] = invoice
            for payment in invoice.payments:
                self.payment_owner[payment.id] = invoice.id
        return invoice

    def find_payment(self, payment_id: int) -> tuple[Payment, Invoice] | None:
        with self.lock:
            owner = self.payment_owner.get(payment_id)
            if owner is None:
                owner = payment_id // PAYMENT_IDS_PER_INVOICE
                if not 1 <= owner <= self.generated_invoices or owner in self.overrides:
                    return None
            invoice = self.get_invoice(owner)
            if invoice is None:
                return None
            for payment in invoice.payments:
                if payment.id == payment_id:
                    return payment, invoice
            return None

    def attachment_invoice(self, attachment_id: int) -> Invoice | None:
        """The invoice whose *current* PDF has this id (older ids of changed invoices: None)."""
        with self.lock:
            owner = self.attachment_owner.get(attachment_id)
            if owner is None:
                owner = attachment_id - ATTACHMENT_ID_OFFSET
                if not 1 <= owner <= self.generated_invoices or owner in self.overrides:
                    return None
            invoice = self.get_invoice(owner)
            if invoice is None or invoice.pdf_attachment_id != attachment_id:
                return None
            return invoice

    # -----------------------------------------------------------------------------------------
    # API-shaped views

    def client_json(self, client: Client) -> dict[str, Any]:
        return shapes.client_to_api(client)

    def user_json(self, user: User) -> dict[str, Any]:
        return shapes.user_to_api(user, self.client_name(user.client_id))

    def invoice_json(self, invoice: Invoice, include_lines: bool = True) -> dict[str, Any]:
        return shapes.invoice_to_api(invoice, self.invoice_client_name(invoice), include_lines=include_lines)

    def payment_json(self, payment: Payment, invoice: Invoice) -> dict[str, Any]:
        return shapes.payment_to_api(payment, invoice, self.invoice_client_name(invoice))

    # -----------------------------------------------------------------------------------------
    # Queries

    def query_clients(
        self,
        *,
        include_active: bool = True,
        include_inactive: bool = False,
        search: str | None = None,
        updated_from: int | None = None,
        updated_to: int | None = None,
        toplevel_id: int | None = None,
        order: str | None = None,
        desc: bool = False,
    ) -> list[Client]:
        with self.lock:
            needle = (search or "").lower()
            rows = [
                c
                for c in self.clients.values()
                if (include_inactive if c.inactive else include_active)
                and (not needle or needle in c.name.lower())
                and (updated_from is None or c.lastupdate_ms >= updated_from)
                and (updated_to is None or c.lastupdate_ms <= updated_to)
                and (toplevel_id is None or c.toplevel_id == toplevel_id)
            ]
        keys = {
            "name": lambda c: c.name.lower(),
            "alastupdate": lambda c: c.lastupdate_ms,
            "datecreated": lambda c: c.datecreated_ms,
        }
        rows.sort(key=lambda c: c.id)
        if order and order.lower() in keys:
            rows.sort(key=keys[order.lower()], reverse=desc)
        elif desc:
            rows.reverse()
        return rows

    def query_users(
        self,
        *,
        client_id: int | None = None,
        site_id: int | None = None,
        include_active: bool = True,
        include_inactive: bool = False,
        search: str | None = None,
        updated_from: int | None = None,
        updated_to: int | None = None,
        order: str | None = None,
        desc: bool = False,
    ) -> list[User]:
        with self.lock:
            needle = (search or "").lower()
            rows = [
                u
                for u in self.users.values()
                if (include_inactive if u.inactive else include_active)
                and (client_id is None or u.client_id == client_id)
                and (site_id is None or u.site_id == site_id)
                and (not needle or needle in u.name.lower() or needle in u.emailaddress.lower())
                and (updated_from is None or u.lastupdate_ms >= updated_from)
                and (updated_to is None or u.lastupdate_ms <= updated_to)
            ]
        keys = {
            "name": lambda u: u.name.lower(),
            "ulastupdate": lambda u: u.lastupdate_ms,
            "emailaddress": lambda u: u.emailaddress,
        }
        rows.sort(key=lambda u: u.id)
        if order and order.lower() in keys:
            rows.sort(key=keys[order.lower()], reverse=desc)
        elif desc:
            rows.reverse()
        return rows

    def query_invoice_ids(
        self,
        *,
        include_invoices: bool = True,
        include_credits: bool = False,
        client_ids: frozenset[int] | None = None,
        paymentstatuses: frozenset[int] | None = None,
        date_field: str | None = None,
        start: int | None = None,
        end: int | None = None,
        search: str | None = None,
        third_party_id: str | None = None,
        order: str | None = None,
        desc: bool = False,
    ) -> array:
        """Ids of matching invoices in order. Works on the header columns only, so at 100k
        invoices a query costs one scan; the result is cached until the next change."""
        key = (
            include_invoices,
            include_credits,
            client_ids,
            paymentstatuses,
            date_field,
            start,
            end,
            (search or "").lower(),
            third_party_id,
            (order or "").lower(),
            desc,
        )
        with self.lock:
            cached = self._query_cache.get(key)
            if cached is not None:
                self._query_cache.move_to_end(key)
                return cached
            h = self.heads
            kinds = set()
            if include_invoices:
                kinds.add(KIND_INVOICE)
            if include_credits:
                kinds.add(KIND_CREDIT_NOTE)
            date_column = {"invoice_date": h.invoice_date, "duedate": h.duedate, "last_modified": h.last_modified}.get(
                date_field or ""
            )
            needle = (search or "").lower()
            client_names = {cid: c.name.lower() for cid, c in {**self.deleted_clients, **self.clients}.items()}
            result = array("l")
            for index, kind in enumerate(h.kind):
                if kind not in kinds:
                    continue
                if client_ids is not None and h.client_id[index] not in client_ids:
                    continue
                if paymentstatuses is not None and h.paymentstatus[index] not in paymentstatuses:
                    continue
                if date_column is not None:
                    value = date_column[index]
                    if (start is not None and value < start) or (end is not None and value > end):
                        continue
                invoice_id = index + 1
                if third_party_id is not None and thirdparty_number(invoice_id) != third_party_id:
                    continue
                if needle and not (
                    needle in invoice_number(invoice_id)
                    or needle in thirdparty_number(invoice_id).lower()
                    or needle in client_names.get(h.client_id[index], "")
                ):
                    continue
                result.append(invoice_id)
            sort_column = {
                "invoice_date": h.invoice_date,
                "duedate": h.duedate,
                "last_modified": h.last_modified,
                "client_id": h.client_id,
                "date_created": h.created,
            }.get((order or "").lower())
            if sort_column is not None:
                result = array("l", sorted(result, key=lambda i: sort_column[i - 1], reverse=desc))
            elif order and order.lower() == "client_name":
                result = array(
                    "l", sorted(result, key=lambda i: client_names.get(h.client_id[i - 1], ""), reverse=desc)
                )
            elif desc:  # id / invoicenumber / anything unknown: by id
                result.reverse()
            self._query_cache[key] = result
            if len(self._query_cache) > 16:
                self._query_cache.popitem(last=False)
            return result

    def query_payments(
        self,
        *,
        invoice_id: int | None = None,
        client_id: int | None = None,
        search: str | None = None,
        search_reference: bool = True,
    ) -> list[tuple[int, int]]:
        """(payment id, invoice id) pairs, ordered by payment id. `search` matches a payment's
        `reference`/`thirdpartyid`, or with `search_reference=False` (profile
        `search_ignores_reference`) its invoice number and client name instead."""
        key = ("payments", invoice_id, client_id, (search or "").lower(), search_reference)
        with self.lock:
            cached = self._query_cache.get(key)
            if cached is not None:
                return list(zip(cached[0::2], cached[1::2]))
            if invoice_id is not None:
                candidates: Iterable[int] = [invoice_id]
            else:
                h = self.heads
                candidates = [
                    i + 1
                    for i, kind in enumerate(h.kind)
                    if kind == KIND_INVOICE
                    and (h.paymentstatus[i] != 0 or (i + 1) in self.overrides)
                    and (client_id is None or h.client_id[i] == client_id)
                ]
            needle = (search or "").lower()
            pairs = []
            for candidate in candidates:
                invoice = self.get_invoice(candidate)
                if invoice is None or (client_id is not None and invoice.client_id != client_id):
                    continue
                if (
                    needle
                    and not search_reference
                    and not (
                        needle in invoice.invoicenumber.lower() or needle in self.invoice_client_name(invoice).lower()
                    )
                ):
                    continue
                for p in invoice.payments:
                    if (
                        needle
                        and search_reference
                        and needle not in p.reference.lower()
                        and needle not in p.thirdpartyid.lower()
                    ):
                        continue
                    pairs.append((p.id, invoice.id))
            pairs.sort()
            flat = array("l")
            for pid, iid in pairs:
                flat.extend((pid, iid))
            self._query_cache[key] = flat
            return pairs

    # -----------------------------------------------------------------------------------------
    # Invoice bookkeeping

    def _new_line_id(self) -> int:
        self._next_line_id += 1
        return self._next_line_id

    def _new_payment_id(self) -> int:
        self._next_payment_id += 1
        return self._next_payment_id

    def _touch_invoice(self, invoice: Invoice, now: int | None = None) -> None:
        """Record a change: new last_modified, new PDF id, header columns refreshed."""
        now = now or self.now_ms()
        invoice.last_modified_ms = now
        self.attachment_owner.pop(invoice.pdf_attachment_id, None)
        invoice.pdf_attachment_id = self._next_attachment_id
        self._next_attachment_id += 1
        invoice.pdf_created_ms = now
        self.attachment_owner[invoice.pdf_attachment_id] = invoice.id
        self._sync_heads(invoice)
        self._changed()

    def _sync_heads(self, invoice: Invoice) -> None:
        i = invoice.id - 1
        h = self.heads
        h.client_id[i] = invoice.client_id
        h.kind[i] = KIND_CREDIT_NOTE if invoice.is_credit_note else KIND_INVOICE
        h.paymentstatus[i] = invoice.paymentstatus
        h.invoice_date[i] = invoice.invoice_date_ms
        h.duedate[i] = invoice.duedate_ms
        h.last_modified[i] = invoice.last_modified_ms

    def _invoice_event(self, event: str, invoice: Invoice) -> None:
        self._emit(
            event, "invoice", invoice.id, shapes.invoice_webhook_object(invoice, self.invoice_client_name(invoice))
        )

    def _build_lines(self, specs: Iterable[Mapping[str, Any]]) -> list[Line]:
        lines = []
        for seq, spec in enumerate(specs, start=1):
            if not isinstance(spec, Mapping):
                raise SandboxError("each line must be an object")
            qty = _decimal(spec.get("qty", spec.get("qty_order", 1)), "qty").quantize(shapes.CENT)
            unit_price = money(spec.get("unit_price", spec.get("amount", 0)))
            tax_rate = _decimal(spec.get("tax_rate", 0), "tax_rate")
            description = str(spec.get("description", spec.get("item_shortdescription", f"Line {seq}")))
            lines.append(
                Line(
                    id=self._new_line_id(),
                    sequenceid=seq,
                    description=description,
                    qty=qty,
                    unit_price=unit_price,
                    tax_rate=tax_rate,
                    longdescription=str(spec.get("longdescription", "")),
                    item_code=str(spec.get("item_code", "")),
                )
            )
        return lines

    # -----------------------------------------------------------------------------------------
    # Invoices: changes a HaloPSA user (or the API) makes

    def create_invoice(
        self,
        *,
        client_id: int | None = None,
        lines: list[Mapping[str, Any]] | None = None,
        amount: Any = None,
        invoice_date: Any = None,
        duedate: Any = None,
        currency: str | None = None,
        thirdpartyinvoicenumber: str | None = None,
        _credit_for: Invoice | None = None,
    ) -> dict[str, Any]:
        """New invoice. `client_id` None/0 = no customer. Lines as [{description, qty,
        unit_price, tax_rate}], or `amount` for one untaxed line."""
        with self.lock:
            client_id = int(client_id or 0)
            client = self.clients.get(client_id)
            if client_id and client is None:
                raise SandboxError(f"Client {client_id} not found")
            if lines is None:
                lines = [
                    {"description": "Services", "qty": 1, "unit_price": amount if amount is not None else "100.00"}
                ]
            now = self.now_ms()
            date_ms = _date_ms(invoice_date, "invoice_date") if invoice_date else now - now % DAY_MS
            invoice_id = len(self.heads) + 1
            invoice = Invoice(
                id=invoice_id,
                client_id=client_id,
                client_name_snapshot=client.name if client else "",
                invoicenumber=invoice_number(invoice_id),
                thirdpartyinvoicenumber=thirdpartyinvoicenumber
                if thirdpartyinvoicenumber is not None
                else thirdparty_number(invoice_id),
                invoice_date_ms=date_ms,
                duedate_ms=_date_ms(duedate, "duedate") if duedate else date_ms + 30 * DAY_MS,
                date_created_ms=now,
                last_modified_ms=now,
                currency=currency or (client.currency if client else "USD"),
                lines=self._build_lines(lines),
            )
            if _credit_for is not None:
                invoice.is_credit_note = True
                invoice.creditlinkedtoinvoiceid = _credit_for.id
            self.heads.append(client_id, 0, KIND_INVOICE, 0, date_ms, invoice.duedate_ms, now, now)
            self.overrides[invoice_id] = invoice
            self._touch_invoice(invoice, now)
            self._invoice_event("invoice created", invoice)
            return self.invoice_json(invoice)

    def update_invoice(
        self,
        invoice_id: int,
        *,
        amount: Any = None,
        lines: list[Mapping[str, Any]] | None = None,
        duedate: Any = None,
        invoice_date: Any = None,
        voided: Any = None,
        client_id: Any = None,
        markaspaid: Any = None,
        thirdpartyinvoicenumber: str | None = None,
    ) -> dict[str, Any]:
        """Edit an invoice as a HaloPSA user would. `amount` sets the new total by adding or
        adjusting an untaxed "Adjustment" line (other lines and their tax stay as they were);
        refused below what is already paid. `markaspaid` records a payment of the balance."""
        with self.lock:
            invoice = self._mutable_invoice(invoice_id)
            if lines is not None:
                invoice.lines = self._build_lines(lines)
            if amount is not None:
                target = money(amount)
                if invoice.is_credit_note:
                    raise SandboxError("edit a credit note through its lines")
                if target < invoice.amountpaid:
                    raise SandboxError(f"amount {target} is below the amount already paid ({invoice.amountpaid})")
                kept = [line for line in invoice.lines if line.item_code != "ADJUST"]
                difference = target - sum((line.total_price for line in kept), ZERO)
                if difference != 0:
                    kept.append(
                        Line(
                            id=self._new_line_id(),
                            sequenceid=len(kept) + 1,
                            description="Adjustment",
                            qty=Decimal("1.00"),
                            unit_price=difference,
                            tax_rate=Decimal(0),
                            item_code="ADJUST",
                        )
                    )
                invoice.lines = kept
            if duedate is not None:
                invoice.duedate_ms = _date_ms(duedate, "duedate")
            if invoice_date is not None:
                invoice.invoice_date_ms = _date_ms(invoice_date, "invoice_date")
            if voided is not None:
                invoice.voided = _bool(voided)
            if client_id is not None:
                new_client = int(client_id or 0)
                if new_client and new_client not in self.clients:
                    raise SandboxError(f"Client {new_client} not found")
                invoice.client_id = new_client
                invoice.client_name_snapshot = self.client_name(new_client)
                if new_client:
                    invoice.currency = self.clients[new_client].currency
            if thirdpartyinvoicenumber is not None:
                invoice.thirdpartyinvoicenumber = str(thirdpartyinvoicenumber)
            now = self.now_ms()
            created_payment = None
            if markaspaid is not None and _bool(markaspaid) and invoice.amountdue > 0:
                created_payment = Payment(
                    id=self._new_payment_id(),
                    invoice_id=invoice.id,
                    amount=invoice.amountdue,
                    date_ms=now - now % DAY_MS,
                    type=PAYMENT_TYPE_PAYMENT,
                    reference="Marked as paid",
                    method_name="Marked as paid",
                )
                invoice.payments.append(created_payment)
                self.payment_owner[created_payment.id] = invoice.id
            self._touch_invoice(invoice, now)
            if created_payment is not None:
                self._emit(
                    "payment created", "payment", created_payment.id, shapes.payment_webhook_object(created_payment)
                )
            self._invoice_event("invoice updated", invoice)
            return self.invoice_json(invoice)

    def void_invoice(self, invoice_id: int) -> dict[str, Any]:
        return self.update_invoice(invoice_id, voided=True)

    def delete_invoice(self, invoice_id: int) -> None:
        with self.lock:
            invoice = self._require_invoice(invoice_id)
            self.heads.kind[invoice.id - 1] = KIND_DELETED
            self.overrides.pop(invoice.id, None)
            self.attachment_owner.pop(invoice.pdf_attachment_id, None)
            self.now_ms()
            self._changed()
            self._emit("invoice deleted", "invoice", invoice.id, {"id": invoice.id})

    # -----------------------------------------------------------------------------------------
    # Payments and credits

    def add_payment(
        self,
        invoice_id: int,
        amount: Any,
        *,
        date: Any = None,
        reference: str = "",
        thirdpartyid: str = "",
        method: int | None = None,
        payment_method_name: str | None = None,
    ) -> dict[str, Any]:
        """Record a payment (a HaloPSA user applying it, or POST /api/InvoicePayment). Refuses
        amounts <= 0 or above the balance, and voided invoices / credit notes."""
        with self.lock:
            self._check_payment(invoice_id, amount)
            invoice = self._mutable_invoice(invoice_id)
            now = self.now_ms()
            method = int(method) if method not in (None, "") else 0
            payment = Payment(
                id=self._new_payment_id(),
                invoice_id=invoice.id,
                amount=money(amount),
                date_ms=_date_ms(date, "date") if date else now - now % DAY_MS,
                type=PAYMENT_TYPE_PAYMENT,
                reference=str(reference or ""),
                thirdpartyid=str(thirdpartyid or ""),
                method=method,
                method_name=str(payment_method_name or PAYMENT_METHOD_NAMES.get(method, "Other")),
            )
            invoice.payments.append(payment)
            self.payment_owner[payment.id] = invoice.id
            self._touch_invoice(invoice, now)
            self._emit("payment created", "payment", payment.id, shapes.payment_webhook_object(payment))
            self._invoice_event("invoice updated", invoice)
            return self.payment_json(payment, invoice)

    def _check_payment(self, invoice_id: Any, amount: Any) -> None:
        try:
            invoice_id = int(invoice_id)
        except (TypeError, ValueError) as exc:
            raise SandboxError(f"invoice_id is not an id: {invoice_id!r}") from exc
        invoice = self._require_invoice(invoice_id)
        try:
            value = money(amount)
        except ValueError as exc:
            raise SandboxError(str(exc)) from exc
        if invoice.is_credit_note:
            raise SandboxError(f"Invoice {invoice_id} is a credit note")
        if invoice.voided:
            raise SandboxError(f"Invoice {invoice_id} is voided")
        if value <= 0:
            raise SandboxError("Payment amount must be greater than zero")
        if value > invoice.amountdue:
            raise SandboxError(f"Payment amount {value} exceeds the amount due ({invoice.amountdue})")

    def add_payments(self, rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """All-or-nothing batch (POST /api/InvoicePayment): validated together before any commit."""
        with self.lock:
            pending: dict[int, Decimal] = {}
            for row in rows:
                if not isinstance(row, Mapping):
                    raise SandboxError("each payment must be an object")
                self._check_payment(row.get("invoice_id"), row.get("amount"))
                invoice_id = int(row["invoice_id"])
                pending[invoice_id] = pending.get(invoice_id, ZERO) + money(row["amount"])
                if pending[invoice_id] > self._require_invoice(invoice_id).amountdue:
                    raise SandboxError(f"Payments exceed the amount due on invoice {invoice_id}")
            return [
                self.add_payment(
                    int(row["invoice_id"]),
                    row["amount"],
                    date=row.get("date") or row.get("datepaid"),
                    reference=row.get("reference", ""),
                    thirdpartyid=row.get("thirdpartyid", ""),
                    method=row.get("method", row.get("payment_method")),
                    payment_method_name=row.get("payment_method_name"),
                )
                for row in rows
            ]

    def delete_payment(self, payment_id: int) -> None:
        """Remove a payment (or credit application) and restore the invoice's balance."""
        with self.lock:
            found = self.find_payment(int(payment_id))
            if found is None:
                raise NotFound(f"InvoicePayment {payment_id} not found")
            payment, _ = found
            invoice = self._mutable_invoice(payment.invoice_id)
            invoice.payments = [p for p in invoice.payments if p.id != payment.id]
            self.payment_owner.pop(payment.id, None)
            if payment.type == PAYMENT_TYPE_CREDIT and payment.credit_note_id:
                note = self.get_invoice(payment.credit_note_id)
                if note is not None and note.is_credit_note:
                    note = self._mutable_invoice(note.id)
                    note.credit_applied -= payment.amount
                    self._touch_invoice(note)
            self._touch_invoice(invoice)
            self._emit("payment deleted", "payment", payment.id, shapes.payment_webhook_object(payment))
            self._invoice_event("invoice updated", invoice)

    def apply_credit(self, invoice_id: int, amount: Any, *, date: Any = None) -> dict[str, Any]:
        """Create a credit note for `amount` linked to the invoice and apply it (a type-1
        payment row with `credit_note_id`). Returns {"credit_note", "payment", "invoice"}."""
        with self.lock:
            self._check_payment(invoice_id, amount)
            invoice = self._mutable_invoice(invoice_id)
            value = money(amount)
            note_json = self.create_invoice(
                client_id=invoice.client_id,
                lines=[
                    {
                        "description": f"Credit against invoice {invoice.invoicenumber}",
                        "qty": 1,
                        "unit_price": -value,
                        "tax_rate": 0,
                    }
                ],
                currency=invoice.currency,
                _credit_for=invoice,
            )
            note = self.overrides[note_json["id"]]
            note.credit_applied = value
            self._touch_invoice(note)
            now = self.now_ms()
            payment = Payment(
                id=self._new_payment_id(),
                invoice_id=invoice.id,
                amount=value,
                date_ms=_date_ms(date, "date") if date else now - now % DAY_MS,
                type=PAYMENT_TYPE_CREDIT,
                credit_note_id=note.id,
                reference=f"Credit note {note.invoicenumber}",
                method=3,
                method_name=PAYMENT_METHOD_NAMES[3],
            )
            invoice.payments.append(payment)
            self.payment_owner[payment.id] = invoice.id
            self._touch_invoice(invoice, now)
            self._emit("payment created", "payment", payment.id, shapes.payment_webhook_object(payment))
            self._invoice_event("invoice updated", invoice)
            return {
                "credit_note": self.invoice_json(note),
                "payment": self.payment_json(payment, invoice),
                "invoice": self.invoice_json(invoice),
            }

    # -----------------------------------------------------------------------------------------
    # Clients and users

    _CLIENT_FIELDS = {
        "name",
        "inactive",
        "accountsemailaddress",
        "accountsfirstname",
        "accountslastname",
        "currency",
        "currencyisocode",
        "website",
        "paymentterms",
    }

    def _apply_client_fields(self, client: Client, fields: Mapping[str, Any]) -> None:
        unknown = set(fields) - self._CLIENT_FIELDS
        if unknown:
            raise SandboxError(f"unknown client fields: {sorted(unknown)}")
        for name, value in fields.items():
            if name == "inactive":
                client.inactive = _bool(value)
            elif name in ("currency", "currencyisocode"):
                client.currency = str(value)
            elif name == "paymentterms":
                client.paymentterms = int(value)
            elif name == "name":
                if not str(value).strip():
                    raise SandboxError("name must not be empty")
                client.name = str(value)
            else:
                setattr(client, name, str(value or ""))

    def create_client(self, **fields: Any) -> dict[str, Any]:
        with self.lock:
            if not str(fields.get("name", "")).strip():
                raise SandboxError("name is required")
            now = self.now_ms()
            client_id = self._next_client_id
            client = Client(
                id=client_id,
                name="",
                inactive=False,
                accountsemailaddress="",
                accountsfirstname="",
                accountslastname="",
                currency="USD",
                datecreated_ms=now,
                lastupdate_ms=now,
                main_site_id=client_id,
            )
            self._apply_client_fields(client, fields)
            self._next_client_id += 1
            self.clients[client_id] = client
            self._changed()
            self._emit("client created", "client", client_id, shapes.client_webhook_object(client))
            return self.client_json(client)

    def update_client(self, client_id: int, **fields: Any) -> dict[str, Any]:
        with self.lock:
            client = self.clients.get(int(client_id))
            if client is None:
                raise NotFound(f"Client {client_id} not found")
            self._apply_client_fields(client, fields)
            client.lastupdate_ms = self.now_ms()
            self._changed()
            self._emit("client updated", "client", client.id, shapes.client_webhook_object(client))
            return self.client_json(client)

    def delete_client(self, client_id: int) -> None:
        """Deletes the client only; its users and invoices stay (invoices keep the client id and
        its last name), as the portal must cope with dangling references anyway."""
        with self.lock:
            client = self.clients.pop(int(client_id), None)
            if client is None:
                raise NotFound(f"Client {client_id} not found")
            self.deleted_clients[client.id] = client
            self.now_ms()
            self._changed()
            self._emit("client deleted", "client", client.id, {"id": client.id})

    _USER_FIELDS = {"firstname", "surname", "emailaddress", "canaccessinvoices", "inactive", "client_id", "phonenumber"}

    def _apply_user_fields(self, user: User, fields: Mapping[str, Any]) -> None:
        unknown = set(fields) - self._USER_FIELDS
        if unknown:
            raise SandboxError(f"unknown user fields: {sorted(unknown)}")
        for name, value in fields.items():
            if name in ("canaccessinvoices", "inactive"):
                setattr(user, name, _bool(value))
            elif name == "client_id":
                client = self.clients.get(int(value))
                if client is None:
                    raise SandboxError(f"Client {value} not found")
                user.client_id, user.site_id = client.id, client.main_site_id
            else:
                setattr(user, name, str(value or ""))

    def create_user(self, **fields: Any) -> dict[str, Any]:
        with self.lock:
            if "client_id" not in fields:
                raise SandboxError("client_id is required")
            now = self.now_ms()
            user = User(
                id=self._next_user_id,
                client_id=0,
                firstname="",
                surname="",
                emailaddress="",
                site_id=0,
                inactive=False,
                canaccessinvoices=False,
                datecreated_ms=now,
                lastupdate_ms=now,
            )
            self._apply_user_fields(user, fields)
            self._next_user_id += 1
            self.users[user.id] = user
            self._changed()
            self._emit("user created", "user", user.id, shapes.user_webhook_object(user))
            return self.user_json(user)

    def update_user(self, user_id: int, **fields: Any) -> dict[str, Any]:
        with self.lock:
            user = self.users.get(int(user_id))
            if user is None:
                raise NotFound(f"User {user_id} not found")
            self._apply_user_fields(user, fields)
            user.lastupdate_ms = self.now_ms()
            self._changed()
            self._emit("user updated", "user", user.id, shapes.user_webhook_object(user))
            return self.user_json(user)

    def delete_user(self, user_id: int) -> None:
        with self.lock:
            user = self.users.pop(int(user_id), None)
            if user is None:
                raise NotFound(f"User {user_id} not found")
            self.deleted_users[user.id] = user
            self.now_ms()
            self._changed()
            self._emit("user deleted", "user", user.id, {"id": user.id, "client_id": user.client_id})

    # -----------------------------------------------------------------------------------------
    # Webhook subscriptions (GET/POST/DELETE /api/Webhook and the control API)

    _WEBHOOK_DEFAULTS: dict[str, Any] = {
        "name": "Webhook",
        "type": 0,
        "url": "",
        "method": 0,
        "content_type": "application/json",
        "authentication_type": shapes.WEBHOOK_AUTH_NONE,
        "basic_username": "",
        "basic_password": "",
        "authentication_header": "",
        "active": True,
        "events": [],
        "payload_type": 0,
    }

    def save_webhook(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Create (no `id` or unknown id) or update a subscription.

        `events`, when given, replaces the attached events (see the webhook section of shapes.py).
        Its items are `UnameNotification`-like objects, attached when their `eventno` is in
        shapes.WEBHOOK_EVENTNOS and dropped otherwise, or event names (a person ticking events in
        HaloPSA's UI: the control API and `SandboxServer.add_webhook`; an unknown name is an
        error). The API refuses names before they reach here. No events: nothing is delivered.
        """
        if not isinstance(data, Mapping):
            raise SandboxError("webhook must be an object")
        with self.lock:
            webhook_id = str(data.get("id") or "") or str(uuid.uuid4())
            current = dict(self.webhooks.get(webhook_id, self._WEBHOOK_DEFAULTS))
            for key, value in data.items():
                if key in self._WEBHOOK_DEFAULTS and key != "events":
                    current[key] = value
            if not str(current["url"]).startswith(("http://", "https://")):
                raise SandboxError("url must be an http(s) URL")
            if "events" in data:
                current["events"] = self._webhook_events(data["events"], webhook_id)
            current["authentication_type"] = int(current["authentication_type"] or 0)
            current["active"] = _bool(current["active"])
            current["id"] = webhook_id
            self.webhooks[webhook_id] = current
            return copy.deepcopy(current)

    def _webhook_events(self, items: Any, webhook_id: str) -> list[dict[str, Any]]:
        if items is None:
            return []
        if isinstance(items, (str, Mapping)):
            items = [items]
        if not isinstance(items, list):
            raise SandboxError("events must be a list")
        numbers: list[int] = []
        for item in items:
            if isinstance(item, str):
                if item not in shapes.WEBHOOK_EVENTNOS:
                    raise SandboxError(f"unknown event {item!r}; known: {', '.join(shapes.WEBHOOK_EVENTS)}")
                number = shapes.WEBHOOK_EVENTNOS[item]
            elif isinstance(item, Mapping):
                eventno = shapes.webhook_eventno(item.get("eventno"))
                if eventno is None or eventno not in shapes.WEBHOOK_EVENT_NAMES_BY_NUMBER:
                    continue  # not an event this instance has: dropped (see shapes.py)
                number = eventno
            else:
                raise SandboxError("each event must be an object with an eventno")
            if number not in numbers:
                numbers.append(number)
        # Rows keep their id when the same event stays attached, as a stored notification would.
        kept = {event["eventno"]: event["id"] for event in self.webhooks.get(webhook_id, {}).get("events", [])}
        next_id = 1 + max((event["id"] for hook in self.webhooks.values() for event in hook["events"]), default=0)
        events = []
        for number in numbers:
            row_id = kept.get(number)
            if row_id is None:
                row_id, next_id = next_id, next_id + 1
            events.append(shapes.webhook_event_object(number, webhook_id, row_id))
        return events

    def list_webhooks(self) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self.webhooks.values()))

    def delete_webhook(self, webhook_id: str) -> None:
        with self.lock:
            if self.webhooks.pop(str(webhook_id), None) is None:
                raise NotFound(f"Webhook {webhook_id} not found")

    # -----------------------------------------------------------------------------------------
    # Ground truth

    def billing_contacts(self, client: Client) -> list[dict[str, str]]:
        """The default billing-contact rule (issue 5): the client's accounts contact
        (`accountsemailaddress` + `accountsfirstname`/`accountslastname`) plus every *active* user
        of the client with `canaccessinvoices` (inactive users are not in the default
        /api/Users list). De-duplicated by e-mail (case-insensitive), sorted by e-mail."""
        found: dict[str, dict[str, str]] = {}
        if client.accountsemailaddress:
            name = f"{client.accountsfirstname} {client.accountslastname}".strip()
            found[client.accountsemailaddress.lower()] = {"name": name, "email": client.accountsemailaddress}
        for user in self.users.values():
            if user.client_id == client.id and user.canaccessinvoices and not user.inactive and user.emailaddress:
                found.setdefault(user.emailaddress.lower(), {"name": user.name, "email": user.emailaddress})
        return [found[k] for k in sorted(found)]

    def ground_truth(self) -> dict[str, Any]:
        """What a correct sync ends with, for every non-deleted customer and invoice.

        Shape (amounts and quantities are Decimal strings like "1234.50", dates "YYYY-MM-DD")::

            {"customers": [{"halopsa_id", "name", "inactive", "currency",
                            "billing_contacts": [{"name", "email"}]}],          # by halopsa_id
             "invoices": [{"halopsa_id", "number", "thirdparty_number", "customer_halopsa_id"
                           (None = no customer), "customer_name" ("" = none), "invoice_date",
                           "due_date", "currency", "total", "tax", "amount_paid", "balance",
                           "paymentstatus", "voided", "pdf_attachment_id",
                           "lines": [{"halopsa_id", "description", "quantity", "unit_price",
                                      "net_amount", "tax_amount", "tax_rate", "total"}],
                           "payments": [{"halopsa_id", "amount", "date", "type" (0 payment,
                                         1 credit applied), "credit_note_id", "reference",
                                         "thirdpartyid"}]}],                   # by halopsa_id
             "credit_notes": [same shape as invoices, with "credited_invoice_id"]}

        Inactive customers are included (flag `inactive`); voided invoices are included (flag
        `voided`); credit notes are listed separately (the default /api/Invoice list excludes
        them). Deposits do not exist in the sandbox. Costly: builds every invoice (benchmarks/README.md, "History").
        """
        with self.lock:
            customers = [
                {
                    "halopsa_id": c.id,
                    "name": c.name,
                    "inactive": c.inactive,
                    "currency": c.currency,
                    "billing_contacts": self.billing_contacts(c),
                }
                for c in sorted(self.clients.values(), key=lambda c: c.id)
            ]
            invoices, credit_notes = [], []
            for index, kind in enumerate(self.heads.kind):
                if kind == KIND_DELETED:
                    continue
                invoice = self.get_invoice(index + 1)
                if invoice is None:
                    continue
                row = self._invoice_truth(invoice)
                if invoice.is_credit_note:
                    row["credited_invoice_id"] = invoice.creditlinkedtoinvoiceid
                    credit_notes.append(row)
                else:
                    invoices.append(row)
            return {"customers": customers, "invoices": invoices, "credit_notes": credit_notes}

    def _invoice_truth(self, invoice: Invoice) -> dict[str, Any]:
        day = lambda ms: shapes.format_date(ms)[:10]  # noqa: E731
        return {
            "halopsa_id": invoice.id,
            "number": invoice.invoicenumber,
            "thirdparty_number": invoice.thirdpartyinvoicenumber,
            "customer_halopsa_id": invoice.client_id or None,
            "customer_name": self.invoice_client_name(invoice),
            "invoice_date": day(invoice.invoice_date_ms),
            "due_date": day(invoice.duedate_ms),
            "currency": invoice.currency,
            "total": str(invoice.total),
            "tax": str(invoice.tax_total),
            "amount_paid": str(invoice.amountpaid),
            "balance": str(invoice.amountdue),
            "paymentstatus": invoice.paymentstatus,
            "voided": invoice.voided,
            "pdf_attachment_id": invoice.pdf_attachment_id,
            "lines": [
                {
                    "halopsa_id": line.id,
                    "description": line.description,
                    "quantity": str(line.qty),
                    "unit_price": str(line.unit_price),
                    "net_amount": str(line.net_amount),
                    "tax_amount": str(line.tax_amount),
                    "tax_rate": str(line.tax_rate),
                    "total": str(line.total_price),
                }
                for line in invoice.lines
            ],
            "payments": [
                {
                    "halopsa_id": p.id,
                    "amount": str(p.amount),
                    "date": day(p.date_ms),
                    "type": p.type,
                    "credit_note_id": p.credit_note_id or None,
                    "reference": p.reference,
                    "thirdpartyid": p.thirdpartyid,
                }
                for p in invoice.payments
            ],
        }
