"""Recording and deleting platform payments: local effect at once, one push, HaloPSA reconciled."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import transaction

from integrations.models import AuditEvent, Invoice, Origin, Payment, PushJob
from integrations.services.payments import PaymentRefused, payment_delete, payment_record
from tests.push.conftest import assert_ledgers_agree, halo_invoice, halo_payments, mirror_invoice

pytestmark = pytest.mark.django_db


def test_full_payment_posts_exactly_one_payment_and_reconciles(
    halo_sandbox, mirror, partner_user, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    assert invoice.balance == Decimal("8950.37")
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="8950.37", method="card", user=partner_user)

    # Our copy changed at once, and the caller's instance shows it.
    assert invoice.balance == Decimal("0.00") and invoice.status == Invoice.Status.PAID
    job = PushJob.objects.get(payment=payment)
    assert job.kind == PushJob.Kind.PAYMENT_CREATE and job.state == PushJob.State.DONE
    assert job.last_error == "" and job.payload["result"].startswith("Posted to HaloPSA as payment")
    remote = halo_invoice(halo_sandbox, 1)
    assert remote["amountdue"] == Decimal("0.00") and remote["paymentstatus"] == 2
    mine = halo_payments(halo_sandbox, 1, payment.reference)
    assert len(mine) == 1 and mine[0]["amount"] == Decimal("8950.37")
    payment.refresh_from_db()
    assert payment.halopsa_id == mine[0]["id"] and payment.source == Origin.PLATFORM
    assert payment.reference.startswith("SP-")
    assert_ledgers_agree(halo_sandbox, invoice)
    assert AuditEvent.objects.filter(action="payment.record", object_id=str(payment.pk), user=partner_user).exists()


def test_partial_payment_lowers_balance_by_exactly_that_amount(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(2)  # partially paid in HaloPSA already: 616.86 due
    before = halo_invoice(halo_sandbox, 2)["amountdue"]
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount=Decimal("100.01"), reference="CARD-7781")

    assert halo_invoice(halo_sandbox, 2)["amountdue"] == before - Decimal("100.01")
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("516.85") and invoice.status == Invoice.Status.PARTIALLY_PAID
    assert payment.reference == "CARD-7781"
    assert len(halo_payments(halo_sandbox, 2, "CARD-7781")) == 1
    assert_ledgers_agree(halo_sandbox, invoice)


def test_two_partial_payments_then_the_rest(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(8)
    with django_capture_on_commit_callbacks(execute=True):
        payment_record(invoice=invoice, amount="0.10")
        payment_record(invoice=invoice, amount="0.20")
    invoice.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        payment_record(invoice=invoice, amount=invoice.balance)
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("0.00") and invoice.status == Invoice.Status.PAID
    assert len(halo_payments(halo_sandbox, 8)) == 3
    assert_ledgers_agree(halo_sandbox, invoice)


@pytest.mark.parametrize(
    "amount, message",
    [
        ("0", "greater than zero"),
        ("-5.00", "greater than zero"),
        ("12.345", "two decimal places"),
        ("abc", "not an amount"),
        ("NaN", "not an amount"),
        (None, "Enter the payment amount"),
    ],
)
def test_bad_amounts_are_refused_and_nothing_is_sent(halo_sandbox, mirror, amount, message):
    invoice = mirror(1)
    halo_sandbox.clear_request_log()
    with pytest.raises(PaymentRefused, match=message):
        payment_record(invoice=invoice, amount=amount)
    assert Payment.objects.filter(source=Origin.PLATFORM).count() == 0
    assert PushJob.objects.count() == 0
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("8950.37")
    assert halo_sandbox.count_requests() == 0


def test_overpayment_is_refused_with_a_clear_message_and_no_request(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(2)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(PaymentRefused) as refused:
        payment_record(invoice=invoice, amount="616.87")
    assert "616.87 USD is more than the balance" in refused.value.message
    assert "overpayments are refused" in refused.value.message
    assert callbacks == []
    assert halo_sandbox.count_requests() == 0
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("616.86") and Payment.objects.filter(source=Origin.PLATFORM).count() == 0


@pytest.mark.parametrize("halopsa_id, message", [(3, "nothing left to pay"), (7, "is void")])
def test_paid_and_void_invoices_take_no_payment(halo_sandbox, mirror, halopsa_id, message):
    invoice = mirror(halopsa_id)
    halo_sandbox.clear_request_log()
    with pytest.raises(PaymentRefused, match=message):
        payment_record(invoice=invoice, amount="1.00")
    assert halo_sandbox.count_requests() == 0


def test_archived_or_deleted_in_halopsa_invoices_take_no_payment(mirror):
    from django.utils import timezone

    invoice = mirror(1)
    Invoice.objects.filter(pk=invoice.pk).update(deleted_in_halopsa_at=timezone.now())
    with pytest.raises(PaymentRefused, match="deleted in HaloPSA"):
        payment_record(invoice=invoice, amount="1.00")
    Invoice.objects.filter(pk=invoice.pk).update(deleted_in_halopsa_at=None, archived_at=timezone.now())
    with pytest.raises(PaymentRefused, match="archived"):
        payment_record(invoice=invoice, amount="1.00")


def test_duplicate_reference_is_refused(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        payment_record(invoice=invoice, amount="1.00", reference="R-1")
    with pytest.raises(PaymentRefused, match="already used"):
        payment_record(invoice=invoice, amount="2.00", reference="R-1")
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("8949.37")  # the refused one changed nothing


def test_rollback_of_the_surrounding_transaction_enqueues_nothing(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    halo_sandbox.clear_request_log()
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        payment_record(invoice=invoice, amount="10.00")
        raise RuntimeError("the caller failed after recording")
    assert callbacks == []
    assert Payment.objects.filter(source=Origin.PLATFORM).count() == 0 and PushJob.objects.count() == 0
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("8950.37")
    assert halo_sandbox.count_requests() == 0


def test_the_push_is_enqueued_only_on_commit(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        payment = payment_record(invoice=invoice, amount="10.00")
    assert len(callbacks) == 1
    assert halo_sandbox.count_requests() == 0  # nothing before the commit
    callbacks[0]()
    assert len(halo_payments(halo_sandbox, 1, payment.reference)) == 1


def test_deposits_never_exist_a_payment_is_only_ever_an_invoice_payment(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="50.00")
    writes = [
        e
        for e in halo_sandbox.request_log
        if e["method"] in ("POST", "PUT", "PATCH", "DELETE") and e["path"] != "/auth/token"
    ]
    assert [(e["method"], e["path"]) for e in writes] == [("POST", "/api/InvoicePayment")]
    rows = halo_payments(halo_sandbox, 1, payment.reference)
    assert len(rows) == 1 and rows[0]["type"] == 0  # a payment, not a deposit or credit
    assert payment.kind == Payment.Kind.PAYMENT


def test_portal_invoice_payment_is_local_only(halo_sandbox, portal_invoice, django_capture_on_commit_callbacks):
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=portal_invoice, amount="50.00")
        payment_delete(payment=payment)
    portal_invoice.refresh_from_db()
    assert portal_invoice.balance == Decimal("200.00") and portal_invoice.status == Invoice.Status.OPEN
    assert PushJob.objects.count() == 0
    assert halo_sandbox.count_requests() == 0


# --- deleting ------------------------------------------------------------------------------------


def test_delete_removes_it_in_halopsa_and_restores_the_balance(
    halo_sandbox, mirror, partner_user, django_capture_on_commit_callbacks
):
    invoice = mirror(2)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="616.86")
    assert halo_invoice(halo_sandbox, 2)["amountdue"] == Decimal("0.00")

    with django_capture_on_commit_callbacks(execute=True):
        payment_delete(payment=payment, user=partner_user)

    payment.refresh_from_db()
    assert payment.voided_at is not None
    job = PushJob.objects.get(payment=payment, kind=PushJob.Kind.PAYMENT_DELETE)
    assert job.state == PushJob.State.DONE
    assert halo_payments(halo_sandbox, 2, payment.reference) == []
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("616.86") and invoice.status == Invoice.Status.PARTIALLY_PAID
    assert_ledgers_agree(halo_sandbox, invoice)
    assert AuditEvent.objects.filter(action="payment.delete", user=partner_user).count() == 1


def test_deleting_twice_is_refused(mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="5.00")
        payment_delete(payment=payment)
    with pytest.raises(PaymentRefused, match="already deleted"):
        payment_delete(payment=payment)
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("8950.37")


def test_halopsa_payments_cannot_be_deleted_here(halo_sandbox, mirror):
    invoice = mirror(2)
    halo_payment = Payment.objects.filter(invoice=invoice, source=Origin.HALOPSA).first()
    assert halo_payment is not None
    halo_sandbox.clear_request_log()
    with pytest.raises(PaymentRefused, match="came from HaloPSA; delete it in HaloPSA"):
        payment_delete(payment=halo_payment)
    halo_payment.refresh_from_db()
    assert halo_payment.voided_at is None
    assert halo_sandbox.count_requests() == 0
    assert len(halo_payments(halo_sandbox, 2)) == 2


def test_delete_before_the_post_ran_cancels_it_and_sends_nothing(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=False):
        payment = payment_record(invoice=invoice, amount="5.00")  # queued, never run
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        payment_delete(payment=payment)
    create = PushJob.objects.get(payment=payment, kind=PushJob.Kind.PAYMENT_CREATE)
    assert create.state == PushJob.State.CANCELLED
    assert not PushJob.objects.filter(kind=PushJob.Kind.PAYMENT_DELETE).exists()
    assert callbacks == []
    assert halo_sandbox.count_requests() == 0
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("8950.37")


def test_delete_while_a_killed_post_had_landed_removes_what_halopsa_kept(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    """The worker posted, then died before saving HaloPSA's id; deleting still removes that payment."""
    from datetime import timedelta

    from django.utils import timezone

    from integrations.services.push import push_due_dispatch

    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=False):
        payment = payment_record(invoice=invoice, amount="5.00")
    create = PushJob.objects.get(payment=payment, kind=PushJob.Kind.PAYMENT_CREATE)
    # What the dead worker left behind: the payment in HaloPSA, the job "running", no id here.
    halo_sandbox.store.add_payment(1, "5.00", reference=payment.reference)
    PushJob.objects.filter(pk=create.pk).update(
        state=PushJob.State.RUNNING, attempts=1, updated_at=timezone.now() - timedelta(hours=1)
    )

    with django_capture_on_commit_callbacks(execute=True):
        payment_delete(payment=payment)
    assert PushJob.objects.get(payment=payment, kind=PushJob.Kind.PAYMENT_DELETE).state == PushJob.State.DONE
    assert halo_payments(halo_sandbox, 1, payment.reference) == []

    # The sweeper hands the abandoned post back; it sees the deletion and posts nothing.
    with django_capture_on_commit_callbacks(execute=True):
        push_due_dispatch()
    create.refresh_from_db()
    assert create.state == PushJob.State.CANCELLED
    assert halo_payments(halo_sandbox, 1, payment.reference) == []
    assert_ledgers_agree(halo_sandbox, invoice)


def test_mirror_refresh_after_push_keeps_one_payment_row(
    halo_sandbox, conn, mirror, django_capture_on_commit_callbacks
):
    """A pull after the push sees our payment in HaloPSA under the id we stored: no duplicate row."""
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="12.34")
    mirror_invoice(conn, halo_sandbox, 1)
    payment.refresh_from_db()
    assert Payment.objects.filter(halopsa_id=payment.halopsa_id).count() == 1
    assert_ledgers_agree(halo_sandbox, invoice)
