"""SSRF guard, redirects and secrets: the partner supplies the URL, so it is treated as hostile."""

from __future__ import annotations

import logging
import socket

import pytest

from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from integrations.halopsa.client import HaloClient
from integrations.halopsa.exceptions import HaloBadResponse, HaloConnectionError, UnsafeURLError
from tests.plugins.sandbox import record_issued_tokens


@pytest.fixture
def private_networks_off(settings):
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = False


@pytest.fixture
def connects(monkeypatch):
    """Every address a socket connects to; connecting to anything but loopback fails fast here."""
    seen: list = []
    original = socket.socket.connect

    def connect(sock, address):
        seen.append(address)
        if str(address[0]) in ("127.0.0.1", "::1"):
            return original(sock, address)
        raise ConnectionRefusedError(111, "Connection refused (test: no outside network)")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def _resolve_to(monkeypatch, *addresses: str) -> None:
    def fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)


def _client(url: str, **kwargs) -> HaloClient:
    return HaloClient(
        base_url=url, client_id=SANDBOX_CLIENT_ID, client_secret=SANDBOX_CLIENT_SECRET, max_retries=0, **kwargs
    )


@pytest.mark.parametrize(
    "url_template",
    [
        "{sandbox}",  # plain http
        "https://127.0.0.1:{port}",
        "https://10.0.0.1",
        "https://169.254.169.254",
        "https://[::1]:{port}",
        "https://partner:pw@acme.halopsa.com",
    ],
)
def test_refused_urls_never_open_a_socket(private_networks_off, halo_sandbox, connects, url_template):
    url = url_template.format(sandbox=halo_sandbox.url, port=halo_sandbox.port)
    with pytest.raises(UnsafeURLError) as caught:
        _client(url).version()
    assert caught.value.permanent
    assert connects == []
    assert halo_sandbox.request_log == []


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "192.168.10.20", "::ffff:10.0.0.1"]
)
def test_hostnames_are_checked_at_connect_time(private_networks_off, monkeypatch, connects, address):
    # The name passes the URL check; what it resolves to (now) decides: DNS rebinding cannot help.
    _resolve_to(monkeypatch, address)
    client = _client("https://acme.halopsa.com")
    with pytest.raises(UnsafeURLError) as caught:
        client.version()
    assert "acme.halopsa.com resolves to an address the portal does not call" in caught.value.message
    assert caught.value.refused_address
    assert connects == []
    assert client.stats.requests == 0


def test_one_private_answer_refuses_the_whole_host(private_networks_off, monkeypatch, connects):
    _resolve_to(monkeypatch, "93.184.216.34", "10.1.2.3")
    with pytest.raises(UnsafeURLError):
        _client("https://acme.halopsa.com").version()
    assert connects == []


def test_public_addresses_are_connected_to(private_networks_off, monkeypatch, connects):
    _resolve_to(monkeypatch, "93.184.216.34")
    with pytest.raises(HaloConnectionError):
        _client("https://acme.halopsa.com").version()
    assert connects == [("93.184.216.34", 443)]


def test_setting_turned_off_after_the_client_was_built_still_applies(halo_sandbox, settings, connects):
    client = _client(halo_sandbox.url)
    assert client.version() == "2.130.1"
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = False
    client.close()
    with pytest.raises(UnsafeURLError):
        client.get_invoice(1)
    assert halo_sandbox.count_requests("/api/Invoice") == 0


def test_with_the_setting_on_the_sandbox_works_but_metadata_stays_refused(halo_sandbox, connects):
    assert _client(halo_sandbox.url).version() == "2.130.1"
    with pytest.raises(UnsafeURLError):
        _client("http://169.254.169.254").version()
    assert all(address[0] == "127.0.0.1" for address in connects)


def test_redirects_are_reported_not_followed(halo_sandbox, stub_halo, connects):
    stub_halo.route(
        "GET",
        "/api/InstanceInfo",
        302,
        b"",
        {"Location": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"},
    )
    with pytest.raises(HaloBadResponse) as caught:
        _client(stub_halo.url).version()
    assert "redirect" in caught.value.message and caught.value.permanent
    assert all(address[0] == "127.0.0.1" for address in connects)
    # A redirect of the token request to a lookalike is not followed either.
    stub_halo.route("POST", "/auth/token", 307, b"", {"Location": f"{halo_sandbox.url}/auth/token"})
    from integrations.halopsa.client import clear_token_cache

    clear_token_cache()
    with pytest.raises(HaloBadResponse):
        _client(stub_halo.url).version()
    assert halo_sandbox.request_log == []


def test_environment_proxies_are_ignored(halo_sandbox, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("NO_PROXY", "")
    assert _client(halo_sandbox.url).version() == "2.130.1"


def test_secrets_and_tokens_never_reach_the_logs(halo_sandbox_factory, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    sandbox = halo_sandbox_factory(dataset={"customers": 10, "contacts": 20, "invoices": 250, "max_lines": 2})
    issued = record_issued_tokens(sandbox)
    sandbox.add_fault("status", status=503, path="/api/Invoice", count=1)
    client = HaloClient(
        base_url=sandbox.url, client_id=SANDBOX_CLIENT_ID, client_secret=SANDBOX_CLIENT_SECRET, retry_base_delay=0.001
    )
    pages = 0
    for _page in client.invoice_pages():
        pages += 1
        if pages == 1:
            sandbox.expire_tokens()  # forces a re-authentication mid-run
    errors = []
    for bad in (HaloClient(base_url=sandbox.url, client_id=SANDBOX_CLIENT_ID, client_secret="x" * 40),):
        try:
            bad.version()
        except Exception as exc:  # noqa: BLE001 - the message is what is checked
            errors.append(str(exc))
    assert pages == 3 and len(issued) == 2 and errors
    text = caplog.text + "\n".join(errors) + repr(client)
    assert f"halopsa connection=- host={sandbox.url.split('://')[1]} GET /api/Invoice status=200" in caplog.text
    for secret in (SANDBOX_CLIENT_SECRET, "x" * 40, *issued):
        assert secret not in text
