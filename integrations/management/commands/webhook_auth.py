"""Choose how a connection's HaloPSA webhooks authenticate: Basic, or an HMAC signature.

    manage.py webhook_auth --connection 3              # show the scheme in force
    manage.py webhook_auth --connection 3 --scheme hmac
    manage.py webhook_auth --connection 3 --scheme basic

A connection uses one scheme (docs/webhooks.md). Switching to HMAC generates a new secret; the
webhook in HaloPSA must then be changed to match, by hand or with "Register" on the connection's
page. Secrets are never printed: the connection's page shows what the partner must copy.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import Connection
from integrations.services.webhooks import (
    WEBHOOK_SCHEMES,
    WebhookError,
    webhook_auth_scheme,
    webhook_auth_scheme_set,
    webhook_setup_instructions,
)


class Command(BaseCommand):
    help = "Show or set how a connection's HaloPSA webhooks authenticate (basic or hmac)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--connection", required=True, type=int, help="The connection's portal id.")
        parser.add_argument("--scheme", choices=WEBHOOK_SCHEMES, help="basic, or hmac (a new secret).")

    def handle(self, *args, **options) -> None:
        connection = Connection.objects.filter(pk=options["connection"]).first()
        if connection is None:
            raise CommandError(f"Connection {options['connection']} does not exist.")
        before = webhook_auth_scheme(connection)
        if options["scheme"]:
            try:
                webhook_auth_scheme_set(connection=connection, scheme=options["scheme"])
            except WebhookError as exc:
                raise CommandError(exc.message) from None
        setup = webhook_setup_instructions(connection)
        self.stdout.write(
            f"Connection {connection.pk} ({connection.name}): webhooks authenticate with "
            f"{setup['authentication']} (HaloPSA authentication type {setup['authentication_type']})."
        )
        if setup["scheme"] != before:
            self.stdout.write(
                "Changed: update the webhook in HaloPSA to match (the connection's page shows how), "
                "or its deliveries will be refused with 401."
            )
