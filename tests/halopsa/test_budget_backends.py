"""The request budget on the cache backends production uses: the database cache (no Redis) and
Redis. Budgets must be shared by every process, so they live in these, not in process memory."""

from __future__ import annotations

import os
import uuid

import pytest
from django.core.management import call_command

from integrations.halopsa.budget import RequestBudget
from integrations.halopsa.exceptions import HaloRateLimited

REDIS_URL = os.environ.get("REDIS_URL", "")


class FakeClock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _exercise(cache) -> None:
    clock = FakeClock()
    key = f"conn:{uuid.uuid4().hex}"
    worker_a = RequestBudget(key, limit=10, window=60, max_wait=0, cache=cache, clock=clock, sleep=clock.sleep)
    worker_b = RequestBudget(key, limit=10, window=60, max_wait=0, cache=cache, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        worker_a.acquire()
        clock.now += 1
    for _ in range(4):
        worker_b.acquire()
    with pytest.raises(HaloRateLimited) as caught:
        worker_a.acquire()  # 9 of 9 (10 less 5 %) used by the two workers together
    assert 0 < caught.value.retry_after <= 62
    assert worker_a._cache_broken is False  # the backend worked; the budget did not fail open
    clock.now += 62
    worker_b.acquire()


def test_budget_on_the_database_cache(db, settings):
    settings.CACHES = {
        **settings.CACHES,
        "budget_db": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "halopsa_budget_test"},
    }
    call_command("createcachetable", "halopsa_budget_test", verbosity=0)
    from django.core.cache import caches

    _exercise(caches["budget_db"])


@pytest.mark.skipif(not REDIS_URL, reason="runs in make test's PostgreSQL+Redis pass (needs REDIS_URL)")
def test_budget_on_redis():
    from django.core.cache.backends.redis import RedisCache

    _exercise(RedisCache(REDIS_URL, {}))
