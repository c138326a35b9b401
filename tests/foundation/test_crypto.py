"""Partner secrets are encrypted at rest; keys rotate without losing a value."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection as db

from integrations.crypto import SecretDecryptionError
from integrations.models import Connection

SECRET = "halo-client-secret-Zq8"
SECRET_COLUMNS = ("client_secret", "webhook_password", "webhook_hmac_secret")


def raw_row(pk: int) -> dict[str, str]:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(SECRET_COLUMNS)} FROM integrations_connection WHERE id = %s", [pk])
        return dict(zip(SECRET_COLUMNS, cursor.fetchone()))


def fresh(connection: Connection) -> Connection:
    return Connection.objects.get(pk=connection.pk)


@pytest.fixture
def secret_connection(partner, make_connection):
    return make_connection(partner, client_secret=SECRET, webhook_hmac_secret="hmac-secret-value")


def test_secrets_are_stored_as_ciphertext_and_read_back_as_plaintext(secret_connection):
    stored = raw_row(secret_connection.pk)

    for column in ("client_secret", "webhook_password", "webhook_hmac_secret"):
        assert stored[column].startswith("gAAAAA"), column  # a Fernet token
    assert SECRET not in stored["client_secret"]
    assert "hmac-secret-value" not in stored["webhook_hmac_secret"]
    assert secret_connection.webhook_password not in stored["webhook_password"]

    loaded = fresh(secret_connection)
    assert loaded.client_secret == SECRET
    assert loaded.webhook_hmac_secret == "hmac-secret-value"


def test_the_same_secret_encrypts_differently_each_time(partner, make_connection):
    first = make_connection(partner, name="one", client_secret=SECRET)
    second = make_connection(partner, name="two", client_secret=SECRET)

    assert raw_row(first.pk)["client_secret"] != raw_row(second.pk)["client_secret"]


def test_empty_secrets_stay_empty(partner, make_connection):
    conn = make_connection(partner, webhook_hmac_secret="")

    assert raw_row(conn.pk)["webhook_hmac_secret"] == ""
    assert fresh(conn).webhook_hmac_secret == ""


def test_a_wrong_key_raises_instead_of_returning_garbage(secret_connection, settings):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(SecretDecryptionError) as excinfo:
        fresh(secret_connection)
    assert SECRET not in str(excinfo.value)
    assert "FIELD_ENCRYPTION_KEYS" in str(excinfo.value)


def test_adding_a_new_key_first_keeps_old_values_readable_and_writes_with_the_new_key(secret_connection, settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]

    assert fresh(secret_connection).client_secret == SECRET

    conn = fresh(secret_connection)
    conn.client_secret = "a-new-secret"
    conn.save()
    token = raw_row(conn.pk)["client_secret"]
    assert Fernet(new_key.encode()).decrypt(token.encode()).decode() == "a-new-secret"


def test_rotate_field_keys_re_encrypts_every_secret_with_the_newest_key(partner, make_connection, settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    conns = [
        make_connection(partner, name=f"c{i}", client_secret=f"secret-{i}", webhook_hmac_secret=f"hmac-{i}")
        for i in range(3)
    ]
    passwords = {conn.pk: conn.webhook_password for conn in conns}
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]

    call_command("rotate_field_keys", stdout=(out := io.StringIO()))
    assert "Re-encrypted 9 value(s)" in out.getvalue()

    # Only the new key is needed now; the old key alone no longer decrypts anything.
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    for i, conn in enumerate(conns):
        loaded = fresh(conn)
        assert loaded.client_secret == f"secret-{i}"
        assert loaded.webhook_hmac_secret == f"hmac-{i}"
        assert loaded.webhook_password == passwords[conn.pk]
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    with pytest.raises(SecretDecryptionError):
        fresh(conns[0])


def test_rotate_field_keys_twice_changes_nothing_the_second_time(secret_connection, settings):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *settings.FIELD_ENCRYPTION_KEYS]
    call_command("rotate_field_keys", stdout=io.StringIO())
    before = raw_row(secret_connection.pk)

    out = io.StringIO()
    call_command("rotate_field_keys", stdout=out)

    assert "Re-encrypted 0 value(s)" in out.getvalue()
    assert raw_row(secret_connection.pk) == before


def test_rotate_field_keys_reports_values_no_key_can_read_without_showing_them(secret_connection, settings):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(CommandError) as excinfo:
        call_command("rotate_field_keys", stdout=io.StringIO())

    message = str(excinfo.value)
    assert f"Connection.client_secret pk={secret_connection.pk}" in message
    assert "gAAAAA" not in message and SECRET not in message
