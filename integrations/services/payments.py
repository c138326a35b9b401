"""Payments made on the platform, their deletion, and invoice status changed here.

Each action changes our copy at once and, for invoices that came from HaloPSA, writes a PushJob
(the outbox) in the same transaction; the job is enqueued only after the commit, so a rolled-back
action pushes nothing. `integrations/services/push.py` carries the job to HaloPSA exactly once.
Rules (docs/push-rules.md):
- amounts are Decimal with at most two places, > 0 and never more than the invoice's balance;
- invoices created in the portal (origin platform) take payments and status changes locally only;
- only payments made on the platform can be deleted here; HaloPSA's own are deleted in HaloPSA;
- deposits do not exist here: a payment is always an InvoicePayment against one invoice.
"""
from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from integrations.models import Invoice, Origin, Payment, PushJob
from integrations.services.audit import audit_record

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
MAX_AMOUNT = Decimal("1000000000000")  # the MONEY columns hold 12 digits before the point
REFERENCE_PREFIX = "SP-"
# Statuses a person can set; partially paid follows from the payments, it is not chosen.
SETTABLE_STATUSES = (Invoice.Status.OPEN, Invoice.Status.PAID, Invoice.Status.VOID)
# Compare-and-set attempts when another writer changes the invoice between our read and write.
CAS_ATTEMPTS = 5


class PaymentRefused(ValueError):
    """A payment (or its deletion) we will not record; `message` says why, for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StatusChangeRefused(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- helpers ---------------------------------------------------------------------------------


def payment_amount_parse(value: Any) -> Decimal:
    """A payment amount as Decimal with two places; refuses floats' noise, junk, <= 0, > 2 places."""
    if isinstance(value, bool) or value is None:
        raise PaymentRefused("Enter the payment amount, e.g. 12.34.")
    if isinstance(value, float):
        # Never trust a float's binary digits for money; its shortest repr is what a person typed.
        value = repr(value)
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise PaymentRefused(f"{value!r} is not an amount; use digits and a decimal point, e.g. 12.34.") from None
    if not amount.is_finite():
        raise PaymentRefused(f"{value!r} is not an amount; use digits and a decimal point, e.g. 12.34.")
    if amount <= 0:
        raise PaymentRefused(f"A payment must be greater than zero (got {amount}).")
    if amount != amount.quantize(CENT):
        raise PaymentRefused(f"A payment has at most two decimal places (got {amount}).")
    if amount >= MAX_AMOUNT:
        raise PaymentRefused(f"{amount} is too large for a payment.")
    return amount.quantize(CENT)


def invoice_pushes_to_halopsa(invoice: Invoice) -> bool:
    """Only invoices that came from HaloPSA have anything to update there."""
    return invoice.origin == Origin.HALOPSA and invoice.halopsa_id is not None


def invoice_status_from_amounts(*, invoice: Invoice, amount_paid: Decimal, balance: Decimal) -> str:
    """The status after a payment change: void and a person's "paid" stay; otherwise the amounts say."""
    if invoice.status == Invoice.Status.VOID:
        return Invoice.Status.VOID
    if invoice.status == Invoice.Status.PAID and invoice.status_changed_locally_at is not None:
        return Invoice.Status.PAID  # marked paid by a person: a payment does not undo that
    if balance <= 0 and amount_paid > 0:
        return Invoice.Status.PAID
    if amount_paid > 0:
        return Invoice.Status.PARTIALLY_PAID
    return Invoice.Status.OPEN


def _money(amount: Decimal, currency: str) -> str:
    return f"{amount:,.2f} {currency}"


def _enqueue_push(job_id: int) -> None:
    """After commit only: a rolled-back payment must not reach HaloPSA.

    robust: if the broker is unreachable the action still succeeds for the person; the job stays
    pending and the every-minute sweep (push_due_dispatch) enqueues it.
    """
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task("integrations.tasks.push.push_job_task", job_id), robust=True)


def _apply_to_invoice(*, invoice_id: int, paid_delta: Decimal, check=None) -> Invoice:
    """Add `paid_delta` to amount_paid (and take it off the balance) with compare-and-set.

    SQLite ignores select_for_update and stores decimals as REAL, so instead of F() arithmetic
    the new values are computed in Decimal and written only if the row still holds what we read.
    `check(invoice)` may raise PaymentRefused after each fresh read. Runs inside the caller's
    transaction; returns the invoice as written.
    """
    for _ in range(CAS_ATTEMPTS):
        current = Invoice.objects.select_related("connection", "customer").get(pk=invoice_id)
        if check is not None:
            check(current)
        amount_paid = current.amount_paid + paid_delta
        balance = current.balance - paid_delta
        status = invoice_status_from_amounts(invoice=current, amount_paid=amount_paid, balance=balance)
        written = Invoice.objects.filter(
            pk=current.pk, amount_paid=current.amount_paid, balance=current.balance, status=current.status
        ).update(amount_paid=amount_paid, balance=balance, status=status, updated_at=timezone.now())
        if written:
            current.amount_paid, current.balance, current.status = amount_paid, balance, status
            return current
    raise PaymentRefused("The invoice changed while the payment was being recorded; please try again.")


def _refresh(instance: Invoice, written: Invoice) -> None:
    for field in ("amount_paid", "balance", "status", "status_changed_locally_at"):
        setattr(instance, field, getattr(written, field))


# --- payments ----------------------------------------------------------------------------------


def payment_record(*, invoice: Invoice, amount: Any, method: str = "", reference: str = "",
                   paid_on: date | None = None, user=None) -> Payment:
    """Record a payment made on the platform; for a HaloPSA invoice, queue its push.

    `reference` is what HaloPSA will carry and what retries look the payment up by, so it must be
    unique among this connection's platform payments; without one we generate `SP-<16 hex>`.
    Raises PaymentRefused (nothing written) for a bad amount, an overpayment, or an invoice that
    cannot take payments.
    """
    value = payment_amount_parse(amount)
    method = (method or "").strip()[:60]
    reference = (reference or "").strip()
    if len(reference) > 100:
        raise PaymentRefused("The reference is longer than 100 characters.")
    paid_on = paid_on or timezone.now().date()

    def check(current: Invoice) -> None:
        _check_payable(current, value)

    with transaction.atomic():
        written = _apply_to_invoice(invoice_id=invoice.pk, paid_delta=value, check=check)
        connection = written.connection
        if reference and Payment.objects.filter(
            connection=connection, source=Origin.PLATFORM, reference=reference, voided_at__isnull=True
        ).exists():
            raise PaymentRefused(
                f"Reference {reference!r} is already used by another payment; HaloPSA finds payments by "
                "their reference, so each needs its own (or leave it empty to get one generated)."
            )
        payment = Payment.objects.create(
            invoice=written, connection=connection, source=Origin.PLATFORM, kind=Payment.Kind.PAYMENT,
            amount=value, paid_on=paid_on, method=method,
            reference=reference or f"{REFERENCE_PREFIX}{uuid.uuid4().hex[:16].upper()}",
            created_by=user if user is not None and user.is_authenticated else None,
        )
        job = None
        if invoice_pushes_to_halopsa(written):
            job = PushJob.objects.create(
                connection=connection, kind=PushJob.Kind.PAYMENT_CREATE, key=f"payment_create:{payment.pk}",
                payment=payment, invoice=written, payload={"reference": payment.reference, "amount": str(value)},
                created_by=payment.created_by,
            )
            _enqueue_push(job.pk)
        audit_record(
            user=user, action="payment.record", obj=payment, partner=connection.partner_id,
            summary=f"Recorded a payment of {_money(value, written.currency)} on invoice {written}",
            invoice_id=written.pk, amount=str(value), reference=payment.reference,
            balance=str(written.balance), pushed=job is not None,
        )
    _refresh(invoice, written)
    return payment


def _check_payable(invoice: Invoice, amount: Decimal) -> None:
    if invoice.is_credit_note:
        raise PaymentRefused(f"Invoice {invoice} is a credit note; payments are recorded against invoices.")
    if invoice.status == Invoice.Status.VOID:
        raise PaymentRefused(f"Invoice {invoice} is void; it takes no payments.")
    if invoice.archived_at is not None:
        raise PaymentRefused(f"Invoice {invoice} is archived; un-archive it before recording a payment.")
    if invoice.deleted_in_halopsa_at is not None:
        raise PaymentRefused(f"Invoice {invoice} was deleted in HaloPSA; a payment could not be posted there.")
    if invoice.balance <= 0:
        raise PaymentRefused(f"Invoice {invoice} has nothing left to pay (balance {_money(invoice.balance, invoice.currency)}).")
    if amount > invoice.balance:
        raise PaymentRefused(
            f"Payment of {_money(amount, invoice.currency)} is more than the balance of invoice {invoice} "
            f"({_money(invoice.balance, invoice.currency)}); overpayments are refused."
        )


def payment_delete(*, payment: Payment, user=None) -> Payment:
    """Void a platform payment here (balance restored at once) and queue its deletion in HaloPSA.

    If its post never started, the post is cancelled and nothing goes to HaloPSA. Otherwise a
    delete job runs; it waits for a post still in flight and then deletes whatever HaloPSA holds
    under the payment's reference, so a post whose response was lost is deleted too.
    """
    if payment.source != Origin.PLATFORM:
        raise PaymentRefused(
            f"Payment {payment.pk} came from HaloPSA; delete it in HaloPSA and the next sync removes it here."
        )
    with transaction.atomic():
        now = timezone.now()
        if not Payment.objects.filter(pk=payment.pk, voided_at__isnull=True).update(voided_at=now):
            raise PaymentRefused(f"Payment {payment.pk} is already deleted.")
        written = _apply_to_invoice(invoice_id=payment.invoice_id, paid_delta=-payment.amount)
        job = None
        if invoice_pushes_to_halopsa(written):
            # A post that was never claimed has certainly not reached HaloPSA: cancelling it is enough.
            never_sent = PushJob.objects.filter(
                payment=payment, kind=PushJob.Kind.PAYMENT_CREATE, state=PushJob.State.PENDING, attempts=0
            ).update(state=PushJob.State.CANCELLED, last_error="Payment deleted before it was posted.", updated_at=now)
            if not never_sent:
                PushJob.objects.filter(
                    payment=payment, kind=PushJob.Kind.PAYMENT_CREATE,
                    state__in=[PushJob.State.PENDING, PushJob.State.RETRYING, PushJob.State.NEEDS_REVIEW],
                ).update(state=PushJob.State.CANCELLED, last_error="Payment deleted; the delete job removes anything posted.", updated_at=now)
                job = PushJob.objects.create(
                    connection=written.connection, kind=PushJob.Kind.PAYMENT_DELETE, key=f"payment_delete:{payment.pk}",
                    payment=payment, invoice=written, payload={"reference": payment.reference},
                    created_by=user if user is not None and user.is_authenticated else None,
                )
                _enqueue_push(job.pk)
        audit_record(
            user=user, action="payment.delete", obj=payment, partner=written.connection.partner_id,
            summary=f"Deleted the payment of {_money(payment.amount, written.currency)} on invoice {written}",
            invoice_id=written.pk, reference=payment.reference, balance=str(written.balance), pushed=job is not None,
        )
    payment.voided_at = now
    if Payment.invoice.is_cached(payment):
        _refresh(payment.invoice, written)
    return payment


# --- invoice status ------------------------------------------------------------------------------


def invoice_status_change(*, invoice: Invoice, status: str, user=None) -> PushJob | None:
    """A person sets an invoice's status (open, paid or void); for a HaloPSA invoice it is pushed.

    "open" re-opens: the status then follows the amounts (open or partially paid). The time of
    the change is kept in `status_changed_locally_at` for the conflict rule
    (`integrations.services.push.status_conflict_winner`). Returns the push job, if any.
    """
    if status not in SETTABLE_STATUSES:
        allowed = ", ".join(SETTABLE_STATUSES)
        raise StatusChangeRefused(f"{status!r} cannot be set by hand; choose one of: {allowed}.")
    with transaction.atomic():
        current = Invoice.objects.select_related("connection").get(pk=invoice.pk)
        if current.is_credit_note:
            raise StatusChangeRefused(f"Invoice {current} is a credit note; its status is HaloPSA's.")
        if current.deleted_in_halopsa_at is not None:
            raise StatusChangeRefused(f"Invoice {current} was deleted in HaloPSA; its status can no longer change.")
        if current.archived_at is not None:
            raise StatusChangeRefused(f"Invoice {current} is archived; un-archive it first.")
        if status == Invoice.Status.OPEN:
            current.status = Invoice.Status.OPEN  # drop void/paid, then let the amounts speak
            current.status_changed_locally_at = None
            new_status = invoice_status_from_amounts(invoice=current, amount_paid=current.amount_paid, balance=current.balance)
        else:
            new_status = status
        old_status = Invoice.objects.filter(pk=current.pk).values_list("status", flat=True).get()
        if new_status == old_status:
            invoice.status = old_status
            return None
        now = timezone.now()
        Invoice.objects.filter(pk=current.pk).update(status=new_status, status_changed_locally_at=now, updated_at=now)
        current.status, current.status_changed_locally_at = new_status, now
        job = None
        if invoice_pushes_to_halopsa(current):
            # The newest change is the one HaloPSA must end up with; older unsent ones are moot.
            PushJob.objects.filter(
                invoice=current, kind=PushJob.Kind.INVOICE_STATUS,
                state__in=[PushJob.State.PENDING, PushJob.State.RETRYING, PushJob.State.NEEDS_REVIEW],
            ).update(state=PushJob.State.CANCELLED, last_error="Superseded by a later status change.", updated_at=now)
            job = PushJob.objects.create(
                connection=current.connection, kind=PushJob.Kind.INVOICE_STATUS,
                key=f"invoice_status:{current.pk}:{uuid.uuid4().hex}", invoice=current,
                payload={"status": status}, created_by=user if user is not None and user.is_authenticated else None,
            )
            _enqueue_push(job.pk)
        audit_record(
            user=user, action="invoice.status", obj=current,
            summary=f"Changed the status of invoice {current} from {old_status} to {new_status}",
            old=old_status, new=new_status, pushed=job is not None,
        )
    _refresh(invoice, current)
    return job
