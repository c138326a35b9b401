"""Secrets (issue 9, item 4): HaloPSA client secrets and webhook credentials are encrypted at rest
with keys from the environment, never appear in a database dump, the logs, forms, pages or the
admin, and key rotation works end to end.

The secrets looked for: the client secret (old and new after an edit), the webhook password (which
is also the HMAC secret when HMAC is on), the Basic `Authorization` value HaloPSA sends, and every
access token the sandbox issued during the flow.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets as pysecrets
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection as db
from django.urls import reverse

from halosandbox import SandboxServer
from tests.plugins.sandbox import record_issued_tokens
from tests.reliability.procs import ProcessWorld

pytestmark = pytest.mark.django_db


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def secret_flow(partner, partner_user, make_connection, client, caplog):
    """A full flow in one process, with every log record at DEBUG captured: connection, full sync,
    an authenticated webhook processed, a payment pushed, the secret edited through the form."""
    from integrations.models import Invoice, PushJob, SyncRun, WebhookEvent
    from integrations.services.payments import payment_record
    from integrations.services.push import push_job_process
    from integrations.services.sync import sync_execute
    from integrations.services.webhooks import webhook_event_process

    caplog.set_level(logging.DEBUG)
    client_secret = "cs-" + pysecrets.token_urlsafe(24)
    srv = SandboxServer(dataset="tiny", seed=1, port=0, rate_limit=0, client_secret=client_secret).start()
    tokens = record_issued_tokens(srv)
    try:
        connection = make_connection(partner, srv, client_secret=client_secret, halopsa_version="2.200.1")
        connection.refresh_from_db()
        sync = sync_execute(run=SyncRun.objects.create(connection=connection, scope="full", trigger="cli"))
        assert sync.state == "succeeded", sync.message

        auth = _basic(connection.webhook_username, connection.webhook_password)
        body = json.dumps({"id": "d-1", "event": "invoice updated", "object_id": 2, "invoice": {"id": 2}})
        response = client.post(
            reverse("halopsa-webhook", kwargs={"key": connection.webhook_key}),
            body,
            content_type="application/json",
            HTTP_AUTHORIZATION=auth,
        )
        assert response.status_code == 202
        event = webhook_event_process(event_id=WebhookEvent.objects.get(connection=connection).pk)
        assert event.state == "processed", event.error

        invoice = Invoice.objects.get(connection=connection, halopsa_id=1)
        payment = payment_record(invoice=invoice, amount=Decimal("12.34"))
        job = push_job_process(job_id=PushJob.objects.get(payment=payment).pk)
        assert job.state == "done", job.last_error

        # A person replaces the secret through the dashboard form.
        new_secret = "cs2-" + pysecrets.token_urlsafe(24)
        srv.auth.client_secret = new_secret  # HaloPSA rotated it: the form checks the new one before saving
        client.force_login(partner_user)
        form = {
            "name": connection.name,
            "base_url": connection.base_url,
            "auth_url": "",
            "client_id": connection.client_id,
            "client_secret": new_secret,
            "tenant": "",
            "invoice_number_field": connection.invoice_number_field,
            "billing_contact_rule": connection.billing_contact_rule,
            "default_currency": "USD",
        }
        edited = client.post(reverse("connection_edit", kwargs={"pk": connection.pk}), form)
        assert edited.status_code == 302, edited.content.decode()[:2000]
        connection.refresh_from_db()
        assert connection.client_secret == new_secret
        assert tokens, "the sandbox issued no token: the flow did not authenticate"
        yield {
            "connection": connection,
            "records": list(caplog.records),
            "sandbox": srv,
            "secrets": [client_secret, new_secret, connection.webhook_password, auth.split()[1], *tokens],
        }
    finally:
        srv.stop()


def _leaks(text: str, secrets: list[str]) -> list[str]:
    return [s[:6] + "…" for s in secrets if s and s in text]


def test_logs_of_a_full_flow_at_debug_hold_no_secret(secret_flow):
    records = secret_flow["records"]
    assert len(records) > 20  # the flow really logged (one line per HaloPSA request at least)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    text = "\n".join(f"{formatter.format(r)} {r.args!r} {r.exc_text or ''}" for r in records)
    assert _leaks(text, secret_flow["secrets"]) == []


def test_database_dump_and_every_stored_value_hold_no_plaintext_secret(secret_flow):
    from integrations.crypto import current_fernet
    from integrations.models import Connection

    secrets = secret_flow["secrets"]
    dump = StringIO()
    call_command("dumpdata", stdout=dump)
    assert _leaks(dump.getvalue(), secrets) == []
    assert '"client_secret": "gAAAAA' in dump.getvalue()  # the dump carries the ciphertext

    scanned = 0
    with db.cursor() as cursor:
        for table in db.introspection.table_names():
            cursor.execute(f"SELECT * FROM {db.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, (bytes, memoryview)):
                        value = bytes(value).decode("latin-1")
                    text = value if isinstance(value, str) else json.dumps(value, default=str)
                    scanned += 1
                    assert _leaks(text, secrets) == [], f"{table} holds a secret"
    assert scanned > 500
    # The columns hold Fernet tokens the configured key decrypts (encryption with the env key).
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT client_secret, webhook_password FROM integrations_connection WHERE id = %s",
            [secret_flow["connection"].pk],
        )
        stored_secret, stored_password = cursor.fetchone()
    connection = Connection.objects.get(pk=secret_flow["connection"].pk)
    assert current_fernet().decrypt(stored_secret.encode()).decode() == connection.client_secret
    assert current_fernet().decrypt(stored_password.encode()).decode() == connection.webhook_password


def test_a_dump_loads_back_to_the_same_secrets(partner, make_connection, tmp_path):
    from integrations.models import Connection, Partner

    connection = make_connection(partner, client_secret="round-trip-secret", webhook_hmac_secret="round-trip-hmac")
    password = connection.webhook_password
    fixture = tmp_path / "dump.json"
    call_command("dumpdata", "integrations.partner", "integrations.connection", output=str(fixture))
    assert "round-trip-secret" not in fixture.read_text() and password not in fixture.read_text()
    Partner.objects.all().delete()
    call_command("loaddata", str(fixture), verbosity=0)
    loaded = Connection.objects.get()
    assert (loaded.client_secret, loaded.webhook_password, loaded.webhook_hmac_secret) == (
        "round-trip-secret",
        password,
        "round-trip-hmac",
    )


def test_a_dump_written_with_an_unknown_key_is_refused_on_load(partner, make_connection, tmp_path, settings):
    from cryptography.fernet import Fernet
    from django.core.serializers.base import DeserializationError

    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    make_connection(partner, client_secret="other-key-secret")
    fixture = tmp_path / "dump.json"
    call_command("dumpdata", "integrations.partner", "integrations.connection", output=str(fixture))
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(DeserializationError, match="could not be decrypted"):
        call_command("loaddata", str(fixture), verbosity=0)


# --- forms, pages, admin ---------------------------------------------------------------------------


def test_pages_forms_and_admin_never_render_the_secrets(client, partner, partner_user, make_connection):
    from integrations.models import User

    superuser = User.objects.create_superuser("root", "root@example.com", "correct-horse-battery")
    connection = make_connection(
        partner, client_secret="never-render-" + pysecrets.token_hex(8), halopsa_version="2.200.1"
    )
    connection.refresh_from_db()
    secret, password = connection.client_secret, connection.webhook_password
    client.force_login(partner_user)
    pages = [
        reverse("home"),
        reverse("connection_edit", kwargs={"pk": connection.pk}),
        reverse("connection_create"),
        reverse("connection_delete", kwargs={"pk": connection.pk}),
        reverse("activity"),
        reverse("connection_progress", kwargs={"pk": connection.pk}),
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert secret not in html and password not in html, url
    edit = client.get(reverse("connection_edit", kwargs={"pk": connection.pk})).content.decode()
    assert 'name="client_secret"' in edit and 'type="password"' in edit

    # The connection page shows the webhook password once, inside the set-up instructions the
    # partner needs to configure HaloPSA; never the client secret.
    detail = client.get(reverse("connection_detail", kwargs={"pk": connection.pk})).content.decode()
    assert secret not in detail
    assert detail.count(password) == 1
    setup = detail[detail.index('id="webhooks"') :]
    assert password in setup[: setup.index("</section>")]

    client.force_login(superuser)
    for url in (
        reverse("admin:integrations_connection_change", args=[connection.pk]),
        reverse("admin:integrations_connection_changelist"),
        reverse("admin:index"),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert secret not in html and password not in html, url
        assert 'name="client_secret"' not in html and 'name="webhook_password"' not in html


# --- out of process: environment keys, rotation, worker logs -------------------------------------


@pytest.mark.slow
def test_key_rotation_end_to_end_and_worker_logs_without_secrets(tmp_path):
    from cryptography.fernet import Fernet

    client_secret = "rot-" + pysecrets.token_urlsafe(24)
    srv = SandboxServer(dataset="tiny", seed=1, port=0, rate_limit=0, client_secret=client_secret).start()
    world = ProcessWorld(tmp_path, LOG_LEVEL="DEBUG")
    old_key, new_key = world.field_key, Fernet.generate_key().decode()
    try:
        world.setup_database()
        connection_id = world.add_connection(srv.url, srv.client_id, client_secret)
        first = world.manage("sync_connection", str(connection_id), "--full")
        assert json.loads(first.stdout.splitlines()[-1])["state"] == "succeeded"
        assert client_secret not in first.stdout + first.stderr

        # Deploy the new key first in the list, rotate, then drop the old key.
        rotated = world.manage("rotate_field_keys", FIELD_ENCRYPTION_KEYS=f"{new_key},{old_key}")
        assert "Re-encrypted 2 value(s)" in rotated.stdout  # client secret + webhook password
        again = world.manage("sync_connection", str(connection_id), "--full", FIELD_ENCRYPTION_KEYS=new_key)
        assert json.loads(again.stdout.splitlines()[-1])["state"] == "succeeded", again.stderr[-2000:]
        # The old key alone no longer reads anything: the values really are under the new key.
        stale = world.manage(
            "sync_connection", str(connection_id), "--full", FIELD_ENCRYPTION_KEYS=old_key, check=False
        )
        assert stale.returncode != 0
        assert "could not be decrypted" in stale.stderr and client_secret not in stale.stdout + stale.stderr

        dump = world.manage("dumpdata", FIELD_ENCRYPTION_KEYS=new_key)
        assert client_secret not in dump.stdout and '"client_secret": "gAAAAA' in dump.stdout
        if world.database_url.startswith("sqlite"):
            raw = (tmp_path / "world.sqlite3").read_bytes()
            assert client_secret.encode() not in raw
    finally:
        srv.stop()
        world.close()
