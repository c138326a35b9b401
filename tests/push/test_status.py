"""Two-way invoice status: pushed when changed here, and the conflict rule the pull applies."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from integrations.halopsa.mapping import invoice_status_to_halo
from integrations.halopsa.shape import HaloShape
from integrations.models import AuditEvent, Invoice, PushJob
from integrations.services.payments import PaymentRefused, StatusChangeRefused, invoice_status_change, payment_record
from integrations.services.push import push_job_process
from integrations.services.reconcile import status_conflict_winner
from tests.push.conftest import clock_known, halo_invoice

pytestmark = pytest.mark.django_db


def test_void_is_pushed(halo_sandbox, mirror, partner_user, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        job = invoice_status_change(invoice=invoice, status="void", user=partner_user).job
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE and job.payload == {"status": "void", "result": "Set to void in HaloPSA."}
    assert halo_invoice(halo_sandbox, 1)["voided"] is True
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID and invoice.status_changed_locally_at is not None
    assert AuditEvent.objects.filter(action="invoice.status", user=partner_user, object_id=str(invoice.pk)).exists()
    assert halo_sandbox.count_requests("/api/Invoice/1/void", method="POST") == 1


def test_paid_is_pushed_as_mark_as_paid(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(2)
    with django_capture_on_commit_callbacks(execute=True):
        job = invoice_status_change(invoice=invoice, status="paid").job
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE
    remote = halo_invoice(halo_sandbox, 2)
    assert remote["paymentstatus"] == 2 and remote["amountdue"] == Decimal("0.00")
    assert invoice.status == Invoice.Status.PAID


def test_reopen_after_void_is_pushed_as_unvoid(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(7)  # void in HaloPSA
    assert invoice.status == Invoice.Status.VOID
    with django_capture_on_commit_callbacks(execute=True):
        job = invoice_status_change(invoice=invoice, status="open").job
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE, job.last_error
    assert halo_invoice(halo_sandbox, 7)["voided"] is False
    assert invoice.status == Invoice.Status.OPEN


def test_reopen_of_a_partly_paid_invoice_follows_the_amounts(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(2)
    with django_capture_on_commit_callbacks(execute=True):
        invoice_status_change(invoice=invoice, status="void")
    assert halo_invoice(halo_sandbox, 2)["voided"] is True
    with django_capture_on_commit_callbacks(execute=True):
        invoice_status_change(invoice=invoice, status="open")
    assert invoice.status == Invoice.Status.PARTIALLY_PAID
    assert halo_invoice(halo_sandbox, 2)["voided"] is False
    assert list(PushJob.objects.filter(invoice=invoice).values_list("state", flat=True).order_by("id")) == [
        PushJob.State.DONE,
        PushJob.State.DONE,
    ]


def test_reopening_a_void_invoice_that_is_paid_unvoids_it_and_stays_paid(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(3)  # fully paid by a payment in HaloPSA
    with django_capture_on_commit_callbacks(execute=True):
        invoice_status_change(invoice=invoice, status="void")
    assert halo_invoice(halo_sandbox, 3)["voided"] is True
    with django_capture_on_commit_callbacks(execute=True):
        job = invoice_status_change(invoice=invoice, status="open").job
    job.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID  # re-opened: the amounts say paid
    assert job.state == PushJob.State.DONE, job.last_error
    remote = halo_invoice(halo_sandbox, 3)
    assert remote["voided"] is False and remote["paymentstatus"] == 2


def test_status_push_is_set_if_not_already(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    halo_sandbox.store.void_invoice(1)  # HaloPSA already there
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        job = invoice_status_change(invoice=invoice, status="void").job
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE and "already" in job.payload["result"] and job.last_error == ""
    assert halo_sandbox.count_requests("/api/Invoice", method="POST") == 0


def test_same_status_twice_is_a_no_op(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        change = invoice_status_change(invoice=invoice, status="open")
    assert change.changed is False and change.job is None and "already open" in change.message
    assert PushJob.objects.count() == 0 and halo_sandbox.count_requests() == 0


def test_later_local_change_supersedes_an_unsent_one(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(2)  # partly paid
    before = (invoice.amount_paid, invoice.balance)
    with django_capture_on_commit_callbacks(execute=False):
        first = invoice_status_change(invoice=invoice, status="paid").job
    assert invoice.balance == 0
    with django_capture_on_commit_callbacks(execute=True):
        second = invoice_status_change(invoice=invoice, status="void").job
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.state == PushJob.State.CANCELLED
    assert second.state == PushJob.State.DONE
    remote = halo_invoice(halo_sandbox, 2)
    assert remote["voided"] is True and remote["amountpaid"] == before[0]  # the mark as paid never left
    invoice.refresh_from_db()
    # The settled balance is un-settled (it never reached HaloPSA); void owes nothing.
    assert (invoice.status, invoice.amount_paid, invoice.balance) == ("void", before[0], Decimal("0.00"))


def test_a_status_push_whose_status_was_replaced_by_a_pull_is_cancelled(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=False):
        job = invoice_status_change(invoice=invoice, status="void").job
    # A pull in which HaloPSA won the conflict put HaloPSA's status back.
    Invoice.objects.filter(pk=invoice.pk).update(status=Invoice.Status.OPEN, status_changed_locally_at=None)
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.CANCELLED and "Superseded" in job.last_error
    assert halo_invoice(halo_sandbox, 1)["voided"] is False
    assert halo_sandbox.count_requests("/api/Invoice", method="POST") == 0


@pytest.mark.parametrize("status", ["partially_paid", "refunded", ""])
def test_statuses_a_person_cannot_set_are_refused(mirror, status):
    invoice = mirror(1)
    with pytest.raises(StatusChangeRefused, match="cannot be set by hand"):
        invoice_status_change(invoice=invoice, status=status)


def test_portal_invoice_status_change_stays_local(halo_sandbox, portal_invoice, django_capture_on_commit_callbacks):
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        assert invoice_status_change(invoice=portal_invoice, status="void").job is None
    portal_invoice.refresh_from_db()
    assert portal_invoice.status == Invoice.Status.VOID
    assert PushJob.objects.count() == 0 and halo_sandbox.count_requests() == 0


def test_marked_paid_by_a_person_takes_no_further_payment(mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=False):
        invoice_status_change(invoice=invoice, status="paid")
        with pytest.raises(PaymentRefused, match="nothing left to pay"):
            payment_record(invoice=invoice, amount="1.00")
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid, invoice.balance) == ("paid", invoice.total, Decimal("0.00"))


def test_status_mapping_for_pushes():
    assert invoice_status_to_halo("void") == ("void", {})
    assert invoice_status_to_halo("paid") == ("update", {"markaspaid": True})
    assert invoice_status_to_halo("open") == ("update", {"voided": False})


# --- the conflict rule ------------------------------------------------------------------------------


def _invoice(status: str, remote_status: str, changed_at) -> Invoice:
    return Invoice(status=status, remote_status=remote_status, status_changed_locally_at=changed_at)


SAME_CLOCK = HaloShape(clock_offset_seconds=0.0)


def winner(invoice, remote_status, remote_modified_at, shape=SAME_CLOCK):
    return status_conflict_winner(
        invoice=invoice, remote_status=remote_status, remote_modified_at=remote_modified_at, shape=shape
    )


def test_conflict_rule_nothing_changed_here_halopsa_wins():
    invoice = _invoice("open", "open", None)
    assert winner(invoice, "paid", timezone.now()) == "remote"


def test_conflict_rule_local_change_not_overwritten_when_halopsa_status_did_not_move():
    changed = timezone.now()
    invoice = _invoice("void", "open", changed)
    # Even a HaloPSA edit after ours (another field) keeps our status: HaloPSA's status is unchanged.
    assert winner(invoice, "open", changed + timedelta(hours=1)) == "local"
    assert winner(invoice, "open", changed - timedelta(hours=1)) == "local"


def test_conflict_rule_both_changed_later_wins():
    changed = timezone.now()
    invoice = _invoice("void", "open", changed)
    assert winner(invoice, "paid", changed + timedelta(seconds=1)) == "remote"
    assert winner(invoice, "paid", changed - timedelta(seconds=1)) == "local"
    assert winner(invoice, "paid", changed) == "local"  # tie
    assert winner(invoice, "paid", None) == "local"


@pytest.mark.parametrize("offset_minutes", [-420, -4320, 420])
def test_conflict_rule_compares_on_one_clock(offset_minutes):
    """HaloPSA's stamps are its own clock's (hours or days away): moved onto ours before comparing."""
    changed = timezone.now()
    invoice = _invoice("void", "open", changed)
    shape = HaloShape(clock_offset_seconds=offset_minutes * 60.0)
    halo_clock = timedelta(minutes=offset_minutes)
    # HaloPSA's change a minute after ours, stamped on its clock.
    assert winner(invoice, "paid", changed + timedelta(minutes=1) + halo_clock, shape) == "remote"
    # HaloPSA's change a minute before ours.
    assert winner(invoice, "paid", changed - timedelta(minutes=1) + halo_clock, shape) == "local"
    # Read as if HaloPSA's clock were ours, one of the two would be decided wrongly.
    naive = [
        winner(invoice, "paid", changed + delta + halo_clock) for delta in (timedelta(minutes=1), -timedelta(minutes=1))
    ]
    assert naive != ["remote", "local"]


def test_conflict_rule_before_any_offset_is_measured_keeps_ours(settings):
    changed = timezone.now()
    invoice = _invoice("void", "open", changed)
    unmeasured = HaloShape()
    assert winner(invoice, "paid", changed + timedelta(days=3), unmeasured) == "local"
    assert winner(invoice, "paid", changed - timedelta(days=3), unmeasured) == "local"
    settings.HALOPSA_UNMEASURED_CLOCK = "assume_utc"  # compare as if HaloPSA's clock were UTC
    assert winner(invoice, "paid", changed + timedelta(seconds=1), unmeasured) == "remote"
    assert winner(invoice, "paid", changed - timedelta(seconds=1), unmeasured) == "local"


def test_conflict_rule_reads_the_offset_of_the_invoices_connection(halo_sandbox, mirror, conn):
    invoice = mirror(1)
    Invoice.objects.filter(pk=invoice.pk).update(status="void", status_changed_locally_at=timezone.now())
    invoice = Invoice.objects.get(pk=invoice.pk)
    later_on_a_clock_7h_behind = invoice.status_changed_locally_at + timedelta(minutes=1) - timedelta(hours=7)
    assert (
        status_conflict_winner(invoice=invoice, remote_status="paid", remote_modified_at=later_on_a_clock_7h_behind)
        == "local"
    )
    from integrations.services.connections import connection_shape_update

    connection_shape_update(connection=conn, clock_offset_seconds=-7 * 3600.0)
    invoice = Invoice.objects.get(pk=invoice.pk)
    assert (
        status_conflict_winner(invoice=invoice, remote_status="paid", remote_modified_at=later_on_a_clock_7h_behind)
        == "remote"
    )


def test_conflict_rule_both_agree():
    changed = timezone.now()
    invoice = _invoice("void", "open", changed)
    assert winner(invoice, "void", changed + timedelta(hours=1)) == "local"


def test_conflict_rule_against_the_sandbox(halo_sandbox, mirror, conn, django_capture_on_commit_callbacks):
    """Voided here while unsent; HaloPSA then gets a payment (its status moves later): HaloPSA wins."""
    from integrations.halopsa.mapping import map_invoice

    shape = clock_known(conn, halo_sandbox)
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=False):
        invoice_status_change(invoice=invoice, status="void")
    invoice.refresh_from_db()
    # Without a later HaloPSA status change, a pull keeps ours.
    remote = map_invoice(
        {**halo_sandbox.store.invoice_json(halo_sandbox.store.get_invoice(1), include_lines=False), "lines": []}
    )
    assert winner(invoice, remote["remote_status"], remote["remote_updated_at"], shape) == "local"
    # HaloPSA changes its status after ours: the later change wins.
    halo_sandbox.store.add_payment(1, "10.00", reference="desk")
    remote = map_invoice({**halo_invoice(halo_sandbox, 1), "lines": []})
    assert remote["remote_status"] == "partially_paid"
    assert remote["remote_updated_at"] >= invoice.status_changed_locally_at - timedelta(seconds=1)
    Invoice.objects.filter(pk=invoice.pk).update(
        status_changed_locally_at=remote["remote_updated_at"] - timedelta(seconds=1)
    )
    invoice.refresh_from_db()
    assert winner(invoice, remote["remote_status"], remote["remote_updated_at"], shape) == "remote"
