"""Fixtures for the HaloPSA client tests: clients bound to a sandbox, a recording sleep, and a
tiny stub HTTP server for answers the sandbox never gives (redirects, odd error bodies)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest

from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SandboxServer
from integrations.halopsa.client import HaloClient


class RecordingSleep:
    """Stands in for time.sleep: records each requested delay, waits only a token amount."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.hooks: list[Callable[[float], None]] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        for hook in list(self.hooks):
            hook(seconds)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_client(sleeps: RecordingSleep) -> Callable[..., HaloClient]:
    made: list[HaloClient] = []

    def make(sandbox: SandboxServer | None = None, **overrides: Any) -> HaloClient:
        kwargs: dict[str, Any] = {
            "base_url": sandbox.url if sandbox is not None else "https://halo.example.com",
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET,
            "sleep": sleeps,
        }
        if sandbox is not None and sandbox.tenant:
            kwargs["tenant"] = sandbox.tenant
        kwargs.update(overrides)
        client = HaloClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class StubHalo:
    """A minimal HTTP server answering from a route table: {(method, path): (status, headers, body)}.
    Every request is recorded. The token endpoint answers a fixed token unless overridden."""

    TOKEN = "stub-access-token-0123456789"

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes]] = {
            ("POST", "/auth/token"): (
                200,
                {"Content-Type": "application/json"},
                json.dumps({"access_token": self.TOKEN, "expires_in": 3600}).encode(),
            ),
        }
        self.requests: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path, _, query = self.path.partition("?")
                stub.requests.append((self.command, path))
                answer = stub.routes.get(
                    (self.command, path), (404, {"Content-Type": "application/json"}, b'{"Message": "no route"}')
                )
                if callable(answer):  # a function of the query string
                    answer = answer(dict(parse_qsl(query)))
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def route(
        self, method: str, path: str, status: int, body: Any = b"", headers: dict[str, str] | None = None
    ) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        self.routes[(method, path)] = (status, {"Content-Type": "application/json", **(headers or {})}, body)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub_halo() -> Iterator[StubHalo]:
    stub = StubHalo()
    yield stub
    stub.stop()
