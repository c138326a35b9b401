"""Benchmark settings: production settings with a throw-away database, media and cache.

Every value comes from the environment the runner (benchmarks/run.py) sets: BENCH_DB (SQLite
file, or DATABASE_URL for PostgreSQL), BENCH_MEDIA, BENCH_CACHE ("locmem" for one process,
"db" when a web server and workers share the request budget).
"""

import os
from pathlib import Path

os.environ.setdefault("SECRET_KEY", "bench-secret-key-not-for-production-" + "x" * 20)
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "SuMCpLIgGZXqCXPzgv95lF0pY0NyFe8vqn4HFGgXmhc=")
os.environ.setdefault("SYNCPORTAL_ENV_FILE", "/nonexistent/syncportal-bench.env")
os.environ.setdefault("PRODUCTION", "true")  # never write a local .env
if os.environ.get("BENCH_DB") and not os.environ.get("DATABASE_URL"):
    os.environ["DATABASE_URL"] = "sqlite:///" + os.environ["BENCH_DB"]

from syncportal.settings import *  # noqa: F403
from syncportal.settings import STORAGES

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
SECURE_HTTPS = SECURE_SSL_REDIRECT = SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
HALOPSA_ALLOW_PRIVATE_NETWORKS = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
MEDIA_ROOT = Path(os.environ.get("BENCH_MEDIA", "/tmp/syncportal-bench-media"))
if os.environ.get("BENCH_CACHE", "locmem") == "locmem":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
HALOPSA_PDF_BATCH = int(os.environ.get("BENCH_PDF_BATCH", "50"))
HALOPSA_RATE_LIMIT = int(os.environ.get("BENCH_RATE_LIMIT", "0"))  # 0: no client-side budget
HALOPSA_RATE_WINDOW = int(os.environ.get("BENCH_RATE_WINDOW", "300"))
HALOPSA_BUDGET_MAX_WAIT = float(os.environ.get("BENCH_BUDGET_MAX_WAIT", "30"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}

if os.environ.get(
    "BENCH_PDF_BUDGET_SHARE"
):  # the PDFs' share of the request budget (else the product default, HALOPSA_PDF_BUDGET_SHARE)
    HALOPSA_PDF_BUDGET_SHARE = float(os.environ["BENCH_PDF_BUDGET_SHARE"])
