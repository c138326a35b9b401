"""HTTP front of the sandbox: HaloPSA's REST API (`/auth/token`, `/api/...`) and the control API
(`/_sandbox/...`), served by a standard-library ThreadingHTTPServer.

Request pipeline for HaloPSA paths: fault injection -> route (token endpoint, or bearer check ->
rate limit -> resource) -> fault post-processing -> response -> request log. Routing is
case-insensitive and unknown query parameters are ignored, like Halo's.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, cast
from urllib.parse import parse_qs, urlsplit

from . import shapes
from .faults import FaultInjector, FaultRule, parse_rule
from .pdf import render_text_pdf
from .records import Invoice
from .store import NotFound, SandboxError, Store
from .webhooks import WebhookDispatcher

JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class Response:
    status: int
    payload: Any = None
    raw: bytes | None = None
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.payload is None else shapes.dumps(self.payload)


def _json_error(status: int, message: str) -> Response:
    return Response(status, shapes.error_message(message))


# ---------------------------------------------------------------------------------------------
# Auth and throttling


class TokenAuthority:
    """OAuth2 client-credentials tokens with a configurable lifetime."""

    def __init__(self, client_id: str, client_secret: str, lifetime: float, tenant: str | None) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.tenant = tenant
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, client_id: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            # Drop expired tokens so a long benchmark does not accumulate them.
            for old in [t for t, (_, exp) in self._tokens.items() if exp <= now]:
                del self._tokens[old]
            self._tokens[token] = (client_id, now + self.lifetime)
        return token

    def client_for(self, token: str) -> str | None:
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    def expire_all(self) -> int:
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
        return count


class RateLimiter:
    """Rolling window per client id, like Halo's hosted limit (300 requests / 5 minutes).
    Only `/api/...` calls count: the token endpoint is served by the separate authorisation
    server in hosted Halo and no report ties it to the limit. Refused requests do not count."""

    def __init__(self, limit: int, window: float, retry_after: float | None = None) -> None:
        self.limit = limit
        self.window = window
        self.retry_after = retry_after  # None: no Retry-After header (Halo is not known to send one)
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def configure(self, limit: int | None = None, window: float | None = None, retry_after: Any = "keep") -> None:
        with self._lock:
            if limit is not None:
                self.limit = int(limit)
            if window is not None:
                self.window = float(window)
            if retry_after != "keep":
                self.retry_after = None if retry_after is None else float(retry_after)
            self._hits.clear()

    def allow(self, client_id: str) -> bool:
        if self.limit <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(client_id, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def response(self) -> Response:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        text = shapes.rate_limit_message(self.limit, self.window)
        return Response(429, raw=text.encode(), content_type="text/plain; charset=utf-8", headers=headers)


# ---------------------------------------------------------------------------------------------
# Query-string helpers (Halo ignores what it cannot bind, so junk values mean "not given")


def q_bool(query: Mapping[str, str], name: str, default: bool | None = None) -> bool | None:
    value = query.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return default


def q_int(query: Mapping[str, str], name: str) -> int | None:
    try:
        return int(str(query.get(name, "")).strip())
    except ValueError:
        return None


def q_int_set(query: Mapping[str, str], name: str) -> frozenset[int] | None:
    value = query.get(name)
    if not value:
        return None
    items = set()
    for part in value.split(","):
        try:
            items.add(int(part.strip()))
        except ValueError:
            continue
    return frozenset(items) if items else None


def q_date(query: Mapping[str, str], name: str, profile: shapes.Profile) -> int | None:
    return shapes.parse_instance_date(query.get(name), profile)


def active_flags(query: Mapping[str, str]) -> tuple[bool, bool]:
    """`includeactive`/`includeinactive`, or `activeinactive=true,false`; default active only."""
    combined = query.get("activeinactive")
    if combined and "," in combined:
        first, second = (part.strip().lower() == "true" for part in combined.split(",", 1))
        return first, second
    return bool(q_bool(query, "includeactive", True)), bool(q_bool(query, "includeinactive", False))


# Set by the "page_drift" fault on the query it hands to the list handlers (faults.py).
DRIFT_PARAM = "_sandbox_drift"


def paged(query: Mapping[str, str], total: int) -> tuple[slice, dict[str, Any]]:
    """Rows to serve and the envelope's paging fields. Pages are capped at 100 rows."""
    if q_bool(query, "pageinate", False):
        size = q_int(query, "page_size")
        size = shapes.DEFAULT_PAGE_SIZE if not size or size < 1 else min(size, shapes.PAGE_CAP)
        page_no = max(q_int(query, "page_no") or 1, 1)
        # page_drift: `drift` rows added before this page move it back (rows repeat), deleted ones forward.
        drift = q_int(query, DRIFT_PARAM) or 0
        start = max((page_no - 1) * size - drift, 0)
        return slice(start, start + size), {
            "page_no": page_no,
            "page_size": size,
            "record_count": max(total + drift, 0),
        }
    count = q_int(query, "count")
    return slice(0, count if count and count > 0 else total), {"record_count": total}


# ---------------------------------------------------------------------------------------------


class SandboxServer:
    """A HaloPSA simulator on 127.0.0.1. See the package docstring for the contract."""

    def __init__(
        self,
        dataset: Any = "demo",
        seed: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        version: str = shapes.DEFAULT_VERSION,
        token_lifetime: float = 3600,
        rate_limit: int = 300,
        rate_window: float = 300,
        tenant: str | None = None,
        retry_after: float | None = None,
        client_id: str = shapes.SANDBOX_CLIENT_ID,
        client_secret: str = shapes.SANDBOX_CLIENT_SECRET,
        webhook_attempts: int = 4,
        webhook_backoff: tuple[float, ...] = (0.5, 1.0, 2.0),
        webhook_timeout: float = 5.0,
        profile: str = shapes.DEFAULT_PROFILE_NAME,
        clock_offset_minutes: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.profile = shapes.parse_profile(profile, clock_offset_minutes)
        self.store = Store(dataset, seed, version)
        self.auth = TokenAuthority(client_id, client_secret, token_lifetime, tenant)
        self.rate_limiter = RateLimiter(rate_limit, rate_window, retry_after)
        self.faults = FaultInjector(seed)
        self.webhooks = WebhookDispatcher(
            self.store, max_attempts=webhook_attempts, backoff=webhook_backoff, timeout=webhook_timeout
        )
        self.request_log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    # -----------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> SandboxServer:
        if self._httpd is not None:
            return self
        handler = type("BoundSandboxHandler", (SandboxHandler,), {"sandbox": self})
        httpd = ThreadingHTTPServer((self.host, self.port), handler)
        httpd.daemon_threads = True
        # Do not join handler threads on close: idle keep-alive connections would hold stop().
        httpd.block_on_close = False
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="halopsa-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            # Close idle keep-alive connections so clients see the server go away.
            with self._connections_lock:
                for conn in list(self._connections):
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self._connections.clear()
            httpd.server_close()
        self.webhooks.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -----------------------------------------------------------------------------------------
    # Python equivalents of the control API

    @property
    def version(self) -> str:
        return self.store.version

    def set_version(self, version: str) -> None:
        self.store.version = str(version)

    @property
    def client_id(self) -> str:
        return self.auth.client_id

    @property
    def client_secret(self) -> str:
        return self.auth.client_secret

    @property
    def tenant(self) -> str | None:
        return self.auth.tenant

    def expire_tokens(self) -> int:
        return self.auth.expire_all()

    def set_profile(self, profile: str, clock_offset_minutes: int | None = None) -> shapes.Profile:
        """Serve the variants of `profile` from the next request on (shapes.PROFILE_VARIANTS);
        `clock_offset_minutes` None means -420. Raises ValueError on unknown names. The data and
        the ground truth stay as they are; reset() keeps the profile."""
        self.profile = shapes.parse_profile(profile, clock_offset_minutes)
        return self.profile

    def set_token_lifetime(self, seconds: float) -> None:
        self.auth.lifetime = float(seconds)

    def set_rate_limit(self, limit: int | None = None, window: float | None = None, retry_after: Any = "keep") -> None:
        self.rate_limiter.configure(limit, window, retry_after)

    def add_fault(self, mode: str, **options: Any) -> FaultRule:
        """Same fields as POST /_sandbox/faults, e.g. add_fault("status", status=503, count=2)."""
        return self.faults.add(parse_rule({"mode": mode, **options}))

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset(self, dataset: Any = None, seed: int | None = None) -> None:
        """Regenerate the data; also clears faults, the request log and queued webhooks.
        Tokens, version, limits and webhook subscriptions stay."""
        self.store.reset(dataset, seed)
        self.faults.clear()
        self.clear_request_log()
        self.webhooks.clear()

    @property
    def webhook_deliveries(self) -> list[dict[str, Any]]:
        return self.webhooks.deliveries

    def wait_for_webhooks(self, timeout: float = 10.0) -> bool:
        return self.webhooks.wait(timeout)

    def add_webhook(self, url: str, **fields: Any) -> dict[str, Any]:
        return self.store.save_webhook({"url": url, **fields})

    def count_requests(self, path_prefix: str | None = None, method: str | None = None) -> int:
        prefix = (path_prefix or "").lower()
        with self._log_lock:
            return sum(
                1
                for entry in self.request_log
                if entry["path"].lower().startswith(prefix) and (method is None or entry["method"] == method.upper())
            )

    def clear_request_log(self) -> None:
        with self._log_lock:
            self.request_log.clear()

    def _log(
        self, method: str, path: str, query: dict[str, str], status: int, started: float, fault: str | None
    ) -> None:
        entry = {
            "method": method,
            "path": path,
            "query": query,
            "status": status,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "fault": fault,
        }
        with self._log_lock:
            self.request_log.append(entry)

    # -----------------------------------------------------------------------------------------
    # HaloPSA API

    def handle_halo(
        self, method: str, path: str, query: dict[str, str], body: bytes, headers: Mapping[str, str] | Message
    ) -> Response:
        lowered = path.lower().rstrip("/")
        if lowered == "/auth/token":
            return self._token(method, query, body) if method == "POST" else _json_error(405, "Method not allowed")
        if lowered == "/api/authinfo" and method == "GET":
            return Response(200, {"auth_url": f"{self.url}/auth", "tenant_id": self.auth.tenant or ""})
        if not lowered.startswith("/api/"):
            return _json_error(404, shapes.NOT_FOUND_ROUTE_MESSAGE)
        authorization = headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        client_id = self.auth.client_for(token.strip()) if scheme.lower() == "bearer" else None
        if client_id is None:
            return Response(
                401,
                shapes.error_message(shapes.UNAUTHORIZED_MESSAGE),
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if not self.rate_limiter.allow(client_id):
            return self.rate_limiter.response()
        segments = [s for s in lowered[len("/api/") :].split("/") if s]
        handler = self._RESOURCES.get(segments[0] if segments else "")
        if handler is None:
            return _json_error(404, shapes.NOT_FOUND_ROUTE_MESSAGE)
        try:
            response = handler(self, method, segments[1:], query, body)
        except NotFound as exc:
            return _json_error(404, exc.message)
        except SandboxError as exc:
            return _json_error(exc.status, exc.message)
        profile = self.profile
        if profile.variants and response.status < 300 and response.payload is not None:
            response.payload = shapes.to_wire(response.payload, profile)
        return response

    def _token(self, method: str, query: dict[str, str], body: bytes) -> Response:
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        if form.get("grant_type") != "client_credentials":
            return Response(400, shapes.oauth_error("unsupported_grant_type", "Only client_credentials is supported"))
        if self.auth.tenant is not None and query.get("tenant") != self.auth.tenant:
            return Response(401, shapes.oauth_error("invalid_client", "Unknown or missing tenant"))
        if not (
            secrets.compare_digest(form.get("client_id", ""), self.auth.client_id)
            and secrets.compare_digest(form.get("client_secret", ""), self.auth.client_secret)
        ):
            return Response(401, shapes.oauth_error("invalid_client", "Invalid client credentials"))
        token = self.auth.issue(form["client_id"])
        return Response(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(self.auth.lifetime),
                "scope": form.get("scope") or "all",
            },
        )

    @staticmethod
    def _body_rows(body: bytes) -> list[Any]:
        """Halo's POST bodies are JSON arrays; a single object is accepted too."""
        try:
            data = json.loads(body or b"null", parse_float=Decimal)
        except ValueError as exc:
            raise SandboxError("The request body is not valid JSON") from exc
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not data:
            raise SandboxError("The request body must be a non-empty JSON array")
        if not all(isinstance(row, dict) for row in data):
            raise SandboxError("Each item of the request body must be an object")
        return data

    @staticmethod
    def _single_or_list(rows: list[Any]) -> Any:
        # POST /Invoice and /Webhook answer the object for a one-item array (unverified, docs/halopsa-facts.md §11.7).
        return rows[0] if len(rows) == 1 else rows

    def _instance_info(self, method: str, rest: list[str], query: dict[str, str], body: bytes) -> Response:
        version = self.store.version
        return Response(
            200,
            {
                "dbid": "sandbox",
                "app_version": version,
                "database_version": version,
                "app_name": "HaloPSA",
                "agent_count": 4,
                "licensed_agent_count": 10,
                "online_agent_count": 1,
                "agent_url": self.url,
                "portal_url": f"{self.url}/portal",
                "auth_url": f"{self.url}/auth",
                "mobileapp_enabled": False,
                "teamsbot_enabled": False,
                "nhserver_version": version,
                "using_event_service": True,
                "using_scheduling_service": True,
                "using_outgoing_service": True,
                "using_incoming_service": True,
            },
        )

    def _clients(self, method: str, rest: list[str], query: dict[str, str], body: bytes) -> Response:
        store = self.store
        if rest:
            client_id = _path_id(rest[0])
            if method == "GET":
                client = store.get_client(client_id)
                if client is None:
                    raise NotFound(f"Client {rest[0]} not found")
                return Response(200, store.client_json(client))
            if method == "DELETE":
                store.delete_client(client_id)
                return Response(200)
            return _json_error(405, f"The requested resource does not support http method '{method}'.")
        if method == "GET":
            include_active, include_inactive = active_flags(query)
            updated_from, updated_to = self._lastupdate_window(query)
            rows = store.query_clients(
                include_active=include_active,
                include_inactive=include_inactive,
                search=query.get("search"),
                updated_from=updated_from,
                updated_to=updated_to,
                toplevel_id=q_int(query, "toplevel_id"),
                order=query.get("order"),
                desc=bool(q_bool(query, "orderdesc", False)),
            )
            window, envelope = paged(query, len(rows))
            if q_bool(query, "idonly", False):
                items = [{"id": c.id, "name": c.name} for c in rows[window]]
            else:
                items = [store.client_json(c) for c in rows[window]]
            return Response(200, {**envelope, shapes.ENVELOPE_KEYS["clients"]: items})
        if method == "POST":
            saved, created = [], False
            for row in self._body_rows(body):
                fields = {k: v for k, v in row.items() if k in Store._CLIENT_FIELDS}
                if row.get("id"):
                    saved.append(store.update_client(int(row["id"]), **fields))
                else:
                    saved.append(store.create_client(**fields))
                    created = True
            return Response(201 if created else 200, self._single_or_list(saved))
        return _json_error(405, f"The requested resource does not support http method '{method}'.")

    def _users(self, method: str, rest: list[str], query: dict[str, str], body: bytes) -> Response:
        store = self.store
        if rest:
            user_id = _path_id(rest[0])
            if method == "GET":
                user = store.get_user(user_id)
                if user is None:
                    raise NotFound(f"User {rest[0]} not found")
                return Response(200, store.user_json(user))
            if method == "DELETE":
                store.delete_user(user_id)
                return Response(200)
            return _json_error(405, f"The requested resource does not support http method '{method}'.")
        if method == "GET":
            include_active, include_inactive = active_flags(query)
            updated_from, updated_to = self._lastupdate_window(query)
            rows = store.query_users(
                client_id=q_int(query, "client_id"),
                site_id=q_int(query, "site_id"),
                include_active=include_active,
                include_inactive=include_inactive,
                search=query.get("search"),
                updated_from=updated_from,
                updated_to=updated_to,
                order=query.get("order"),
                desc=bool(q_bool(query, "orderdesc", False)),
            )
            window, envelope = paged(query, len(rows))
            if q_bool(query, "idonly", False):
                items = [{"id": u.id, "name": u.name} for u in rows[window]]
            else:
                items = [store.user_json(u) for u in rows[window]]
                if not shapes.users_list_has_flag(self.profile, bool(q_bool(query, "includebillinginfo", False))):
                    for item in items:
                        del item["canaccessinvoices"]
            return Response(200, {**envelope, shapes.ENVELOPE_KEYS["users"]: items})
        return _json_error(405, f"The requested resource does not support http method '{method}'.")

    def _lastupdate_window(self, query: Mapping[str, str]) -> tuple[int | None, int | None]:
        """`lastupdatefromdate`/`lastupdatetodate` of /Client and /Users (unset under the
        `no_lastupdate_filter` profile)."""
        profile = self.profile
        if profile.has("no_lastupdate_filter"):
            return None, None
        return q_date(query, "lastupdatefromdate", profile), q_date(query, "lastupdatetodate", profile)

    _INVOICE_WRITE_FIELDS = ("voided", "markaspaid", "duedate", "invoice_date", "client_id", "thirdpartyinvoicenumber")

    @staticmethod
    def _api_lines(lines: Any) -> list[Mapping[str, Any]] | None:
        if lines is None:
            return None
        if not isinstance(lines, list):
            raise SandboxError("lines must be an array")
        return [
            {
                "description": line.get("item_shortdescription", line.get("description", "")),
                "qty": line.get("qty_order", line.get("qty", 1)),
                "unit_price": line.get("unit_price", 0),
                "tax_rate": line.get("tax_rate", 0),
            }
            for line in lines
            if isinstance(line, dict)
        ]

    def _invoices(self, method: str, rest: list[str], query: dict[str, str], body: bytes) -> Response:
        store = self.store
        not_supported = _json_error(405, f"The requested resource does not support http method '{method}'.")
        if rest and rest[0] == "pdf":
            if method != "POST" or len(rest) != 2:
                return not_supported
            invoice = store.get_invoice(_path_id(rest[1]))
            if invoice is None:
                raise NotFound(f"Invoice {rest[1]} not found")
            # Response format undocumented (halopsa-facts §3.5, §11.5): we answer the attachment id.
            return Response(
                200, {"id": invoice.pdf_attachment_id, "filename": pdf_filename(invoice), "invoice_id": invoice.id}
            )
        if rest:
            invoice_id = _path_id(rest[0])
            if len(rest) == 2 and rest[1] == "void":
                if method != "POST":
                    return not_supported
                return Response(200, store.void_invoice(invoice_id))
            if len(rest) != 1:
                return _json_error(404, shapes.NOT_FOUND_ROUTE_MESSAGE)
            if method == "GET":
                invoice = store.get_invoice(invoice_id)
                if invoice is None:
                    raise NotFound(f"Invoice {rest[0]} not found")
                with_lines = bool(q_bool(query, "includedetails", False) or q_bool(query, "includelines", False))
                return Response(200, store.invoice_json(invoice, include_lines=with_lines))
            if method == "DELETE":
                store.delete_invoice(invoice_id)
                return Response(200)
            return not_supported
        if method == "GET":
            return self._invoice_list(query)
        if method == "POST":
            saved, created = [], False
            for row in self._body_rows(body):
                fields = {k: row[k] for k in self._INVOICE_WRITE_FIELDS if k in row}
                lines = self._api_lines(row.get("lines"))
                if row.get("id"):
                    saved.append(store.update_invoice(int(row["id"]), lines=lines, **fields))
                else:
                    fields.pop("voided", None)
                    fields.pop("markaspaid", None)
                    saved.append(store.create_invoice(lines=lines, **fields))
                    created = True
            return Response(201 if created else 200, self._single_or_list(saved))
        return not_supported

    def _invoice_list(self, query: dict[str, str]) -> Response:
        store = self.store
        client_ids = None
        client_id = q_int(query, "client_id")
        if client_id:
            client_ids = frozenset({client_id})
        elif q_int_set(query, "client_ids"):
            client_ids = q_int_set(query, "client_ids")
        profile = self.profile
        if profile.has("no_datesearch"):
            date_field, start, end = None, None, None
        else:
            date_field = (query.get("datesearch") or "").lower() or None
            start, end = q_date(query, "start_date", profile), q_date(query, "end_date", profile)
            if date_field not in ("invoice_date", "last_modified", "duedate"):
                # Unknown datesearch values are ignored; dates without datesearch filter invoice_date.
                date_field = "invoice_date" if (start is not None or end is not None) else None
        ids = store.query_invoice_ids(
            include_invoices=bool(q_bool(query, "includeinvoices", True)),
            include_credits=bool(q_bool(query, "includecredits", False)),
            client_ids=client_ids,
            paymentstatuses=shapes.internal_paymentstatuses(q_int_set(query, "paymentstatuses"), profile),
            date_field=date_field,
            start=start,
            end=end,
            search=query.get("search") or None,
            third_party_id=query.get("third_party_id") or None,
            order=query.get("order"),
            desc=bool(q_bool(query, "orderdesc", False)),
        )
        window, envelope = paged(query, len(ids))
        with_lines = bool(q_bool(query, "includelines", False))
        items = []
        if q_bool(query, "idonly", False):
            items = [{"id": i} for i in ids[window]]
        else:
            for invoice_id in ids[window]:
                invoice = store.get_invoice(invoice_id)
                if invoice is not None:
                    items.append(store.invoice_json(invoice, include_lines=with_lines))
        return Response(200, {**envelope, shapes.ENVELOPE_KEYS["invoices"]: items})

    def _payments(self, method: str, rest: list[str], query: dict[str, str], body: bytes) -> Response:
        store = self.store
        if rest:
            payment_id = _path_id(rest[0])
            if method == "GET":
                found = store.find_payment(payment_id)
                if found is None:
                    raise NotFound(f"InvoicePayment {rest[0]} not found")
                return Response(200, store.payment_json(*found))
            if method == "DELETE":
                store.delete_payment(payment_id)
                return Response(200)
            return _json_error(405, f"The requested resource does not support http method '{method}'.")
        if method == "GET":
            profile = self.profile
            invoice_id = None if profile.has("payment_invoice_filter_ignored") else q_int(query, "invoice_id")
            pairs = store.query_payments(
                invoice_id=invoice_id,
                client_id=q_int(query, "client_id"),
                search=query.get("search") or None,
                search_reference=not profile.has("search_ignores_reference"),
            )
            envelope_key = shapes.payments_envelope_key(profile)
            window, envelope = paged(query, len(pairs)) if envelope_key else (slice(None), {})
            items = []
            for payment_id, _ in pairs[window]:
                found = store.find_payment(payment_id)
                if found is not None:
                    items.append(store.payment_json(*found))
            return Response(200, {**envelope, envelope_key: items} if envelope_key else items)
        if method == "POST":
            # Always an array back, one created payment per row (unverified, halopsa-facts §11.7).
            return Response(201, store.add_payments(self._body_rows(body)))
        return _json_error(405, f"The requested resource does not support http method '{method}'.")

    def _attachments(self, method: str, rest: list[str], query: dict[str, str], body: bytes) -> Response:
        if method != "GET" or len(rest) != 1:
            return _json_error(405, f"The requested resource does not support http method '{method}'.")
        invoice = self.store.attachment_invoice(_path_id(rest[0]))
        if invoice is None:
            raise NotFound(f"Attachment {rest[0]} not found")
        return Response(
            200,
            raw=self.invoice_pdf(invoice),
            content_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{pdf_filename(invoice)}"'},
        )

    def invoice_pdf(self, invoice: Invoice) -> bytes:
        store = self.store
        client_name = store.invoice_client_name(invoice) or "(no customer)"
        kind = "Credit note" if invoice.is_credit_note else "Invoice"
        lines = [
            f"{kind} {invoice.invoicenumber}",
            f"Customer: {client_name}",
            f"Invoice date: {shapes.format_date(invoice.invoice_date_ms)[:10]}   Due: {shapes.format_date(invoice.duedate_ms)[:10]}",
            "",
        ]
        for line in invoice.lines[:30]:
            lines.append(f"{line.qty} x {line.description[:50]} @ {line.unit_price} = {line.total_price}")
        if len(invoice.lines) > 30:
            lines.append(f"... {len(invoice.lines) - 30} more lines")
        lines += [
            "",
            f"Tax: {invoice.tax_total} {invoice.currency}",
            f"Total: {invoice.total} {invoice.currency}",
            f"Paid: {invoice.amountpaid} {invoice.currency}",
            f"Balance: {invoice.amountdue} {invoice.currency}",
            (
                f"Document {invoice.pdf_attachment_id} generated "
                f"{shapes.format_timestamp(invoice.pdf_created_ms + self.profile.clock_offset_ms)}"
            ),
        ]
        return render_text_pdf(lines, title=f"{kind} {invoice.invoicenumber}")

    def _webhooks(self, method: str, rest: list[str], query: dict[str, str], body: bytes) -> Response:
        store = self.store
        if rest:
            if method == "GET":
                found = [w for w in store.list_webhooks() if w["id"] == rest[0] or w["id"].lower() == rest[0]]
                if not found:
                    raise NotFound(f"Webhook {rest[0]} not found")
                return Response(200, found[0])
            if method == "DELETE":
                match = [w["id"] for w in store.list_webhooks() if w["id"].lower() == rest[0]]
                store.delete_webhook(match[0] if match else rest[0])
                return Response(200)
            return _json_error(405, f"The requested resource does not support http method '{method}'.")
        if method == "GET":
            return Response(200, store.list_webhooks())  # bare array (envelope unverified)
        if method == "POST":
            rows = self._body_rows(body)
            for row in rows:
                events = row.get("events")
                # `events` are UnameNotification objects (both specs); names are refused, see shapes.py.
                if events is not None and (
                    not isinstance(events, list) or not all(isinstance(event, dict) for event in events)
                ):
                    raise SandboxError("events must be an array of objects (UnameNotification) with an eventno")
            saved = [store.save_webhook(row) for row in rows]
            return Response(201, self._single_or_list(saved))
        return _json_error(405, f"The requested resource does not support http method '{method}'.")

    _RESOURCES: dict[str, Callable[..., Response]] = {
        "instanceinfo": _instance_info,
        "client": _clients,
        "users": _users,
        "invoice": _invoices,
        "invoicepayment": _payments,
        "attachment": _attachments,
        "webhook": _webhooks,
    }

    # -----------------------------------------------------------------------------------------
    # Control API

    def handle_control(self, method: str, path: str, query: dict[str, str], body: bytes) -> Response:
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return Response(400, {"error": "body is not valid JSON"})
        segments = [s for s in path.strip("/").split("/")[1:] if s]
        try:
            return self._control(method, segments, query, data)
        except SandboxError as exc:
            return Response(exc.status, {"error": exc.message})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return Response(400, {"error": f"{type(exc).__name__}: {exc}"})

    def _control(self, method: str, seg: list[str], query: dict[str, str], data: Any) -> Response:
        store = self.store
        if not isinstance(data, dict):
            raise SandboxError("body must be a JSON object")
        head = seg[0].lower() if seg else ""
        ident = seg[1] if len(seg) > 1 else None
        action = seg[2].lower() if len(seg) > 2 else None

        def fields(exclude: tuple[str, ...] = ()) -> dict[str, Any]:
            return {k: v for k, v in data.items() if not k.startswith("_") and k not in exclude}

        if head == "" and method == "GET":
            return Response(200, self.describe())
        if head == "reset" and method == "POST":
            self.reset(data.get("dataset"), data.get("seed"))
            return Response(200, self.describe())
        if head == "ground_truth" and method == "GET":
            return Response(200, store.ground_truth())
        if head == "requests":
            if method == "DELETE":
                self.clear_request_log()
                return Response(200, {"cleared": True})
            with self._log_lock:
                log = list(self.request_log)
            by_path: dict[str, int] = {}
            for entry in log:
                key = f"{entry['method']} {entry['path']}"
                by_path[key] = by_path.get(key, 0) + 1
            return Response(200, {"count": len(log), "by_path": by_path, "requests": log})
        if head == "profile":
            if method == "PUT":
                if "profile" not in data:
                    raise SandboxError('profile is required, e.g. {"profile": "nulls_omitted,local_clock"}')
                try:
                    self.set_profile(data["profile"], data.get("clock_offset_minutes"))
                except ValueError as exc:
                    raise SandboxError(str(exc)) from exc
                return Response(200, self.profile.as_dict())
            if method == "GET":
                return Response(200, self.profile.as_dict())
        if head == "version" and method == "PUT":
            self.set_version(str(data["version"]))
            return Response(200, {"version": self.version})
        if head == "ratelimit" and method == "PUT":
            self.set_rate_limit(data.get("limit"), data.get("window"), data.get("retry_after", "keep"))
            rl = self.rate_limiter
            return Response(200, {"limit": rl.limit, "window": rl.window, "retry_after": rl.retry_after})
        if head == "tokens" and ident == "expire" and method == "POST":
            return Response(200, {"expired": self.expire_tokens()})
        if head == "token_lifetime" and method == "PUT":
            self.set_token_lifetime(float(data.get("seconds", data.get("token_lifetime", data.get("lifetime")))))  # type: ignore[arg-type]
            return Response(200, {"token_lifetime": self.auth.lifetime})
        if head == "faults":
            if method == "POST":
                return Response(201, self.faults.add(parse_rule(data)).as_dict())
            if method == "DELETE":
                self.clear_faults()
                return Response(200, {"cleared": True})
            return Response(200, self.faults.rules())
        if head == "clients":
            if ident is None and method == "POST":
                return Response(201, store.create_client(**fields()))
            if ident is not None and method == "PATCH":
                return Response(200, store.update_client(int(ident), **fields()))
            if ident is not None and method == "DELETE":
                store.delete_client(int(ident))
                return Response(200, {"deleted": int(ident)})
        if head == "users":
            if ident is None and method == "POST":
                return Response(201, store.create_user(**fields()))
            if ident is not None and method == "PATCH":
                return Response(200, store.update_user(int(ident), **fields()))
            if ident is not None and method == "DELETE":
                store.delete_user(int(ident))
                return Response(200, {"deleted": int(ident)})
        if head == "invoices":
            if ident is None and method == "POST":
                return Response(201, store.create_invoice(**fields()))
            if ident is not None and action is None and method == "PATCH":
                return Response(200, store.update_invoice(int(ident), **fields()))
            if ident is not None and action is None and method == "DELETE":
                store.delete_invoice(int(ident))
                return Response(200, {"deleted": int(ident)})
            if ident is not None and action == "payments" and method == "POST":
                return Response(
                    201,
                    store.add_payment(
                        int(ident),
                        data.get("amount"),
                        date=data.get("date"),
                        reference=data.get("reference", ""),
                        thirdpartyid=data.get("thirdpartyid", ""),
                        method=data.get("method"),
                        payment_method_name=data.get("payment_method_name"),
                    ),
                )
            if ident is not None and action == "credits" and method == "POST":
                return Response(201, store.apply_credit(int(ident), data.get("amount"), date=data.get("date")))
            if ident is not None and action == "void" and method == "POST":
                return Response(200, store.void_invoice(int(ident)))
        if head == "payments" and ident is not None and method == "DELETE":
            store.delete_payment(int(ident))
            return Response(200, {"deleted": int(ident)})
        if head == "webhooks":
            if ident == "deliveries" and method == "GET":
                return Response(200, list(self.webhook_deliveries))
            if ident == "wait" and method == "POST":
                return Response(200, {"drained": self.wait_for_webhooks(float(data.get("timeout", 10)))})
            if ident is None and method == "GET":
                return Response(200, store.list_webhooks())
            if ident is None and method == "POST":  # `events` by name, as a person ticks them
                return Response(201, store.save_webhook(data))
            if ident is not None and action == "events" and method == "POST":
                # A person ticks more events on an existing webhook: {"events": ["invoice updated", ...]}.
                hook = next((w for w in store.list_webhooks() if w["id"].lower() == ident.lower()), None)
                if hook is None:
                    raise NotFound(f"Webhook {ident} not found")
                names = data.get("events")
                if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                    raise SandboxError('events must be a list of event names, e.g. {"events": ["invoice updated"]}')
                return Response(200, store.save_webhook({"id": hook["id"], "events": hook["events"] + names}))
            if ident is not None and method == "DELETE":
                store.delete_webhook(ident)
                return Response(200, {"deleted": ident})
        raise SandboxError(f"unknown control endpoint: {method} /_sandbox/{'/'.join(seg)}", 404)

    def describe(self) -> dict[str, Any]:
        store = self.store
        return {
            "url": self.url,
            "dataset": store.spec.name,
            "seed": store.seed,
            "version": store.version,
            "client_id": self.auth.client_id,
            "client_secret": self.auth.client_secret,
            "tenant": self.auth.tenant,
            "token_lifetime": self.auth.lifetime,
            "rate_limit": self.rate_limiter.limit,
            "rate_window": self.rate_limiter.window,
            "customers": len(store.clients),
            "users": len(store.users),
            "invoices": store.invoice_count(),
            "revision": store.revision,
            "profile": self.profile.name,
            "clock_offset_minutes": self.profile.clock_offset_minutes,
        }


def _path_id(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise SandboxError(f"The value '{text}' is not valid.") from exc


def pdf_filename(invoice: Invoice) -> str:
    return f"{'CreditNote' if invoice.is_credit_note else 'Invoice'}-{invoice.invoicenumber}.pdf"


# ---------------------------------------------------------------------------------------------


_INVALID_UTF8_MARK = "\u0001sandbox-invalid-utf8\u0001"


def _records_of(payload: Any) -> list[Any] | None:
    """The records of a list envelope or bare array, or [the object] for a single record."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        rows = next((v for v in payload.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
        if rows is None and "id" in payload:
            return [payload]
        return rows
    return None


def _with_invalid_utf8(response: Response, rng_value: int) -> bytes:
    """The answer's JSON with one record's `client_name` (an invoice) or `name` holding "Caf" + 0xE9
    (latin-1 é, not UTF-8); the rest of the body stays valid."""
    payload = response.payload
    rows = _records_of(payload)
    if not rows or not isinstance(rows[0], dict):
        return response.body()
    row = rows[rng_value % len(rows)]
    # an invoice, else a client or user
    field_name = "client_name" if "client_name" in row or "invoicenumber" in row else "name"
    row[field_name] = _INVALID_UTF8_MARK
    return response.body().replace(shapes.dumps(_INVALID_UTF8_MARK), b'"Caf\xe9"')


def _corrupt_one_record(payload: Any, rng_value: int) -> Any:
    """Break one record while the body stays valid JSON: a non-numeric amount ("abc") or a
    missing id. Works on list envelopes, bare arrays and single objects."""
    rows: list[Any] | None = None
    if isinstance(payload, list):
        rows = payload
    elif isinstance(payload, dict):
        rows = next((v for v in payload.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
        if rows is None and "id" in payload:
            rows = [payload]
    if not rows or not isinstance(rows[0], dict):
        return payload
    row = rows[rng_value % len(rows)]
    amount_key = next((k for k in ("total", "amount") if k in row), None)
    if rng_value % 2 == 0 and amount_key:
        row[amount_key] = "abc"
    else:
        row.pop("id", None)
    return payload


class SandboxHandler(BaseHTTPRequestHandler):
    sandbox: SandboxServer  # set on the bound subclass
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server behind a load balancer
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    timeout = 60  # idle keep-alive connections give their thread back

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
        # the client's delayed ACK stall every keep-alive response (benchmarks/README.md, "History").
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.sandbox._connections_lock:
            self.sandbox._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.sandbox._connections_lock:
                self.sandbox._connections.discard(self.connection)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _send(self, response: Response) -> None:
        body = response.body()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_trickle(self, response: Response, chunk: int, delay: float) -> None:
        """The headers at once, then the body `chunk` bytes every `delay` seconds (until the client leaves)."""
        body = response.body()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for start in range(0, len(body), chunk):
                self.wfile.write(body[start : start + chunk])
                self.wfile.flush()
                time.sleep(delay)
        except OSError:  # the client gave up
            self.close_connection = True

    def _send_huge(self, size: int, declare_length: bool) -> None:
        """A 200 answer of `size` bytes of valid JSON, written 64 KB at a time (never built whole)."""
        head, tail = b'{"record_count":1,"invoices":[{"id":1,"padding":"', b'"}]}'
        padding = max(size - len(head) - len(tail), 0)
        self.send_response(200)
        self.send_header("Content-Type", JSON_TYPE)
        if declare_length:
            self.send_header("Content-Length", str(len(head) + padding + len(tail)))
        else:
            self.send_header("Connection", "close")  # the end of the body is the end of the connection
            self.close_connection = True
        self.end_headers()
        block = b"x" * 65536
        try:
            self.wfile.write(head)
            while padding > 0:
                self.wfile.write(block[:padding])
                padding -= min(padding, len(block))
            self.wfile.write(tail)
        except OSError:  # the client refused to read on
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _dispatch(self, method: str) -> None:
        sandbox = self.sandbox
        started = time.monotonic()
        parts = urlsplit(self.path)
        path = parts.path or "/"
        query = {k.lower(): v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""

        if path.lower().startswith("/_sandbox"):
            try:
                response = sandbox.handle_control(method, path, query, body)
            except Exception as exc:  # never let a bad control call kill the thread silently
                response = Response(500, {"error": f"{type(exc).__name__}: {exc}"})
            self._send(response)
            return

        picked = sandbox.faults.pick(method, path, query)
        mode = picked.mode if picked else None
        fault = cast(FaultRule, picked)  # read below only under a mode, i.e. when a rule was picked
        served_query = query  # what the resource sees (faults may change it); the log keeps the request's
        if mode == "huge_body":
            sandbox._log(method, path, query, 200, started, mode)
            self._send_huge(fault.size, fault.declare_length)
            return
        if mode == "endless_pages" and q_bool(query, "pageinate", False):
            served_query = {**query, "page_no": "1"}
        if mode == "page_drift" and (q_int(query, "page_no") or 1) >= 2:
            served_query = {**query, DRIFT_PARAM: str(fault.shift)}
        if mode == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            if fault.status == 429:
                text = shapes.rate_limit_message(sandbox.rate_limiter.limit or 300, sandbox.rate_limiter.window or 300)
                response = Response(429, raw=text.encode(), content_type="text/plain; charset=utf-8", headers=headers)
            elif fault.status in (502, 503, 504):
                html = f"<html><body><h1>{fault.status} Service Unavailable</h1></body></html>".encode()
                response = Response(fault.status, raw=html, content_type="text/html", headers=headers)
            else:
                response = Response(
                    fault.status,
                    {"ClassName": "System.Exception", "Message": "An error has occurred."},
                    headers=headers,
                )
            sandbox._log(method, path, query, response.status, started, mode)
            self._send(response)
            return
        if mode == "slow":
            time.sleep(fault.delay)
        if mode == "drop":
            sandbox._log(method, path, query, 0, started, mode)
            self._drop()
            return
        if mode == "expire_token":
            sandbox.expire_tokens()

        try:
            response = sandbox.handle_halo(method, path, served_query, body, self.headers)
        except Exception as exc:
            response = Response(
                500,
                {"ClassName": type(exc).__name__, "Message": "An error has occurred.", "ExceptionMessage": str(exc)},
            )

        if mode == "lost_response":
            sandbox._log(method, path, query, 0, started, mode)
            self._drop()
            return
        if mode == "malformed_json":
            full = response.body() or b'{"record_count": 0}'
            response = Response(200, raw=full[: max(1, len(full) // 2)], content_type=JSON_TYPE)
        elif mode == "malformed_record" and response.payload is not None:
            response.payload = _corrupt_one_record(response.payload, sandbox.faults._random.randrange(1 << 30))
        elif mode == "endless_pages" and isinstance(response.payload, dict) and "record_count" in response.payload:
            response.payload = {
                **response.payload,
                "page_no": q_int(query, "page_no") or 1,
                "record_count": response.payload["record_count"] * 1000,
            }
        elif mode == "invalid_utf8" and response.payload is not None:
            response.raw = _with_invalid_utf8(response, sandbox.faults._random.randrange(1 << 30))
        # Logged before sending, so a client that got its answer always finds the entry.
        sandbox._log(method, path, query, response.status, started, mode)
        if mode == "trickle":
            self._send_trickle(response, fault.chunk, fault.delay)
            return
        self._send(response)
