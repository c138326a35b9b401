"""Settings load from the environment: with and without `.env`, and production refuses to guess.

Each case runs in a fresh Python process, because settings are read once at import.
"""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.fernet import Fernet

from tests.production.procs import MANAGE, PYTHON, clean_env, production_env, run

SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "SECRET_KEY": s.SECRET_KEY,
    "FIELD_ENCRYPTION_KEYS": s.FIELD_ENCRYPTION_KEYS,
    "DEBUG": s.DEBUG,
    "ALLOWED_HOSTS": s.ALLOWED_HOSTS,
    "DB_ENGINE": s.DATABASES["default"]["ENGINE"],
    "DB_NAME": str(s.DATABASES["default"]["NAME"]),
    "SECURE_SSL_REDIRECT": s.SECURE_SSL_REDIRECT,
    "SESSION_COOKIE_SECURE": s.SESSION_COOKIE_SECURE,
    "CSRF_COOKIE_SECURE": s.CSRF_COOKIE_SECURE,
    "SECURE_HSTS_SECONDS": s.SECURE_HSTS_SECONDS,
    "SECURE_PROXY_SSL_HEADER": getattr(s, "SECURE_PROXY_SSL_HEADER", None),
    "HALOPSA_ALLOW_PRIVATE_NETWORKS": s.HALOPSA_ALLOW_PRIVATE_NETWORKS,
    "STATICFILES_BACKEND": s.STORAGES["staticfiles"]["BACKEND"],
    "Q_CLUSTER": s.Q_CLUSTER,
    "CACHE_BACKEND": s.CACHES["default"]["BACKEND"],
    "CACHE_LOCATION": s.CACHES["default"].get("LOCATION"),
    "LOG_STREAM": s.LOGGING["handlers"]["console"]["stream"],
}))
"""


def load_settings(env: dict[str, str]) -> dict:
    result = run([PYTHON, "-c", SHOW_SETTINGS], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_env_file(path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def test_first_local_start_without_env_file_writes_one_with_fresh_secrets(tmp_path):
    env = clean_env(tmp_path)
    env_file = tmp_path / "syncportal.env"
    assert not env_file.exists()

    loaded = load_settings(env)

    assert env_file.exists()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    written = read_env_file(env_file)
    assert loaded["SECRET_KEY"] == written["SECRET_KEY"]
    assert len(loaded["SECRET_KEY"]) >= 50
    assert loaded["FIELD_ENCRYPTION_KEYS"] == [written["FIELD_ENCRYPTION_KEYS"]]
    Fernet(written["FIELD_ENCRYPTION_KEYS"].encode())  # a valid Fernet key
    # Local defaults: DEBUG off, SQLite in the var dir, plain http works.
    assert loaded["DEBUG"] is False
    assert loaded["DB_ENGINE"] == "django.db.backends.sqlite3"
    assert loaded["DB_NAME"] == str(tmp_path / "var" / "db.sqlite3")
    assert loaded["SECURE_SSL_REDIRECT"] is False
    assert loaded["Q_CLUSTER"]["orm"] == "default" and "redis" not in loaded["Q_CLUSTER"]


def test_second_local_start_reuses_the_generated_secret_key(tmp_path):
    env = clean_env(tmp_path)
    first = load_settings(env)
    content = (tmp_path / "syncportal.env").read_text()

    second = load_settings(env)

    assert second["SECRET_KEY"] == first["SECRET_KEY"]
    assert second["FIELD_ENCRYPTION_KEYS"] == first["FIELD_ENCRYPTION_KEYS"]
    assert (tmp_path / "syncportal.env").read_text() == content


def test_an_existing_env_file_is_read_and_real_environment_variables_win(tmp_path):
    key = Fernet.generate_key().decode()
    (tmp_path / "syncportal.env").write_text(
        f"SECRET_KEY=from-the-file-{'k' * 50}\nFIELD_ENCRYPTION_KEYS={key}\nDEBUG=true\n"
        "ALLOWED_HOSTS=file.example.com\n"
    )
    loaded = load_settings(clean_env(tmp_path, ALLOWED_HOSTS="env.example.com"))

    assert loaded["SECRET_KEY"] == f"from-the-file-{'k' * 50}"
    assert loaded["FIELD_ENCRYPTION_KEYS"] == [key]
    assert loaded["DEBUG"] is True
    assert loaded["ALLOWED_HOSTS"] == ["env.example.com"]


def test_production_without_secret_key_refuses_to_start_with_a_clear_message(tmp_path):
    env = production_env(tmp_path)
    del env["SECRET_KEY"]

    result = run([PYTHON, "-c", SHOW_SETTINGS], env)

    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
    assert "PRODUCTION=true" in result.stderr
    # Production never writes a local .env with a made-up key.
    assert not (tmp_path / "syncportal.env").exists()


def test_production_without_field_encryption_keys_refuses_to_start(tmp_path):
    env = production_env(tmp_path)
    del env["FIELD_ENCRYPTION_KEYS"]

    result = run([PYTHON, "-c", SHOW_SETTINGS], env)

    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS is not set" in result.stderr


def test_production_settings_switch_on_https_protection_and_hashed_static_files(tmp_path):
    loaded = load_settings(production_env(tmp_path))

    assert loaded["DEBUG"] is False
    assert loaded["SECURE_SSL_REDIRECT"] is True
    assert loaded["SESSION_COOKIE_SECURE"] is True
    assert loaded["CSRF_COOKIE_SECURE"] is True
    assert loaded["SECURE_HSTS_SECONDS"] >= 31536000
    assert loaded["HALOPSA_ALLOW_PRIVATE_NETWORKS"] is False
    assert loaded["STATICFILES_BACKEND"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    assert loaded["LOG_STREAM"] == "ext://sys.stderr"
    assert loaded["SECURE_PROXY_SSL_HEADER"] is None


def test_behind_tls_proxy_trusts_the_forwarded_proto_header(tmp_path):
    loaded = load_settings(production_env(tmp_path, BEHIND_TLS_PROXY="true"))

    assert loaded["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_check_deploy_passes_with_production_values(tmp_path):
    result = run([PYTHON, MANAGE, "check", "--deploy", "--fail-level", "WARNING"], production_env(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"HALOPSA_ALLOW_PRIVATE_NETWORKS": "true"}, "syncportal.E001"),
        ({"SECURE_HTTPS": "false"}, "security.W008"),
        ({"SECRET_KEY": "short"}, "security.W009"),
    ],
)
def test_check_deploy_fails_on_unsafe_production_values(tmp_path, override, expected):
    result = run([PYTHON, MANAGE, "check", "--deploy", "--fail-level", "WARNING"], production_env(tmp_path, **override))

    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


def test_q_cluster_never_redelivers_a_running_task_and_gives_up_eventually(tmp_path):
    for env in (production_env(tmp_path), clean_env(tmp_path)):
        q_cluster = load_settings(env)["Q_CLUSTER"]
        # A task still running when `retry` passes would be delivered a second time.
        assert q_cluster["timeout"] < q_cluster["retry"]
        assert q_cluster["max_attempts"] > 0
        assert q_cluster["catch_up"] is False


def test_redis_url_switches_broker_and_cache_to_redis(tmp_path):
    url = "redis://127.0.0.1:6399/3"
    loaded = load_settings(production_env(tmp_path, REDIS_URL=url))

    assert loaded["Q_CLUSTER"]["redis"] == url
    assert "orm" not in loaded["Q_CLUSTER"]
    assert loaded["CACHE_BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert loaded["CACHE_LOCATION"] == url


def test_database_url_selects_postgresql(tmp_path):
    loaded = load_settings(production_env(tmp_path, DATABASE_URL="postgres://portal:pw@db.internal:5432/syncportal"))

    assert loaded["DB_ENGINE"] == "django.db.backends.postgresql"
    assert loaded["DB_NAME"] == "syncportal"


def test_local_sqlite_database_runs_in_wal_mode_with_full_sync(tmp_path):
    """WAL keeps pages readable while a sync writes; synchronous stays FULL (2) so a committed
    payment survives a power cut."""
    script = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        "    print(c.execute('PRAGMA journal_mode').fetchone()[0], c.execute('PRAGMA synchronous').fetchone()[0])\n"
    )
    result = run([PYTHON, "-c", script], clean_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["wal", "2"]
    assert (tmp_path / "var" / "db.sqlite3").exists()
