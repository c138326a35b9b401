"""Slow request bodies cannot stall the web process (issue 17 item 15).

A client that sends a webhook's headers and then its body slowly (or never finishes it) held a
gunicorn sync worker for up to GUNICORN_TIMEOUT: as many such clients as workers stopped the
webhook endpoint and every page. The web process runs gunicorn's asgi worker (gunicorn.conf.py),
which reads bodies on its event loop. These tests start gunicorn as the Procfile does and hold many
slow bodies open while other requests must be answered at once; the control run shows the same
clients stall sync workers, so the first test can fail.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tests.production.procs import MANAGE, PYTHON, free_port, gunicorn_serving, private_tmp, production_env, run

HOST = "portal.example.com"
PROMPT = 2.0  # seconds: "answered at once" even on a busy 2-core machine


def _delivery(object_id: int) -> bytes:
    return json.dumps(
        {"id": f"slow-{object_id}", "event": "invoice updated", "object_id": object_id, "invoice": {"id": object_id}}
    ).encode()


@contextmanager
def _gunicorn(app: str, *extra: str, workers: int = 2):
    """gunicorn with gunicorn.conf.py on a fresh SQLite database holding one connection."""
    for tmp_path in private_tmp("slow"):
        port = free_port()
        env = production_env(
            tmp_path,
            DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            ALLOWED_HOSTS=f"{HOST},127.0.0.1",
            SECURE_HTTPS="false",
            HOST="127.0.0.1",
            PORT=str(port),
            WEB_CONCURRENCY=str(workers),
        )
        for command in (["migrate", "--noinput"], ["createcachetable"]):
            result = run([PYTHON, MANAGE, *command], env, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
        made = run(
            [
                PYTHON,
                MANAGE,
                "shell",
                "-c",
                (
                    "import json; from integrations.models import Partner, Connection; "
                    "c = Connection.objects.create(partner=Partner.objects.create(name='P'), name='Main', "
                    "base_url='https://acme.halopsa.com', client_id='id', client_secret='secret', halopsa_version='2.130.1'); "
                    "print(json.dumps({'path': f'/hooks/halo/{c.webhook_key}/', 'user': c.webhook_username, "
                    "'password': c.webhook_password}))"
                ),
            ],
            env,
        )
        assert made.returncode == 0, made.stderr
        hook = json.loads(made.stdout.strip().splitlines()[-1])
        log_path = tmp_path / "gunicorn.log"
        with gunicorn_serving([app, "--config", "gunicorn.conf.py", *extra], env, log_path, port):
            auth = "Basic " + base64.b64encode(f"{hook['user']}:{hook['password']}".encode()).decode()
            yield SimpleNamespace(
                base=f"http://127.0.0.1:{port}", port=port, path=hook["path"], auth=auth, log=log_path
            )


class SlowClient:
    """Sends a webhook's headers and the first bytes of its body, then waits to be told to finish."""

    def __init__(self, served, object_id: int):
        self.body = _delivery(object_id)
        self.sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        head = (
            f"POST {served.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: {served.auth}\r\nContent-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(head.encode() + self.body[:5])

    def finish(self) -> int:
        self.sock.sendall(self.body[5:])
        response = b""
        while chunk := self.sock.recv(65536):
            response += chunk
        self.sock.close()
        return int(response.split(b" ", 2)[1])


def _timed(call) -> tuple[float, requests.Response | None]:
    started = time.monotonic()
    try:
        response = call()
    except requests.Timeout:
        response = None
    return time.monotonic() - started, response


def _deliver(served, object_id: int, timeout: float = 10) -> requests.Response:
    return requests.post(
        f"{served.base}{served.path}",
        data=_delivery(object_id),
        timeout=timeout,
        headers={"Host": HOST, "Content-Type": "application/json", "Authorization": served.auth},
    )


def test_slow_webhook_bodies_do_not_stall_the_web_process():
    with _gunicorn("syncportal.asgi", workers=2) as served:
        slow = [SlowClient(served, object_id) for object_id in range(1, 21)]  # 10 per worker
        time.sleep(1.0)  # every slow body is now being waited for

        page_seconds, page = _timed(lambda: requests.get(f"{served.base}/healthz", headers={"Host": HOST}, timeout=10))
        hook_seconds, hook = _timed(lambda: _deliver(served, 999))

        assert page is not None and page.status_code == 200 and page_seconds < PROMPT, page_seconds
        assert hook is not None and hook.status_code == 202 and hook_seconds < PROMPT, hook_seconds
        # The slow deliveries were only waiting: once their bodies arrive they are accepted too.
        assert [client.finish() for client in slow] == [202] * len(slow)
        log = Path(served.log).read_text()
        assert "Internal Server Error" not in log and "Traceback" not in log


def test_control_the_same_slow_bodies_stall_sync_workers():
    """Why the web process is not run with sync workers: two slow bodies stop two workers."""
    with _gunicorn("syncportal.wsgi", "--worker-class", "sync", workers=2) as served:
        slow = [SlowClient(served, object_id) for object_id in (1, 2)]
        time.sleep(1.0)

        page_seconds, page = _timed(lambda: requests.get(f"{served.base}/healthz", headers={"Host": HOST}, timeout=3))

        assert page is None, f"answered in {page_seconds:.2f} s: sync workers were not stalled"
        for client in slow:
            client.finish()


def test_bodies_over_the_limit_are_refused_before_they_are_read():
    with _gunicorn("syncportal.asgi", workers=1) as served:
        # Announced too large: refused from the headers alone, nothing of the body is sent.
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(
                (
                    f"POST {served.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
                ).encode()
            )
            assert sock.recv(65536).split(b" ", 2)[1] == b"413"

        # Chunked, no length given: refused once more than the limit has arrived.
        def chunks():
            for _ in range(12):
                yield b"x" * (256 * 1024)

        response = requests.post(
            f"{served.base}{served.path}",
            data=chunks(),
            timeout=10,
            headers={"Host": HOST, "Content-Type": "application/json", "Authorization": served.auth},
        )
        assert response.status_code == 413
        assert _deliver(served, 7).status_code == 202  # and the worker serves the next request


def test_the_web_process_runs_asgi_workers_with_the_stuck_view_watchdog():
    import runpy

    from tests.production.procs import BASE_DIR

    config = runpy.run_path(str(BASE_DIR / "gunicorn.conf.py"))
    assert config["worker_class"] == "asgi"
    assert "syncportal.asgi" in (BASE_DIR / "Procfile").read_text()

    beats = []
    worker = SimpleNamespace(cfg=SimpleNamespace(worker_class_str="asgi", timeout=30), notify=lambda: beats.append(1))
    config["post_worker_init"](worker)
    from syncportal import asgi_guard

    worker.notify()
    asgi_guard._in_view[1] = time.monotonic() - 31  # a view stuck for 31 s
    try:
        worker.notify()
    finally:
        asgi_guard._in_view.pop(1)
    worker.notify()
    assert beats == [1, 1]  # no heartbeat while the view was stuck: the arbiter replaces the worker

    class Arbiter:
        app = SimpleNamespace(app_uri="syncportal.wsgi")
        cfg = SimpleNamespace(worker_class_str="asgi")

    with pytest.raises(RuntimeError, match=r"syncportal.asgi"):
        config["on_starting"](Arbiter())
