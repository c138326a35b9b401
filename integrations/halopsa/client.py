"""The HaloPSA API client: the one module that talks HTTP to HaloPSA.

What it owns:
- client-credentials auth with a token cached per client and per process (shared by every client
  of the same HaloPSA application), re-authenticating once on a 401 (or on the 400 some instances
  send for an expired token);
- paging: streams list endpoints page by page at the server's cap of 100 rows, stops exactly at
  the last page and exposes `record_count` for progress. Client and user lists include inactive
  rows on purpose: an incremental sync must see a customer or billing contact turn inactive, and
  mapping.py decides what that means;
- resilience: timeouts on every call, retries with exponential backoff and full jitter on 429,
  500 (at most twice), 502/503/504, connection errors and timeouts of idempotent requests;
  Retry-After honoured (a long one raises HaloRateLimited so the caller reschedules);
- limits a hostile or broken server cannot stretch (the URL is typed by a partner): each whole
  exchange ends within `request_deadline` seconds (connect, answer and body together, however
  slowly the bytes trickle), bodies are streamed and refused beyond `max_response_bytes` (never
  read whole first), an optional `deadline` (a sync run's end) stops retries, waits and requests
  that would pass it, and list paging stops with an error when pages repeat or run past what
  `record_count` said by a margin;
- exactly-once payments: `create_payment` looks the payment up by our reference before posting
  and after any ambiguous outcome, so it is safe to call again. The lookup lists the invoice's
  payments exactly and matches on our side (never `search`), or refuses to answer;
- a client-side request budget (budget.py) and SSRF-safe outbound connections (outbound.py);
- typed errors with messages a partner can act on (exceptions.py); one log line per request
  with method, path, status, duration and attempt, never a secret or a token;
- request statistics (`RequestStats`) a sync run can share.

Records are returned as parsed JSON dicts (numbers as Decimal); mapping them is mapping.py's job.
Text that is not valid UTF-8 fails only the records that hold it: they carry the fields it was in
under `payloads.INVALID_TEXT_KEY` (the bad bytes shown as U+FFFD), and mapping.py refuses them.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from urllib3 import exceptions as urllib3_exceptions
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

from .budget import RequestBudget
from .payloads import parse_json  # noqa: F401 - part of the client's API
from .exceptions import (
    HaloAmbiguousWrite,
    HaloAuthError,
    HaloBadResponse,
    HaloConnectionError,
    HaloDeadlineReached,
    HaloError,
    HaloNotFound,
    HaloPaymentsUnlistable,
    HaloPermissionError,
    HaloRateLimited,
    HaloRequestRejected,
    HaloServerError,
    HaloTimeout,
    UnsafeURLError,
)
from .outbound import RequestDeadline, request_deadline, safe_session, validate_url
from .shape import BARE_ARRAY, PAYMENTS_VIA_INVOICE, PAYMENTS_VIA_LIST, UNKNOWN

if TYPE_CHECKING:  # pragma: no cover
    from integrations.models import Connection

logger = logging.getLogger("integrations.halopsa.client")

PAGE_SIZE = 100  # HaloPSA returns at most 100 rows per page whatever page_size asks for (reference §2)
TOKEN_EARLY_REFRESH = 60.0  # seconds before expiry at which a cached token is replaced
RETRY_AFTER_CAP = 120.0  # longer Retry-After values are handed to the caller (HaloRateLimited)
BACKOFF_CAP = 60.0
MAX_500_RETRIES = 2  # a 500 is usually a bug in HaloPSA for this request; retry it a little only
# An answer that took its whole deadline is tried once more: a server that slow is rarely faster
# the third time, and each try may hold the worker for the full deadline.
MAX_DEADLINE_RETRIES = 1
BODY_CHUNK = 64 * 1024  # bytes read from a streamed body at a time
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
EXCERPT_CHARS = 160

ENVELOPE_CLIENTS = "clients"
ENVELOPE_USERS = "users"
ENVELOPE_INVOICES = "invoices"
# The id-only lists of the deletion sweep: the same filters as each list's full read.
_ID_LISTS = {
    ENVELOPE_CLIENTS: ("Client", {"includeactive": "true", "includeinactive": "true"}),
    ENVELOPE_USERS: ("Users", {"includeactive": "true", "includeinactive": "true"}),
    ENVELOPE_INVOICES: ("Invoice", {}),
}
# GET /InvoicePayment's list key is undocumented (reference §2, §11.7): these first, then any
# single list-valued key (`payment_rows`).
PAYMENT_LIST_KEYS = ("invoicepayments", "payments")
# One invoice's payments fill at most this many pages; more means something is wrong.
MAX_PAYMENT_PAGES = 20


# ---------------------------------------------------------------------------------------------
# Small value types


@dataclass
class RequestStats:
    """Counts every HTTP attempt (token calls included). Pass one instance to several clients to
    total a sync run."""

    requests: int = 0
    retries: int = 0
    bytes: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests: int = 0, retries: int = 0, bytes: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.bytes += bytes
            self.errors += errors

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "retries": self.retries, "bytes": self.bytes, "errors": self.errors}


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    record_count: int  # total rows matching the query, for progress
    page_no: int
    # Rows of this page left out because an earlier page of the same read already had their id:
    # the list changed while it was read (page drift). Each record is yielded once per read.
    repeated: int = 0


@dataclass
class _Token:
    value: str
    expires_at: float  # time.monotonic() after which we stop using it


# Process-wide token cache: several clients (a sync run, a webhook, a push) share one token per
# HaloPSA application instead of each asking for their own.
_TOKEN_CACHE: dict[tuple[str, str, str], _Token] = {}
_TOKEN_LOCK = threading.Lock()


def clear_token_cache() -> None:
    with _TOKEN_LOCK:
        _TOKEN_CACHE.clear()


# ---------------------------------------------------------------------------------------------
# Helpers


def format_query_datetime(value: datetime | date) -> str:
    """`YYYY-MM-DDTHH:MM:SS` in UTC, the form HaloPSA's date filters take. Naive means UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{value.isoformat()}T00:00:00"




_DECIMAL_MARK = "\u0000decimal:"
_DECIMAL_MARK_RE = re.compile(r'"\\u0000decimal:(-?\d+(?:\.\d+)?)"')


def dumps_json(payload: Any) -> bytes:
    """JSON with Decimals written as plain numbers with all their digits (never via float)."""

    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"not a finite amount: {value}")
            return _DECIMAL_MARK + format(value, "f")
        if isinstance(value, datetime):
            return format_query_datetime(value)
        if isinstance(value, date):
            return format_query_datetime(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    text = json.dumps(payload, default=default, separators=(",", ":"))
    return _DECIMAL_MARK_RE.sub(r"\1", text).encode("utf-8")


def list_extra_pages(record_count: int, page_size: int) -> int:
    """How many pages a list may run past what its first record_count implies before the read
    stops: HALOPSA_LIST_EXTRA_PAGES (default 10), or a tenth more when that is more (records
    added while a long read runs)."""
    extra = max(0, int(getattr(settings, "HALOPSA_LIST_EXTRA_PAGES", 10)))
    return max(extra, -(-record_count // page_size) // 10)


def _first_sightings(records: list[Any], read_ids: set[Any]) -> list[Any]:
    """`records` less those whose id is already in `read_ids` (then adds the new ids). Records
    without a usable id are always kept: mapping reports them."""
    fresh = []
    for record in records:
        record_id = record.get("id") if type(record) is dict else None
        if record_id is not None and type(record_id) is not int:
            record_id = str(record_id) if isinstance(record_id, (str, Decimal)) else None
        if record_id is None:
            fresh.append(record)
        elif record_id not in read_ids:
            read_ids.add(record_id)
            fresh.append(record)
    return fresh


def _same_id(value: Any, expected: int) -> bool:
    """Whether a HaloPSA id (an int, or a number or digits HaloPSA sent otherwise) is `expected`."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == expected
    if isinstance(value, Decimal):
        return value.is_finite() and value == expected
    return isinstance(value, str) and value.strip().isdecimal() and int(value.strip()) == expected


def _reference_text(value: Any) -> str:
    return str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _only_match(rows: list[Any], reference: str, invoice_id: int) -> dict[str, Any] | None:
    """The one row whose `reference` or `thirdpartyid` is exactly `reference` (compared on our side)."""
    wanted = reference.strip()
    matches = [row for row in rows if isinstance(row, dict)
               and wanted in (_reference_text(row.get("reference")), _reference_text(row.get("thirdpartyid")))]
    if len({str(row.get("id")) for row in matches}) > 1:
        raise HaloError(
            f"HaloPSA holds {len(matches)} payments carrying reference {reference} on invoice {invoice_id}. "
            "Delete the extra ones in HaloPSA, then retry.", permanent=True,
        )
    return matches[0] if matches else None


def _first_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def extract_error_message(body: Any) -> str:
    """HaloPSA's message from any of its error body shapes (reference §8), or "".

    Shapes: {"error", "error_description"} (OAuth), {"ClassName", "Message"} (.NET exception),
    {"Message"}, {"resultCode", "errorMessage"}, a bare JSON string, {"<field>": "<message>"},
    or a list of any of these.
    """
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            parsed = parse_json(text)
        except ValueError:
            return _plain_text(text)
        return extract_error_message(parsed)
    if isinstance(body, list):
        for item in body:
            message = extract_error_message(item)
            if message:
                return message
        return ""
    if not isinstance(body, dict):
        return ""
    lowered = {str(k).lower(): v for k, v in body.items()}
    for key in ("error_description", "errormessage", "exceptionmessage", "message", "detail", "title"):
        message = _first_text(lowered.get(key))
        if message:
            if key == "message" and _first_text(lowered.get("messagedetail")):
                message = f"{message} {lowered['messagedetail'].strip()}"
            return message
    error = lowered.get("error")
    if isinstance(error, dict):
        return extract_error_message(error)
    if _first_text(error):
        return _first_text(error)
    errors = lowered.get("errors")
    if isinstance(errors, (dict, list)):
        return extract_error_message(errors) if isinstance(errors, list) else _field_messages(errors)
    return _field_messages(body)


def _field_messages(body: dict[Any, Any]) -> str:
    # {"id": "must be set"} or {"[0].amount": ["bad"]}: the field path is part of the message.
    parts = []
    for key, value in body.items():
        if isinstance(value, list):
            value = "; ".join(v for v in value if isinstance(v, str))
        if isinstance(value, str) and value.strip():
            parts.append(f"{key}: {value.strip()}")
    return "; ".join(parts[:3])


def _plain_text(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # an HTML error page from a proxy
    return " ".join(text.split())[:EXCERPT_CHARS]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(seconds, 0.0)


class _Retry(Exception):
    """Internal: this attempt failed in a way the retry loop may repeat."""

    def __init__(self, error: HaloError, *, retry_after: float | None = None, kind: str = "status"):
        self.error = error
        self.retry_after = retry_after
        self.kind = kind  # "status" | "connect" | "ambiguous" | "timeout" | "body"


# ---------------------------------------------------------------------------------------------
# The client


class HaloClient:
    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        auth_url: str = "",
        tenant: str = "",
        stats: RequestStats | None = None,
        budget_key: str | None = None,
        rate_limit: int | None = None,
        rate_window: float | None = None,
        budget_max_wait: float | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_retries: int | None = None,
        retry_base_delay: float | None = None,
        sleep: Callable[[float], None] | None = None,
        request_deadline: float | None = None,
        max_response_bytes: int | None = None,
        deadline: float | None = None,
    ):
        self.base_url = (base_url or "").strip().rstrip("/")
        self.auth_url = (auth_url or "").strip().rstrip("/")
        self.client_id = (client_id or "").strip()
        self._client_secret = client_secret or ""
        self.tenant = (tenant or "").strip()
        self.stats = stats if stats is not None else RequestStats()
        self.connect_timeout = float(
            connect_timeout if connect_timeout is not None else getattr(settings, "HALOPSA_CONNECT_TIMEOUT", 5.0)
        )
        self.read_timeout = float(
            read_timeout if read_timeout is not None else getattr(settings, "HALOPSA_READ_TIMEOUT", 60.0)
        )
        self.max_retries = int(max_retries if max_retries is not None else getattr(settings, "HALOPSA_MAX_RETRIES", 5))
        # One whole exchange (connect, answer, body), however slowly its bytes arrive.
        self.request_deadline = float(
            request_deadline if request_deadline is not None else getattr(settings, "HALOPSA_REQUEST_DEADLINE", 120.0)
        )
        self.max_response_bytes = int(
            max_response_bytes if max_response_bytes is not None
            else getattr(settings, "HALOPSA_MAX_RESPONSE_BYTES", 64 * 1024 * 1024)
        )
        # time.monotonic() by which the caller's work must end (a sync run's deadline), or None.
        self.deadline = deadline
        self.retry_base_delay = float(
            retry_base_delay if retry_base_delay is not None else getattr(settings, "HALOPSA_RETRY_BASE_DELAY", 1.0)
        )
        self._sleep = sleep or time.sleep
        self.budget = RequestBudget(
            budget_key or f"url:{self.base_url}:{self.client_id}",
            limit=rate_limit,
            window=rate_window,
            max_wait=budget_max_wait,
            sleep=self._sleep,
        )
        self._token: _Token | None = None
        self._session: requests.Session | None = None
        # What the payment lookups met (the push records them in HaloShape when they were unknown).
        self.payments_lookup_used = UNKNOWN
        self.payments_list_key = UNKNOWN
        # Checked up front so a bad URL fails with a clear message before anything else happens.
        validate_url(self.base_url or "")
        if self.auth_url:
            validate_url(self.auth_url)

    @classmethod
    def for_connection(cls, connection: Connection, stats: RequestStats | None = None, **overrides: Any) -> HaloClient:
        kwargs: dict[str, Any] = {
            "base_url": connection.base_url,
            "auth_url": connection.auth_url,
            "client_id": connection.client_id,
            "client_secret": connection.client_secret,
            "tenant": connection.tenant,
            "stats": stats,
            "budget_key": f"conn:{connection.pk}",
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:  # never show the secret
        return f"<HaloClient {self.base_url} client_id={self.client_id}>"

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> HaloClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = safe_session()
        return self._session

    # -----------------------------------------------------------------------------------------
    # Auth

    @property
    def token_url(self) -> str:
        return f"{self.auth_url}/token" if self.auth_url else f"{self.base_url}/auth/token"

    def _token_cache_key(self) -> tuple[str, str, str]:
        # The secret's hash is part of the key so an edited secret is checked at once, not after an hour.
        return (self.token_url, self.client_id, hashlib.sha256(self._client_secret.encode()).hexdigest())

    def _access_token(self) -> str:
        now = time.monotonic()
        if self._token is not None and self._token.expires_at > now:
            return self._token.value
        key = self._token_cache_key()
        with _TOKEN_LOCK:
            shared = _TOKEN_CACHE.get(key)
        if shared is not None and shared.expires_at > now:
            self._token = shared
            return shared.value
        self._token = self._authenticate()
        with _TOKEN_LOCK:
            _TOKEN_CACHE[key] = self._token
        return self._token.value

    def _forget_token(self, value: str) -> None:
        if self._token is not None and self._token.value == value:
            self._token = None
        key = self._token_cache_key()
        with _TOKEN_LOCK:
            shared = _TOKEN_CACHE.get(key)
            if shared is not None and shared.value == value:
                del _TOKEN_CACHE[key]

    def _authenticate(self) -> _Token:
        if not self.client_id or not self._client_secret:
            raise HaloAuthError("The connection has no HaloPSA client ID or secret; enter both in its settings.")
        params = {"tenant": self.tenant} if self.tenant else None
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "scope": "all",
        }
        response = self._call(
            "POST", self.token_url, params=params, data=form, authenticated=False, idempotent=True, kind="token"
        )
        try:
            body = parse_json(response.content)
        except ValueError:
            raise HaloBadResponse(
                "HaloPSA's token endpoint did not answer with JSON. Check the HaloPSA URL "
                "and the Authorisation server URL.", status=response.status_code, permanent=True,
            ) from None
        # Never quote the token response: it holds the token.
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise HaloBadResponse(
                "HaloPSA's token endpoint answered without an access token. Check the Authorisation server URL.",
                status=response.status_code, permanent=True,
            )
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        early = min(TOKEN_EARLY_REFRESH, lifetime / 10)
        return _Token(value=token, expires_at=time.monotonic() + max(lifetime - early, 0.0))

    def _token_error(self, response: requests.Response) -> HaloError:
        status = response.status_code
        message = self._scrub(extract_error_message(response.content))
        lowered = message.lower()
        if status in (400, 401) and ("invalid_client" in response.text or "client" in lowered or status == 401):
            return HaloAuthError(status=status)
        if status == 400 and "scope" in lowered:
            return HaloPermissionError(
                f"HaloPSA refused the requested permissions ({message}). Give the API application the "
                "'all' scope under Configuration > Integrations > HaloPSA API.", status=status,
            )
        if status == 400 and "tenant" in lowered:
            return HaloAuthError(f"HaloPSA did not accept the tenant name ({message}). Check the tenant.", status=status)
        if status == 404:
            return HaloNotFound(
                f"No HaloPSA sign-in endpoint at {self._display_url(self.token_url)}. Check the HaloPSA URL and "
                "the Authorisation server URL (shown in HaloPSA under Configuration > Integrations > HaloPSA API).",
                status=status,
            )
        if status == 400:
            return HaloAuthError(
                f"HaloPSA refused to sign in{': ' + message if message else ''}. Check the client ID, secret and tenant.",
                status=status,
            )
        return self._status_error(response, path="/auth/token")

    # -----------------------------------------------------------------------------------------
    # The request loop

    def _api_url(self, path: str) -> str:
        return f"{self.base_url}/api/{path.lstrip('/')}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        idempotent: bool | None = None,
        expect: str = "json",
    ) -> Any:
        """Call /api/<path> with auth, budget, retries; return parsed JSON (or bytes/None)."""
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        reauthenticated = False
        while True:
            token = self._access_token()
            try:
                return self._call(
                    method, self._api_url(path), params=params, json_body=json_body, token=token,
                    authenticated=True, idempotent=idempotent, expect=expect,
                )
            except _ExpiredToken:
                if reauthenticated:
                    raise HaloAuthError(
                        "HaloPSA refused a freshly issued token. Check that the API application is active and "
                        "its 'log in as' agent is enabled, under Configuration > Integrations > HaloPSA API.",
                        status=401,
                    ) from None
                reauthenticated = True
                self._forget_token(token)
                self.stats.add(retries=1)

    def _call(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        json_body: Any = None,
        token: str | None = None,
        authenticated: bool,
        idempotent: bool,
        expect: str = "json",
        kind: str = "api",
    ) -> Any:
        attempt = 0
        retries_500 = 0
        retries_deadline = 0
        while True:
            attempt += 1
            try:
                return self._attempt(
                    method, url, params=params, data=data, json_body=json_body, token=token,
                    authenticated=authenticated, expect=expect, kind=kind, attempt=attempt,
                )
            except _Retry as failure:
                error = failure.error
                retryable = attempt <= self.max_retries and not error.permanent
                if not idempotent and failure.kind != "connect" and error.status != 429:
                    # The request may have been carried out (only a refused connection or a 429
                    # proves it was not); repeating it is the caller's decision.
                    retryable = False
                if error.status == 500:
                    retries_500 += 1
                    retryable = retryable and retries_500 <= MAX_500_RETRIES
                if failure.kind == "deadline":
                    retries_deadline += 1
                    retryable = retryable and retries_deadline <= MAX_DEADLINE_RETRIES
                if not retryable:
                    raise error from None
                delay = self._backoff(attempt)
                if failure.retry_after is not None:
                    if failure.retry_after > RETRY_AFTER_CAP:
                        raise HaloRateLimited(
                            f"HaloPSA asked the portal to wait {math.ceil(failure.retry_after)} seconds; "
                            "the work continues automatically after that.",
                            retry_after=failure.retry_after, status=error.status,
                        ) from None
                    # At least what HaloPSA asked for, plus a little jitter so workers do not stampede.
                    delay = failure.retry_after + random.uniform(0, self.retry_base_delay)
                if self._time_left() is not None and delay >= self._time_left():
                    raise self._deadline_reached(f"{method} {self._log_path(url)} failed ({error.message})") from None
                self.stats.add(retries=1)
                logger.info("halopsa retrying %s %s in %.2f s after: %s", method, self._log_path(url), delay, error.message)
                self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with full jitter (AWS Builders' Library).
        return random.uniform(0, min(BACKOFF_CAP, self.retry_base_delay * (2 ** (attempt - 1))))

    def _time_left(self) -> float | None:
        """Seconds until the caller's `deadline`, or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _deadline_reached(self, doing: str) -> HaloDeadlineReached:
        return HaloDeadlineReached(f"The time allowed for this work ran out while HaloPSA was being called ({doing}).")

    def _acquire_budget(self, doing: str) -> None:
        """A slot of the request budget; never waited for past the caller's deadline."""
        left = self._time_left()
        if left is None:
            self.budget.acquire()
            return
        if left <= 0:
            raise self._deadline_reached(doing)
        configured = self.budget.max_wait
        self.budget.max_wait = min(configured, left)
        try:
            self.budget.acquire()
        except HaloRateLimited:
            if configured > left:  # the wait was cut short by the deadline, not by the budget's own limit
                raise self._deadline_reached(f"{doing}, waiting for the request budget") from None
            raise
        finally:
            self.budget.max_wait = configured

    def _attempt(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None,
        data: dict[str, str] | None,
        json_body: Any,
        token: str | None,
        authenticated: bool,
        expect: str,
        kind: str,
        attempt: int,
    ) -> Any:
        path = self._log_path(url)
        self._acquire_budget(f"{method} {path}")
        headers = {"Accept": "application/json" if expect == "json" else "*/*"}
        body: bytes | None = None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            body = dumps_json(json_body)
        # The whole exchange ends by the request deadline, or by the caller's deadline if sooner.
        left = self._time_left()
        limit = self.request_deadline if left is None else min(self.request_deadline, left)
        if limit <= 0:
            raise self._deadline_reached(f"{method} {path}")
        started = time.monotonic()
        status: int | str = "-"
        response: requests.Response | None = None
        with request_deadline(limit) as deadline:
            try:
                response = self.session.request(
                    method, url, params=params, data=data if data is not None else body, headers=headers,
                    timeout=(min(self.connect_timeout, limit), min(self.read_timeout, limit)), allow_redirects=False,
                    stream=True,
                )
                status = response.status_code
                content = self._read_body(response, path)  # here, so a cut-off body counts as this attempt's failure
                if deadline.expired:  # cut while reading headers can look like a complete, empty answer
                    raise requests.exceptions.ConnectionError("the request deadline passed")
            except UnsafeURLError:
                status = "refused"  # nothing was sent
                raise
            except HaloBadResponse:
                status = "too-large"
                raise
            except (requests.exceptions.RequestException, OSError) as exc:
                status = "deadline" if deadline.expired else "error"
                self.stats.add(errors=1)
                raise self._transport_failure(exc, deadline, limit, url, cut_by_caller=limit < self.request_deadline) from None
            finally:
                if response is not None and response._content is False:  # not read to the end: the connection is not reused
                    response.close()
                if status != "refused":
                    self.stats.add(requests=1)
                logger.info(
                    "halopsa %s %s status=%s duration_ms=%d attempt=%d",
                    method, path, status, (time.monotonic() - started) * 1000, attempt,
                )

        if response.status_code >= 400 or 300 <= response.status_code < 400:
            self.stats.add(errors=1)
        if 300 <= response.status_code < 400:
            location = response.headers.get("Location", "")
            raise HaloBadResponse(
                f"HaloPSA answered with a redirect{' to ' + self._display_url(location) if location else ''}; "
                "the portal does not follow redirects. Enter the instance's final https address as the HaloPSA URL.",
                status=response.status_code, permanent=True,
            )
        if kind == "token":
            if response.status_code in RETRY_STATUSES:
                raise _Retry(self._status_error(response, path="/auth/token"),
                             retry_after=parse_retry_after(response.headers.get("Retry-After")))
            if response.status_code >= 400:
                raise self._token_error(response)
            return response
        if authenticated and self._looks_like_expired_token(response):
            raise _ExpiredToken()
        if response.status_code in RETRY_STATUSES:
            raise _Retry(self._status_error(response, path=path),
                         retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 400:
            raise self._status_error(response, path=path)
        if expect == "none":
            return None
        if expect == "bytes":
            return content
        if not content.strip():
            return None
        try:
            # Invalid UTF-8 fails only the records holding it (marked; mapping.py refuses them).
            return parse_json(content, mark_invalid_text=True)
        except ValueError:
            raise _Retry(HaloBadResponse(
                f"HaloPSA sent malformed JSON for {path} (starts: {self._excerpt(content)!r}).",
                status=response.status_code,
            ), kind="body") from None

    def _read_body(self, response: requests.Response, path: str) -> bytes:
        """The whole body, streamed: refused (HaloBadResponse) as soon as it passes
        `max_response_bytes`, by its Content-Length before anything is read, else as it arrives
        (decompressed bytes count, so a small gzip bomb is refused too). Kept on the response,
        so `response.content`/`text` work as usual."""
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.strip().isdecimal() and int(declared) > limit:
            raise self._too_large(path, f"it announced {int(declared):,} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(BODY_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise self._too_large(path, f"more than {limit:,} bytes had arrived")
                chunks.append(chunk)
        finally:
            self.stats.add(bytes=size)
        content = b"".join(chunks)
        response._content = content
        return content

    def _too_large(self, path: str, why: str) -> HaloBadResponse:
        limit_mb = self.max_response_bytes / (1024 * 1024)
        return HaloBadResponse(
            f"HaloPSA's answer to {path} was larger than the {limit_mb:g} MB the portal accepts ({why}); it was not read. "
            "A real HaloPSA page stays far below this: check the HaloPSA URL, or raise HALOPSA_MAX_RESPONSE_BYTES."
        )

    def _transport_failure(self, exc: BaseException, deadline: RequestDeadline, limit: float, url: str, *,
                           cut_by_caller: bool) -> _Retry | HaloError:
        """What an exception from sending or reading means, as the retry loop sees it."""
        path = self._log_path(url)
        if deadline.expired:
            if cut_by_caller:
                return self._deadline_reached(f"{path} was still answering")
            return _Retry(HaloTimeout(
                f"HaloPSA took longer than {limit:g} seconds to send its whole answer to {path} (connecting, "
                "answering and the body together); the request will be retried later."
            ), kind="deadline")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Retry(HaloTimeout(
                f"HaloPSA at {self._display_url(url)} did not accept a connection within "
                f"{self.connect_timeout:g} seconds. Check the HaloPSA URL and that the instance is online."
            ), kind="connect")
        if isinstance(exc, requests.exceptions.Timeout):
            return _Retry(HaloTimeout(
                f"HaloPSA did not answer within {self.read_timeout:g} seconds; the request will be retried later."
            ), kind="timeout")
        if isinstance(exc, requests.exceptions.ConnectionError):
            error, failure_kind = self._connection_error(exc)
            return _Retry(error, kind=failure_kind)
        return _Retry(HaloConnectionError(
            f"The connection to HaloPSA failed ({type(exc).__name__}); the request will be retried later."
        ), kind="ambiguous")

    @staticmethod
    def _looks_like_expired_token(response: requests.Response) -> bool:
        if response.status_code == 401:
            return True
        if response.status_code != 400:
            return False
        text = response.text[:2000].lower()
        return "token" in text and any(w in text for w in ("expired", "invalid_token", "invalid token"))

    def _connection_error(self, exc: requests.exceptions.ConnectionError) -> tuple[HaloError, str]:
        """The partner-facing error and whether the request never left ("connect") or may have ("ambiguous")."""
        reason = exc.args[0] if exc.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        host = urlsplit(self.base_url).hostname or self.base_url
        if isinstance(reason, urllib3_exceptions.ReadTimeoutError):  # raised while reading the body
            return HaloTimeout(
                f"HaloPSA did not answer within {self.read_timeout:g} seconds; the request will be retried later."
            ), "timeout"
        if isinstance(reason, NameResolutionError):
            return HaloConnectionError(f"The HaloPSA host {host} could not be found (DNS). Check the HaloPSA URL."), "connect"
        if isinstance(reason, NewConnectionError):
            return HaloConnectionError(
                f"HaloPSA at {host} refused the connection. Check the HaloPSA URL and that the instance is online."
            ), "connect"
        if isinstance(exc, requests.exceptions.SSLError) or isinstance(reason, urllib3_exceptions.SSLError):
            return HaloConnectionError(
                f"The secure (TLS) connection to {host} failed; its certificate may be invalid. Check the HaloPSA URL.",
                permanent=True,
            ), "connect"
        return HaloConnectionError(
            f"The connection to HaloPSA at {host} broke before it answered; the request will be retried."
        ), "ambiguous"

    def _status_error(self, response: requests.Response, *, path: str) -> HaloError:
        status = response.status_code
        message = self._scrub(extract_error_message(response.content))
        said = f" HaloPSA said: {message}" if message else ""
        if status == 400:
            return HaloRequestRejected(f"HaloPSA rejected the request to {path}.{said}", status=status)
        if status == 401:
            return HaloAuthError(status=status)
        if status == 403:
            return HaloPermissionError(
                f"The HaloPSA API application lacks permission for {path}. Grant it under Configuration > "
                f"Integrations > HaloPSA API > Applications > Permissions (the portal needs read/edit customers, "
                f"read/edit invoices and admin webhooks).{said}",
                status=status,
            )
        if status == 404:
            return HaloNotFound(f"HaloPSA has no record at {path} (it may have been deleted).{said}", status=status)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return HaloRateLimited(
                f"HaloPSA's rate limit was reached; the work continues automatically later.{said}",
                retry_after=retry_after, status=status,
            )
        if status >= 500:
            return HaloServerError(f"HaloPSA had an error ({status}) on {path}; it will be retried later.{said}", status=status)
        return HaloError(f"HaloPSA answered {status} for {path}.{said}", status=status, permanent=True)

    def _scrub(self, text: str) -> str:
        for secret in (self._client_secret, self._token.value if self._token else ""):
            if secret and secret in text:
                text = text.replace(secret, "[redacted]")
        return text[:300]

    def _excerpt(self, content: bytes) -> str:
        return self._scrub(content[:EXCERPT_CHARS].decode("utf-8", "replace"))

    @staticmethod
    def _log_path(url: str) -> str:
        return urlsplit(url).path or "/"

    @staticmethod
    def _display_url(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    # -----------------------------------------------------------------------------------------
    # Paging

    def _pages(self, path: str, key: str, params: dict[str, Any], *, page_size: int = PAGE_SIZE) -> Iterator[Page]:
        """The list's pages, each requested only when the one before it has been consumed (a
        caller that stops early costs no further request).

        Each record is yielded once per read: a row whose id an earlier page already had (the list
        changed while it was read, "page drift") is left out and counted in `Page.repeated`. The
        read stops with HaloBadResponse when a page brings nothing new (HaloPSA ignores page_no,
        or serves the same rows again), or when it runs past what the first page's record_count
        implies by more than the margin (`list_extra_pages`): an endless or lying list can hold
        a worker only that long."""
        page_size = max(1, min(int(page_size), PAGE_SIZE))
        page_no = 1
        rows = 0
        first_count: int | None = None
        read_ids: set[Any] = set()
        while True:
            query = {**params, "pageinate": "true", "page_size": page_size, "page_no": page_no}
            body = self._request("GET", path, params=query)
            records, record_count = self._envelope(body, key, path)
            rows += len(records)
            # A page shorter than the size the server says it used is the last one. Trusting the
            # envelope's page_size (not ours) keeps a server with a smaller cap from ending early.
            served_size = body.get("page_size")
            if isinstance(served_size, bool) or not isinstance(served_size, int) or not 0 < served_size <= page_size:
                served_size = page_size
            if first_count is None:
                first_count = record_count
            fresh = _first_sightings(records, read_ids)
            if records and not fresh:
                raise HaloBadResponse(
                    f"HaloPSA answered page {page_no} of /api/{path} with only records it had already sent on earlier pages "
                    "(it ignores page_no, or the list changed that much while it was read). The read stops here; "
                    "nothing is flagged as deleted, and the next sync reads the list again."
                )
            allowed_pages = -(-first_count // served_size) + list_extra_pages(first_count, served_size)
            if page_no > allowed_pages or rows > allowed_pages * served_size:
                raise HaloBadResponse(
                    f"HaloPSA's list /api/{path} went on past page {allowed_pages} ({rows:,} rows) although it said it "
                    f"held {first_count:,} records; the portal stops reading a list that does not end. "
                    "Nothing is flagged as deleted; the next sync reads the list again."
                )
            if fresh:
                yield Page(records=fresh, record_count=record_count, page_no=page_no, repeated=len(records) - len(fresh))
            if not records or len(records) < served_size or rows >= record_count:
                return
            page_no += 1

    def _envelope(self, body: Any, key: str, path: str, *, require_count: bool = True) -> tuple[list[Any], int]:
        if not isinstance(body, dict):
            raise HaloBadResponse(
                f"HaloPSA's list of {key} ({path}) was not the expected object (got {type(body).__name__}).",
            )
        records = body.get(key)
        if not isinstance(records, list):
            raise HaloBadResponse(f"HaloPSA's list of {key} ({path}) has no '{key}' array; keys: {sorted(body)[:8]}.")
        record_count = body.get("record_count") if require_count else body.get("record_count", len(records))
        if isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0:
            raise HaloBadResponse(f"HaloPSA's list of {key} ({path}) has an invalid record_count {record_count!r}.")
        return records, record_count

    # Incremental reads (integrations/services/sync.py decides which one an instance gets):
    # `changed_since` is a date filter whose support varies (GET /Invoice `datesearch` is SW25
    # only, §3.2/§9; `lastupdatefromdate` on /Client and /Users is unverified as a filter,
    # §4.1/§11.6), `newest_first` orders by the record's last-change time, descending (the
    # fallback where the filter is ignored; `order`/`orderdesc` per §2). The date is sent in
    # HaloPSA's own frame: it comes from HaloPSA's timestamps (format_query_datetime).

    def client_pages(self, *, changed_since: datetime | None = None, include_inactive: bool = True,
                     newest_first: bool = False, page_size: int = PAGE_SIZE) -> Iterator[Page]:
        params: dict[str, Any] = {"includeactive": "true", "includeinactive": "true" if include_inactive else "false"}
        if changed_since is not None:
            params["lastupdatefromdate"] = format_query_datetime(changed_since)
        if newest_first:
            params.update(order="alastupdate", orderdesc="true")
        return self._pages("Client", ENVELOPE_CLIENTS, params, page_size=page_size)

    def user_pages(self, *, changed_since: datetime | None = None, client_id: int | None = None,
                   include_billing_info: bool = False, newest_first: bool = False,
                   page_size: int = PAGE_SIZE) -> Iterator[Page]:
        # Inactive users are included on purpose: an incremental sync must see a billing contact
        # turn inactive; mapping.py decides who is a billing contact.
        params: dict[str, Any] = {"includeactive": "true", "includeinactive": "true"}
        if changed_since is not None:
            params["lastupdatefromdate"] = format_query_datetime(changed_since)
        if client_id is not None:
            params["client_id"] = int(client_id)
        if include_billing_info:
            # "Include billing information in the response" (§4.2): on some instances the only way
            # list rows carry canaccessinvoices (HaloShape.billing_flag_source "list_billinginfo").
            params["includebillinginfo"] = "true"
        if newest_first:
            params.update(order="ulastupdate", orderdesc="true")
        return self._pages("Users", ENVELOPE_USERS, params, page_size=page_size)

    def invoice_pages(
        self,
        *,
        changed_since: datetime | None = None,
        include_lines: bool = True,
        payment_statuses: list[int] | tuple[int, ...] | None = None,
        client_id: int | None = None,
        include_credits: bool = False,
        newest_first: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Page]:
        params: dict[str, Any] = {}
        if include_lines:
            params["includelines"] = "true"
        if changed_since is not None:
            params["datesearch"] = "last_modified"
            params["start_date"] = format_query_datetime(changed_since)
        if payment_statuses:
            params["paymentstatuses"] = ",".join(str(int(s)) for s in payment_statuses)
        if client_id is not None:
            params["client_id"] = int(client_id)
        if include_credits:
            params["includecredits"] = "true"
        if newest_first:
            params.update(order="last_modified", orderdesc="true")
        return self._pages("Invoice", ENVELOPE_INVOICES, params, page_size=page_size)

    def listed_ids(self, entity: str) -> set[int]:
        """Every id of a list (ENVELOPE_CLIENTS, _USERS or _INVOICES) in one id-only call, with the
        filters of that list's full read: GET /Client, /Users or /Invoice with idonly=true and no
        paging (idonly is documented as not compatible with paging, reference §2). For the
        deletion sweep's second look at many candidates. Raises HaloBadResponse when the answer is
        visibly not the whole list (fewer rows than its record_count)."""
        path, params = _ID_LISTS[entity]
        body = self._request("GET", path, params={**params, "idonly": "true"})
        if isinstance(body, list):  # a bare array: nothing to check it against
            records, record_count = body, len(body)
        else:
            records, record_count = self._envelope(body, entity, path, require_count=False)
        if record_count > len(records):
            raise HaloBadResponse(
                f"HaloPSA's id-only list {path} held {len(records):,} of the {record_count:,} records it counted, "
                "so it cannot tell which records are gone."
            )
        return {value for value in (r.get("id") if isinstance(r, dict) else None for r in records)
                if type(value) is int}

    def iter_clients(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.client_pages(**kwargs):
            yield from page.records

    def iter_users(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.user_pages(**kwargs):
            yield from page.records

    def iter_invoices(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.invoice_pages(**kwargs):
            yield from page.records

    # -----------------------------------------------------------------------------------------
    # Single records

    def _record(self, body: Any, what: str) -> dict[str, Any]:
        if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
            body = body[0]
        if not isinstance(body, dict):
            raise HaloBadResponse(f"HaloPSA's {what} was not a JSON object (got {type(body).__name__}).")
        return body

    def instance_info(self) -> dict[str, Any]:
        return self._record(self._request("GET", "InstanceInfo"), "instance information")

    def version(self) -> str:
        info = self.instance_info()
        version = info.get("app_version") or info.get("version")
        if not isinstance(version, str) or not version.strip():
            raise HaloBadResponse("HaloPSA's instance information has no app_version.")
        return version.strip()

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """One GET of /api/<path> (auth, budget, retries), answered as parsed JSON whatever its shape.
        For the shape probe, whose job is to find out what the answers look like."""
        return self._request("GET", path, params=params)

    def get_client(self, client_id: int) -> dict[str, Any]:
        return self._record(self._request("GET", f"Client/{int(client_id)}"), f"client {client_id}")

    def get_user(self, user_id: int) -> dict[str, Any]:
        """GET /Users/{id}: the full `Users` record, the one that has canaccessinvoices where list
        rows do not (§4.2). includebillinginfo is sent in case the flag counts as billing
        information there too (unverified)."""
        return self._record(self._request("GET", f"Users/{int(user_id)}", params={"includebillinginfo": "true"}),
                            f"user {user_id}")

    def get_invoice(self, invoice_id: int, include_lines: bool = True) -> dict[str, Any]:
        params = {"includedetails": "true"} if include_lines else None
        return self._record(self._request("GET", f"Invoice/{int(invoice_id)}", params=params), f"invoice {invoice_id}")

    def get_invoice_pdf(self, invoice_id: int, attachment_id: int | None = None) -> bytes:
        if not attachment_id:
            created = self._record(
                self._request("POST", f"Invoice/PDF/{int(invoice_id)}", json_body={}, idempotent=True),
                f"PDF of invoice {invoice_id}",
            )
            attachment_id = created.get("id") or created.get("pdf_attachment_id") or created.get("attachment_id")
            if isinstance(attachment_id, bool) or not isinstance(attachment_id, int) or attachment_id <= 0:
                raise HaloBadResponse(f"HaloPSA did not return an attachment id for the PDF of invoice {invoice_id}.")
        content = self._request("GET", f"Attachment/{int(attachment_id)}", expect="bytes")
        if not content or not content.lstrip()[:5].startswith(b"%PDF"):
            raise HaloBadResponse(
                f"HaloPSA's attachment {attachment_id} for invoice {invoice_id} is not a PDF "
                f"(starts: {self._excerpt(content or b'')[:20]!r})."
            )
        return content

    # -----------------------------------------------------------------------------------------
    # Payments (exactly once)
    #
    # Exactly-once rests on listing one invoice's payments *exactly* and matching our reference
    # on our side, never on `search`: what it matches on /InvoicePayment is undocumented
    # (reference §2 "Search", §5). Two sources, each checked before it is trusted:
    # - `payments` of GET /Invoice/{id}?includedetails=true (InvoiceHeader.payments, §3.3, §5),
    #   only when the key is there and holds a list: an absent key never means "no payments";
    # - GET /InvoicePayment?invoice_id=N, paged, without `search` (§5). Unknown parameters are
    #   silently ignored (§2), so every row must carry invoice_id N: one row of another invoice
    #   means the filter is ignored, and the source is dropped at once rather than scanning the
    #   whole instance. Its list key is undocumented too (§2, §11.7): see `payment_rows`.

    def payments_in_invoice(self, invoice: Any, invoice_id: int) -> list[dict[str, Any]] | None:
        """The payments embedded in a GET /Invoice/{id}?includedetails=true answer, or None when the
        answer does not say (no `payments` list, or a row that is not a payment of this invoice)."""
        rows = invoice.get("payments") if isinstance(invoice, dict) else None
        if not isinstance(rows, list):
            return None
        for row in rows:
            if not isinstance(row, dict):
                return None
            if row.get("invoice_id") is not None and not _same_id(row.get("invoice_id"), invoice_id):
                return None
        return rows

    def payment_rows(self, body: Any) -> tuple[list[Any], int | None, str]:
        """The rows of a GET /InvoicePayment answer, its `record_count` (None when absent) and the key
        they came under (BARE_ARRAY for a bare array). The envelope is undocumented (§2, §11.7): a bare
        array, `invoicepayments`, `payments`, or else the one list-valued key of the object."""
        if isinstance(body, list):
            return body, None, BARE_ARRAY
        if not isinstance(body, dict):
            raise HaloBadResponse(
                f"HaloPSA's list of payments (/api/InvoicePayment) was not a list or an object (got {type(body).__name__})."
            )
        record_count = body.get("record_count")
        if isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0:
            record_count = None
        for key in PAYMENT_LIST_KEYS:
            if isinstance(body.get(key), list):
                return body[key], record_count, key
        # `columns` and its kin are view metadata on Halo's list envelopes (§2), never the rows.
        lists = sorted(str(k) for k, v in body.items() if isinstance(v, list) and not str(k).lower().startswith("columns"))
        if len(lists) == 1:
            return body[lists[0]], record_count, lists[0]
        if not lists and record_count == 0:
            return [], 0, UNKNOWN  # an explicit "none", under whatever key HaloPSA would use
        what = "no list" if not lists else f"several lists ({', '.join(lists[:4])})"
        raise HaloBadResponse(
            f"HaloPSA's list of payments (/api/InvoicePayment) has {what}, so the payments cannot be told apart; "
            f"keys: {sorted(str(k) for k in body)[:8]}."
        )

    def _note_payments_key(self, key: str) -> None:
        if key and key != self.payments_list_key:
            self.payments_list_key = key
            logger.info("halopsa GET /api/InvoicePayment lists its rows %s",
                        "as a bare array" if key == BARE_ARRAY else f"under the key {key!r}")

    def list_invoice_payments(self, invoice_id: int) -> list[dict[str, Any]]:
        """Every payment of one invoice from GET /InvoicePayment?invoice_id=N (paged, no `search`).

        Raises HaloPaymentsUnlistable when the answer cannot be trusted to be exactly that invoice's
        payments: a row of another invoice (the filter is ignored) or rows without their invoice id.
        """
        invoice_id = int(invoice_id)
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        page_no = 1
        while True:
            body = self._request("GET", "InvoicePayment", params={
                "invoice_id": invoice_id, "pageinate": "true", "page_size": PAGE_SIZE, "page_no": page_no})
            rows, record_count, key = self.payment_rows(body)
            self._note_payments_key(key)
            new_rows = 0
            for row in rows:
                if not isinstance(row, dict) or row.get("invoice_id") is None:
                    raise HaloPaymentsUnlistable(
                        f"HaloPSA's payments list (GET /api/InvoicePayment?invoice_id={invoice_id}) has rows without "
                        "their invoice id, so it cannot be told whether they are this invoice's payments."
                    )
                if not _same_id(row.get("invoice_id"), invoice_id):
                    raise HaloPaymentsUnlistable(
                        f"HaloPSA ignores the invoice_id filter of GET /api/InvoicePayment (asked for invoice "
                        f"{invoice_id}, it answered payments of invoice {row.get('invoice_id')}), so that call "
                        "cannot list one invoice's payments."
                    )
                row_key = str(row.get("id")) if row.get("id") is not None else f"#{len(found)}"
                if row_key not in seen:
                    seen.add(row_key)
                    found.append(row)
                    new_rows += 1
            served_size = body.get("page_size") if isinstance(body, dict) else None
            if isinstance(served_size, bool) or not isinstance(served_size, int) or not 0 < served_size <= PAGE_SIZE:
                served_size = PAGE_SIZE
            # A bare array may ignore paging and repeat itself: a page with nothing new is the end.
            if len(rows) < served_size or new_rows == 0 or (record_count is not None and len(found) >= record_count):
                return found
            if page_no >= MAX_PAYMENT_PAGES:
                raise HaloPaymentsUnlistable(
                    f"HaloPSA listed more than {MAX_PAYMENT_PAGES * PAGE_SIZE} payments for invoice {invoice_id}; "
                    "the portal stops there rather than read on without end."
                )
            page_no += 1

    def find_payment_by_reference(
        self, *, invoice_id: int, reference: str, lookup: str = UNKNOWN, invoice: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The invoice's payment whose `reference` or `thirdpartyid` is exactly `reference`, or None.

        The invoice's own `payments` are tried first (one call, which a payment push makes anyway
        for its balance check: pass that answer as `invoice` and it costs nothing), then GET
        /InvoicePayment; `lookup` = PAYMENTS_VIA_LIST (HaloShape.payments_lookup) tries the list
        first when no invoice is in hand. The source that answered is left in
        `payments_lookup_used`. Raises HaloPaymentsUnlistable when no source can be trusted:
        a caller must then not post (an earlier attempt could not be ruled out).
        """
        if not reference:
            raise ValueError("reference is required")
        invoice_id = int(invoice_id)
        sources = [PAYMENTS_VIA_INVOICE, PAYMENTS_VIA_LIST]
        if lookup == PAYMENTS_VIA_LIST and invoice is None:
            sources.reverse()
        reasons: list[str] = []
        for source in sources:
            if source == PAYMENTS_VIA_INVOICE:
                body = invoice if invoice is not None else self.get_invoice(invoice_id, include_lines=True)
                rows = self.payments_in_invoice(body, invoice_id)
                if rows is None:
                    reasons.append(f"GET /api/Invoice/{invoice_id}?includedetails=true has no list of payments")
                    continue
            else:
                try:
                    rows = self.list_invoice_payments(invoice_id)
                except HaloPaymentsUnlistable as exc:
                    reasons.append(exc.message)
                    continue
            self.payments_lookup_used = source
            return _only_match(rows, reference, invoice_id)
        raise HaloPaymentsUnlistable(
            f"HaloPSA gave no trustworthy list of invoice {invoice_id}'s payments ({'; '.join(reasons)}), so the "
            f"portal cannot check whether payment {reference} is already there; nothing was posted. Check the API "
            "application's permission to read invoices, then retry."
        )

    def create_payment(
        self, *, invoice_id: int, amount: Decimal, paid_on: date, reference: str, method_name: str = "",
        lookup: str = UNKNOWN, invoice: dict[str, Any] | None = None, looked_up: bool = False,
    ) -> dict[str, Any]:
        """Record a payment in HaloPSA exactly once, keyed by our `reference`.

        Looks for the reference first (a previous attempt may have landed, e.g. before a task was
        killed) unless the caller has just done so (`looked_up`), then POSTs. After an ambiguous
        outcome (connection dropped, 5xx, unreadable answer) it looks again, reading the invoice
        afresh: found means done, not found means the POST is repeated. After a timeout HaloPSA
        may still be working on the request, so it is not re-posted here: the caller retries
        later and the first lookup settles it. `lookup` and `invoice` are passed to
        `find_payment_by_reference`; a lookup that cannot be trusted raises before any POST.
        """
        if not isinstance(amount, Decimal):
            raise TypeError("amount must be a Decimal")
        if not reference:
            raise ValueError("reference is required for an idempotent payment")
        if not looked_up:
            existing = self.find_payment_by_reference(invoice_id=invoice_id, reference=reference, lookup=lookup, invoice=invoice)
            if existing is not None:
                return existing
        row: dict[str, Any] = {
            "invoice_id": int(invoice_id),
            "amount": amount,
            "date": format_query_datetime(paid_on),
            "reference": reference,
            "thirdpartyid": reference,
        }
        if method_name:
            row["payment_method_name"] = method_name
        attempts = 0
        while True:
            attempts += 1
            try:
                body = self._request("POST", "InvoicePayment", json_body=[row], idempotent=False)
            except (HaloServerError, HaloConnectionError, HaloTimeout, HaloBadResponse) as exc:
                if exc.permanent:
                    raise
                self._sleep(self._backoff(attempts))
                try:
                    found = self.find_payment_by_reference(invoice_id=invoice_id, reference=reference, lookup=lookup)
                except HaloError as lookup_error:
                    raise HaloAmbiguousWrite(
                        f"HaloPSA did not confirm payment {reference} on invoice {invoice_id} ({exc.message}), and "
                        f"looking for it failed ({lookup_error.message}). It is checked again before any new attempt.",
                        status=exc.status,
                    ) from lookup_error
                if found is not None:
                    logger.info("halopsa payment %s found after an unconfirmed POST", reference)
                    return found
                if isinstance(exc, HaloTimeout) or attempts > self.max_retries:
                    raise
                self.stats.add(retries=1)
                continue
            if body is None:
                # No body: read it back rather than guess the id.
                found = self.find_payment_by_reference(invoice_id=invoice_id, reference=reference, lookup=lookup)
                if found is None:
                    raise HaloBadResponse(f"HaloPSA accepted payment {reference} but it cannot be found on invoice {invoice_id}.")
                return found
            return self._record(body, f"payment {reference}")

    def delete_payment(self, payment_id: int) -> bool:
        """Delete a payment; False when it was already gone."""
        try:
            self._request("DELETE", f"InvoicePayment/{int(payment_id)}", expect="none")
        except HaloNotFound:
            return False
        return True

    # -----------------------------------------------------------------------------------------
    # Invoices (writes are "set to X", so repeating them is harmless)

    def update_invoice(self, invoice_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        body = self._request("POST", "Invoice", json_body=[{**fields, "id": int(invoice_id)}], idempotent=True)
        return self._record(body, f"invoice {invoice_id}")

    def void_invoice(self, invoice_id: int) -> dict[str, Any]:
        body = self._request("POST", f"Invoice/{int(invoice_id)}/void", json_body={}, idempotent=True)
        return self._record(body, f"invoice {invoice_id}") if body is not None else {"id": int(invoice_id)}

    # -----------------------------------------------------------------------------------------
    # Webhooks

    def list_webhooks(self) -> list[dict[str, Any]]:
        body = self._request("GET", "Webhook")
        if isinstance(body, dict):
            for key in ("webhooks", "records", "items"):
                if isinstance(body.get(key), list):
                    body = body[key]
                    break
        if not isinstance(body, list):
            raise HaloBadResponse("HaloPSA's list of webhooks was not a list.")
        return [w for w in body if isinstance(w, dict)]

    def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        """One webhook with its attached events (`includedetails`, reference §6)."""
        body = self._request("GET", f"Webhook/{webhook_id}", params={"includedetails": "true"})
        return self._record(body, f"webhook {webhook_id}")

    def create_webhook(self, spec: dict[str, Any]) -> dict[str, Any]:
        # Not blindly retried: a repeat could create a second subscription.
        body = self._request("POST", "Webhook", json_body=[spec], idempotent=False)
        return self._record(body, "webhook")

    def delete_webhook(self, webhook_id: str | int) -> bool:
        try:
            self._request("DELETE", f"Webhook/{webhook_id}", expect="none")
        except HaloNotFound:
            return False
        return True


class _ExpiredToken(Exception):
    """Internal: the API refused the token (401, or a 400 that says the token expired)."""
