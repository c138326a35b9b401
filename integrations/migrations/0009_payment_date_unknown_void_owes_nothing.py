"""Issue 17: a HaloPSA payment whose date cannot be read is kept with an unknown date (paid_on
null) instead of failing its invoice's sync; a void invoice owes nothing (balance 0; HaloPSA's
amountdue stays in `raw`), set here for the void invoices already stored."""
from decimal import Decimal

from django.db import migrations, models


def void_invoices_owe_nothing(apps, schema_editor):
    Invoice = apps.get_model("integrations", "Invoice")
    Invoice.objects.filter(status="void").exclude(balance=Decimal("0.00")).update(balance=Decimal("0.00"))


class Migration(migrations.Migration):

    dependencies = [
        ("integrations", "0008_connection_endpoint_key_test_failure_run_phases"),
    ]

    operations = [
        migrations.AlterField(
            model_name="payment",
            name="paid_on",
            field=models.DateField(blank=True, null=True),
        ),
        # Not reversed: un-voiding restores a balance from the amounts (or the next sync does).
        migrations.RunPython(void_invoices_owe_nothing, migrations.RunPython.noop),
    ]
