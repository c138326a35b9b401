"""Shared fixtures: partners, users, connections pointing at the HaloPSA sandbox."""

from __future__ import annotations

import os

import pytest

# Playwright's sync API keeps an event loop in the main thread; Django refuses ORM calls there
# without this (SynchronousOnlyOperation, e.g. in the live server's transactional flush).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytest_plugins = ["tests.plugins.sandbox"]


@pytest.fixture(autouse=True)
def _fresh_process_caches():
    """The locmem cache (HaloPSA request budgets keyed by connection pk) and the HaloPSA token
    cache live as long as the test process; each test starts without another test's counts/tokens."""
    from django.core.cache import cache

    from integrations.halopsa.client import clear_token_cache

    cache.clear()
    clear_token_cache()
    yield


@pytest.fixture
def partner(db):
    from integrations.models import Partner

    return Partner.objects.create(name="Acme MSP")


@pytest.fixture
def other_partner(db):
    from integrations.models import Partner

    return Partner.objects.create(name="Globex MSP")


@pytest.fixture
def make_user(db):
    from integrations.models import User

    def _make(username: str, partner=None, *, staff: bool = False, password: str = "correct-horse-battery"):
        return User.objects.create_user(username=username, password=password, partner=partner, is_staff=staff)

    return _make


@pytest.fixture
def partner_user(make_user, partner):
    return make_user("alice", partner)


@pytest.fixture
def other_user(make_user, other_partner):
    return make_user("bob", other_partner)


@pytest.fixture
def staff_user(make_user):
    return make_user("staff", None, staff=True)


@pytest.fixture
def make_connection(db):
    """A connection to a running sandbox (or any URL) for a partner."""
    from integrations.models import Connection

    def _make(partner, sandbox=None, *, name: str = "Main HaloPSA", **fields):
        from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

        values = {
            "base_url": sandbox.url if sandbox is not None else "https://example.halopsa.com",
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET,
        }
        values.update(fields)
        return Connection.objects.create(partner=partner, name=name, **values)

    return _make
