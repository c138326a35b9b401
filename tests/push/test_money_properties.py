"""Money invariants of recording and deleting payments, over random sequences (Hypothesis).

Runs on a portal invoice (no HaloPSA involved) so each example is fast; the HaloPSA side of the
same arithmetic is covered against the sandbox in test_payments.py and test_with_pull.py.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from integrations.models import Customer, Invoice, Origin, Payment
from integrations.services.payments import PaymentRefused, payment_delete, payment_record

pytestmark = pytest.mark.django_db

amounts = st.decimals(
    min_value=Decimal("-5.00"), max_value=Decimal("400.00"), places=2, allow_nan=False, allow_infinity=False
)
steps = st.lists(
    st.tuples(st.sampled_from(["pay", "delete"]), amounts, st.integers(min_value=0, max_value=10)), max_size=12
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(total=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000.00"), places=2), steps=steps)
def test_balance_is_total_minus_live_payments_and_never_negative(conn, total, steps):
    customer = Customer.objects.create(connection=conn, origin=Origin.PLATFORM, name="Property Ltd")
    invoice = Invoice.objects.create(
        connection=conn, customer=customer, origin=Origin.PLATFORM, total=total, balance=total
    )
    for action, amount, pick in steps:
        live = list(Payment.objects.filter(invoice=invoice, voided_at__isnull=True).order_by("id"))
        if action == "pay":
            invoice.refresh_from_db()
            expect_refusal = amount <= 0 or amount > invoice.balance
            try:
                payment_record(invoice=invoice, amount=amount)
            except PaymentRefused:
                assert expect_refusal
            else:
                assert not expect_refusal
        elif live:
            payment_delete(payment=live[pick % len(live)])
        invoice.refresh_from_db()
        paid = sum((p.amount for p in Payment.objects.filter(invoice=invoice, voided_at__isnull=True)), Decimal("0.00"))
        assert invoice.amount_paid == paid
        assert invoice.balance == total - paid
        assert Decimal("0.00") <= invoice.balance <= total
        expected = (
            Invoice.Status.PAID
            if invoice.balance == 0
            else (Invoice.Status.PARTIALLY_PAID if paid > 0 else Invoice.Status.OPEN)
        )
        assert invoice.status == expected
