"""Delete (void) a payment made on the platform, and in HaloPSA: `manage.py delete_payment ID`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import Payment, PushJob
from integrations.services.payments import PaymentRefused, payment_delete


class Command(BaseCommand):
    help = "Delete a payment made on the platform (portal payment id); the deletion is pushed to HaloPSA."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("payment_id", type=int, help="The payment's portal id (printed by record_payment).")

    def handle(self, *args, **options) -> None:
        payment = Payment.objects.select_related("invoice").filter(pk=options["payment_id"]).first()
        if payment is None:
            raise CommandError(f"Payment {options['payment_id']} does not exist.")
        try:
            payment_delete(payment=payment, user=None)
        except PaymentRefused as exc:
            raise CommandError(f"Deletion refused: {exc.message}") from None
        invoice = payment.invoice
        invoice.refresh_from_db()
        self.stdout.write(
            f"Deleted payment {payment.pk} ({payment.amount} {invoice.currency}) on invoice {invoice}; "
            f"balance now {invoice.balance} {invoice.currency}, status {invoice.status}."
        )
        job = payment.push_jobs.filter(kind=PushJob.Kind.PAYMENT_DELETE).first()
        if job is None:
            self.stdout.write("Nothing had reached HaloPSA: nothing to delete there.")
        else:
            job.refresh_from_db()
            self.stdout.write(f"Delete in HaloPSA: {job.outcome}")
        self.stdout.write(str(payment.pk))
