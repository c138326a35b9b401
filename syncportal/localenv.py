"""Create the git-ignored `.env` a local user needs, once.

A fresh checkout has no secrets. Rather than shipping a default SECRET_KEY (which would end up in
production sooner or later), the first local start writes a random one, together with a field
encryption key and the switches that make plain-http local use work. Production sets
`PRODUCTION=true` and must provide every secret itself.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.fernet import Fernet

LOCAL_ENV_TEMPLATE = """\
# Written once by syncportal for local use; never commit this file.
# Production provides these values through its own environment (see .env.example).
SECRET_KEY={secret_key}
FIELD_ENCRYPTION_KEYS={field_key}
# Local use is plain http on 127.0.0.1: no https redirect, no secure-only cookies.
SECURE_HTTPS=false
# The built-in HaloPSA sandbox runs on 127.0.0.1 over http.
HALOPSA_ALLOW_PRIVATE_NETWORKS=true
"""


def ensure_local_env(path: Path) -> bool:
    """Write a local `.env` with fresh secrets if none exists. Returns True when one was written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    content = LOCAL_ENV_TEMPLATE.format(
        secret_key=secrets.token_urlsafe(50),
        field_key=Fernet.generate_key().decode(),
    )
    # The file holds secrets: readable by its owner only.
    path.touch(mode=0o600)
    path.write_text(content)
    return True
