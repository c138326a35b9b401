"""Helpers for tests that start real processes (settings loading, manage.py, gunicorn, lock races)."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import requests
from cryptography.fernet import Fernet

BASE_DIR = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MANAGE = str(BASE_DIR / "manage.py")

# Only what a process needs to find Python and its files; every syncportal setting is given
# explicitly by each test, so a developer's shell or .env never changes the outcome.
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def clean_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in _PASSTHROUGH if key in os.environ}
    env.update(
        {
            "HOME": str(tmp_path),
            "PYTHONPATH": str(BASE_DIR),
            "DJANGO_SETTINGS_MODULE": "syncportal.settings",
            # A .env that does not exist yet, and a var dir in tmp: nothing lands in the checkout.
            "SYNCPORTAL_ENV_FILE": str(tmp_path / "syncportal.env"),
            "SYNCPORTAL_VAR_DIR": str(tmp_path / "var"),
        }
    )
    env.update(overrides)
    return env


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """What a production node sets: PRODUCTION, strong secrets, real host names, no private networks."""
    values = {
        "PRODUCTION": "true",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "portal.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://portal.example.com",
        "HALOPSA_ALLOW_PRIVATE_NETWORKS": "false",
    }
    values.update(overrides)
    return clean_env(tmp_path, **values)


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=str(BASE_DIR), capture_output=True, text=True, timeout=timeout)


def _die_with_parent() -> None:
    # Linux: the child gets SIGINT if the test process dies (killed by a timeout, Ctrl-C), so no
    # gunicorn or qcluster outlives the test run. SIGINT because qcluster can hang on SIGTERM.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def popen(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """Start a long-running child of the test (server, worker) that cannot outlive it."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.Popen(args, env=env, cwd=str(BASE_DIR), preexec_fn=preexec, **kwargs)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def gunicorn_serving(
    args: list[str], env: dict[str, str], log_path: Path, port: int, start_timeout: float = 60
) -> Iterator[subprocess.Popen]:
    """gunicorn (`-m gunicorn` plus args) logging to log_path, once /healthz answers on port;
    stopped with SIGTERM, as a platform stops the web process, when the block ends."""
    with log_path.open("w") as log:
        server = popen([PYTHON, "-m", "gunicorn", *args], env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                assert server.poll() is None, log_path.read_text()
                try:
                    requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, "gunicorn did not start listening"
                    time.sleep(0.1)
            yield server
        finally:
            stop(server, signal.SIGTERM, timeout=30)


def private_tmp(prefix: str) -> Iterator[Path]:
    """A temp dir of our own: pytest prunes old basetemp dirs, also those of a concurrent run's live servers."""
    path = Path(tempfile.mkdtemp(prefix=f"syncportal-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for(db_settings: dict) -> str:
    """A DATABASE_URL pointing at the database the running test uses (the test database)."""
    engine = db_settings["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{db_settings['NAME']}"
    if engine.endswith("postgresql"):
        user = quote(db_settings.get("USER") or "", safe="")
        password = quote(db_settings.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = db_settings.get("HOST") or "127.0.0.1"
        port = db_settings.get("PORT") or "5432"
        return f"postgres://{auth}{host}:{port}/{db_settings['NAME']}"
    raise ValueError(f"no URL form for {engine}")


def is_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
