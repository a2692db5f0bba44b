"""The Dispatch port (base.py), the worker pool every implementation runs its work through
(pool.py), and the implementations: in-process (local.py) and Redis streams (redis.py).
services.py picks one from the settings."""

from __future__ import annotations

from reelgate.jobs.dispatch.base import Dispatch, Runs
from reelgate.jobs.dispatch.local import LocalDispatch
from reelgate.jobs.dispatch.pool import WorkerPool, worker_id
from reelgate.jobs.dispatch.redis import RedisDispatch, RedisQueue, queue_name

__all__ = ["Dispatch", "LocalDispatch", "RedisDispatch", "RedisQueue", "Runs", "WorkerPool",
           "queue_name", "worker_id"]
