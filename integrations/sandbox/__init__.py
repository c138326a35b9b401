"""HaloPSA sandbox: a HaloPSA REST API simulator for demos, tests and benchmarks (issue 3).

Pure standard library (no Django import), so it runs in-process in tests and standalone in
benchmarks::

    from integrations.sandbox import SandboxServer, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
    srv = SandboxServer(dataset="tiny", seed=1, port=0).start()
    srv.url            # HaloPSA base URL: API under /api, token at /auth/token
    srv.store          # in-memory state (same operations as the /_sandbox control API)
    srv.request_log    # every HaloPSA request served (control API excluded)
    srv.stop()

Modules: shapes (every guessed wire shape, in one place), dataset (seeded lazy generator),
records (record types and money rules), store (mutable state), server (HTTP + control API),
webhooks (sender with retries), faults (fault injection), pdf (minimal PDF writer).
"""
from __future__ import annotations

from .server import SandboxServer
from .shapes import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, WEBHOOK_MIN_VERSION
from .store import NotFound, SandboxError, Store

__all__ = [
    "SANDBOX_CLIENT_ID",
    "SANDBOX_CLIENT_SECRET",
    "WEBHOOK_MIN_VERSION",
    "NotFound",
    "SandboxError",
    "SandboxServer",
    "Store",
]
