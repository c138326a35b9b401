"""The HaloPSA transport: how one request to HaloPSA is made (client.py holds what is asked).

What it owns:
- client-credentials auth with a token cached per client and per process (shared by every client
  of the same HaloPSA application), re-authenticating once on a 401 (or on the 400 some instances
  send for an expired token);
- resilience: timeouts on every call, retries with exponential backoff and full jitter on 429,
  500 (at most twice), 502/503/504, connection errors and timeouts of idempotent requests;
  Retry-After honoured (a long one raises HaloRateLimited so the caller reschedules);
- limits a hostile or broken server cannot stretch (the URL is typed by a partner): each whole
  exchange ends within `request_deadline` seconds (connect, answer and body together, however
  slowly the bytes trickle), bodies are streamed and refused beyond `max_response_bytes` (never
  read whole first), and an optional `deadline` (a sync run's end) stops retries, waits and
  requests that would pass it;
- a client-side request budget (budget.py) and SSRF-safe outbound connections (outbound.py);
- typed errors with messages a partner can act on (exceptions.py); one log line per request
  with the connection id, host, method, path, status, duration and attempt, never a secret or a
  token;
- request statistics (`RequestStats`) a sync run can share;
- request bodies as JSON with Decimals as exact numbers (`dumps_json`, written by orjson).

Answers are parsed JSON (numbers as Decimal). Text that is not valid UTF-8 fails only the records
that hold it: they carry the fields it was in under `payloads.INVALID_TEXT_KEY` (the bad bytes
shown as U+FFFD), and mapping.py refuses them.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import SplitResult, urlsplit

import orjson
import requests
from urllib3 import exceptions as urllib3_exceptions
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

from integrations.conf import halo_settings

from .budget import RequestBudget
from .exceptions import (
    HaloAuthError,
    HaloBadResponse,
    HaloConnectionError,
    HaloDeadlineReached,
    HaloError,
    HaloNotFound,
    HaloPermissionError,
    HaloRateLimited,
    HaloRequestRejected,
    HaloServerError,
    HaloTimeout,
    UnsafeURLError,
)
from .outbound import RequestDeadline, request_deadline, safe_session, validate_url
from .payloads import parse_json

if TYPE_CHECKING:  # pragma: no cover
    from integrations.models import Connection

# The client's logger name, kept since the split: log handling and tests select on it.
logger = logging.getLogger("integrations.halopsa.client")

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


# Request bodies as the standard library wrote them with ensure_ascii (what HaloPSA has always
# been sent): everything past printable ASCII as a \uXXXX escape. orjson writes UTF-8 instead,
# and in its output such characters occur only inside strings.
_NOT_PRINTABLE_ASCII = re.compile("[^\x20-\x7e]")
_JSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def dumps_json(payload: Any) -> bytes:
    """JSON with Decimals written as plain numbers with all their digits (never via float), dates
    and datetimes as HaloPSA's query form, compact and ASCII-only. A Decimal that is not finite
    raises ValueError; what JSON cannot hold (lone surrogates, integers beyond 64 bits) raises
    TypeError before anything is sent."""
    try:
        body = orjson.dumps(payload, default=_json_default, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, ValueError):  # orjson wraps what its hook raises
            raise exc.__cause__ from None
        raise
    if body.isascii() and b"\x7f" not in body:
        return body
    return _NOT_PRINTABLE_ASCII.sub(_ascii_escape, body.decode("utf-8")).encode("ascii")


def _json_default(value: Any) -> Any:
    """orjson's hook for request bodies: what it does not write itself, or is told to pass here."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a finite amount: {value}")
        return orjson.Fragment(format(value, "f"))  # a bare number: orjson writes no Decimal itself
    if isinstance(value, (datetime, date)):
        return format_query_datetime(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _ascii_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters beyond the BMP
    return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"


def _first_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def extract_error_message(body: Any) -> str:
    """HaloPSA's message from any of its error body shapes (docs/halopsa-facts.md §8), or "".

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
# The transport


class HaloTransport:
    """Auth, the request loop and error translation; HaloClient (client.py) adds the endpoints."""

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
        connection_id: int | None = None,
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
        self.connection_id = connection_id  # our Connection's id, for the log lines (None: not saved yet)
        self.stats = stats if stats is not None else RequestStats()
        configured = halo_settings()
        self.connect_timeout = float(connect_timeout if connect_timeout is not None else configured.connect_timeout)
        self.read_timeout = float(read_timeout if read_timeout is not None else configured.read_timeout)
        self.max_retries = int(max_retries if max_retries is not None else configured.max_retries)
        # One whole exchange (connect, answer, body), however slowly its bytes arrive.
        self.request_deadline = float(request_deadline if request_deadline is not None else configured.request_deadline)
        self.max_response_bytes = int(
            max_response_bytes if max_response_bytes is not None else configured.max_response_bytes
        )
        # time.monotonic() by which the caller's work must end (a sync run's deadline), or None.
        self.deadline = deadline
        self.retry_base_delay = float(retry_base_delay if retry_base_delay is not None else configured.retry_base_delay)
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
        # Checked up front so a bad URL fails with a clear message before anything else happens.
        validate_url(self.base_url or "")
        if self.auth_url:
            validate_url(self.auth_url)

    @classmethod
    def for_connection(cls, connection: Connection, stats: RequestStats | None = None, **overrides: Any) -> Self:
        kwargs: dict[str, Any] = {
            "base_url": connection.base_url,
            "auth_url": connection.auth_url,
            "client_id": connection.client_id,
            "client_secret": connection.client_secret,
            "tenant": connection.tenant,
            "stats": stats,
            "budget_key": f"conn:{connection.pk}",
            "connection_id": connection.pk,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:  # never show the secret
        return f"<{type(self).__name__} {self.base_url} client_id={self.client_id}>"

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> Self:
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
                "and the Authorisation server URL.",
                status=response.status_code,
                permanent=True,
            ) from None
        # Never quote the token response: it holds the token.
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise HaloBadResponse(
                "HaloPSA's token endpoint answered without an access token. Check the Authorisation server URL.",
                status=response.status_code,
                permanent=True,
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
                "'all' scope under Configuration > Integrations > HaloPSA API.",
                status=status,
            )
        if status == 400 and "tenant" in lowered:
            return HaloAuthError(
                f"HaloPSA did not accept the tenant name ({message}). Check the tenant.", status=status
            )
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
                    method,
                    self._api_url(path),
                    params=params,
                    json_body=json_body,
                    token=token,
                    authenticated=True,
                    idempotent=idempotent,
                    expect=expect,
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
                    method,
                    url,
                    params=params,
                    data=data,
                    json_body=json_body,
                    token=token,
                    authenticated=authenticated,
                    expect=expect,
                    kind=kind,
                    attempt=attempt,
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
                            retry_after=failure.retry_after,
                            status=error.status,
                        ) from None
                    # At least what HaloPSA asked for, plus a little jitter so workers do not stampede.
                    delay = failure.retry_after + random.uniform(0, self.retry_base_delay)
                left = self._time_left()
                if left is not None and delay >= left:
                    raise self._deadline_reached(f"{method} {self._log_path(url)} failed ({error.message})") from None
                self.stats.add(retries=1)
                logger.info(
                    "halopsa %s retrying %s %s in %.2f s after: %s",
                    self._log_where(url),
                    method,
                    self._log_path(url),
                    delay,
                    error.message,
                )
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
                    method,
                    url,
                    params=params,
                    data=data if data is not None else body,
                    headers=headers,
                    timeout=(min(self.connect_timeout, limit), min(self.read_timeout, limit)),
                    allow_redirects=False,
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
                raise self._transport_failure(
                    exc, deadline, limit, url, cut_by_caller=limit < self.request_deadline
                ) from None
            finally:
                if (
                    response is not None and response._content is False
                ):  # not read to the end: the connection is not reused
                    response.close()
                if status != "refused":
                    self.stats.add(requests=1)
                logger.info(
                    "halopsa %s %s %s status=%s duration_ms=%d attempt=%d",
                    self._log_where(url),
                    method,
                    path,
                    status,
                    (time.monotonic() - started) * 1000,
                    attempt,
                )

        if response.status_code >= 400 or 300 <= response.status_code < 400:
            self.stats.add(errors=1)
        if 300 <= response.status_code < 400:
            location = response.headers.get("Location", "")
            raise HaloBadResponse(
                f"HaloPSA answered with a redirect{' to ' + self._display_url(location) if location else ''}; "
                "the portal does not follow redirects. Enter the instance's final https address as the HaloPSA URL.",
                status=response.status_code,
                permanent=True,
            )
        if kind == "token":
            if response.status_code in RETRY_STATUSES:
                raise _Retry(
                    self._status_error(response, path="/auth/token"),
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            if response.status_code >= 400:
                raise self._token_error(response)
            return response
        if authenticated and self._looks_like_expired_token(response):
            raise _ExpiredToken
        if response.status_code in RETRY_STATUSES:
            raise _Retry(
                self._status_error(response, path=path),
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
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
            raise _Retry(
                HaloBadResponse(
                    f"HaloPSA sent malformed JSON for {path} (starts: {self._excerpt(content)!r}).",
                    status=response.status_code,
                ),
                kind="body",
            ) from None

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

    def _transport_failure(
        self, exc: BaseException, deadline: RequestDeadline, limit: float, url: str, *, cut_by_caller: bool
    ) -> _Retry | HaloError:
        """What an exception from sending or reading means, as the retry loop sees it."""
        path = self._log_path(url)
        if deadline.expired:
            if cut_by_caller:
                return self._deadline_reached(f"{path} was still answering")
            return _Retry(
                HaloTimeout(
                    f"HaloPSA took longer than {limit:g} seconds to send its whole answer to {path} (connecting, "
                    "answering and the body together); the request will be retried later."
                ),
                kind="deadline",
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Retry(
                HaloTimeout(
                    f"HaloPSA at {self._display_url(url)} did not accept a connection within "
                    f"{self.connect_timeout:g} seconds. Check the HaloPSA URL and that the instance is online."
                ),
                kind="connect",
            )
        if isinstance(exc, requests.exceptions.Timeout):
            return _Retry(
                HaloTimeout(
                    f"HaloPSA did not answer within {self.read_timeout:g} seconds; the request will be retried later."
                ),
                kind="timeout",
            )
        if isinstance(exc, requests.exceptions.ConnectionError):
            error, failure_kind = self._connection_error(exc)
            return _Retry(error, kind=failure_kind)
        return _Retry(
            HaloConnectionError(
                f"The connection to HaloPSA failed ({type(exc).__name__}); the request will be retried later."
            ),
            kind="ambiguous",
        )

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
            return HaloConnectionError(
                f"The HaloPSA host {host} could not be found (DNS). Check the HaloPSA URL."
            ), "connect"
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
                retry_after=retry_after,
                status=status,
            )
        if status >= 500:
            return HaloServerError(
                f"HaloPSA had an error ({status}) on {path}; it will be retried later.{said}", status=status
            )
        return HaloError(f"HaloPSA answered {status} for {path}.{said}", status=status, permanent=True)

    def _scrub(self, text: str) -> str:
        for secret in (self._client_secret, self._token.value if self._token else ""):
            if secret and secret in text:
                text = text.replace(secret, "[redacted]")
        return text[:300]

    def _excerpt(self, content: bytes) -> str:
        return self._scrub(content[:EXCERPT_CHARS].decode("utf-8", "replace"))

    def _log_where(self, url: str | None = None) -> str:
        """`connection=<id> host=<host[:port]>` for the log lines: which partner's HaloPSA was called
        (the token may come from another host than the API). Never the query, user info or a secret."""
        connection = "-" if self.connection_id is None else self.connection_id
        return f"connection={connection} host={_host(urlsplit(url or self.base_url)) or '-'}"

    @staticmethod
    def _log_path(url: str) -> str:
        return urlsplit(url).path or "/"

    @staticmethod
    def _display_url(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{_host(parts)}{parts.path}"


def _host(parts: SplitResult) -> str:
    return f"{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}"


class _ExpiredToken(Exception):
    """Internal: the API refused the token (401, or a 400 that says the token expired)."""
