"""SSRF-safe HTTP transport for partner-supplied HaloPSA URLs.

The partner types the URL we call, so the URL is a way into our network. Rules:
- https only; plain http only with HALOPSA_ALLOW_PRIVATE_NETWORKS (local sandbox and tests);
- no user:password@ in the URL;
- every address the host resolves to must be public. The check runs on the exact addresses the
  socket is about to connect to, inside urllib3's connection setup, so DNS rebinding (a public
  answer at form time, a private one later) cannot slip through. If any answer is refused, all are
  ("one bad apple", as Sentry does), so a mixed A/AAAA answer cannot be raced either;
- cloud metadata addresses are refused even when private networks are allowed;
- redirects are never followed (the client passes allow_redirects=False and reports a 3xx).
Environment proxies and .netrc are ignored (trust_env=False): a proxy would move the check to the
proxy's address and .netrc could add credentials.

A partner's server may also be slow on purpose: per-socket timeouts bound each read, not a whole
answer (one byte a second never trips a 60 s read timeout). `request_deadline` bounds one whole
exchange (connect, request, answer and body): when it passes, a watcher thread shuts the
exchange's socket down, which ends any read blocked on it, TLS included (docs/reliability.md).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import _set_socket_options

from integrations.conf import halo_settings

from .exceptions import UnsafeURLError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Refused even when private networks are allowed: instance metadata services hand out cloud credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "192.0.0.192")
)

# Explicit deny list on top of `not is_global`: Python 3.11.7 predates the is_global/is_private
# fixes (CPython gh-113171), so the classic list is spelt out too.
_DENIED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        "2001:db8::/32",
        "100::/64",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def allow_private_networks() -> bool:
    return halo_settings().allow_private_networks


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address tunnels to (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_refusal(address: str, *, allow_private: bool | None = None) -> str | None:
    """Why we refuse to connect to `address` (an IP literal), or None when it is fine."""
    if allow_private is None:
        allow_private = allow_private_networks()
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return f"{address!r} is not an IP address"
    candidates = [ip, *_embedded_ipv4(ip)]
    for candidate in candidates:
        if candidate in METADATA_ADDRESSES:
            return f"{candidate} is a cloud metadata address"
    if allow_private:
        return None
    for candidate in candidates:
        if not candidate.is_global or any(
            candidate in net for net in _DENIED_NETWORKS if net.version == candidate.version
        ):
            return f"{candidate} is a loopback, private, link-local or reserved address"
    return None


def validate_url(url: str, *, allow_private: bool | None = None) -> None:
    """Refuse URLs we must never call: wrong scheme, credentials in the URL, no host.

    Address checks happen at connect time (see `safe_create_connection`); IP literals are also
    checked here so the partner gets the error without any connection attempt.
    """
    if allow_private is None:
        allow_private = allow_private_networks()
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UnsafeURLError(f"The HaloPSA URL is not a valid URL ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_private):
        raise UnsafeURLError("The HaloPSA URL must start with https://.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURLError("The HaloPSA URL must not contain a user name or password.")
    if not hostname:
        raise UnsafeURLError("The HaloPSA URL has no host name.")
    try:
        ipaddress.ip_address(hostname.split("%", 1)[0])
    except ValueError:
        return  # a name: resolved and checked when connecting
    reason = address_refusal(hostname, allow_private=allow_private)
    if reason:
        raise UnsafeURLError(
            f"The HaloPSA URL points to an address the portal does not call: {reason}.", refused_address=True
        )


def safe_create_connection(
    address: tuple[str, int],
    timeout: float | None = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
) -> socket.socket:
    """urllib3's create_connection, with every resolved address checked before any connect."""
    host, port = address
    if host.startswith("["):
        host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    allow_private = allow_private_networks()
    for info in infos:
        reason = address_refusal(str(info[4][0]), allow_private=allow_private)
        if reason:
            # One refused answer refuses the host: a rebinding resolver could otherwise mix answers.
            raise UnsafeURLError(
                f"The HaloPSA host {host} resolves to an address the portal does not call: {reason}.",
                refused_address=True,
            )
    err: OSError | None = None
    for family, socktype, proto, _canonname, sockaddr in infos:
        sock = None
        try:
            sock = socket.socket(family, socktype, proto)
            _watch_socket(sock)  # the deadline covers the connect too
            _set_socket_options(sock, socket_options)
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            err = exc
            if sock is not None:
                sock.close()
    if err is not None:
        raise err
    raise OSError("getaddrinfo returns an empty list")


class _SafeConnectionMixin:
    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch_socket(self.sock)  # type: ignore[attr-defined] # after TLS: the socket the answer is read from

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # type: ignore[attr-defined] # a kept-alive connection, used again
            _watch_socket(self.sock)  # type: ignore[attr-defined]
        super().request(*args, **kwargs)  # type: ignore[misc]

    def _new_conn(self) -> socket.socket:  # mirrors urllib3.connection.HTTPConnection._new_conn
        try:
            return safe_create_connection(
                (self._dns_host, self.port),  # type: ignore[attr-defined]
                self.timeout,  # type: ignore[attr-defined]
                source_address=self.source_address,  # type: ignore[attr-defined]
                socket_options=self.socket_options,  # type: ignore[attr-defined]
            )
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[attr-defined,arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from exc  # type: ignore[attr-defined]
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]


class SafeHTTPConnection(_SafeConnectionMixin, HTTPConnection):
    pass


class SafeHTTPSConnection(_SafeConnectionMixin, HTTPSConnection):
    pass


class SafeHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = SafeHTTPConnection


class SafeHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = SafeHTTPSConnection


class SafeHTTPAdapter(HTTPAdapter):
    """Checks the URL of every request and the address of every new connection."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": SafeHTTPConnectionPool, "https": SafeHTTPSConnectionPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise UnsafeURLError("Proxies are not used for HaloPSA calls.")

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        validate_url(request.url or "")
        return super().send(request, *args, **kwargs)


def safe_session() -> requests.Session:
    """A requests Session that can only reach what the SSRF rules allow."""
    session = requests.Session()
    session.trust_env = False  # no environment proxies, no .netrc credentials
    adapter = SafeHTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=4)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


# ---------------------------------------------------------------------------------------------
# Whole-exchange deadlines


class RequestDeadline:
    """The wall-clock limit of one HTTP exchange. `expired` turns True when the watcher cut it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        """`sock` carries the exchange from now on (a new connection, TLS on top, a reused one)."""
        with self._lock:
            self._socket = sock
            if self.expired:
                _shut_down(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            _shut_down(self._socket)


def _shut_down(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        # socket.socket's own shutdown, also for an SSLSocket (whose override would drop its TLS
        # state under the reading thread): the reader then sees the connection end.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _DeadlineWatcher:
    """One daemon thread per process that cuts exchanges whose deadline passed. Only exchanges in
    flight are held (a handful, one per thread making a request), so a scan per wake-up is cheap."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active: set[RequestDeadline] = set()
        self._thread: threading.Thread | None = None

    def add(self, deadline: RequestDeadline) -> None:
        with self._condition:
            self._active.add(deadline)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="halopsa-request-deadlines", daemon=True)
                self._thread.start()
            self._condition.notify()

    def discard(self, deadline: RequestDeadline) -> None:
        with self._condition:
            self._active.discard(deadline)

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for deadline in [d for d in self._active if d.expires_at <= now]:
                    self._active.discard(deadline)
                    deadline.expire()
                soonest = min((d.expires_at for d in self._active), default=None)
                self._condition.wait(None if soonest is None else max(soonest - now, 0.001))


_watcher = _DeadlineWatcher()
_current = threading.local()


def _new_watcher_after_fork() -> None:
    # A forked worker has no watcher thread, and the parent's lock may have been held at the fork.
    global _watcher, _current
    _watcher, _current = _DeadlineWatcher(), threading.local()


os.register_at_fork(after_in_child=_new_watcher_after_fork)


def _watch_socket(sock: socket.socket | None) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


@contextmanager
def request_deadline(seconds: float) -> Iterator[RequestDeadline]:
    """Bound the HTTP exchange made inside the block (by this thread) to `seconds` in all."""
    deadline = RequestDeadline(seconds)
    _current.deadline = deadline
    _watcher.add(deadline)
    try:
        yield deadline
    finally:
        _current.deadline = None
        _watcher.discard(deadline)
