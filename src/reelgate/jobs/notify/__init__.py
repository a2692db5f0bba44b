"""The Notifier port (base.py) and its implementations: in-process (local.py) and Redis
pub/sub (redis.py). services.py picks one from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reelgate.jobs.notify.base import Notifier, NotifierBase, Waiters
from reelgate.jobs.notify.local import LocalNotifier

if TYPE_CHECKING:
    from reelgate.jobs.notify.redis import RedisNotifier

__all__ = ["LocalNotifier", "Notifier", "NotifierBase", "RedisNotifier", "Waiters"]


def __getattr__(name: str) -> Any:
    # On first use: Redis pub/sub is only for scaled-out deployments (see dispatch/).
    if name == "RedisNotifier":
        from reelgate.jobs.notify import redis

        return redis.RedisNotifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
