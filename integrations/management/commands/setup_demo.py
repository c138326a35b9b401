"""Prepare the demo `make run` shows: a partner, a user, and a connection to the built-in sandbox."""

from __future__ import annotations

import secrets
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from integrations.models import Connection, Partner, SyncRun, User

DEMO_PARTNER = "Demo MSP"
DEMO_USERNAME = "demo"
DEMO_CONNECTION = "Demo HaloPSA (sandbox)"


class Command(BaseCommand):
    help = "Create (or refresh) the demo partner, user and sandbox connection, and queue a first sync."

    def add_arguments(self, parser):
        parser.add_argument("--sandbox-url", required=True, help="Base URL of the running HaloPSA sandbox.")
        parser.add_argument("--password", default="", help="Demo user's password (default: a new random one).")

    def handle(self, *args, sandbox_url: str, password: str, **options):
        from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
        from integrations.services.connections import connection_create, connection_test, connection_update
        from integrations.services.sync import sync_queue

        password = password or secrets.token_urlsafe(9)
        with transaction.atomic():
            partner, _ = Partner.objects.get_or_create(name=DEMO_PARTNER)
            user, _ = User.objects.get_or_create(username=DEMO_USERNAME, defaults={"partner": partner})
            user.partner = partner
            user.set_password(password)
            user.save()
            connection = Connection.objects.filter(partner=partner, name=DEMO_CONNECTION).first()
            # Any, as the services' **fields take them (str values would be matched to their bool options).
            fields: dict[str, Any] = {
                "base_url": sandbox_url,
                "client_id": SANDBOX_CLIENT_ID,
                "client_secret": SANDBOX_CLIENT_SECRET,
            }
            if connection is None:
                connection = connection_create(partner=partner, name=DEMO_CONNECTION, **fields)
            else:
                connection = connection_update(connection=connection, **fields)
        result = connection_test(connection=connection)
        state = f"HaloPSA {result.version}" if result.ok else f"test failed: {result.message}"
        run, _ = sync_queue(connection=connection, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.MANUAL)
        self.stdout.write(
            f"Demo connection '{connection.name}' -> {sandbox_url} ({state}); first sync queued (run {run.pk})."
        )
        self.stdout.write(f"Sign in at the portal as user '{DEMO_USERNAME}' with password '{password}'.")
