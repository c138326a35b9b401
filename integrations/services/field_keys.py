"""Re-encrypt stored partner secrets with the newest FIELD_ENCRYPTION_KEYS key.

Rotation procedure (docs/deploy.md): put the new key first in FIELD_ENCRYPTION_KEYS on every
node, run `manage.py rotate_field_keys`, then drop the old key. Tokens are rotated as stored
(MultiFernet.rotate), so plaintext never leaves this function, and each row is updated only if
it still holds the token that was read: a secret a person changed meanwhile is never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.conf import settings
from django.db import connection, models, transaction

from integrations.crypto import EncryptedTextField, rotate


@dataclass
class RotationResult:
    rotated: int = 0
    skipped_changed: int = 0
    # "<model>.<field> pk=<pk>" for values no configured key can decrypt (never the value itself).
    undecryptable: list[str] = field(default_factory=list)


def encrypted_fields() -> list[tuple[type[models.Model], EncryptedTextField]]:
    return [
        (model, model_field)
        for model in apps.get_models()
        for model_field in model._meta.concrete_fields
        if isinstance(model_field, EncryptedTextField)
    ]


def field_keys_rotate(*, batch_size: int = 500) -> RotationResult:
    """Re-encrypt every EncryptedTextField value with the newest key; report what could not be."""
    result = RotationResult()
    newest = Fernet(settings.FIELD_ENCRYPTION_KEYS[0].encode())
    quote = connection.ops.quote_name
    for model, model_field in encrypted_fields():
        # Concrete fields always have a column (the stubs allow None).
        table, column = quote(model._meta.db_table), quote(cast(str, model_field.column))
        pk_column = quote(cast(str, model._meta.pk.column))
        # Raw SQL: the ORM would hand back plaintext, and rotation works on the stored tokens.
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {pk_column}, {column} FROM {table} WHERE {column} <> '' ORDER BY {pk_column}")
            rows = cursor.fetchall()
        for start in range(0, len(rows), batch_size):
            with transaction.atomic(), connection.cursor() as cursor:
                for pk, token in rows[start : start + batch_size]:
                    if _already_newest(newest, token):
                        continue
                    try:
                        new_token = rotate(token)
                    except InvalidToken:  # no configured key, or not a token at all
                        result.undecryptable.append(f"{model.__name__}.{model_field.name} pk={pk}")
                        continue
                    cursor.execute(
                        f"UPDATE {table} SET {column} = %s WHERE {pk_column} = %s AND {column} = %s",
                        [new_token, pk, token],
                    )
                    if cursor.rowcount == 1:
                        result.rotated += 1
                    else:
                        result.skipped_changed += 1
    return result


def _already_newest(newest: Fernet, token: str) -> bool:
    try:
        newest.decrypt(token.encode())
        return True
    except InvalidToken:
        return False
