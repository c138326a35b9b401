"""Encryption at rest for partner secrets (HaloPSA client secrets, webhook credentials).

MultiFernet over `settings.FIELD_ENCRYPTION_KEYS` (newest first): new values are encrypted with the
newest key, older keys still decrypt, and `rotate_field_keys` re-encrypts stored values. A value
that no key can decrypt raises instead of being passed on as if it were the secret.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models

# Every Fernet token starts with version byte 0x80 and a timestamp: base64 "gAAAAA".
_FERNET_PREFIX = "gAAAAA"


class SecretDecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key."""


@lru_cache(maxsize=4)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty.")
    return MultiFernet([Fernet(key.encode()) for key in keys])


def current_fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return current_fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return current_fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretDecryptionError(
            "A stored secret could not be decrypted: FIELD_ENCRYPTION_KEYS does not hold the key it was written with."
        ) from exc


def rotate(token: str) -> str:
    return current_fernet().rotate(token.encode()).decode()


class EncryptedTextField(models.TextField):
    """A text field stored as a Fernet token; Python code only ever sees the plaintext."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(value)

    def value_to_string(self, obj):
        # Serialisers (dumpdata) write the ciphertext, never the secret; to_python reads it back.
        value = self.value_from_object(obj)
        return encrypt(value) if value else value

    def to_python(self, value):
        # A Fernet token (loaddata of a dump) is read back to its plaintext; one no key can
        # decrypt is refused rather than stored as if it were the secret.
        if isinstance(value, str) and value.startswith(_FERNET_PREFIX):
            try:
                return decrypt(value)
            except SecretDecryptionError as exc:
                raise ValidationError(str(exc)) from None
        return super().to_python(value)
