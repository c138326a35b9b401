"""HaloPSA sandbox: a HaloPSA REST API simulator for demos, tests and benchmarks (issue 3).

Pure standard library (no Django import), so it runs in-process in tests and standalone in
benchmarks::

    from halosandbox import SandboxServer, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
    srv = SandboxServer(dataset="tiny", seed=1, host="127.0.0.1", port=0, version="2.130.1",
                        token_lifetime=3600, rate_limit=300, rate_window=300, tenant=None,
                        retry_after=None,                      # Retry-After on 429s (None: none)
                        webhook_attempts=4, webhook_backoff=(0.5, 1.0, 2.0), webhook_timeout=5.0,
                        profile="default", clock_offset_minutes=None)  # see "Profiles" below
    srv.start()        # background ThreadingHTTPServer; also usable as a context manager
    srv.url            # HaloPSA base URL: API under /api, token at /auth/token
    srv.store          # in-memory state; its methods = the control API's record operations
    srv.request_log    # [{method, path, query, status, duration_ms, fault}] (control API excluded)
    srv.count_requests(path_prefix=None, method=None); srv.clear_request_log()
    srv.webhook_deliveries; srv.wait_for_webhooks(timeout)
    srv.set_version(v); srv.expire_tokens(); srv.set_token_lifetime(s)
    srv.set_rate_limit(limit, window, retry_after); srv.add_fault(mode, **options); srv.clear_faults()
    srv.set_profile(profile, clock_offset_minutes=None); srv.profile
    srv.add_webhook(url, **fields); srv.reset(dataset, seed); srv.stop()

Datasets: "tiny" (every case, 3 customers / 8 contacts / 8 invoice records), "demo" (25 / 90 /
120), "bench" (2,000 / 10,000 / 100,000, ~430k lines) or a dict of sizes (`customers`,
`contacts`, `billing_contacts`, `invoices`, `max_lines`). Invoices are derived on demand from
(seed, id), so even bench size is cheap to start (figures: benchmarks/README.md, "History").

HaloPSA API served: POST /auth/token; GET /api/authinfo; GET /api/InstanceInfo;
GET/POST /api/Client[/{id}]; GET /api/Users[/{id}]; GET/POST /api/Invoice, GET/DELETE
/api/Invoice/{id}, POST /api/Invoice/{id}/void, POST /api/Invoice/PDF/{id}; GET/POST
/api/InvoicePayment, GET/DELETE /api/InvoicePayment/{id}; GET /api/Attachment/{id};
GET/POST /api/Webhook, GET/DELETE /api/Webhook/{id}.

Profiles (issue 16): a profile is "default" (the shapes in shapes.py), "all", or comma-separated
variant names from `shapes.PROFILE_VARIANTS` (each documented there with its evidence), e.g.
"flag_on_detail,local_clock". They change what the wire shows, never the data: the ground truth is
the same under every profile. `clock_offset_minutes` (default -420) is how far the instance's clock
is from UTC under `local_clock`. Unknown names raise ValueError (HTTP 400 on the control API).

Control API (JSON, no auth, not logged, not rate limited), under /_sandbox/:
GET / (describe); POST reset {dataset, seed}; GET ground_truth; GET|DELETE requests;
GET profile, PUT profile {profile, clock_offset_minutes};
PUT version {version}; PUT ratelimit {limit, window, retry_after}; POST tokens/expire;
PUT token_lifetime {seconds}; POST clients, PATCH|DELETE clients/{id}; POST users,
PATCH|DELETE users/{id}; POST invoices, PATCH|DELETE invoices/{id}, POST invoices/{id}/payments
{amount, date, reference, thirdpartyid}, POST invoices/{id}/credits {amount}, POST
invoices/{id}/void; DELETE payments/{id}; GET|POST|DELETE faults (see faults.py);
GET|POST webhooks, DELETE webhooks/{id}, GET webhooks/deliveries, POST webhooks/wait {timeout}.
Bad requests get 400 {"error": ...}; unknown ids 404.

Modules: shapes (every guessed wire shape and enum, in one place), dataset (seeded lazy
generator), records (record types and money rules), store (mutable state, ground truth),
server (HTTP + control API), webhooks (sender with retries), faults (fault injection),
pdf (minimal PDF writer).
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
