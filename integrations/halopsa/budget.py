"""Client-side request budget: keep each HaloPSA connection under its rolling rate limit.

Hosted HaloPSA allows about 300 requests per rolling 5 minutes (docs/halopsa-facts.md §8) and answers 429
beyond that. The web process and every qcluster worker may call the same connection at once, so
the count lives in Django's cache (Redis or the database cache in production), in time buckets:
a request increments the bucket of "now"; the window's usage is the sum of the buckets that
overlap it. Counting the oldest, partly expired bucket in full over-counts a little, which errs on
the safe side, and 5% headroom absorbs the non-atomic increments of the database cache.

When the budget is spent we wait for a slot if that is quick (HALOPSA_BUDGET_MAX_WAIT, default
30 s); otherwise `HaloRateLimited(retry_after=...)` tells the caller to come back later instead
of sleeping through a task timeout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from integrations.conf import halo_settings

from .exceptions import HaloRateLimited

logger = logging.getLogger("integrations.halopsa.client")

BUCKETS_PER_WINDOW = 30
HEADROOM = 0.05


def _default_cache() -> Any:
    from django.core.cache import cache

    return cache


class RequestBudget:
    def __init__(
        self,
        key: str,
        *,
        limit: int | None = None,
        window: float | None = None,
        max_wait: float | None = None,
        headroom: float = HEADROOM,
        cache: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.key = key
        configured = halo_settings()
        self.limit = int(limit if limit is not None else configured.rate_limit)
        self.window = float(window if window is not None else configured.rate_window)
        self.max_wait = float(max_wait if max_wait is not None else configured.budget_max_wait)
        # 300 -> 285 requests; never below 1 so tiny test limits still work.
        self.capacity = max(1, math.floor(self.limit * (1 - headroom)))
        self.bucket_seconds = max(self.window / BUCKETS_PER_WINDOW, 0.01)
        self._cache = cache
        self._clock = clock
        self._sleep = sleep
        self._cache_broken = False

    @property
    def cache(self) -> Any:
        return self._cache if self._cache is not None else _default_cache()

    def _bucket_key(self, index: int) -> str:
        return f"halopsa:budget:{self.key}:{self.window:g}:{index}"

    def acquire(self) -> None:
        """Take one request slot, waiting briefly if needed; raise HaloRateLimited if the wait is long."""
        if self.limit <= 0:
            return
        deadline: float | None = None
        while True:
            now = self._clock()
            wait = self._try_take(now)
            if wait is None:
                return
            if deadline is None:
                deadline = now + self.max_wait
            if now + wait > deadline:
                raise HaloRateLimited(
                    f"The portal paused calls to HaloPSA to stay under its limit of {self.limit} requests per "
                    f"{self.window:g} seconds; the work continues automatically in about {math.ceil(wait)} seconds.",
                    retry_after=wait,
                )
            logger.info("halopsa budget %s spent; waiting %.2f s for a slot", self.key, wait)
            self._sleep(wait)

    def _try_take(self, now: float) -> float | None:
        """Count a request if the window has room (None), else return seconds until a slot frees."""
        if self._cache_broken:
            return None
        try:
            return self._try_take_cached(now)
        except Exception:  # noqa: BLE001 - a broken cache must not stop syncing; Halo's 429s still protect us
            logger.warning("halopsa budget cache unavailable; continuing without a client-side budget", exc_info=True)
            self._cache_broken = True
            return None

    def _try_take_cached(self, now: float) -> float | None:
        cache = self.cache
        size = self.bucket_seconds
        current = math.floor(now / size)
        first = math.floor((now - self.window) / size)
        keys = [self._bucket_key(i) for i in range(first, current + 1)]
        ttl = math.ceil(self.window + 2 * size) + 1
        cache.add(keys[-1], 0, timeout=ttl)
        try:
            mine = cache.incr(keys[-1])
        except ValueError:  # expired between add and incr
            cache.set(keys[-1], 1, timeout=ttl)
            mine = 1
        others = cache.get_many(keys[:-1])
        if sum(int(v) for v in others.values()) + mine <= self.capacity:
            return None
        try:
            cache.decr(keys[-1])
        except ValueError:
            pass
        # The oldest bucket holding requests leaves the window first.
        for index in range(first, current + 1):
            key = self._bucket_key(index)
            count = (mine - 1) if index == current else int(others.get(key, 0))
            if count > 0:
                return max((index + 1) * size + self.window - now, 0.01)
        return size
