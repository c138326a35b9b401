"""OAuth2 client credentials, bearer checks, token expiry and the rolling rate limit."""

from __future__ import annotations

import time

import pytest
import requests

from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from tests.plugins.sandbox import halo_session_for


def _token_request(
    server, *, secret=SANDBOX_CLIENT_SECRET, client_id=SANDBOX_CLIENT_ID, tenant=None, grant_type="client_credentials"
):
    params = {"tenant": tenant} if tenant is not None else None
    return requests.post(
        f"{server.url}/auth/token",
        params=params,
        timeout=10,
        data={"grant_type": grant_type, "client_id": client_id, "client_secret": secret, "scope": "all"},
    )


def test_token_success_shape(halo_sandbox):
    response = _token_request(halo_sandbox)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "all"
    assert len(body["access_token"]) > 20


@pytest.mark.parametrize("kwargs", [{"secret": "wrong"}, {"client_id": "0000"}, {"secret": ""}])
def test_bad_credentials_get_invalid_client(halo_sandbox, kwargs):
    response = _token_request(halo_sandbox, **kwargs)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.json()["error_description"]


def test_wrong_grant_type(halo_sandbox):
    response = _token_request(halo_sandbox, grant_type="password")
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


def test_tenant_required_when_configured(halo_sandbox_factory):
    server = halo_sandbox_factory(tenant="acme")
    assert _token_request(server).status_code == 401
    assert _token_request(server, tenant="other").status_code == 401
    assert _token_request(server, tenant="acme").status_code == 200
    info = requests.get(f"{server.url}/api/authinfo", timeout=10).json()
    assert info == {"auth_url": f"{server.url}/auth", "tenant_id": "acme"}


def test_api_requires_a_valid_bearer(halo_sandbox):
    url = f"{halo_sandbox.url}/api/Invoice"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    response = requests.get(url, headers={"Authorization": "Basic abc"}, timeout=10)
    assert response.status_code == 401 and "Message" in response.json()


def test_token_expires_after_its_lifetime(halo_sandbox_factory):
    server = halo_sandbox_factory(token_lifetime=0.3)
    session = halo_session_for(server)
    assert session.get(f"{server.url}/api/Client").status_code == 200
    time.sleep(0.4)
    assert session.get(f"{server.url}/api/Client").status_code == 401


def test_expire_all_tokens_via_control_api(halo_sandbox, halo_session):
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 200
    response = requests.post(f"{halo_sandbox.url}/_sandbox/tokens/expire", timeout=10)
    assert response.json()["expired"] >= 1
    assert halo_session.get(f"{halo_sandbox.url}/api/Client").status_code == 401
    requests.put(f"{halo_sandbox.url}/_sandbox/token_lifetime", json={"seconds": 5}, timeout=10)
    assert _token_request(halo_sandbox).json()["expires_in"] == 5


def test_rate_limit_429_after_limit_without_retry_after(halo_sandbox_factory):
    server = halo_sandbox_factory(rate_limit=5, rate_window=60)
    session = halo_session_for(server)
    statuses = [session.get(f"{server.url}/api/Client").status_code for _ in range(7)]
    assert statuses == [200] * 5 + [429, 429]
    response = session.get(f"{server.url}/api/Client")
    assert response.text == "Rate Limit Reached - 5 Requests per rolling 1 minute window"
    assert "Retry-After" not in response.headers
    # token requests do not count and are never throttled
    assert _token_request(server).status_code == 200


def test_rate_limit_default_message_and_window_rolls(halo_sandbox_factory):
    server = halo_sandbox_factory(rate_limit=2, rate_window=0.5)
    session = halo_session_for(server)
    assert [session.get(f"{server.url}/api/Client").status_code for _ in range(3)] == [200, 200, 429]
    time.sleep(0.6)
    assert session.get(f"{server.url}/api/Client").status_code == 200
    server.set_rate_limit(limit=300, window=300)
    assert server.rate_limiter.response().body() == b"Rate Limit Reached - 300 Requests per rolling 5 minute window"


def test_rate_limit_configurable_retry_after_and_disable(halo_sandbox, halo_session):
    url = halo_sandbox.url
    requests.put(f"{url}/_sandbox/ratelimit", json={"limit": 1, "window": 60, "retry_after": 7}, timeout=10)
    assert halo_session.get(f"{url}/api/Client").status_code == 200
    response = halo_session.get(f"{url}/api/Client")
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    requests.put(f"{url}/_sandbox/ratelimit", json={"limit": 0}, timeout=10)
    assert all(halo_session.get(f"{url}/api/Client").status_code == 200 for _ in range(5))


def test_request_log_counts_halo_calls_only(halo_sandbox, halo_session):
    url = halo_sandbox.url
    halo_sandbox.clear_request_log()
    halo_session.get(f"{url}/api/Invoice", params={"pageinate": "true", "page_no": 2})
    halo_session.get(f"{url}/api/Client")
    requests.get(f"{url}/_sandbox/requests", timeout=10)
    assert halo_sandbox.count_requests() == 2
    assert halo_sandbox.count_requests("/api/invoice") == 1
    assert halo_sandbox.count_requests(method="GET") == 2
    entry = halo_sandbox.request_log[0]
    assert entry["method"] == "GET" and entry["path"] == "/api/Invoice" and entry["status"] == 200
    assert entry["query"]["page_no"] == "2" and entry["duration_ms"] >= 0
    summary = requests.get(f"{url}/_sandbox/requests", timeout=10).json()
    assert summary["count"] == 2 and summary["by_path"]["GET /api/Client"] == 1
    requests.delete(f"{url}/_sandbox/requests", timeout=10)
    assert halo_sandbox.count_requests() == 0


def test_instance_info_version(halo_sandbox, halo_session):
    url = halo_sandbox.url
    assert halo_session.get(f"{url}/api/InstanceInfo").json()["app_version"] == "2.130.1"
    requests.put(f"{url}/_sandbox/version", json={"version": "2.99.3"}, timeout=10)
    info = halo_session.get(f"{url}/api/instanceinfo").json()
    assert info["app_version"] == "2.99.3" and info["app_name"] == "HaloPSA"
