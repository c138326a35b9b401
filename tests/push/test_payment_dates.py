"""Issue 17 item 5: payment dates from 2000-01-01 to today, and a bad date never breaks a sync.

0001-01-01 was once accepted, posted to HaloPSA, and then failed every sync of that invoice (the
date HaloPSA sends back is not one the mapping could read). Now the form, the service and the
command refuse such dates, a stored one is never posted, and the pull keeps a payment whose date
it cannot read with an unknown date instead of failing the invoice.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from integrations.forms import PaymentForm
from integrations.halopsa.mapping import map_invoice, map_payment
from integrations.models import Invoice, Payment, PushJob, SyncError, SyncRun
from integrations.services.payments import PaymentRefused, payment_record
from integrations.services.push import push_job_process
from tests.push.conftest import assert_ledgers_agree, halo_payments

pytestmark = pytest.mark.django_db

TODAY = timezone.now().date()
BAD_DATES = [date(1, 1, 1), date(1999, 12, 31), TODAY + timedelta(days=2), date(9999, 12, 31)]
GOOD_DATES = [date(2000, 1, 1), TODAY]


@pytest.mark.parametrize("paid_on", BAD_DATES, ids=str)
def test_the_service_refuses_dates_before_2000_or_in_the_future(
    halo_sandbox, mirror, paid_on, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(PaymentRefused, match="cannot be dated"):
        payment_record(invoice=invoice, amount="10.00", paid_on=paid_on)
    assert Payment.objects.filter(source="platform").count() == 0 and PushJob.objects.count() == 0
    assert Invoice.objects.get(pk=invoice.pk).balance == invoice.balance


@pytest.mark.parametrize("paid_on", GOOD_DATES, ids=str)
def test_dates_from_2000_to_today_are_posted_as_given(
    halo_sandbox, mirror, paid_on, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="10.00", paid_on=paid_on)
    (posted,) = halo_payments(halo_sandbox, 1, payment.reference)
    assert map_payment(posted)["paid_on"] == paid_on


@pytest.mark.parametrize(
    "value, error",
    [
        ("0001-01-01", "cannot be dated before 2000-01-01"),
        ("1999-12-31", "cannot be dated before 2000-01-01"),
        ((TODAY + timedelta(days=2)).isoformat(), "cannot be dated in the future"),
        ("2026-02-30", "Enter a date as YYYY-MM-DD."),
    ],
)
def test_the_form_refuses_them_next_to_the_field(value, error):
    form = PaymentForm({"amount": "5.00", "paid_on": value})
    assert not form.is_valid()
    assert error in form.errors["paid_on"][0]


def test_the_command_refuses_them_with_the_reason(halo_sandbox, mirror):
    invoice = mirror(1)
    with pytest.raises(CommandError, match="Payment refused: A payment cannot be dated before 2000-01-01"):
        call_command(
            "record_payment",
            "--invoice",
            str(invoice.pk),
            "--amount",
            "1.00",
            "--paid-on",
            "0001-01-01",
            stdout=StringIO(),
        )
    assert Payment.objects.filter(source="platform").count() == 0


def test_a_bad_date_stored_before_the_check_is_never_posted(halo_sandbox, mirror):
    invoice = mirror(1)
    payment = Payment.objects.create(
        invoice=invoice,
        connection=invoice.connection,
        source="platform",
        amount=Decimal("10.00"),
        paid_on=date(1, 1, 1),
        reference="SP-OLD-DATE",
    )
    job = PushJob.objects.create(
        connection=invoice.connection,
        kind=PushJob.Kind.PAYMENT_CREATE,
        key="old-date",
        payment=payment,
        invoice=invoice,
        payload={"reference": payment.reference},
    )
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.NEEDS_REVIEW and "not a real payment date" in job.last_error
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 0


@pytest.mark.parametrize("sent", ["0001-01-01", "1900-01-01T00:00:00", "not a date", "2026-02-30T00:00:00", None])
def test_the_mapping_reads_an_unreadable_payment_date_as_unknown(sent):
    row = {"id": 9, "amount": Decimal("10.00"), "date": sent}
    mapped = map_payment(row)
    assert mapped["paid_on"] is None and mapped["amount"] == Decimal("10.00")
    invoice = map_invoice(
        {
            "id": 1,
            "invoicenumber": "1",
            "total": Decimal("100"),
            "amountpaid": Decimal("10"),
            "amountdue": Decimal("90"),
            "lines": [],
            "payments": [row],
        }
    )
    assert invoice["status"] == "partially_paid" and invoice["payments"][0]["paid_on"] is None


@pytest.mark.parametrize("full", [False, True], ids=["one-invoice pull", "full sync"])
def test_a_payment_halopsa_holds_with_year_one_never_breaks_a_sync(halo_sandbox, conn, full):
    """What happened: 0001-01-01 reached HaloPSA, which answers it back as "1-01-01T00:00:00"."""
    from integrations.services.sync import sync_execute, sync_record

    halo_sandbox.store.add_payment(1, "10.00", date="0001-01-01", reference="typo")
    if full:
        run = sync_execute(
            run=SyncRun.objects.create(connection=conn, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.MANUAL)
        )
    else:
        run = sync_record(connection=conn, entity="invoices", halopsa_id=1, trigger=SyncRun.Trigger.MANUAL)
    assert run.state == SyncRun.State.SUCCEEDED, run.message
    assert not SyncError.objects.filter(connection=conn, halopsa_id=1).exists()
    invoice = Invoice.objects.get(connection=conn, halopsa_id=1)
    assert_ledgers_agree(halo_sandbox, invoice)
    (typo,) = Payment.objects.filter(invoice=invoice, reference="typo")
    assert typo.paid_on is None and typo.amount == Decimal("10.00") and typo.raw["date_as_sent"]
