"""Issue 18 item 5: a push job says explicitly why it was put off (`PushJob.deferred_reason`)
instead of the incident rule reading a prefix of `last_error`. Jobs whose last outcome was the
busy-invoice wait get the reason from that message."""
from django.db import migrations, models

# The message the push wrote when another push held the invoice (services/push.py).
BUSY_PREFIX = "Waiting for another push"


def reason_from_last_error(apps, schema_editor):
    PushJob = apps.get_model("integrations", "PushJob")
    PushJob.objects.filter(last_error__startswith=BUSY_PREFIX).update(deferred_reason="invoice_busy")


class Migration(migrations.Migration):

    dependencies = [
        ("integrations", "0009_payment_date_unknown_void_owes_nothing"),
    ]

    operations = [
        migrations.AddField(
            model_name="pushjob",
            name="deferred_reason",
            field=models.CharField(
                blank=True,
                choices=[("", "Not deferred"), ("invoice_busy", "Another push to the same invoice was running")],
                default="",
                max_length=20,
            ),
        ),
        # Reversing drops the column; the message stays in last_error.
        migrations.RunPython(reason_from_last_error, migrations.RunPython.noop),
    ]
