"""The production run path boots: migrate, collectstatic, gunicorn with gunicorn.conf.py, whitenoise, /healthz.

Runs the processes a deployment runs, with production settings (PRODUCTION=true, https
protection on, behind a TLS-terminating load balancer) against a fresh SQLite file.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import requests

from tests.production.procs import (
    BASE_DIR,
    MANAGE,
    PYTHON,
    free_port,
    gunicorn_serving,
    private_tmp,
    production_env,
    run,
)

PROXY_HTTPS = {"X-Forwarded-Proto": "https", "Host": "portal.example.com"}


@pytest.fixture(scope="module")
def served():
    yield from _serve()


def _serve():
    for tmp_path in private_tmp("gunicorn"):
        port = free_port()
        env = production_env(
            tmp_path,
            DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            ALLOWED_HOSTS="portal.example.com,127.0.0.1",
            BEHIND_TLS_PROXY="true",
            HOST="127.0.0.1",
            PORT=str(port),
            WEB_CONCURRENCY="2",
        )
        # The release and build steps of docs/deploy.md, then the web process of the Procfile.
        for command in (["migrate", "--noinput"], ["createcachetable"], ["collectstatic", "--noinput"]):
            result = run([PYTHON, MANAGE, *command], env, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
        log_path = tmp_path / "gunicorn.log"
        with gunicorn_serving(["syncportal.asgi", "--config", "gunicorn.conf.py"], env, log_path, port) as server:
            yield {"base": f"http://127.0.0.1:{port}", "server": server, "log": log_path}


def test_healthz_answers_over_plain_http_for_the_load_balancer(served):
    response = requests.get(f"{served['base']}/healthz", allow_redirects=False, timeout=10)

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_plain_http_pages_are_redirected_to_https(served):
    response = requests.get(
        f"{served['base']}/login/", headers={"Host": "portal.example.com"}, allow_redirects=False, timeout=10
    )

    assert response.status_code == 301
    assert response.headers["Location"] == "https://portal.example.com/login/"


def test_pages_behind_the_tls_proxy_are_served_with_secure_cookies_and_hsts(served):
    response = requests.get(f"{served['base']}/login/", headers=PROXY_HTTPS, allow_redirects=False, timeout=10)

    assert response.status_code == 200
    assert "Sign in" in response.text
    assert "max-age=31536000" in response.headers["Strict-Transport-Security"]
    assert "Secure" in response.headers["Set-Cookie"]
    assert response.headers["X-Frame-Options"] == "DENY"


def test_unknown_host_is_refused(served):
    response = requests.get(f"{served['base']}/login/", headers={**PROXY_HTTPS, "Host": "evil.example.com"}, timeout=10)

    assert response.status_code == 400


def test_whitenoise_serves_hashed_compressed_static_files_with_long_caching(served):
    manifest = json.loads((BASE_DIR / "staticfiles" / "staticfiles.json").read_text())
    hashed = manifest["paths"]["css/app.css"]
    assert hashed != "css/app.css"

    response = requests.get(
        f"{served['base']}/static/{hashed}", headers={**PROXY_HTTPS, "Accept-Encoding": "gzip"}, timeout=10
    )

    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert "max-age=315360000" in response.headers["Cache-Control"]
    assert response.text == (BASE_DIR / "static" / "css" / "app.css").read_text()


def test_access_log_goes_to_stdout_and_the_server_stops_cleanly_on_sigterm(served):
    requests.get(f"{served['base']}/healthz", timeout=10)
    server = served["server"]

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    log = Path(served["log"]).read_text()
    assert '"GET /healthz HTTP/1.1" 200' in log
    # (The refused Host above is logged with a traceback by django.security.DisallowedHost; no 500s.)
    assert "Internal Server Error" not in log
    assert "Booting worker" in log and "Shutting down: Master" in log
