"""Rules shared by the pull (sync) and the push: where HaloPSA's copy and ours disagree while a
push is on its way, which side an invoice follows.

- status: a status set here counts only while its push is on the way (`status_push_on_the_way`);
  when both sides changed meanwhile, `status_conflict_winner` decides (docs/push-rules.md,
  "Status");
- money: platform payments whose push has not landed yet (or whose delete has not) are added to,
  or taken off, what HaloPSA reports (`payment_unpushed_adjustment`), so a pull between a payment
  and its push does not undo it;
- linking: a platform payment posted before its push recorded HaloPSA's id is recognised in a
  pull by the reference we sent (`link_platform_payments`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Literal

from django.db.models import Q

from integrations.conf import halo_settings
from integrations.halopsa.shape import HaloShape
from integrations.models import Invoice, Origin, Payment, PushJob

# Push jobs that may still change HaloPSA (needs review included: a person may retry it).
UNFINISHED = (PushJob.State.PENDING, PushJob.State.RUNNING, PushJob.State.RETRYING, PushJob.State.NEEDS_REVIEW)


def status_conflict_winner(
    *, invoice: Invoice, remote_status: str, remote_modified_at: datetime | None, shape: HaloShape | None = None
) -> Literal["local", "remote"]:
    """Which status an invoice keeps when a pull brings HaloPSA's (docs/push-rules.md, "Status").

    - no status set here by a person (`status_changed_locally_at` empty): HaloPSA's;
    - HaloPSA's status has not moved since we last read it (`invoice.remote_status`): ours
      (a local change not pushed yet, or pushed but not visible in HaloPSA's status, is never
      overwritten by a pull that predates it);
    - both moved: the later change wins, on one clock. HaloPSA's `last_modified` (no offset; it
      may be the instance's local time, docs/halopsa-facts.md §2) is moved onto ours with the measured
      `HaloShape.clock_offset_seconds` and compared with `status_changed_locally_at`. A tie, no
      HaloPSA time, or no offset measured yet keeps ours (HALOPSA_UNMEASURED_CLOCK=assume_utc
      compares as if HaloPSA's clock were UTC instead).
    `shape` is the connection's HaloShape (read from the invoice's connection when not given).
    When HaloPSA wins the pull should also clear `status_changed_locally_at`; an unsent status
    push is then cancelled by its own check (the invoice no longer has the status it carries).
    """
    if invoice.status_changed_locally_at is None:
        return "remote"
    if remote_status == invoice.remote_status or remote_status == invoice.status:
        return "local"
    if remote_modified_at is None:
        return "local"
    shape = shape if shape is not None else HaloShape.of(invoice.connection)
    remote_on_our_clock = shape.halo_time_on_our_clock(remote_modified_at)
    if remote_on_our_clock is None:
        if halo_settings().unmeasured_clock != "assume_utc":
            return "local"
        remote_on_our_clock = remote_modified_at
    return "remote" if remote_on_our_clock > invoice.status_changed_locally_at else "local"


def status_push_on_the_way(*, invoice: Invoice, read_started_at: datetime | None = None) -> str | None:
    """The status a person set here that HaloPSA may not show yet, or None when every status
    change of the invoice has settled.

    It is the target of the invoice's newest status push that is unfinished, or that finished after
    `read_started_at` (a pull that read HaloPSA before that push landed). While one is on the way
    the pull keeps the status set here (and, for "paid", the balance it settled) unless HaloPSA
    changed later (`status_conflict_winner`); once none is, HaloPSA's amounts and void flag decide,
    so a status set here never outlives what HaloPSA says about the money.
    """
    on_the_way = Q(state__in=UNFINISHED)
    if read_started_at is not None:
        on_the_way |= Q(state=PushJob.State.DONE, done_at__gte=read_started_at)
    job = (
        PushJob.objects.filter(invoice_id=invoice.pk, kind=PushJob.Kind.INVOICE_STATUS)
        .filter(on_the_way)
        .order_by("-created_at", "-id")
        .first()
    )
    return job.payload.get("status") if job is not None else None


def payment_unpushed_adjustment(
    *,
    invoice: Invoice,
    remote_payment_ids: Iterable[int],
    remote_references: Iterable[str] = (),
    payments: Iterable[Payment] | None = None,
) -> Decimal:
    """How much more our copy has paid than HaloPSA reports, because of pushes still on the way.

    Platform payments not yet in HaloPSA count as paid; platform payments deleted here whose
    delete has not reached HaloPSA yet do not. A payment is "in HaloPSA" when HaloPSA lists its
    id or, before its push recorded the id (lost response), its reference (pass the references
    HaloPSA shows in `remote_references`). The pull adds this to HaloPSA's amountpaid and takes it
    off HaloPSA's amountdue, so a pull between a payment and its push does not undo it.

    Callers that already hold the invoice's payments pass them (any source: only platform
    payments count); the remote ids and references are then only read when one is there, so a
    pull may pass them as generators at no cost for invoices paid in HaloPSA alone.
    """
    if payments is None:
        payments = Payment.objects.filter(invoice=invoice, source=Origin.PLATFORM)
    platform = [p for p in payments if p.source == Origin.PLATFORM]
    adjustment = Decimal("0.00")
    if not platform:
        return adjustment
    remote_ids = set(remote_payment_ids)
    references = {r for r in remote_references if r}
    for payment in platform:
        in_halopsa = (
            payment.halopsa_id is not None and payment.halopsa_id in remote_ids
        ) or payment.reference in references
        if payment.voided_at is None and not in_halopsa and _push_pending(payment, PushJob.Kind.PAYMENT_CREATE):
            adjustment += payment.amount
        elif payment.voided_at is not None and in_halopsa:
            adjustment -= payment.amount
    return adjustment


def _push_pending(payment: Payment, kind: str) -> bool:
    return PushJob.objects.filter(payment=payment, kind=kind, state__in=UNFINISHED).exists()


def link_platform_payments(remote_payments: list[dict[str, Any]], local: list[Payment]) -> dict[int, Payment]:
    """HaloPSA payments that are our platform payments posted before their push recorded the
    HaloPSA id: matched by the reference we sent (reference or thirdpartyid). {halopsa_id: Payment}."""
    linked_ids = {p.halopsa_id for p in local if p.halopsa_id is not None}
    unlinked = {p.reference: p for p in local if p.source == Origin.PLATFORM and p.halopsa_id is None and p.reference}
    links: dict[int, Payment] = {}
    if not unlinked:
        return links
    for remote in remote_payments:
        if remote["halopsa_id"] in linked_ids:
            continue
        for candidate in (remote["reference"], remote.get("thirdpartyid", "")):
            payment = unlinked.get(candidate) if candidate else None
            if payment is not None:
                links[remote["halopsa_id"]] = payment
                unlinked.pop(candidate)
                break
    return links
