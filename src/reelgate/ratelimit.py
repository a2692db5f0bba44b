"""Per-key request rate limits on a moving window, with the ``limits`` library: memory
storage in one process, Redis when several API processes must share the counts."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
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


class RateLimiter:
    def __init__(self, storage_url: str = "memory://") -> None:
        # The "async+" scheme selects the library's asyncio storage for the same URL.
        url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
        options: dict[str, str] = {}
        if url.startswith(("async+redis://", "async+rediss://", "async+redis+unix://")):
            # Through redis-py (a dependency already, via limits[redis]) rather than the
            # library's default async client, coredis, which would be one more Redis client.
            options["implementation"] = "redispy"
        self._limiter = MovingWindowRateLimiter(  # type: ignore[arg-type]
            storage_from_string(url, **options))

    async def hit(self, key_id: str, per_minute: int) -> RateState:
        item = RateLimitItemPerMinute(per_minute)
        allowed = await self._limiter.hit(item, "key", key_id)
        stats = await self._limiter.get_window_stats(item, "key", key_id)
        return RateState(allowed, per_minute, max(0, stats.remaining), stats.reset_time)
