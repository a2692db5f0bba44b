"""End-of-prediction notifications, for requests held in sync mode.

In-process: a waiter registers before it reads the row, so an end that happens between the
read and the wait is never missed. (A cross-process notifier over Redis pub/sub or
PostgreSQL LISTEN/NOTIFY fits the same two methods.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, prediction_id: str) -> None:
        for event in self._events.get(prediction_id, ()):
            event.set()
        for listener in self.listeners:
            listener(prediction_id)

    def wake_all(self) -> None:
        """Wake every local waiter (each re-reads its row): the process is draining."""
        for waiters in list(self._events.values()):
            for event in waiters:
                event.set()


class RedisNotifier(LocalNotifier):
    """Ends announced through Redis pub/sub, so a sync-mode request held by one API process
    is answered when a worker anywhere ends the prediction. One subscription per process
    fans out to the local waiters; nobody polls the database in a loop."""

    def __init__(self, url: str, prefix: str = "reelgate") -> None:
        super().__init__()
        self.channel = f"{prefix}:prediction-ended"
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-notifier")
        try:
            await asyncio.wait_for(self._ready.wait(), 3)
        except TimeoutError:
            # Start anyway (Redis may be restarting): sync waiters re-read their rows until
            # the subscription is up, and the listener keeps trying.
            logging.getLogger("reelgate.jobs").warning("notifier: Redis not reachable yet")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def publish(self, prediction_id: str) -> None:
        await self._redis.publish(self.channel, prediction_id)
        for listener in self.listeners:
            listener(prediction_id)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._ready.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"]
                        prediction_id = data.decode() if isinstance(data, bytes) else str(data)
                        for event in self._events.get(prediction_id, ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis went away: sync waiters fall back to their periodic re-read (see
                # api/v3.py) until the subscription is back.
                logging.getLogger("reelgate.jobs").warning(
                    "notifier lost Redis (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(1)
