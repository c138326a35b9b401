"""Pushes and the pull sync together: ledgers agree to the cent, a pull never undoes a pending push."""

from __future__ import annotations

from decimal import Decimal

import pytest

from integrations.models import Invoice, Origin, Payment, PushJob, SyncRun
from integrations.services.payments import invoice_status_change, payment_delete, payment_record
from integrations.services.push import push_job_process
from integrations.services.reconcile import payment_unpushed_adjustment
from tests.push.conftest import assert_ledgers_agree, clock_known, halo_invoice, halo_payments

pytestmark = pytest.mark.django_db


def pull(conn, halopsa_id: int) -> Invoice:
    from integrations.services.sync import sync_record

    run = sync_record(connection=conn, entity="invoices", halopsa_id=halopsa_id, trigger=SyncRun.Trigger.MANUAL)
    assert run.state == SyncRun.State.SUCCEEDED, run.message
    return Invoice.objects.get(connection=conn, halopsa_id=halopsa_id)


def test_after_payments_and_a_pull_the_ledgers_agree_to_the_cent(
    halo_sandbox, conn, django_capture_on_commit_callbacks
):
    invoice = pull(conn, 2)
    with django_capture_on_commit_callbacks(execute=True):
        first = payment_record(invoice=invoice, amount="100.01")
        payment_record(invoice=invoice, amount="0.99")
        payment_delete(payment=first)
        payment_record(invoice=invoice, amount="15.87")
    invoice = pull(conn, 2)
    assert invoice.balance == Decimal("600.00")
    assert_ledgers_agree(halo_sandbox, invoice)
    # Our platform payments are not mirrored a second time as HaloPSA payments.
    live = Payment.objects.filter(invoice=invoice, voided_at__isnull=True)
    assert sorted(p.amount for p in live) == sorted(r["amount"] for r in halo_invoice(halo_sandbox, 2)["payments"])
    assert live.filter(source=Origin.PLATFORM).count() == 2


def test_a_pull_before_the_push_does_not_undo_the_payment(halo_sandbox, conn, django_capture_on_commit_callbacks):
    invoice = pull(conn, 1)
    with django_capture_on_commit_callbacks(execute=False):
        payment = payment_record(invoice=invoice, amount="950.37")
    invoice = pull(conn, 1)  # HaloPSA does not have it yet
    assert invoice.balance == Decimal("8000.00") and invoice.status == Invoice.Status.PARTIALLY_PAID

    push_job_process(job_id=PushJob.objects.get(payment=payment).pk)
    invoice = pull(conn, 1)
    assert invoice.balance == Decimal("8000.00")
    assert_ledgers_agree(halo_sandbox, invoice)


def test_a_pull_before_the_delete_reaches_halopsa_keeps_the_balance_restored(
    halo_sandbox, conn, django_capture_on_commit_callbacks
):
    invoice = pull(conn, 1)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="50.00")
    with django_capture_on_commit_callbacks(execute=False):
        payment_delete(payment=payment)
    invoice = pull(conn, 1)  # HaloPSA still has the payment
    assert invoice.balance == Decimal("8950.37")

    push_job_process(job_id=PushJob.objects.get(payment=payment, kind=PushJob.Kind.PAYMENT_DELETE).pk)
    invoice = pull(conn, 1)
    assert invoice.balance == Decimal("8950.37")
    assert_ledgers_agree(halo_sandbox, invoice)


def test_unpushed_adjustment_counts_a_payment_found_only_by_reference_once(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=False):
        payment = payment_record(invoice=invoice, amount="10.00")
    assert payment_unpushed_adjustment(invoice=invoice, remote_payment_ids=[]) == Decimal("10.00")
    # The post landed but its response was lost: HaloPSA lists it, we have no id yet.
    halo_sandbox.store.add_payment(1, "10.00", reference=payment.reference)
    remote = halo_payments(halo_sandbox, 1, payment.reference)
    assert payment_unpushed_adjustment(
        invoice=invoice, remote_payment_ids=[r["id"] for r in remote], remote_references=[payment.reference]
    ) == Decimal("0.00")


def test_local_status_change_survives_a_pull_that_predates_its_push(
    halo_sandbox, conn, django_capture_on_commit_callbacks
):
    invoice = pull(conn, 1)
    with django_capture_on_commit_callbacks(execute=False):
        job = invoice_status_change(invoice=invoice, status="void").job
    invoice = pull(conn, 1)  # HaloPSA still says open
    assert invoice.status == Invoice.Status.VOID and invoice.status_changed_locally_at is not None
    push_job_process(job_id=job.pk)
    invoice = pull(conn, 1)
    assert invoice.status == Invoice.Status.VOID and halo_invoice(halo_sandbox, 1)["voided"] is True


def test_a_later_status_change_in_halopsa_wins_over_an_unsent_one(
    halo_sandbox, conn, django_capture_on_commit_callbacks
):
    clock_known(conn, halo_sandbox)  # an earlier push measured HaloPSA's clock (test_clock.py)
    invoice = pull(conn, 1)
    with django_capture_on_commit_callbacks(execute=False):
        job = invoice_status_change(invoice=invoice, status="void").job
    halo_sandbox.store.add_payment(1, "8950.37", reference="paid at the desk")  # HaloPSA: paid, later
    invoice = pull(conn, 1)
    assert invoice.status == Invoice.Status.PAID and invoice.status_changed_locally_at is None
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.CANCELLED  # our older change is not pushed over HaloPSA's
    assert halo_invoice(halo_sandbox, 1)["voided"] is False
    assert halo_sandbox.count_requests("/api/Invoice", method="POST") == 0


def test_a_platform_payment_deleted_in_halopsa_is_shown_voided_after_the_next_pull(
    halo_sandbox, conn, django_capture_on_commit_callbacks
):
    invoice = pull(conn, 2)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="40.00")
    payment.refresh_from_db()
    assert payment.halopsa_id is not None
    halo_sandbox.store.delete_payment(payment.halopsa_id)  # someone deletes it in HaloPSA

    invoice = pull(conn, 2)
    payment.refresh_from_db()
    assert payment.voided_at is not None
    assert_ledgers_agree(halo_sandbox, invoice)
    live = Payment.objects.filter(invoice=invoice, voided_at__isnull=True)
    assert sorted(p.amount for p in live) == sorted(r["amount"] for r in halo_invoice(halo_sandbox, 2)["payments"])


def test_a_pull_that_read_halopsa_before_the_push_landed_does_not_void_the_payment(
    halo_sandbox, conn, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    invoice = pull(conn, 2)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="40.00")
    payment.refresh_from_db()
    # As if the push finished while this pull was already reading: the page it read did not list
    # the payment yet (simulated by removing it in HaloPSA), and the push is newer than the run.
    PushJob.objects.filter(payment=payment).update(done_at=timezone.now() + timedelta(hours=1))
    halo_sandbox.store.delete_payment(payment.halopsa_id)
    pull(conn, 2)
    payment.refresh_from_db()
    assert payment.voided_at is None
