"""Issue 17 item 1: an invoice's status always follows the balance HaloPSA reports.

A status set here is a request on its way to HaloPSA, not a lasting override: while its push is on
the way a pull keeps it (and the amounts it implies), and once HaloPSA has it, HaloPSA's amounts
and void flag decide. So "marked paid here, that payment then deleted in HaloPSA" ends open with
the full balance after any pull, on a clock measured or not (docs/push-rules.md, "Status").
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from integrations.halopsa.mapping import invoice_status
from integrations.models import Invoice, PushJob, SyncRun
from integrations.services.connections import connection_shape_update
from integrations.services.payments import PaymentRefused, invoice_status_change, payment_record
from integrations.services.push import push_job_process
from tests.push.conftest import assert_ledgers_agree, halo_invoice

pytestmark = pytest.mark.django_db


def pull(conn, halopsa_id: int, *, full: bool = False) -> Invoice:
    from integrations.services.sync import sync_execute, sync_record

    if full:
        run = sync_execute(
            run=SyncRun.objects.create(connection=conn, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.MANUAL)
        )
    else:
        run = sync_record(connection=conn, entity="invoices", halopsa_id=halopsa_id, trigger=SyncRun.Trigger.MANUAL)
    assert run.state == SyncRun.State.SUCCEEDED, run.message
    return Invoice.objects.get(connection=conn, halopsa_id=halopsa_id)


def assert_status_agrees_with_amounts(invoice: Invoice) -> None:
    """What the invoice page shows never contradicts itself (positive totals)."""
    invoice.refresh_from_db()
    shown = (invoice.status, invoice.amount_paid, invoice.balance, invoice.total)
    if invoice.status == Invoice.Status.VOID:
        assert invoice.balance == 0, shown  # a void invoice owes nothing
    elif invoice.status == Invoice.Status.PAID:
        assert invoice.balance == 0 and invoice.amount_paid == invoice.total, shown
    elif invoice.status == Invoice.Status.PARTIALLY_PAID:
        assert 0 < invoice.balance < invoice.total and invoice.amount_paid > 0, shown
    else:
        assert invoice.balance == invoice.total and invoice.amount_paid == 0, shown


def mark_paid(invoice: Invoice, django_capture_on_commit_callbacks, *, push: bool = True):
    with django_capture_on_commit_callbacks(execute=push):
        return invoice_status_change(invoice=invoice, status="paid")


def marked_as_paid_payment(srv, halopsa_id: int) -> dict:
    (row,) = [p for p in halo_invoice(srv, halopsa_id)["payments"] if p["reference"] == "Marked as paid"]
    return row


@pytest.mark.parametrize("clock", ["measured", "unknown"])
@pytest.mark.parametrize("full", [False, True], ids=["one-invoice pull", "full resync"])
def test_marked_paid_here_then_that_payment_deleted_in_halopsa_is_open_again(
    halo_sandbox, conn, clock, full, django_capture_on_commit_callbacks
):
    invoice = pull(conn, 1)
    total = invoice.total
    mark_paid(invoice, django_capture_on_commit_callbacks)
    assert_status_agrees_with_amounts(invoice)
    invoice = pull(conn, 1, full=full)
    assert (invoice.status, invoice.amount_paid, invoice.balance) == ("paid", total, Decimal("0.00"))
    assert invoice.status_changed_locally_at is None  # HaloPSA has it: nothing of ours is pending
    if clock == "unknown":
        # An instance whose clock could not be measured (it did not stamp our write, say).
        connection_shape_update(connection=conn, clock_offset_seconds=None, clock_offset_measured_at="")

    halo_sandbox.store.delete_payment(marked_as_paid_payment(halo_sandbox, 1)["id"])
    invoice = pull(conn, 1, full=full)
    assert (invoice.status, invoice.amount_paid, invoice.balance) == ("open", Decimal("0.00"), total)
    assert_status_agrees_with_amounts(invoice)
    assert_ledgers_agree(halo_sandbox, invoice)


def test_marking_paid_settles_the_balance_at_once_and_a_pull_before_the_push_keeps_it(
    halo_sandbox, conn, django_capture_on_commit_callbacks
):
    invoice = pull(conn, 2)  # partly paid in HaloPSA
    remaining = invoice.balance
    change = mark_paid(invoice, django_capture_on_commit_callbacks, push=False)
    assert change.job.payload == {"status": "paid", "settles": str(remaining)}
    assert_status_agrees_with_amounts(invoice)
    assert invoice.status == "paid" and invoice.balance == 0
    invoice = pull(conn, 2)  # HaloPSA does not have it yet
    assert invoice.status == "paid" and invoice.balance == 0
    assert_status_agrees_with_amounts(invoice)
    with pytest.raises(PaymentRefused, match="nothing left to pay"):
        payment_record(invoice=invoice, amount="1.00")

    push_job_process(job_id=change.job.pk)
    assert marked_as_paid_payment(halo_sandbox, 2)["amount"] == remaining
    invoice = pull(conn, 2)
    assert invoice.status == "paid" and invoice.status_changed_locally_at is None
    assert_ledgers_agree(halo_sandbox, invoice)


def test_a_mark_paid_halopsa_does_not_carry_out_needs_review_and_the_pull_then_follows_halopsa(
    halo_sandbox, conn, monkeypatch, django_capture_on_commit_callbacks
):
    invoice = pull(conn, 1)
    store = halo_sandbox.store
    real_update = store.update_invoice
    # An instance that accepts markaspaid and does nothing with it (its meaning is unverified).
    monkeypatch.setattr(
        store,
        "update_invoice",
        lambda invoice_id, **fields: real_update(invoice_id, **{k: v for k, v in fields.items() if k != "markaspaid"}),
    )
    change = mark_paid(invoice, django_capture_on_commit_callbacks)
    change.job.refresh_from_db()
    assert change.job.state == PushJob.State.NEEDS_REVIEW
    assert "still shows" in change.job.last_error
    invoice = pull(conn, 1)  # still on its way (needs review): ours stands, consistently
    assert_status_agrees_with_amounts(invoice)
    PushJob.objects.filter(pk=change.job.pk).update(state=PushJob.State.CANCELLED)  # a person gives up on it
    invoice = pull(conn, 1)
    assert invoice.status == "open" and invoice.balance == invoice.total
    assert_status_agrees_with_amounts(invoice)


@pytest.mark.parametrize(
    "amounts, status",
    [
        ({"total": Decimal("100.00"), "amount_paid": Decimal("0.00"), "balance": Decimal("100.00")}, "open"),
        ({"total": Decimal("100.00"), "amount_paid": Decimal("40.00"), "balance": Decimal("60.00")}, "partially_paid"),
        ({"total": Decimal("100.00"), "amount_paid": Decimal("100.00"), "balance": Decimal("0.00")}, "paid"),
    ],
)
@pytest.mark.parametrize("paymentstatus", [None, -1, 0, 1, 2])
def test_halopsa_status_is_read_from_its_amounts_whatever_paymentstatus_says(amounts, status, paymentstatus):
    assert invoice_status(**amounts, voided=False, paymentstatus=paymentstatus) == status
