"""End-of-prediction notifications, for requests held in sync mode.

In-process: a waiter registers before it reads the row, so an end that happens between the
read and the wait is never missed. (A cross-process notifier over Redis pub/sub or
PostgreSQL LISTEN/NOTIFY fits the same two methods.)"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class LocalNotifier:
    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        # Called on every end (e.g. to wake the webhook sender at once).
        self.listeners: list[Callable[[str], None]] = []

    @asynccontextmanager
    async def subscribe(self, prediction_id: str) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        self._events[prediction_id].add(event)
        try:
            yield event
        finally:
            waiters = self._events.get(prediction_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._events[prediction_id]

    async def publish(self, prediction_id: str) -> None:
        for event in self._events.get(prediction_id, ()):
            event.set()
        for listener in self.listeners:
            listener(prediction_id)
