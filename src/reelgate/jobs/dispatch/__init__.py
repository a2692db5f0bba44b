"""The Dispatch port (base.py), the worker pool every implementation runs its work through
(pool.py), and the implementations: in-process (local.py) and Redis streams (redis.py).
services.py picks one from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reelgate.jobs.dispatch.base import Dispatch, Runs
from reelgate.jobs.dispatch.local import LocalDispatch
from reelgate.jobs.dispatch.pool import WorkerPool, worker_id

if TYPE_CHECKING:
    from reelgate.jobs.dispatch.redis import RedisDispatch, RedisQueue, queue_name

__all__ = ["Dispatch", "LocalDispatch", "RedisDispatch", "RedisQueue", "Runs", "WorkerPool",
           "queue_name", "worker_id"]


def __getattr__(name: str) -> Any:
    # The Redis implementation on first use: it imports taskiq and aiohttp, which an
    # embedded process never needs (~0.4 s of its start-up).
    if name in ("RedisDispatch", "RedisQueue", "queue_name"):
        from reelgate.jobs.dispatch import redis

        return getattr(redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
