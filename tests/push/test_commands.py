"""`record_payment` and `delete_payment`: output, exit codes, and the push happening (tasks run inline)."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrations.models import Payment, PushJob
from tests.push.conftest import assert_ledgers_agree, halo_payments

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_record_payment_prints_the_payment_id_last_and_pushes(halo_sandbox, mirror):
    """Committed for real (no test transaction): the push runs inside the command, as in production."""
    invoice = mirror(1)
    output = run(
        "record_payment", "--invoice", str(invoice.pk), "--amount", "12.34", "--method", "card", "--reference", "CH_1"
    )
    lines = output.strip().splitlines()
    payment = Payment.objects.get(pk=int(lines[-1]))
    assert payment.amount == Decimal("12.34") and payment.method == "card" and payment.reference == "CH_1"
    assert "balance now 8938.03 USD" in output
    assert any("Push to HaloPSA: Done" in line for line in lines)
    rows = halo_payments(halo_sandbox, 1, "CH_1")
    assert len(rows) == 1 and rows[0]["payment_method_name"] == "card"
    assert_ledgers_agree(halo_sandbox, invoice)


def test_record_payment_refused_exits_non_zero_with_the_reason(halo_sandbox, mirror):
    invoice = mirror(2)
    halo_sandbox.clear_request_log()
    with pytest.raises(CommandError, match=r"Payment refused: .*overpayments are refused"):
        run("record_payment", "--invoice", str(invoice.pk), "--amount", "9999.00")
    with pytest.raises(CommandError, match="greater than zero"):
        run("record_payment", "--invoice", str(invoice.pk), "--amount", "-1")
    with pytest.raises(CommandError, match="Invoice 999999 does not exist"):
        run("record_payment", "--invoice", "999999", "--amount", "1.00")
    with pytest.raises(CommandError, match="is not a date"):
        run("record_payment", "--invoice", str(invoice.pk), "--amount", "1.00", "--paid-on", "yesterday")
    assert Payment.objects.filter(source="platform").count() == 0
    assert halo_sandbox.count_requests() == 0


def test_record_payment_on_a_portal_invoice_says_it_stays_local(halo_sandbox, portal_invoice):
    output = run("record_payment", "--invoice", str(portal_invoice.pk), "--amount", "20.00")
    assert "nothing is sent to HaloPSA" in output
    assert Payment.objects.filter(pk=int(output.strip().splitlines()[-1])).exists()
    assert halo_sandbox.count_requests() == 0


@pytest.mark.django_db(transaction=True)
def test_delete_payment_deletes_in_halopsa(halo_sandbox, mirror):
    invoice = mirror(1)
    payment_id = run("record_payment", "--invoice", str(invoice.pk), "--amount", "12.34").strip().splitlines()[-1]
    reference = Payment.objects.get(pk=payment_id).reference
    assert len(halo_payments(halo_sandbox, 1, reference)) == 1
    output = run("delete_payment", payment_id)
    assert "Delete in HaloPSA: Done" in output and "balance now 8950.37 USD" in output
    assert halo_payments(halo_sandbox, 1, reference) == []
    assert PushJob.objects.get(payment_id=payment_id, kind=PushJob.Kind.PAYMENT_DELETE).state == PushJob.State.DONE
    assert_ledgers_agree(halo_sandbox, invoice)


def test_delete_payment_refusals_exit_non_zero(halo_sandbox, mirror):
    invoice = mirror(2)
    halo_payment = Payment.objects.filter(invoice=invoice, source="halopsa").first()
    with pytest.raises(CommandError, match="came from HaloPSA"):
        run("delete_payment", str(halo_payment.pk))
    with pytest.raises(CommandError, match="Payment 424242 does not exist"):
        run("delete_payment", "424242")
    assert len(halo_payments(halo_sandbox, 2)) == 2
