"""Out-of-process harness: a fresh database and the environment for `manage.py` subprocesses.

`ProcessWorld(tmp_path)` gives every process of one test the same database: a SQLite file in
tmp_path, or, when the suite runs on PostgreSQL (DATABASE_URL in the environment), a database of
its own on that server, dropped afterwards. Processes use `tests.reliability.proc_settings`
(the production settings plus test knobs) and never read a developer's .env.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet

from tests.production.procs import BASE_DIR, MANAGE, PYTHON, clean_env, free_port, is_postgres  # noqa: F401


class ProcessWorld:
    def __init__(self, tmp_path: Path, **env_overrides: str) -> None:
        self.tmp_path = tmp_path
        self._pg_admin_url: str | None = None
        self._pg_name: str | None = None
        if is_postgres():
            self.database_url = self._create_pg_database()
        else:
            self.database_url = f"sqlite:///{tmp_path / 'world.sqlite3'}"
        self.field_key = Fernet.generate_key().decode()
        self.secret_key = secrets.token_urlsafe(50)
        values = {
            "PRODUCTION": "true",
            "DEBUG": "false",
            "SECRET_KEY": self.secret_key,
            "FIELD_ENCRYPTION_KEYS": self.field_key,
            "DATABASE_URL": self.database_url,
            "DJANGO_SETTINGS_MODULE": "tests.reliability.proc_settings",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_HTTPS": "false",
            "HALOPSA_ALLOW_PRIVATE_NETWORKS": "true",
            "HALOPSA_RATE_LIMIT": "0",  # the sandbox's faults are the only throttling in these tests
            "LOG_LEVEL": "WARNING",
            "Q_CLUSTER_NAME": f"rel{secrets.token_hex(3)}",
        }
        if os.environ.get("REDIS_URL"):
            values["REDIS_URL"] = os.environ["REDIS_URL"]
        values.update(env_overrides)
        self.env = clean_env(tmp_path, **values)

    # -- database ---------------------------------------------------------------------------

    def _create_pg_database(self) -> str:
        import psycopg

        url = urlsplit(os.environ["DATABASE_URL"])
        self._pg_name = f"rel_{secrets.token_hex(6)}"
        self._pg_admin_url = urlunsplit((url.scheme, url.netloc, "/postgres", "", ""))
        with psycopg.connect(self._pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self._pg_name}"')
        return urlunsplit((url.scheme, url.netloc, f"/{self._pg_name}", "", ""))

    def close(self) -> None:
        if self._pg_name and self._pg_admin_url:
            import psycopg

            with psycopg.connect(self._pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')

    # -- processes --------------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 300, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [PYTHON, MANAGE, *args],
            env={**self.env, **env},
            cwd=str(BASE_DIR),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, (
                f"manage.py {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def spawn(self, args: list[str], log_name: str, **env: str) -> subprocess.Popen:
        log = (self.tmp_path / log_name).open("ab")
        return subprocess.Popen(
            args,
            env={**self.env, **env},
            cwd=str(BASE_DIR),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def spawn_manage(self, *args: str, log_name: str, **env: str) -> subprocess.Popen:
        return self.spawn([PYTHON, MANAGE, *args], log_name, **env)

    def probe(self, command: str, connection_id: int) -> dict[str, Any]:
        result = subprocess.run(
            [PYTHON, "-m", "tests.reliability.probe", command, str(connection_id)],
            env=self.env,
            cwd=str(BASE_DIR),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    def setup_database(self) -> None:
        self.manage("migrate", "--noinput")
        if not self.env.get("REDIS_URL"):
            self.manage("createcachetable")

    def add_connection(
        self, url: str, client_id: str, client_secret: str, *, partner: str = "Chaos MSP", name: str = "Main HaloPSA"
    ) -> int:
        result = self.manage(
            "add_connection",
            "--partner",
            partner,
            "--name",
            name,
            "--url",
            url,
            "--client-id",
            client_id,
            "--client-secret",
            client_secret,
        )
        return int(result.stdout.strip().splitlines()[-1])

    def export(self, connection_id: int) -> dict[str, Any]:
        return json.loads(self.manage("export_connection", str(connection_id)).stdout)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop one process we started (by its own pid), escalating to SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def sigkill_when(worker: subprocess.Popen, predicate, *, log: Path, timeout: float, message: str) -> None:
    """SIGKILL `worker` as soon as `predicate()` holds; it must still be running then (else its log
    is the failure message). The worker is gone when this returns, whatever happened."""
    try:
        wait_until(lambda: predicate() or worker.poll() is not None, timeout=timeout, message=message)
        assert worker.poll() is None, log.read_text()
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        stop_process(worker, signal.SIGKILL)


def wait_until(predicate, *, timeout: float, interval: float = 0.1, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)
