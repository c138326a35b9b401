"""Carrying PushJobs (the outbox) to HaloPSA with exactly-once effect.

HaloPSA has no idempotency key, so exactly-once is built here (docs/push-rules.md, "Exactly-once"):
- a job is claimed with a conditional UPDATE (pending/retrying and due -> running); a duplicated
  task finds nothing to claim and returns;
- jobs touching one invoice are serialised by a lease, so a delete never overtakes its post;
- a payment post first looks HaloPSA up by the payment's stable reference, listing the invoice's
  payments exactly (never `search`; client.py "Payments"), and `HaloClient.create_payment`
  resolves an ambiguous POST (timeout, dropped connection, 5xx) by the same lookup before it
  retries. Found = done; a lookup that cannot be trusted, or anything still ambiguous =
  NEEDS_REVIEW and a person decides (a manual retry looks up again before posting);
- before posting, HaloPSA's live amount due is re-read (the same read gives the invoice's
  payments): a payment bigger than it (paid elsewhere meanwhile) goes to NEEDS_REVIEW instead of
  overpaying the invoice in HaloPSA;
- transient failures retry with capped exponential backoff and jitter; permanent ones need review;
- a worker killed mid-push leaves the job "running"; `push_due_dispatch` (every minute) hands it
  back after LEASE_TIMEOUT, and the reference lookup makes the repeat safe.
Status is two-way, and it always follows the money: a status set here counts only while its push
is on the way (`status_push_on_the_way`); then HaloPSA's amounts and void flag decide. While one
is on the way, `status_conflict_winner` is the rule the pull sync applies when both sides changed
(docs/push-rules.md); both rules, shared with the pull, are in services/reconcile.py. It
compares times on one clock: HaloPSA's timestamps carry no offset, so the instance's clock offset
is measured from HaloPSA's own stamp on our writes (`HaloShape.clock_offset_seconds`). A status
write is checked afterwards: HaloPSA still showing the old status (markaspaid and un-void are
unverified) sends the job to review.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from integrations.conf import halo_settings
from integrations.halopsa.exceptions import (
    HaloAmbiguousWrite,
    HaloConnectionError,
    HaloError,
    HaloNotFound,
    HaloRateLimited,
    HaloServerError,
    HaloTimeout,
)
from integrations.halopsa.mapping import (
    HALO_ACTION_VOID,
    MappingError,
    invoice_status_to_halo,
    map_invoice,
    map_payment,
    parse_halo_datetime,
)
from integrations.halopsa.shape import FEATURE_PAYMENT_PUSH, HaloShape
from integrations.models import Incident, Invoice, Origin, Payment, PushJob
from integrations.services.audit import audit_record
from integrations.services.incidents import incident_open, incident_resolve
from integrations.services.leases import lease_acquire, lease_release
from integrations.services.payments import EARLIEST_PAYMENT_DATE

logger = logging.getLogger(__name__)

# A job "running" for longer than this was abandoned by a killed worker (the client's own
# retries stay well inside it). Also the TTL of the per-invoice lease.
LEASE_TIMEOUT = timedelta(minutes=10)
BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 3600
# Failed attempts before the partner is told (banner + one email).
INCIDENT_AFTER_FAILURES = 5
# Transient failures retry for roughly a day (backoff capped at an hour), then need review.
MAX_ATTEMPTS = 30
# How long a job waits when another push holds its invoice.
BUSY_DELAY = timedelta(seconds=10)
# Fresh pending jobs were enqueued on commit; the sweeper leaves them this long before re-sending.
PENDING_GRACE = timedelta(seconds=30)
SWEEP_BATCH = 200
SCHEDULE_NAME = "push-sweep"
# A write whose round trip took longer than this says too little about when HaloPSA stamped it.
CLOCK_MEASURE_MAX_WINDOW = timedelta(seconds=10)


class PushJobRefused(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Outcome:
    state: str
    message: str = ""
    delay: timedelta | None = None  # only for "try again later without counting a failure"
    # The write may have reached HaloPSA (timeout, dropped connection, 5xx after sending): the
    # next attempt's look-up must wait until HaloPSA has surely finished committing it.
    maybe_written: bool = False
    # The attempt was put off, not failed (PushJob.DeferredReason): it opens no incident.
    deferred_reason: str = PushJob.DeferredReason.NONE


def push_settle_delay() -> timedelta:
    """Least wait before re-checking a write whose outcome is unknown.

    HaloPSA documents nothing about how long a request whose answer we lost may still commit;
    the default (5 minutes, far beyond the client's read timeout) is a guess, hence a setting.
    """
    return timedelta(seconds=halo_settings().push_settle_seconds)


def _done(message: str = "") -> Outcome:
    return Outcome(PushJob.State.DONE, message)


def _review(message: str) -> Outcome:
    return Outcome(PushJob.State.NEEDS_REVIEW, message)


# --- processing -------------------------------------------------------------------------------


def push_job_process(*, job_id: int) -> PushJob | None:
    """Run one push job if it is due and nobody else has it. Safe to call twice or concurrently."""
    job = PushJob.objects.select_related("connection").filter(pk=job_id).first()
    if job is None:
        return None
    if not job.connection.enabled:
        return job  # stays queued; the sweeper sends it once the connection is enabled again
    now = timezone.now()
    claimed = PushJob.objects.filter(
        pk=job_id, state__in=[PushJob.State.PENDING, PushJob.State.RETRYING], next_attempt_at__lte=now
    ).update(state=PushJob.State.RUNNING, attempts=F("attempts") + 1, updated_at=now)
    if not claimed:
        return job  # running elsewhere, finished, or not due yet
    job.refresh_from_db()
    lease_name = f"push:invoice:{job.invoice_id}"
    owner = lease_acquire(lease_name, LEASE_TIMEOUT.total_seconds())
    if owner is None:
        outcome = Outcome(
            PushJob.State.RETRYING,
            "Waiting for another push to the same invoice to finish.",
            BUSY_DELAY,
            deferred_reason=PushJob.DeferredReason.INVOICE_BUSY,
        )
    else:
        try:
            outcome = _run(job)
        finally:
            lease_release(lease_name, owner)
    return _finish(job, outcome)


def _run(job: PushJob) -> Outcome:
    from integrations.halopsa.client import HaloClient

    handler = HANDLERS[job.kind]
    client = None
    try:
        client = HaloClient.for_connection(job.connection)
        return handler(job, client)
    except HaloAmbiguousWrite as exc:
        # Never re-post on our own: the lookup that should settle it failed too.
        return _review(
            f"{exc.message} Retry it by hand once HaloPSA answers again; the retry looks the payment up first."
        )
    except HaloRateLimited as exc:
        delay = timedelta(seconds=max(exc.retry_after or 0, BACKOFF_BASE_SECONDS))
        return Outcome(PushJob.State.RETRYING, exc.message, delay)
    except HaloError as exc:
        if exc.permanent:
            return _review(exc.message)
        maybe_written = job.kind == PushJob.Kind.PAYMENT_CREATE and isinstance(
            exc, (HaloTimeout, HaloConnectionError, HaloServerError)
        )
        return Outcome(PushJob.State.RETRYING, exc.message, maybe_written=maybe_written)
    except MappingError as exc:
        return _review(f"HaloPSA sent data the portal cannot read: {exc.message}")
    except Exception:  # a bug or a database hiccup: keep the job, retry with backoff, log the trace
        logger.exception("push job %s failed unexpectedly", job.pk)
        return Outcome(
            PushJob.State.RETRYING,
            "Unexpected error while pushing; it will be retried. The details are in the server log.",
        )
    finally:
        if client is not None:
            client.close()


def _finish(job: PushJob, outcome: Outcome) -> PushJob:
    now = timezone.now()
    fields: dict = {
        "state": outcome.state,
        "last_error": outcome.message[:2000],
        "updated_at": now,
        "deferred_reason": outcome.deferred_reason,
    }
    if outcome.state == PushJob.State.DONE:
        # What happened goes with the job's data; last_error stays for errors (the dashboard shows it).
        fields.update(done_at=now, last_error="", payload={**job.payload, "result": outcome.message})
    elif outcome.state == PushJob.State.RETRYING:
        if outcome.delay is not None:
            # Not a failure of ours (busy invoice, rate limit): give the attempt back.
            fields["attempts"] = F("attempts") - 1
            fields["next_attempt_at"] = now + outcome.delay
        elif job.attempts >= MAX_ATTEMPTS:
            fields["state"] = PushJob.State.NEEDS_REVIEW
            fields["last_error"] = f"Gave up after {job.attempts} attempts. Last error: {outcome.message}"[:2000]
        else:
            wait = push_backoff(job.attempts)
            if outcome.maybe_written:
                wait = max(wait, push_settle_delay())
            fields["next_attempt_at"] = now + wait
    # Only the claimant finishes the job (a manual retry or the sweeper may have moved it).
    PushJob.objects.filter(pk=job.pk, state=PushJob.State.RUNNING).update(**fields)
    job.refresh_from_db()
    _incident_update(job)
    return job


def push_backoff(attempts: int) -> timedelta:
    """30 s, 60 s, 120 s ... capped at an hour, with ±20% jitter so a fleet does not retry in step."""
    seconds = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


def _incident_update(job: PushJob) -> None:
    connection = job.connection
    if job.state == PushJob.State.NEEDS_REVIEW or (
        job.state == PushJob.State.RETRYING and job.attempts >= INCIDENT_AFTER_FAILURES and not job.deferred_reason
    ):
        incident_open(
            connection,
            Incident.Kind.PUSH_FAILING,
            f"{job.get_kind_display()} for invoice {job.invoice or job.invoice_id} failed: {job.last_error} "
            "See Push jobs on the dashboard.",
        )
    elif job.state == PushJob.State.DONE:
        still_failing = PushJob.objects.filter(connection=connection).filter(
            Q(state=PushJob.State.NEEDS_REVIEW) | Q(state=PushJob.State.RETRYING, attempts__gte=INCIDENT_AFTER_FAILURES)
        )
        if not still_failing.exists():
            incident_resolve(connection, Incident.Kind.PUSH_FAILING)


# --- handlers ------------------------------------------------------------------------------------


def _payment_create(job: PushJob, client) -> Outcome:
    assert job.payment_id is not None  # payment jobs are created with their payment (services/payments.py)
    payment = Payment.objects.select_related("invoice").get(pk=job.payment_id)
    invoice = payment.invoice
    if payment.voided_at is not None:
        # Deleted meanwhile; its delete job removes anything an earlier attempt may have posted.
        return Outcome(PushJob.State.CANCELLED, "The payment was deleted before it was posted.")
    if payment.halopsa_id is not None:
        return _done(f"Already in HaloPSA as payment {payment.halopsa_id}.")
    if payment.paid_on is None or payment.paid_on < EARLIEST_PAYMENT_DATE:
        # Stored before dates were checked (0001-01-01 once reached HaloPSA): never send it on.
        return _review(
            f"The payment's date ({payment.paid_on or 'none'}) is not a real payment date, so it was not "
            "posted. Delete the payment here and record it again with the right date."
        )
    shape = HaloShape.of(job.connection)
    blocked = shape.blocked(FEATURE_PAYMENT_PUSH)
    if blocked:
        return _review(blocked)
    # One read serves the lookup (the invoice's own payments) and the balance check.
    remote_body = client.get_invoice(invoice.halopsa_id, include_lines=True)
    try:
        found = client.find_payment_by_reference(
            invoice_id=invoice.halopsa_id,
            reference=payment.reference,
            lookup=shape.payments_lookup,
            invoice=remote_body,
        )
    finally:
        _payments_shape_learn(job.connection, shape, client)
    if found is not None:
        return _adopt(payment, found, "Found in HaloPSA by its reference (an earlier attempt had posted it).")
    # Only the amounts and state matter here: lines and payments are the pull's business.
    remote = map_invoice({**remote_body, "lines": [], "payments": []})
    if remote["status"] == Invoice.Status.VOID:
        return _review(
            f"Invoice {invoice} is void in HaloPSA, so the payment of {payment.amount} was not posted. "
            "Delete the payment here, or un-void the invoice in HaloPSA and retry."
        )
    if remote["balance"] < payment.amount:
        return _review(
            f"HaloPSA shows only {remote['balance']} {invoice.currency} due on invoice {invoice} (paid there meanwhile?); "
            f"posting {payment.amount} would overpay it, so nothing was posted. Check the invoice in HaloPSA, "
            "then delete this payment here or retry."
        )
    started = timezone.now()
    try:
        created = client.create_payment(
            invoice_id=invoice.halopsa_id,
            amount=payment.amount,
            paid_on=payment.paid_on,
            reference=payment.reference,
            method_name=payment.method,
            lookup=shape.payments_lookup,
            looked_up=True,
        )
    finally:
        _payments_shape_learn(job.connection, shape, client)
    outcome = _adopt(payment, created, "")
    assert invoice.halopsa_id is not None  # pushed only for invoices from HaloPSA (invoice_pushes_to_halopsa)
    _clock_offset_learn(
        job.connection,
        shape,
        client,
        invoice.halopsa_id,
        before=remote_body,
        answer=None,
        started=started,
        ended=timezone.now(),
    )
    return outcome


def _payments_shape_learn(connection, shape: HaloShape, client) -> None:
    """Record the payments lookup and list key that just worked, where they differ from the stored shape."""
    from integrations.services.connections import connection_shape_update

    learned = {}
    if client.payments_lookup_used and client.payments_lookup_used != shape.payments_lookup:
        learned["payments_lookup"] = client.payments_lookup_used
    if client.payments_list_key and client.payments_list_key != shape.payments_list_key:
        learned["payments_list_key"] = client.payments_list_key
    if learned:
        for name, value in learned.items():
            setattr(shape, name, value)
        connection_shape_update(connection=connection, **learned)


def _adopt(payment: Payment, remote: dict, note: str) -> Outcome:
    """Record HaloPSA's id for our payment (it is ours: same reference on the same invoice)."""
    mapped = map_payment(remote)
    if mapped is None or mapped["amount"] != payment.amount:
        amount = mapped["amount"] if mapped else remote.get("amount")
        return _review(
            f"HaloPSA has a payment with reference {payment.reference!r} on invoice {payment.invoice} for {amount}, "
            f"not {payment.amount}. Check it in HaloPSA; nothing was posted."
        )
    with transaction.atomic():
        # A pull that ran between the post and now may have mirrored it as a HaloPSA payment.
        Payment.objects.filter(
            connection_id=payment.connection_id, halopsa_id=mapped["halopsa_id"], source=Origin.HALOPSA
        ).delete()
        try:
            Payment.objects.filter(pk=payment.pk).update(halopsa_id=mapped["halopsa_id"])
        except IntegrityError:
            return _review(f"HaloPSA payment {mapped['halopsa_id']} is already linked to another payment here.")
    payment.halopsa_id = mapped["halopsa_id"]
    return _done(note or f"Posted to HaloPSA as payment {mapped['halopsa_id']}.")


def _payment_delete(job: PushJob, client) -> Outcome:
    assert job.payment_id is not None  # payment jobs are created with their payment (services/payments.py)
    payment = Payment.objects.select_related("invoice").get(pk=job.payment_id)
    invoice = payment.invoice
    halopsa_id = payment.halopsa_id
    if halopsa_id is None:
        # Its post may have landed without us hearing back: whatever carries the reference goes.
        shape = HaloShape.of(job.connection)
        blocked = shape.blocked(FEATURE_PAYMENT_PUSH)
        if blocked:
            return _review(
                f"{blocked} Whether this payment reached HaloPSA cannot be checked: look for reference "
                f"{payment.reference!r} on invoice {invoice} in HaloPSA and delete it there if it is."
            )
        try:
            found = client.find_payment_by_reference(
                invoice_id=invoice.halopsa_id, reference=payment.reference, lookup=shape.payments_lookup
            )
        except HaloNotFound:
            return _done("The invoice no longer exists in HaloPSA; nothing to delete.")
        finally:
            _payments_shape_learn(job.connection, shape, client)
        if found is None:
            return _done("The payment never reached HaloPSA; nothing to delete.")
        mapped = map_payment(found)
        if mapped is None:
            return _review(
                f"HaloPSA holds an unreadable payment under reference {payment.reference!r}; delete it there by hand."
            )
        halopsa_id = mapped["halopsa_id"]
    existed = client.delete_payment(halopsa_id)
    return _done(
        f"Deleted payment {halopsa_id} in HaloPSA."
        if existed
        else f"Payment {halopsa_id} was already gone from HaloPSA."
    )


def _invoice_status(job: PushJob, client) -> Outcome:
    assert job.invoice_id is not None  # status jobs are created with their invoice (services/payments.py)
    invoice = Invoice.objects.get(pk=job.invoice_id)
    target = job.payload.get("status", "")
    if not _status_reached(target, invoice.status):
        # A later change here, or HaloPSA winning a conflict, replaced the status we were to send.
        return Outcome(PushJob.State.CANCELLED, f"Superseded: the invoice is now {invoice.status} here.")
    remote_body = client.get_invoice(invoice.halopsa_id, include_lines=False)
    remote = map_invoice({**remote_body, "lines": [], "payments": []})
    if _status_reached(target, remote["status"]):
        return _done(f"HaloPSA already shows the invoice as {remote['status']}.")  # "set to X if not already X"
    action, fields = invoice_status_to_halo(target)
    started = timezone.now()
    if action == HALO_ACTION_VOID:
        answer = client.void_invoice(invoice.halopsa_id)
    else:
        answer = client.update_invoice(invoice.halopsa_id, fields)
    shape = HaloShape.of(job.connection)
    assert invoice.halopsa_id is not None  # pushed only for invoices from HaloPSA (invoice_pushes_to_halopsa)
    _clock_offset_learn(
        job.connection,
        shape,
        client,
        invoice.halopsa_id,
        before=remote_body,
        answer=answer,
        started=started,
        ended=timezone.now(),
    )
    # What markaspaid and un-void do in a real HaloPSA is unverified: check that the status took,
    # from the write's answer when it is the whole invoice, else from a fresh read.
    after = _invoice_status_after_write(client, invoice.halopsa_id, answer)
    if not _status_reached(target, after):
        return _review(
            f"HaloPSA accepted the change of invoice {invoice} to {target} but still shows it as {after}. Check the "
            "invoice in HaloPSA: set it there by hand, or change the status here again (the next sync follows HaloPSA "
            "once this push is cancelled)."
        )
    return _done(f"Set to {target} in HaloPSA.")


def _invoice_status_after_write(client, halopsa_id: int, answer) -> str:
    if isinstance(answer, dict) and answer.get("id") == halopsa_id and "total" in answer:
        try:
            return map_invoice({**answer, "lines": [], "payments": []})["status"]
        except MappingError:
            pass  # not the whole invoice after all: read it
    return map_invoice({**client.get_invoice(halopsa_id, include_lines=False), "lines": [], "payments": []})["status"]


def _status_reached(target: str, status: str) -> bool:
    # "Open" means "not void": whether it is unpaid, partly or fully paid is the payments' business.
    if target == Invoice.Status.OPEN:
        return status != Invoice.Status.VOID
    return status == target


HANDLERS: dict[str, Callable[[PushJob, object], Outcome]] = {
    PushJob.Kind.PAYMENT_CREATE: _payment_create,
    PushJob.Kind.PAYMENT_DELETE: _payment_delete,
    PushJob.Kind.INVOICE_STATUS: _invoice_status,
}


# --- dispatching and manual retry -------------------------------------------------------------------


def _enqueue(job_id: int) -> None:
    from django_q.tasks import async_task

    async_task("integrations.tasks.push.push_job_task", job_id)


def push_due_dispatch() -> int:
    """Every minute: hand back jobs abandoned mid-push, then enqueue every due job. Returns how many.

    Duplicates (a job also enqueued on commit) are harmless: only one claim succeeds.
    """
    now = timezone.now()
    PushJob.objects.filter(state=PushJob.State.RUNNING, updated_at__lt=now - LEASE_TIMEOUT).update(
        state=PushJob.State.RETRYING,
        next_attempt_at=now,
        updated_at=now,
        deferred_reason=PushJob.DeferredReason.NONE,
        last_error="The worker stopped in the middle of this push; retrying (HaloPSA is checked for the reference first).",
    )
    due = (
        PushJob.objects.filter(connection__enabled=True, next_attempt_at__lte=now)
        .filter(Q(state=PushJob.State.RETRYING) | Q(state=PushJob.State.PENDING, created_at__lte=now - PENDING_GRACE))
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:SWEEP_BATCH]
    )
    ids = list(due)
    for job_id in ids:
        _enqueue(job_id)
    return len(ids)


def push_job_retry(*, job: PushJob, user) -> PushJob:
    """A person asks for another attempt now (from the dashboard): needs review/retrying -> pending."""
    now = timezone.now()
    with transaction.atomic():
        moved = PushJob.objects.filter(
            pk=job.pk, state__in=[PushJob.State.NEEDS_REVIEW, PushJob.State.RETRYING, PushJob.State.PENDING]
        ).update(state=PushJob.State.PENDING, next_attempt_at=now, updated_at=now)
        if not moved:
            job.refresh_from_db()
            raise PushJobRefused(
                f"This push is {job.get_state_display().lower()}; only failed or waiting pushes can be retried."
            )
        job.refresh_from_db()
        audit_record(
            user=user,
            action="push.retry",
            obj=job,
            summary=f"Retried push: {job.get_kind_display()} (job {job.pk})",
            kind=job.kind,
            attempts=job.attempts,
            last_error=job.last_error,
        )
        transaction.on_commit(lambda: _enqueue(job.pk), robust=True)
    return job


def push_schedule_ensure() -> None:
    """Create or update the every-minute sweep (idempotent; called by `ensure_schedules`)."""
    from django_q.models import Schedule

    from integrations.schedules import schedule_named_ensure

    schedule_named_ensure(
        name=SCHEDULE_NAME,
        defaults={
            "func": "integrations.tasks.push.push_sweep_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )


# --- the instance's clock ----------------------------------------------------------------------------


def _clock_offset_learn(
    connection,
    shape: HaloShape,
    client,
    halopsa_id: int,
    *,
    before: dict,
    answer: dict | None,
    started: datetime,
    ended: datetime,
) -> None:
    """Measure how far the instance's clock is from ours: HaloPSA's `last_modified` on the invoice
    right after our write, against our clock around that write. Only a stamp that changed across
    the write counts (a write HaloPSA did not stamp says nothing). Never fails the push."""
    from integrations.services.connections import connection_shape_update

    measured_at = _parse_stamp(shape.clock_offset_measured_at)
    refresh = timedelta(hours=halo_settings().clock_offset_refresh_hours)
    if shape.clock_offset_seconds is not None and measured_at is not None and ended - measured_at < refresh:
        return
    if ended - started > CLOCK_MEASURE_MAX_WINDOW:
        return
    try:
        previous = _halo_stamp(before)
        stamp = _halo_stamp(answer)
        if stamp is None or stamp == previous:
            stamp = _halo_stamp(client.get_invoice(halopsa_id, include_lines=False))
    except (HaloError, MappingError) as exc:
        logger.info("clock offset of connection %s not measured: %s", connection.pk, getattr(exc, "message", exc))
        return
    if previous is None or stamp is None or stamp == previous:
        return
    offset = round((stamp - (started + (ended - started) / 2)).total_seconds(), 3)
    shape.clock_offset_seconds, shape.clock_offset_measured_at = offset, ended.isoformat()
    connection_shape_update(
        connection=connection, clock_offset_seconds=offset, clock_offset_measured_at=ended.isoformat()
    )
    logger.info(
        "HaloPSA clock of connection %s is %+.3f s from ours (measured on invoice %s)",
        connection.pk,
        offset,
        halopsa_id,
    )


def _halo_stamp(body) -> datetime | None:
    return parse_halo_datetime(body.get("last_modified"), "last_modified") if isinstance(body, dict) else None


def _parse_stamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
