"""Payments made on the platform, their deletion, and invoice status changed here.

Each action changes our copy at once and, for invoices that came from HaloPSA, writes a PushJob
(the outbox) in the same transaction; the job is enqueued only after the commit, so a rolled-back
action pushes nothing. `integrations/services/push.py` carries the job to HaloPSA exactly once.
Rules (docs/push-rules.md):
- amounts are Decimal with at most two places, > 0 and never more than the invoice's balance;
- invoices created in the portal (origin platform) take payments and status changes locally only;
- only payments made on the platform can be deleted here; HaloPSA's own are deleted in HaloPSA;
- deposits do not exist here: a payment is always an InvoicePayment against one invoice;
- a payment is dated between 2000-01-01 and today (HaloPSA stores what it is sent);
- the status follows the amounts (`invoice_status_from_amounts`, the pull's rule too): "paid" set
  by a person settles the balance, "void" owes nothing, and a paid invoice is re-opened only by
  deleting the payments that pay it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from integrations.halopsa.mapping import invoice_status
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
# Payment dates: nothing before this (a typo such as 0001-01-01 reached HaloPSA once and broke every
# sync of that invoice), nothing after today. "Today" is today anywhere on Earth (UTC+14), so a
# person east of UTC can date a payment with their own today.
EARLIEST_PAYMENT_DATE = date(2000, 1, 1)
LATEST_TIMEZONE_AHEAD = timedelta(hours=14)
# The method of the payment that settles a portal-made invoice marked paid (HaloPSA's markaspaid
# records its own payment; the sandbox calls it the same).
MARKED_AS_PAID = "Marked as paid"


class PaymentRefused(ValueError):
    """A payment (or its deletion) we will not record; `message` says why, for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StatusChangeRefused(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StatusChange:
    """What a status change did, in words for the person who asked it (`message`)."""

    changed: bool
    message: str
    job: PushJob | None = None


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
    """The status these amounts give the invoice: void stays void, otherwise the amounts decide
    (mapping.invoice_status, the rule the pull applies to HaloPSA's amounts too)."""
    return invoice_status(
        total=invoice.total, amount_paid=amount_paid, balance=balance, voided=invoice.status == Invoice.Status.VOID
    )


def latest_payment_date() -> date:
    """The last date a payment may carry: today somewhere on Earth."""
    return (timezone.now() + LATEST_TIMEZONE_AHEAD).date()


def payment_date_problem(paid_on: Any) -> str:
    """Why `paid_on` cannot date a payment ("" when it can): not a date, before 2000, in the future."""
    if not isinstance(paid_on, date) or isinstance(paid_on, datetime):
        return f"{paid_on!r} is not a date; use YYYY-MM-DD."
    if paid_on < EARLIEST_PAYMENT_DATE:
        return f"A payment cannot be dated before {EARLIEST_PAYMENT_DATE.isoformat()} (got {paid_on.isoformat()})."
    if paid_on > latest_payment_date():
        return f"A payment cannot be dated in the future (got {paid_on.isoformat()})."
    return ""


def payment_refusal(invoice: Invoice) -> str:
    """Why the invoice takes no payment now ("" when it does). The invoice page hides its payment
    form with this reason; `payment_record` refuses with it."""
    if invoice.is_credit_note:
        return f"Invoice {invoice} is a credit note; payments are recorded against invoices."
    if invoice.status == Invoice.Status.VOID:
        return f"Invoice {invoice} is void; it takes no payments."
    if invoice.archived_at is not None:
        return f"Invoice {invoice} is archived; un-archive it before recording a payment."
    if invoice.deleted_in_halopsa_at is not None:
        return f"Invoice {invoice} was deleted in HaloPSA; a payment could not be posted there."
    if invoice.balance <= 0:
        return f"Invoice {invoice} has nothing left to pay (balance {_money(invoice.balance, invoice.currency)})."
    return ""


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


def payment_record(
    *, invoice: Invoice, amount: Any, method: str = "", reference: str = "", paid_on: date | None = None, user=None
) -> Payment:
    """Record a payment made on the platform; for a HaloPSA invoice, queue its push.

    `reference` is what HaloPSA will carry and what retries look the payment up by, so it must be
    unique among this connection's platform payments; without one we generate `SP-<16 hex>`.
    Raises PaymentRefused (nothing written) for a bad amount or date, an overpayment, or an
    invoice that cannot take payments. `paid_on` defaults to today (UTC).
    """
    value = payment_amount_parse(amount)
    method = (method or "").strip()[:60]
    reference = (reference or "").strip()
    if len(reference) > 100:
        raise PaymentRefused("The reference is longer than 100 characters.")
    paid_on = paid_on if paid_on is not None else timezone.now().date()
    date_problem = payment_date_problem(paid_on)
    if date_problem:
        raise PaymentRefused(date_problem)

    def check(current: Invoice) -> None:
        _check_payable(current, value)

    with transaction.atomic():
        written = _apply_to_invoice(invoice_id=invoice.pk, paid_delta=value, check=check)
        connection = written.connection
        if (
            reference
            and Payment.objects.filter(
                connection=connection, source=Origin.PLATFORM, reference=reference, voided_at__isnull=True
            ).exists()
        ):
            raise PaymentRefused(
                f"Reference {reference!r} is already used by another payment; HaloPSA finds payments by "
                "their reference, so each needs its own (or leave it empty to get one generated)."
            )
        payment = Payment.objects.create(
            invoice=written,
            connection=connection,
            source=Origin.PLATFORM,
            kind=Payment.Kind.PAYMENT,
            amount=value,
            paid_on=paid_on,
            method=method,
            reference=reference or f"{REFERENCE_PREFIX}{uuid.uuid4().hex[:16].upper()}",
            created_by=user if user is not None and user.is_authenticated else None,
        )
        job = None
        if invoice_pushes_to_halopsa(written):
            job = PushJob.objects.create(
                connection=connection,
                kind=PushJob.Kind.PAYMENT_CREATE,
                key=f"payment_create:{payment.pk}",
                payment=payment,
                invoice=written,
                payload={"reference": payment.reference, "amount": str(value)},
                created_by=payment.created_by,
            )
            _enqueue_push(job.pk)
        audit_record(
            user=user,
            action="payment.record",
            obj=payment,
            partner=connection.partner_id,
            summary=f"Recorded a payment of {_money(value, written.currency)} on invoice {written}",
            invoice_id=written.pk,
            amount=str(value),
            reference=payment.reference,
            balance=str(written.balance),
            pushed=job is not None,
        )
    _refresh(invoice, written)
    return payment


def _check_payable(invoice: Invoice, amount: Decimal) -> None:
    refusal = payment_refusal(invoice)
    if refusal:
        raise PaymentRefused(refusal)
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
                    payment=payment,
                    kind=PushJob.Kind.PAYMENT_CREATE,
                    state__in=[PushJob.State.PENDING, PushJob.State.RETRYING, PushJob.State.NEEDS_REVIEW],
                ).update(
                    state=PushJob.State.CANCELLED,
                    last_error="Payment deleted; the delete job removes anything posted.",
                    updated_at=now,
                )
                job = PushJob.objects.create(
                    connection=written.connection,
                    kind=PushJob.Kind.PAYMENT_DELETE,
                    key=f"payment_delete:{payment.pk}",
                    payment=payment,
                    invoice=written,
                    payload={"reference": payment.reference},
                    created_by=user if user is not None and user.is_authenticated else None,
                )
                _enqueue_push(job.pk)
        audit_record(
            user=user,
            action="payment.delete",
            obj=payment,
            partner=written.connection.partner_id,
            summary=f"Deleted the payment of {_money(payment.amount, written.currency)} on invoice {written}",
            invoice_id=written.pk,
            reference=payment.reference,
            balance=str(written.balance),
            pushed=job is not None,
        )
    payment.voided_at = now
    if Payment.invoice.is_cached(payment):
        _refresh(payment.invoice, written)
    return payment


# --- where each payment stands with HaloPSA ------------------------------------------------------


@dataclass(frozen=True)
class PushState:
    """Whether a payment is in HaloPSA, for the invoice page and the payment list. `kind` is one of
    halopsa (came from there), local (invoice made here), posted, pending, failed, deleted;
    `error` is HaloPSA's (or our) message when it failed; `job_id` the push a person can retry."""

    kind: str
    label: str
    error: str = ""
    job_id: int | None = None


def payment_push_states(payments: list[Payment]) -> dict[int, PushState]:
    """Each payment's PushState, from its push jobs (one query for all of them)."""
    jobs: dict[tuple[int | None, str], PushJob] = {}
    platform = [p.pk for p in payments if p.source == Origin.PLATFORM]
    if platform:
        for job in PushJob.objects.filter(payment_id__in=platform).order_by("created_at", "id"):
            jobs[(job.payment_id, job.kind)] = job  # the newest of each kind wins
    return {
        p.pk: _push_state(
            p, jobs.get((p.pk, PushJob.Kind.PAYMENT_CREATE)), jobs.get((p.pk, PushJob.Kind.PAYMENT_DELETE))
        )
        for p in payments
    }


def _push_state(payment: Payment, post: PushJob | None, delete: PushJob | None) -> PushState:
    if payment.source != Origin.PLATFORM:
        return PushState("halopsa", "From HaloPSA")
    if payment.voided_at is not None:
        if delete is not None:
            return _job_state(delete, done="Deleted in HaloPSA", waiting="Deletion pending", failing="Deletion failed")
        if post is not None and post.state == PushJob.State.DONE:
            return PushState("deleted", "Deleted in HaloPSA")  # deleted there; the pull voided it here
        return PushState("deleted", "Deleted before it reached HaloPSA" if post is not None else "Deleted")
    if post is None:
        if payment.halopsa_id is not None:
            return PushState("posted", f"Posted to HaloPSA (#{payment.halopsa_id})")
        return PushState("local", "Recorded here only")
    suffix = f" (#{payment.halopsa_id})" if payment.halopsa_id else ""
    return _job_state(post, done=f"Posted to HaloPSA{suffix}", waiting="Pending", failing="Failed")


def _job_state(job: PushJob, *, done: str, waiting: str, failing: str) -> PushState:
    if job.state == PushJob.State.DONE:
        return PushState("deleted" if job.kind == PushJob.Kind.PAYMENT_DELETE else "posted", done)
    if job.state in (PushJob.State.PENDING, PushJob.State.RUNNING):
        return PushState("pending", waiting, job_id=job.pk)
    if job.state == PushJob.State.RETRYING:
        return PushState("failed", f"{failing}, will retry", job.last_error, job.pk)
    if job.state == PushJob.State.NEEDS_REVIEW:
        return PushState("failed", f"{failing}: needs review", job.last_error, job.pk)
    return PushState("failed", f"{failing}: cancelled", job.last_error)


# --- invoice status ------------------------------------------------------------------------------


def invoice_status_choices(invoice: Invoice) -> list[str]:
    """The statuses a person may set on the invoice now, besides the one it has (its menu offers
    these; `invoice_status_change` refuses the others with the reason):
    - open or partially paid -> paid (settles the balance) or void;
    - void -> open (un-void; it owes what is not paid);
    - paid -> void; re-opening a paid invoice means removing the payments that pay it (HaloPSA's
      rule: the portal does not guess which), except a mark as paid not sent to HaloPSA yet,
      which re-opening cancels.
    """
    if status_change_refusal(invoice):
        return []
    if invoice.status == Invoice.Status.VOID:
        return [Invoice.Status.OPEN]
    if invoice.status == Invoice.Status.PAID:
        reopen = [Invoice.Status.OPEN] if _unsent_mark_paid(invoice) is not None else []
        return [*reopen, Invoice.Status.VOID]
    return [Invoice.Status.PAID, Invoice.Status.VOID]


def status_change_preview(*, invoice: Invoice, status: str) -> tuple[Decimal, str]:
    """What setting `status` (one of invoice_status_choices) would do, for the confirmation page:
    the balance afterwards, and what HaloPSA is told, in words. The change is invoice_status_change."""
    made_here = not invoice_pushes_to_halopsa(invoice)
    if status == Invoice.Status.VOID:
        balance, told = ZERO, "HaloPSA voids the invoice."
    elif status == Invoice.Status.OPEN and invoice.status == Invoice.Status.VOID:
        balance, told = invoice.total - invoice.amount_paid, "HaloPSA un-voids the invoice."
    elif status == Invoice.Status.OPEN:
        mark = _unsent_mark_paid(invoice)
        settled = Decimal(str(mark.payload.get("settles") or "0")) if mark is not None else ZERO
        return (
            invoice.balance + settled,
            "The mark as paid has not been sent to HaloPSA yet: it is cancelled, and nothing is sent.",
        )
    else:
        balance = ZERO
        told = (
            "HaloPSA is told to mark it paid (markaspaid), which records a payment of its amount due there."
            if not made_here
            else f"A \u201c{MARKED_AS_PAID}\u201d payment of {_money(invoice.balance, invoice.currency)} is recorded."
        )
    if made_here:
        return balance, (
            told if status == Invoice.Status.PAID else ""
        ) + " The invoice was made here: nothing is sent to HaloPSA."
    return balance, told


def status_change_refusal(invoice: Invoice) -> str:
    """Why nobody may change this invoice's status now ("" when they may)."""
    if invoice.is_credit_note:
        return f"Invoice {invoice} is a credit note; its status is HaloPSA's."
    if invoice.deleted_in_halopsa_at is not None:
        return f"Invoice {invoice} was deleted in HaloPSA; its status can no longer change."
    if invoice.archived_at is not None:
        return f"Invoice {invoice} is archived; un-archive it first."
    return ""


def _reopen_refusal(invoice: Invoice) -> str:
    return (
        f"Invoice {invoice} is paid ({_money(invoice.amount_paid, invoice.currency)} applied). HaloPSA re-opens a paid "
        "invoice only when the payments that pay it are removed, and the portal does not guess which: delete the "
        "platform payments on this page, or HaloPSA's own payments in HaloPSA (a mark as paid is one there, "
        f"\u201c{MARKED_AS_PAID}\u201d). The status then follows the balance."
    )


def _unsent_mark_paid(invoice: Invoice) -> PushJob | None:
    """The invoice's mark as paid that no worker has picked up yet: certainly not in HaloPSA."""
    jobs = PushJob.objects.filter(
        invoice_id=invoice.pk, kind=PushJob.Kind.INVOICE_STATUS, state=PushJob.State.PENDING, attempts=0
    )
    return next((job for job in jobs if job.payload.get("status") == Invoice.Status.PAID), None)


class _InvoiceMoved(Exception):
    """Another writer changed the invoice under us: roll this attempt back and read again."""


def invoice_status_change(*, invoice: Invoice, status: str, user=None) -> StatusChange:
    """A person sets an invoice's status (open, paid or void); for a HaloPSA invoice it is pushed.

    The status never contradicts the amounts (docs/push-rules.md, "Status"):
    - paid settles the balance: amount paid becomes the total, balance 0 (HaloPSA records a
      payment of its amount due through `markaspaid`; an invoice made here gets a
      "Marked as paid" payment);
    - void: the invoice owes nothing (balance 0; amount paid is kept);
    - open un-voids (it owes total minus paid again), or, on a paid invoice, cancels a mark as paid
      that has not left for HaloPSA; otherwise re-opening a paid invoice is refused with the reason.
    The time of the change is kept in `status_changed_locally_at` while its push is on the way (the
    pull's conflict rule). Refusals raise StatusChangeRefused and are audited too. Returns what
    happened (`StatusChange.message` says it in words).
    """
    if status not in SETTABLE_STATUSES:
        allowed = ", ".join(SETTABLE_STATUSES)
        raise StatusChangeRefused(f"{status!r} cannot be set by hand; choose one of: {allowed}.")
    for _ in range(CAS_ATTEMPTS):
        try:
            with transaction.atomic():
                result = _status_change_once(invoice_id=invoice.pk, target=status, user=user)
        except _InvoiceMoved:
            continue
        except StatusChangeRefused as exc:
            audit_record(
                user=user,
                action="invoice.status_refused",
                obj=invoice,
                summary=f"Status of invoice {invoice} not changed to {status}: {exc.message}",
                wanted=status,
                reason=exc.message,
            )
            raise
        invoice.refresh_from_db(fields=["amount_paid", "balance", "status", "status_changed_locally_at"])
        return result
    raise StatusChangeRefused("The invoice changed while its status was being changed; please try again.")


def _status_change_once(*, invoice_id: int, target: str, user) -> StatusChange:
    current = Invoice.objects.select_related("connection", "customer").get(pk=invoice_id)
    refusal = status_change_refusal(current)
    if refusal:
        raise StatusChangeRefused(refusal)
    label = Invoice.Status(current.status).label.lower()
    if target == current.status or (target == Invoice.Status.OPEN and current.status == Invoice.Status.PARTIALLY_PAID):
        return StatusChange(False, f"Invoice {current} is already {label}; nothing changed.")
    if target not in invoice_status_choices(current):
        if target == Invoice.Status.OPEN:
            raise StatusChangeRefused(_reopen_refusal(current))
        raise StatusChangeRefused(
            f"Invoice {current} is {label}; it cannot be set to "
            f"{Invoice.Status(target).label.lower()} from there (re-open it first)."
        )
    now = timezone.now()
    pushes = invoice_pushes_to_halopsa(current)
    user = user if user is not None and user.is_authenticated else None
    # The newest change is the one HaloPSA must end with: unfinished status pushes are moot. A mark
    # as paid among them that was never sent settled a balance HaloPSA never heard of: owed again.
    unsettled = _status_pushes_supersede(current, now)
    amount_paid, balance = current.amount_paid - unsettled, current.balance + unsettled
    payload: dict[str, str] = {"status": target}
    currency = current.currency
    new_status: str
    if target == Invoice.Status.VOID:
        new_status, balance = Invoice.Status.VOID, ZERO  # a void invoice owes nothing
        message = f"Invoice {current} is now void: it owes nothing."
    elif target == Invoice.Status.OPEN and current.status == Invoice.Status.VOID:
        balance = current.total - amount_paid
        new_status = invoice_status(total=current.total, amount_paid=amount_paid, balance=balance, voided=False)
        message = f"Invoice {current} is no longer void: {_money(balance, currency)} is owed."
    elif target == Invoice.Status.OPEN:  # paid, by a mark as paid that never left: cancelled above
        new_status = invoice_status(total=current.total, amount_paid=amount_paid, balance=balance, voided=False)
        message = (
            f"Invoice {current} is open again: its mark as paid had not been sent to HaloPSA yet, so it was "
            f"cancelled; {_money(balance, currency)} is owed again."
        )
        pushes = False  # HaloPSA never heard of the mark: nothing to tell it
    else:  # paid: the balance is settled
        payload["settles"] = str(max(balance, ZERO))
        settled = max(balance, ZERO)
        amount_paid, balance, new_status = amount_paid + settled, ZERO, Invoice.Status.PAID
        message = f"Invoice {current} marked as paid: {_money(settled, currency)} settled."
    written = Invoice.objects.filter(
        pk=current.pk,
        amount_paid=current.amount_paid,
        balance=current.balance,
        status=current.status,
    ).update(
        amount_paid=amount_paid,
        balance=balance,
        status=new_status,
        updated_at=now,
        status_changed_locally_at=now if pushes else None,
    )
    if not written:
        raise _InvoiceMoved
    job = None
    if pushes:
        job = PushJob.objects.create(
            connection=current.connection,
            kind=PushJob.Kind.INVOICE_STATUS,
            key=f"invoice_status:{current.pk}:{uuid.uuid4().hex}",
            invoice=current,
            payload=payload,
            created_by=user,
        )
        _enqueue_push(job.pk)
        message += " HaloPSA is updated in the background" + (
            " (it records the settled amount as a payment)." if target == Invoice.Status.PAID else "."
        )
    elif invoice_pushes_to_halopsa(current):
        message += " Nothing is sent to HaloPSA."
    else:
        if target == Invoice.Status.PAID and payload["settles"] != "0.00":
            # Made here: the settled amount is a payment here, which re-opening would delete.
            Payment.objects.create(
                invoice=current,
                connection=current.connection,
                source=Origin.PLATFORM,
                kind=Payment.Kind.PAYMENT,
                amount=Decimal(payload["settles"]),
                paid_on=now.date(),
                method=MARKED_AS_PAID,
                reference=f"{REFERENCE_PREFIX}{uuid.uuid4().hex[:16].upper()}",
                created_by=user,
            )
        message += " The invoice was made here, so nothing is sent to HaloPSA."
    audit_record(
        user=user,
        action="invoice.status",
        obj=current,
        summary=f"Changed the status of invoice {current} from {current.status} to {new_status}",
        old=current.status,
        new=new_status,
        wanted=target,
        amount_paid=str(amount_paid),
        balance=str(balance),
        unsettled=str(unsettled),
        pushed=job is not None,
    )
    return StatusChange(True, message, job)


def _status_pushes_supersede(invoice: Invoice, now) -> Decimal:
    """Cancel the invoice's unfinished status pushes; return what never-sent marks as paid among
    them had settled here (it is owed again). A push a worker holds right now is left to finish:
    it checks the invoice's status before writing and stands down when that changed."""
    unsettled = ZERO
    for job in PushJob.objects.filter(
        invoice_id=invoice.pk,
        kind=PushJob.Kind.INVOICE_STATUS,
        state__in=[PushJob.State.PENDING, PushJob.State.RETRYING, PushJob.State.NEEDS_REVIEW],
    ):
        cancelled = PushJob.objects.filter(pk=job.pk, state=job.state, attempts=job.attempts).update(
            state=PushJob.State.CANCELLED, last_error="Superseded by a later status change.", updated_at=now
        )
        if not cancelled:
            raise _InvoiceMoved  # a worker picked it up meanwhile: decide again with what it did
        never_sent = job.state == PushJob.State.PENDING and job.attempts == 0
        if never_sent and job.payload.get("status") == Invoice.Status.PAID:
            unsettled += Decimal(str(job.payload.get("settles") or "0"))
    return unsettled
