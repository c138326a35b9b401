"""`manage.py ensure_schedules`: (re)create the django-q2 schedules (idempotent; run by make run and deploys).

One hourly sync schedule per enabled connection (and none for others), plus the push sweep.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create or update the hourly sync schedule of every enabled connection (and the push sweep)."

    def handle(self, *args, **options) -> None:
        from integrations.schedules import ensure_schedules

        result = ensure_schedules()
        try:
            from integrations.services.push import push_schedule_ensure
        except ImportError:  # the push service is optional for this command
            push_schedule_ensure = None
        if push_schedule_ensure is not None:
            push_schedule_ensure()
        self.stdout.write(f"Sync schedules: {result['ensured']} ensured, {result['removed']} removed.")
