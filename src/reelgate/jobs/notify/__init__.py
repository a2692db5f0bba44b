"""The Notifier port (base.py) and its implementations: in-process (local.py) and Redis
pub/sub (redis.py). services.py picks one from the settings."""

from __future__ import annotations

from reelgate.jobs.notify.base import Notifier, NotifierBase, Waiters
from reelgate.jobs.notify.local import LocalNotifier
from reelgate.jobs.notify.redis import RedisNotifier

__all__ = ["LocalNotifier", "Notifier", "NotifierBase", "RedisNotifier", "Waiters"]
