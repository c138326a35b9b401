"""Settings for syncportal, read from the environment (django-environ).

Every variable is documented in `.env.example`. With nothing configured, a local user gets a
SQLite database under `var/`, a generated `.env` holding a random SECRET_KEY, and DEBUG off.
Production (`PRODUCTION=true`) refuses to start without its secrets.
"""
from __future__ import annotations

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from syncportal.client_ip import trusted_networks
from syncportal.localenv import ensure_local_env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SYNCPORTAL_VAR_DIR", BASE_DIR / "var"))
ENV_FILE = Path(os.environ.get("SYNCPORTAL_ENV_FILE", BASE_DIR / ".env"))

env = environ.Env()
PRODUCTION = env.bool("PRODUCTION", default=False)
if not PRODUCTION:
    ensure_local_env(ENV_FILE)
if ENV_FILE.exists():
    # Real environment variables win over the file.
    env.read_env(ENV_FILE, overwrite=False)

try:
    SECRET_KEY = env.str("SECRET_KEY")
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. Production (PRODUCTION=true) must provide SECRET_KEY in its environment."
    ) from exc
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "whitenoise.runserver_nostatic",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "django_q",
    "integrations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # django-axes must come last: it turns repeated failed sign-ins into a lockout.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "syncportal.urls"
WSGI_APPLICATION = "syncportal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "integrations.context_processors.portal",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions and a busy timeout turn "database is locked" into a short wait
    # when the web server and the qcluster write at the same time.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 20})
    # WAL: pages stay readable while a sync writes, and a commit appends to one log instead of
    # creating and deleting a rollback journal. synchronous stays FULL: a committed payment
    # survives a power cut. Checkpoints every 10,000 pages (40 MB) rather than 1,000: a full sync
    # rewrites the same index pages batch after batch, and fewer, larger checkpoints copy each of
    # them once (figures: benchmarks/README.md, "History"). The file needs a local disk (WAL's
    # shared memory does not work over NFS).
    DATABASES["default"]["OPTIONS"].setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=10000;")
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "integrations.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Sign-in throttling: lock a username+IP pair after repeated failures, for a while (not forever).
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.5)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# The "ip_address" above is the client's, not the load balancer's: addresses (or networks) of the
# proxies in front of the web nodes whose X-Forwarded-For is believed (syncportal/client_ip.py).
# Empty: every request is keyed on the address it came from (no proxy, or headers not trusted).
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
AXES_CLIENT_IP_CALLABLE = "syncportal.client_ip.client_ip"
trusted_networks(tuple(TRUSTED_PROXIES))  # a typo stops the start, not the first sign-in
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and media files ----------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Security ------------------------------------------------------------------------------
# SECURE_HTTPS defaults to "not DEBUG"; the generated local .env turns it off for plain-http use.
SECURE_HTTPS = env.bool("SECURE_HTTPS", default=not DEBUG)
SESSION_COOKIE_SECURE = SECURE_HTTPS
CSRF_COOKIE_SECURE = SECURE_HTTPS
SECURE_SSL_REDIRECT = SECURE_HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if SECURE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HTTPS
SECURE_HSTS_PRELOAD = SECURE_HTTPS
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The load-balancer health check speaks plain http to the node.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=60 * 60 * 12)
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
DEFAULT_EXCEPTION_REPORTER_FILTER = "syncportal.reporting.SecretHidingReporterFilter"

# Partner HaloPSA secrets are encrypted with these keys (MultiFernet: newest first, older ones
# still decrypt, `manage.py rotate_field_keys` re-encrypts everything with the newest).
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[])
if not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is not set (comma-separated Fernet keys, newest first).")

# --- HaloPSA ------------------------------------------------------------------------------
# Plain http and loopback/private addresses are refused for partner-supplied HaloPSA URLs unless
# this is on (local sandbox and tests only; the deploy check refuses it in production).
HALOPSA_ALLOW_PRIVATE_NETWORKS = env.bool("HALOPSA_ALLOW_PRIVATE_NETWORKS", default=False)
HALOPSA_CONNECT_TIMEOUT = env.float("HALOPSA_CONNECT_TIMEOUT", default=5.0)
HALOPSA_READ_TIMEOUT = env.float("HALOPSA_READ_TIMEOUT", default=60.0)
# Hosted HaloPSA allows about 300 requests per rolling 5 minutes (docs/halopsa-facts.md §8; reports vary).
HALOPSA_RATE_LIMIT = env.int("HALOPSA_RATE_LIMIT", default=300)
HALOPSA_RATE_WINDOW = env.int("HALOPSA_RATE_WINDOW", default=300)
HALOPSA_MAX_RETRIES = env.int("HALOPSA_MAX_RETRIES", default=5)
# The partner types the HaloPSA URL, so the server may be slow or hostile on purpose
# (docs/reliability.md, "Hostile or broken HaloPSA"). One whole request (connect, answer and body
# together: a read timeout never trips on a body trickling a byte a second) may take this long;
# HaloPSA's slowest healthy pages take tens of seconds.
HALOPSA_REQUEST_DEADLINE = env.float("HALOPSA_REQUEST_DEADLINE", default=120.0)
# Largest answer read, streamed and refused beyond this (never read whole first): a page of 100
# invoices with their lines is a few MB, and parsed JSON takes several times its size in memory.
HALOPSA_MAX_RESPONSE_BYTES = env.int("HALOPSA_MAX_RESPONSE_BYTES", default=64 * 1024 * 1024)
# A list may run this many pages (or a tenth, if more) past what its first record_count said
# before its read stops with an error: records added during a long read fit, an endless list not.
HALOPSA_LIST_EXTRA_PAGES = env.int("HALOPSA_LIST_EXTRA_PAGES", default=10)
HALOPSA_WEBHOOK_MAX_BODY = env.int("HALOPSA_WEBHOOK_MAX_BODY", default=256 * 1024)
# Inbound webhooks (docs/webhooks.md). A connection authenticates them one way: Basic, or an HMAC
# signature when it has an HMAC secret. The signature travels in this header: base64 HMAC-SHA256
# of the raw body, keyed by the secret; "Token" as DJPSA registers HaloPSA's authentication_type 3
# (halopsa-facts §6).
HALOPSA_WEBHOOK_HMAC_HEADER = env.str("HALOPSA_WEBHOOK_HMAC_HEADER", default="Token")
# HaloPSA's authentication_type number for Basic: unconfirmed (halopsa-facts §11.3 knows only
# 0 = none and 3 = HMAC), so the webhook registered through the API uses this one.
HALOPSA_WEBHOOK_BASIC_AUTH_TYPE = env.int("HALOPSA_WEBHOOK_BASIC_AUTH_TYPE", default=1)


def _webhook_eventnos(text: str) -> dict[str, int]:
    """"invoice updated=123, client created=45" -> {"invoice updated": 123, "client created": 45}."""
    numbers: dict[str, int] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, separator, number = pair.rpartition("=")
        if not separator or not name.strip() or not number.strip().isdigit():
            raise ImproperlyConfigured(
                f"HALOPSA_WEBHOOK_EVENTNOS: {pair!r} is not 'event name=number' (e.g. 'invoice updated=123')."
            )
        numbers[" ".join(name.lower().split())] = int(number)
    return numbers


# HaloPSA's eventno of each event the portal subscribes to. Unknown for invoice, client, user and
# payment events (halopsa-facts §11.4), so empty by default: registering through the API then
# attaches no events and the connection page lists the ones to tick by hand in HaloPSA.
HALOPSA_WEBHOOK_EVENTNOS = _webhook_eventnos(env.str("HALOPSA_WEBHOOK_EVENTNOS", default=""))
# After a payment POST whose outcome is unknown (timeout, dropped connection, 5xx), wait this long
# before looking it up and posting again, so HaloPSA has surely finished committing it.
HALOPSA_PUSH_SETTLE_SECONDS = env.int("HALOPSA_PUSH_SETTLE_SECONDS", default=300)
# HaloPSA's timestamps carry no offset and may be the instance's local time (halopsa-facts §2): the
# push measures the instance's clock from HaloPSA's stamp on our writes, again after this many
# hours (a DST change). Until one is measured, the status conflict rule keeps the status set here
# ("keep_local"), or compares as if HaloPSA's clock were UTC ("assume_utc"); docs/push-rules.md.
HALOPSA_CLOCK_OFFSET_REFRESH_HOURS = env.float("HALOPSA_CLOCK_OFFSET_REFRESH_HOURS", default=24.0)
HALOPSA_UNMEASURED_CLOCK = env.str("HALOPSA_UNMEASURED_CLOCK", default="keep_local")
if HALOPSA_UNMEASURED_CLOCK not in ("keep_local", "assume_utc"):
    raise ImproperlyConfigured(f"HALOPSA_UNMEASURED_CLOCK must be keep_local or assume_utc, not {HALOPSA_UNMEASURED_CLOCK!r}.")
# The shape probe (integrations/halopsa/probe.py): invoices sampled for their paymentstatus codes
# and the newest-first check, and the user fields taken as the invoice-access flag when
# canaccessinvoices is nowhere (how HaloPSA flags a billing contact is unverified, halopsa-facts §11.8).
HALOPSA_PROBE_INVOICE_SAMPLE = env.int("HALOPSA_PROBE_INVOICE_SAMPLE", default=50)
HALOPSA_BILLING_FLAG_ALTERNATIVES = env.list(
    "HALOPSA_BILLING_FLAG_ALTERNATIVES", default=["sendaccountsemails", "invoice_access_level"]
)
# Invoice PDFs cost one request each and come last in a sync: at most this many per run, at most
# this share of the request budget (the rest stays free for payment pushes and webhook fetches),
# and at most this long per run (a backlog continues in a follow-up run).
HALOPSA_PDF_BATCH = env.int("HALOPSA_PDF_BATCH", default=2000)
HALOPSA_PDF_BUDGET_SHARE = env.float("HALOPSA_PDF_BUDGET_SHARE", default=0.9)
HALOPSA_PDF_PHASE_SECONDS = env.int("HALOPSA_PDF_PHASE_SECONDS", default=1200)
# Invoices a sync writes per transaction (10 HaloPSA pages): fewer commits, while SQLite's write
# lock is still held only briefly each time (benchmarks/README.md, "History").
HALOPSA_SYNC_WRITE_BATCH = env.int("HALOPSA_SYNC_WRITE_BATCH", default=1000)
# Incremental reads start this long before each cursor (HaloPSA's own change times, see
# docs/sync-rules.md); an instance on local time with daylight saving may want 4200 (70 min).
HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS = env.int("HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS", default=600)
# A cursor never goes further than this ahead of our clock (one record stamped in the far future
# must not stop incremental reads; capping only makes a read longer).
HALOPSA_SYNC_CURSOR_MAX_AHEAD_HOURS = env.int("HALOPSA_SYNC_CURSOR_MAX_AHEAD_HOURS", default=24)
# Where users' list rows lack the billing flag (canaccessinvoices, halopsa-facts §4.2): GET /Users/{id}
# calls one run may make, for users whose list row changed; the rest wait for the next run.
HALOPSA_SYNC_USER_DETAILS_PER_RUN = env.int("HALOPSA_SYNC_USER_DETAILS_PER_RUN", default=250)
# One sync run stops cleanly after this long (what it read is saved; the next run reads the rest),
# and never later than 90 % of Q_TIMEOUT, so a slow HaloPSA never gets the worker killed.
HALOPSA_SYNC_RUN_SECONDS = env.int("HALOPSA_SYNC_RUN_SECONDS", default=1500)
# Records a full read did not list are flagged deleted only once HaloPSA confirms it (a list paged
# while records are deleted skips live rows): up to this many are read one by one (a request
# each), more are checked against one id-only list.
HALOPSA_SYNC_DELETION_CHECKS = env.int("HALOPSA_SYNC_DELETION_CHECKS", default=20)

# --- Background jobs (django-q2) --------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
Q_CLUSTER = {
    "name": env.str("Q_CLUSTER_NAME", default="syncportal"),
    "workers": env.int("Q_WORKERS", default=2),
    # timeout must stay below retry, or a long sync is redelivered while still running.
    "timeout": env.int("Q_TIMEOUT", default=1800),
    "retry": env.int("Q_RETRY", default=2100),
    "max_attempts": 2,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    "label": "Sync jobs",
    "poll": 0.2,
    "sync": env.bool("Q_SYNC", default=False),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "syncportal_cache"}
    )
}

# --- Email ---------------------------------------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="syncportal@localhost")
if env.str("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))

# --- Logging -------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # stderr: stdout carries only a command's output (`export_connection ID > file.json`).
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
