"""Record a payment made on the platform: `manage.py record_payment --invoice ID --amount 12.34`.

Prints what happened, then the new payment's portal id as the last line (for scripts).
"""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import Invoice, PushJob
from integrations.services.payments import PaymentRefused, payment_record


class Command(BaseCommand):
    help = "Record a payment against an invoice (portal id, as export_connection shows it) and push it to HaloPSA."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--invoice", required=True, type=int, help="The invoice's portal id.")
        parser.add_argument("--amount", required=True, help="Amount with at most two decimals, e.g. 12.34.")
        parser.add_argument("--method", default="", help="Payment method shown in HaloPSA, e.g. card.")
        parser.add_argument(
            "--reference", default="", help="Reference HaloPSA will carry (generated when omitted; must be unique)."
        )
        parser.add_argument(
            "--paid-on", default="", help="Payment date YYYY-MM-DD, from 2000-01-01 to today (default: today, UTC)."
        )

    def handle(self, *args, **options) -> None:
        invoice = Invoice.objects.select_related("connection").filter(pk=options["invoice"]).first()
        if invoice is None:
            raise CommandError(f"Invoice {options['invoice']} does not exist.")
        paid_on = None
        if options["paid_on"]:
            try:
                paid_on = date.fromisoformat(options["paid_on"])
            except ValueError:
                raise CommandError(f"--paid-on {options['paid_on']!r} is not a date (YYYY-MM-DD).") from None
        try:
            payment = payment_record(
                invoice=invoice,
                amount=options["amount"],
                method=options["method"],
                reference=options["reference"],
                paid_on=paid_on,
                user=None,
            )
        except PaymentRefused as exc:
            raise CommandError(f"Payment refused: {exc.message}") from None
        invoice.refresh_from_db()
        self.stdout.write(
            f"Recorded payment {payment.pk}: {payment.amount} {invoice.currency} on invoice {invoice} "
            f"(reference {payment.reference}); balance now {invoice.balance} {invoice.currency}, status {invoice.status}."
        )
        job = payment.push_jobs.filter(kind=PushJob.Kind.PAYMENT_CREATE).first()
        if job is None:
            self.stdout.write("Invoice was created in the portal: nothing is sent to HaloPSA.")
        else:
            job.refresh_from_db()
            self.stdout.write(f"Push to HaloPSA: {job.outcome}")
        self.stdout.write(str(payment.pk))
