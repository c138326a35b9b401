"""`manage.py add_connection --partner NAME --name NAME --url URL --client-id ID --client-secret SECRET [--tenant T]`

Creates the partner if it does not exist and the connection (with its hourly schedule); prints
the new connection's id as the last line. Refuses (CommandError, nothing created) a URL the portal
does not call (https only unless HALOPSA_ALLOW_PRIVATE_NETWORKS; no private address; no
user:password@) and a second connection of the partner to the same HaloPSA URL and client id.
Unlike the dashboard's form it does not ask HaloPSA first, so it works while HaloPSA is
unreachable; the version is detected afterwards, best effort.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from integrations.models import Connection, Partner


class Command(BaseCommand):
    help = "Create a HaloPSA connection (and its partner if needed); prints the connection id last."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--partner", required=True, help="Partner name (created when missing).")
        parser.add_argument("--name", required=True, help="Connection name, unique per partner.")
        parser.add_argument("--url", required=True, help="HaloPSA URL, e.g. https://yourcompany.halopsa.com")
        parser.add_argument("--client-id", required=True)
        parser.add_argument("--client-secret", required=True)
        parser.add_argument("--tenant", default="")

    def handle(self, *args, **options) -> None:
        from integrations.services.connections import connection_create

        partner_name = options["partner"].strip()
        if not partner_name:
            raise CommandError("--partner must not be empty.")
        with transaction.atomic():
            partner, created = Partner.objects.get_or_create(name=partner_name)
            if Connection.objects.filter(partner=partner, name=options["name"]).exists():
                raise CommandError(f"Partner {partner.name!r} already has a connection named {options['name']!r}.")
            try:
                connection = connection_create(
                    partner=partner,
                    name=options["name"],
                    base_url=options["url"].strip(),
                    client_id=options["client_id"].strip(),
                    client_secret=options["client_secret"],
                    tenant=options["tenant"].strip(),
                    detect_version=False,
                )
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from None
        from integrations.services.connections import connection_detect_version

        version = connection_detect_version(connection=connection)  # best effort, after the commit
        if created:
            self.stdout.write(f"Created partner {partner.name} ({partner.pk}).")
        self.stdout.write(
            f"Created connection {connection.name} -> {connection.base_url}; hourly sync at minute "
            f"{connection.schedule_minute}; HaloPSA version {version or 'not detected (HaloPSA did not answer)'}."
        )
        self.stdout.write(str(connection.pk))
