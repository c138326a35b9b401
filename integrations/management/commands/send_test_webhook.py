"""Send a HaloPSA-shaped webhook to a connection's endpoint, like `stripe trigger`.

    manage.py send_test_webhook --connection 3 --event "invoice updated" --object-id 42
    manage.py send_test_webhook --connection 3 --url http://127.0.0.1:8000 --wrong-secret

The delivery is authenticated the way the connection's webhooks are (its Basic credentials, or
only its HMAC signature), so a 202 proves the URL, the credentials and the queue; the event then
appears on the connection's page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests
from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import Connection
from integrations.services.webhooks import SUBSCRIBED_EVENTS, webhook_test_delivery


class Command(BaseCommand):
    help = "POST a test HaloPSA webhook delivery to a connection's webhook endpoint and print the answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--connection", required=True, type=int, help="The connection's portal id.")
        parser.add_argument(
            "--event", default="invoice updated", help=f"Event name, one of: {', '.join(SUBSCRIBED_EVENTS)}."
        )
        parser.add_argument("--object-id", type=int, default=1, help="HaloPSA id of the record the event names.")
        parser.add_argument("--url", default="", help="Portal base URL to send to (default: SITE_URL).")
        parser.add_argument(
            "--wrong-secret", action="store_true", help="Send a wrong password or HMAC signature (expect 401)."
        )

    def handle(self, *args, **options) -> None:
        connection = Connection.objects.filter(pk=options["connection"]).first()
        if connection is None:
            raise CommandError(f"Connection {options['connection']} does not exist.")
        url, headers, body = webhook_test_delivery(
            connection,
            event=options["event"],
            object_id=options["object_id"],
            secret="not-the-secret" if options["wrong_secret"] else None,
        )
        if options["url"]:
            url = options["url"].rstrip("/") + urlsplit(url).path
        try:
            with requests.Session() as session:
                session.trust_env = False  # our own portal: never through an outbound proxy
                response = session.post(url, data=body, headers=headers, timeout=30)
        except requests.RequestException as exc:
            raise CommandError(f"Could not reach {url}: {exc.__class__.__name__}: {exc}") from None
        self.stdout.write(f"POST {url}\n{response.status_code} {response.text}")
