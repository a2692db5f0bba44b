"""End-of-prediction notifications, for requests held in sync mode (and long polls).

The port is two calls: ``publish(id)`` after a row has ended, and ``wait(id, read, timeout)``
to hold a caller until ``read()`` shows the row ended. A wake-up cannot be lost: a waiter
registers before its first read, and its flag is cleared *before* each read, never after,
so an end published while a read is in flight leaves the flag set and the next loop turn
reads again at once. (Clearing after the read, as an earlier version did, dropped exactly
those wake-ups; under load, where reads are slow, that was most of them, and each lost one
cost the full fallback interval.)

In-process the notifier is exact. Across processes (Redis pub/sub) a message can be lost
while the subscription reconnects, so waiters also re-read on a jittered fallback interval,
and every local waiter is woken when the subscription comes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar


class _Row(Protocol):
    @property
    def finished(self) -> bool: ...


R = TypeVar("R", bound=_Row)


class LocalNotifier:
    # Re-read this often (+-50% jitter, so held requests do not all read at once) even
    # without a wake-up. In-process a wake-up is never lost, so this is only a safety net.
    fallback_s: float = 60.0

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        # Called on every end (e.g. to wake the webhook sender at once).
        self.listeners: list[Callable[[str], None]] = []

    async def wait(self, prediction_id: str, read: Callable[[], Awaitable[R | None]],
                   timeout: float) -> tuple[R | None, bool]:
        """Hold until ``read()`` returns a row that has ended (or None: gone), or until
        ``timeout`` seconds have passed. Returns the last row read and whether it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        async with self.subscribe(prediction_id) as woken:
            while True:
                # Cleared before the read: a publish that lands while the read is in flight
                # sets it again, and the wait below returns at once.
                woken.clear()
                row = await read()
                if row is None or row.finished:
                    return row, True
                left = deadline - loop.time()
                if left <= 0:
                    return row, False
                nap = min(left, self.fallback_s * random.uniform(0.5, 1.5))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(nap):
                        await woken.wait()

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
        self._wake(prediction_id)
        for listener in self.listeners:
            listener(prediction_id)

    def _wake(self, prediction_id: str) -> None:
        for event in self._events.get(prediction_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()


class RedisNotifier(LocalNotifier):
    """Ends announced through Redis pub/sub, so a sync-mode request held by one API process
    is answered when a worker anywhere ends the prediction. One subscription per process
    fans out to the local waiters; nobody polls the database in a loop."""

    fallback_s = 10.0

    def __init__(self, url: str, prefix: str = "reelgate") -> None:
        super().__init__()
        self.channel = f"{prefix}:prediction-ended"
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-notifier")
        await asyncio.wait_for(self._ready.wait(), 10)

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
                    if self._ready.is_set():
                        # Back after a loss: ends published meanwhile were not heard, so
                        # every local waiter reads its row again now.
                        self._wake_all()
                    self._ready.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"]
                        prediction_id = data.decode() if isinstance(data, bytes) else str(data)
                        self._wake(prediction_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis went away: waiters fall back to their periodic re-read (wait())
                # until the subscription is back.
                logging.getLogger("reelgate.jobs").exception("notifier lost Redis; retrying")
                await asyncio.sleep(1)
