"""`manage.py ensure_schedules`: (re)create the django-q2 schedules (idempotent; run by make run and deploys).

One hourly sync schedule per enabled connection (and none for others), the push sweep and the
webhook sweep.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create or update the hourly sync schedule of every enabled connection, the push sweep and the webhook sweep."
    )

    def handle(self, *args, **options) -> None:
        from integrations.schedules import ensure_schedules
        from integrations.services.push import push_schedule_ensure
        from integrations.services.webhooks import webhook_sweep_schedule_ensure

        result = ensure_schedules()
        push_schedule_ensure()
        webhook_sweep_schedule_ensure()
        self.stdout.write(f"Sync schedules: {result['ensured']} ensured, {result['removed']} removed.")
