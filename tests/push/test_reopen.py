"""Issue 17 item 2: re-opening a paid invoice does what it says, or refuses with the reason.

HaloPSA re-opens a paid invoice only when its payments are removed, and the portal does not guess
which: re-opening is refused (with that reason, in the audit log too), except for a mark as paid
that has not left for HaloPSA yet, which re-opening cancels for real (docs/push-rules.md, "Status").
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from integrations.models import AuditEvent, Invoice, Payment, PushJob
from integrations.services import payments
from integrations.services.payments import StatusChangeRefused, invoice_status_change, payment_delete, payment_record
from integrations.services.push import push_job_process
from tests.push.conftest import halo_invoice

pytestmark = pytest.mark.django_db


def test_reopening_an_invoice_paid_in_halopsa_is_refused_with_the_reason_and_audited(
    halo_sandbox, mirror, partner_user, django_capture_on_commit_callbacks
):
    invoice = mirror(3)  # paid in full by a payment in HaloPSA
    assert invoice.status == Invoice.Status.PAID
    assert Invoice.Status.OPEN not in payments.invoice_status_choices(invoice)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(StatusChangeRefused) as refused:
        invoice_status_change(invoice=invoice, status="open", user=partner_user)
    assert "re-opens a paid invoice only when the payments that pay it are removed" in refused.value.message
    invoice.refresh_from_db()
    assert (invoice.status, invoice.balance) == ("paid", Decimal("0.00"))
    assert PushJob.objects.count() == 0 and halo_sandbox.count_requests() == 0
    event = AuditEvent.objects.get(action="invoice.status_refused", object_id=str(invoice.pk))
    assert event.user == partner_user and event.details["wanted"] == "open" and "payments" in event.details["reason"]


def test_reopening_a_mark_as_paid_not_sent_yet_cancels_it(
    halo_sandbox, mirror, partner_user, django_capture_on_commit_callbacks
):
    invoice = mirror(2)  # partly paid
    before = (invoice.amount_paid, invoice.balance)
    with django_capture_on_commit_callbacks(execute=False):
        mark = invoice_status_change(invoice=invoice, status="paid", user=partner_user).job
    assert Invoice.Status.OPEN in payments.invoice_status_choices(invoice)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        change = invoice_status_change(invoice=invoice, status="open", user=partner_user)
    assert change.changed and change.job is None
    assert "had not been sent to HaloPSA yet, so it was cancelled" in change.message
    mark.refresh_from_db()
    assert mark.state == PushJob.State.CANCELLED
    invoice.refresh_from_db()
    assert (invoice.amount_paid, invoice.balance, invoice.status) == (*before, "partially_paid")
    assert invoice.status_changed_locally_at is None  # nothing of ours on its way
    push_job_process(job_id=mark.pk)  # a late delivery of the cancelled task does nothing
    assert halo_sandbox.count_requests() == 0
    assert halo_invoice(halo_sandbox, 2)["amountdue"] == before[1]
    event = AuditEvent.objects.filter(action="invoice.status", object_id=str(invoice.pk)).first()
    assert event.details["new"] == "partially_paid" and event.details["unsettled"] == str(before[1])


def test_once_the_mark_as_paid_left_for_halopsa_reopening_is_refused(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        invoice_status_change(invoice=invoice, status="paid")
    with pytest.raises(StatusChangeRefused, match="Marked as paid"):
        invoice_status_change(invoice=invoice, status="open")
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.PAID


def test_deleting_the_payment_that_paid_it_reopens_it(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount=invoice.balance)
    assert invoice.status == Invoice.Status.PAID
    with django_capture_on_commit_callbacks(execute=True):
        payment_delete(payment=Payment.objects.select_related("invoice").get(pk=payment.pk))
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid, invoice.balance) == ("open", Decimal("0.00"), invoice.total)
    assert halo_invoice(halo_sandbox, 1)["amountdue"] == invoice.total


def test_a_portal_invoice_marked_paid_gets_a_payment_that_re_opening_deletes(portal_invoice, partner_user):
    change = invoice_status_change(invoice=portal_invoice, status="paid", user=partner_user)
    assert change.job is None and "nothing is sent to HaloPSA" in change.message
    marked = Payment.objects.get(invoice=portal_invoice)
    assert (marked.amount, marked.method, marked.source) == (Decimal("200.00"), "Marked as paid", "platform")
    assert (portal_invoice.status, portal_invoice.balance) == ("paid", Decimal("0.00"))
    with pytest.raises(StatusChangeRefused, match="delete the platform payments"):
        invoice_status_change(invoice=portal_invoice, status="open", user=partner_user)
    payment_delete(payment=Payment.objects.select_related("invoice").get(pk=marked.pk), user=partner_user)
    portal_invoice.refresh_from_db()
    assert (portal_invoice.status, portal_invoice.balance) == ("open", Decimal("200.00"))
