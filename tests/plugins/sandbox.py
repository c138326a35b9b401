"""pytest fixtures for the HaloPSA sandbox (loaded by tests/conftest.py via `pytest_plugins`).

- `halo_sandbox`: a started `SandboxServer(dataset="tiny", seed=1, port=0)`, stopped afterwards.
  Override arguments with `@pytest.mark.sandbox(dataset="demo", version="2.99", rate_limit=0)` or
  with indirect parametrisation (`request.param` = dict of arguments).
- `halo_sandbox_factory`: `make(**kwargs)` starts a sandbox with any constructor arguments;
  every sandbox it made is stopped at teardown.
- `halo_session`: a `requests.Session` already holding a bearer token for `halo_sandbox`.

Profiles (issue 16, see halosandbox/shapes.py PROFILE_VARIANTS): `--halo-profile NAME`
(or the environment variable HALO_PROFILE) is the profile of every sandbox these fixtures start.
A test that names one (`@pytest.mark.sandbox(profile=...)`, `make(profile=...)`) gets its own.
A test that checks the default wire shape itself (an envelope key, a field's presence) carries
`@pytest.mark.default_wire_shape(reason="...")` and always gets the default profile.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest

from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SandboxServer
from halosandbox.shapes import DEFAULT_PROFILE_NAME, parse_profile

DEFAULT_SANDBOX_ARGS: dict[str, Any] = {"dataset": "tiny", "seed": 1, "port": 0}
PROFILE_ENV = "HALO_PROFILE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--halo-profile",
        default=None,
        metavar="NAME",
        help=f"HaloPSA sandbox profile for the sandbox fixtures: default, all, or comma-separated "
        f"variant names (env {PROFILE_ENV})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox(**kwargs): arguments for the halo_sandbox fixture")
    profile = config.getoption("--halo-profile") or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE_NAME
    try:
        config.halo_profile = parse_profile(profile).name  # type: ignore[attr-defined]
    except ValueError as exc:
        raise pytest.UsageError(f"--halo-profile / {PROFILE_ENV}: {exc}") from exc


def pytest_report_header(config: pytest.Config) -> str:
    return f"HaloPSA sandbox profile: {config.halo_profile}"  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("default_wire_shape")
        if marker is None:
            continue
        reason = marker.kwargs.get("reason", marker.args[0] if marker.args else "")
        if not isinstance(reason, str) or not reason.strip():
            raise pytest.UsageError(f'{item.nodeid}: default_wire_shape needs reason="..." (which shape it checks)')


def _profile_for(request: pytest.FixtureRequest) -> str:
    if request.node.get_closest_marker("default_wire_shape") is not None:
        return DEFAULT_PROFILE_NAME
    return request.config.halo_profile  # type: ignore[attr-defined]


@pytest.fixture
def halo_sandbox_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., SandboxServer]]:
    started: list[SandboxServer] = []
    profile = _profile_for(request)

    def make(**kwargs: Any) -> SandboxServer:
        server = SandboxServer(**{**DEFAULT_SANDBOX_ARGS, "profile": profile, **kwargs})
        server.start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture
def halo_sandbox(request: pytest.FixtureRequest, halo_sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    kwargs: dict[str, Any] = {}
    marker = request.node.get_closest_marker("sandbox")
    if marker is not None:
        kwargs.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, dict):
        kwargs.update(param)
    return halo_sandbox_factory(**kwargs)


def record_issued_tokens(server: SandboxServer) -> list[str]:
    """Every access token `server` issues from now on, in order (to prove none reaches a log)."""
    issued: list[str] = []
    issue = server.auth.issue

    def recording_issue(client_id: str) -> str:
        token = issue(client_id)
        issued.append(token)
        return token

    server.auth.issue = recording_issue
    return issued


def halo_token(server: SandboxServer, scope: str = "all") -> str:
    """Fetch a bearer token from `server` (tenant handled)."""
    import requests

    params = {"tenant": server.tenant} if server.tenant else None
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            f"{server.url}/auth/token",
            params=params,
            timeout=10,
            data={
                "grant_type": "client_credentials",
                "client_id": server.client_id,
                "client_secret": server.client_secret,
                "scope": scope,
            },
        )
    response.raise_for_status()
    return response.json()["access_token"]


def halo_session_for(server: SandboxServer) -> Any:
    """A `requests.Session` with a bearer token for `server` (no proxies)."""
    import requests

    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through a proxy
    session.headers["Authorization"] = f"Bearer {halo_token(server)}"
    return session


@pytest.fixture
def halo_session(halo_sandbox: SandboxServer) -> Iterator[Any]:
    session = halo_session_for(halo_sandbox)
    yield session
    session.close()


__all__ = ["SANDBOX_CLIENT_ID", "SANDBOX_CLIENT_SECRET", "halo_session_for", "halo_token"]
