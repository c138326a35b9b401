"""What the web process puts in front of Django under gunicorn's asgi worker (gunicorn.conf.py).

The asgi worker reads request bodies on its event loop: a client that sends its body slowly, or
never finishes it, costs one coroutine and a socket, not a worker, so the webhook endpoint and
every page stay responsive (docs/deploy.md, "Slow clients"). Two things the sync workers gave for
free are kept here:

- a bound on request bodies. Django's ASGI handler spools the whole body to a temporary file
  before any view runs, so the webhook view's own limit would come too late: bodies larger than
  `max_body` are answered 413 here, from their Content-Length or as the bytes arrive;
- the stuck-request timeout. Django runs every view of a worker in one thread, which a view stuck
  on a lock would hold while the event loop kept the worker's heartbeat going. `oldest_request_age`
  is how long the longest-running view has been at it; gunicorn.conf.py stops the heartbeat past
  GUNICORN_TIMEOUT, so gunicorn replaces the worker as it did a stuck sync worker.
"""

from __future__ import annotations

import time
from typing import Any

# Requests of this worker process whose body is complete and whose response has not started,
# with the time the view got them: what the heartbeat watchdog looks at.
_in_view: dict[int, float] = {}


def oldest_request_age() -> float:
    """Seconds the longest-running view of this process has been running (0 when none runs)."""
    started = min(_in_view.values(), default=None)
    return 0.0 if started is None else time.monotonic() - started


class RequestGuard:
    """ASGI middleware: refuses bodies over `max_body` bytes and times the views it passes on."""

    def __init__(self, app, *, max_body: int):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await _too_large(send, self.max_body)
            return
        key = id(scope)
        received = 0
        answered = False  # by us (413): whatever the app still sends is dropped

        async def guarded_receive() -> dict[str, Any]:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request" and not answered:
                received += len(message.get("body", b""))
                if received > self.max_body:  # chunked, or more than Content-Length promised
                    answered = True
                    await _too_large(send, self.max_body)
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
                if not message.get("more_body", False):
                    _in_view[key] = time.monotonic()
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                _in_view.pop(key, None)
            if not answered:
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        finally:
            _in_view.pop(key, None)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # gunicorn refuses a malformed Content-Length before we see it
    return None


async def _too_large(send, limit: int) -> None:
    body = f'{{"error": "request body too large (limit {limit} bytes)"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
