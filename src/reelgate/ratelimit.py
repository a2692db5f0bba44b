"""Per-key request rate limits with the ``limits`` library: memory storage in one process,
Redis when several API processes must share the counts.

The strategy is the sliding-window counter (two counters per key: this minute's and the
last one's, weighted by how much of the last one still overlaps the window). Its cost does
not grow with the limit; the moving window kept one timestamp per request, so a key
allowed 100,000 requests a minute made every hit walk and trim a 100,000-entry list."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string


@dataclass(frozen=True)
class RateState:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when a request is next allowed / the window frees up

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_at - time.time())))
        return headers


class MemoryWindows:
    """The same sliding-window counter as the library's, for one process, by hand: the
    library's asyncio memory storage takes an asyncio lock per counter and starts an expiry
    task on every hit, which measured as a sixth of a whole poll under load (py-spy); this
    is two dict operations. Same arithmetic: the previous minute's count weighted by the
    part of it still inside the window, plus this minute's."""

    PERIOD = 60.0

    def __init__(self) -> None:
        # key -> [window number, count in it, count in the window before]
        self._counts: dict[str, list[int]] = {}

    def hit(self, key: str, limit: int) -> RateState:
        now = time.time()
        window, into = divmod(now, self.PERIOD)
        window_no = int(window)
        entry = self._counts.get(key)
        if entry is None or entry[0] < window_no - 1:
            if len(self._counts) > 100_000:  # forget idle keys now and then
                self._counts = {k: v for k, v in self._counts.items()
                                if v[0] >= window_no - 1}
            entry = self._counts[key] = [window_no, 0, 0]
        elif entry[0] == window_no - 1:
            entry[:] = [window_no, 0, entry[1]]
        weight = 1 - into / self.PERIOD
        used = math.floor(entry[2] * weight + entry[1])
        allowed = used + 1 <= limit
        if allowed:
            entry[1] += 1
            used += 1
        # When one more request fits again: the previous minute's share shrinks by one
        # request every PERIOD/previous seconds; this minute's count lasts to its end.
        window_end = (window_no + 1) * self.PERIOD
        reset_at = min(window_end, now + self.PERIOD / entry[2]) if entry[2] else window_end
        return RateState(allowed, limit, max(0, limit - used), reset_at)


class RateLimiter:
    def __init__(self, storage_url: str = "memory://") -> None:
        self._memory = MemoryWindows() if storage_url.startswith("memory://") else None
        # The "async+" scheme selects the library's asyncio storage for the same URL.
        url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
        self._items: dict[int, RateLimitItemPerMinute] = {}
        options: dict[str, str] = {}
        if url.startswith(("async+redis://", "async+rediss://", "async+redis+unix://")):
            # Through redis-py (a dependency already, via limits[redis]) rather than the
            # library's default async client, coredis, which would be one more Redis client.
            options["implementation"] = "redispy"
        self._limiter = SlidingWindowCounterRateLimiter(  # type: ignore[arg-type]
            storage_from_string(url, **options))

    async def hit(self, key_id: str, per_minute: int) -> RateState:
        if self._memory is not None:
            return self._memory.hit(key_id, per_minute)
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        # Sent together: one round trip of latency instead of two. The decision (the
        # library's atomic script) is exact; the remaining count read beside it may be one
        # off when the two commands reach Redis in the other order.
        allowed, stats = await asyncio.gather(
            self._limiter.hit(item, "key", key_id),
            self._limiter.get_window_stats(item, "key", key_id),
        )
        return RateState(allowed, per_minute, max(0, stats.remaining), stats.reset_time)
