"""Test settings: the production settings with what tests need changed, and nothing else."""

import os

# Fixed, test-only keys so the suite never reads a developer's .env secrets.
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-" + "x" * 20)
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "SuMCpLIgGZXqCXPzgv95lF0pY0NyFe8vqn4HFGgXmhc=")
os.environ.setdefault("SYNCPORTAL_ENV_FILE", "/nonexistent/syncportal-test.env")
os.environ.setdefault("PRODUCTION", "true")  # never write a local .env from tests

from syncportal.settings import *  # noqa: F403
from syncportal.settings import BASE_DIR, Q_CLUSTER, STORAGES

# Manifest storage needs collectstatic; tests use the finders instead.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
WHITENOISE_AUTOREFRESH = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# django-q2 reads sync mode once at import time, so it is set here and not per test.
Q_CLUSTER = {**Q_CLUSTER, "sync": True}
SECURE_HTTPS = False
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
HALOPSA_ALLOW_PRIVATE_NETWORKS = True
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
MEDIA_ROOT = BASE_DIR / "var" / "test-media"
# Tests do not wait on real backoff delays; the retry logic itself still runs.
HALOPSA_RETRY_BASE_DELAY = 0.01
