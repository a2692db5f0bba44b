"""The Notifier port: end-of-prediction wake-ups, for requests held in sync mode (and long
polls, and the console's live status).

The port is two calls: ``publish(id)`` after a row has ended, and ``wait(id, read, timeout,
until=)`` to hold a caller until ``read()`` shows the row ended. The row is the truth; a
wake-up only says "read it again now". So a wake-up that is lost (or a publish that came
before the wait) costs at most one fallback interval, never a wrong answer.

Every implementation keeps its local waiters in a :class:`Waiters` (the wait loop below),
through :class:`NotifierBase`, and differs only in how a publish reaches the waiters of
other processes."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar


class _Row(Protocol):
    @property
    def finished(self) -> bool: ...


R = TypeVar("R", bound=_Row)


class Notifier(Protocol):
    """Announces ended predictions and holds callers until theirs has ended."""

    # Called with the id on every end published here (e.g. to wake the webhook sender).
    listeners: list[Callable[[str], None]]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, prediction_id: str) -> None:
        """Say that ``prediction_id`` ended (its row already says so)."""
        ...

    async def wait(self, prediction_id: str, read: Callable[[], Awaitable[R | None]],
                   timeout: float,
                   until: Callable[[], float | None] | None = None) -> tuple[R | None, bool]:
        """Hold until ``read()`` returns a row that has ended (or None: gone), or until
        ``timeout`` seconds have passed, or the loop time ``until()`` gives. Returns the
        last row read and whether it ended."""
        ...

    def wake_all(self) -> None:
        """Make every waiter of this process read its row again now (draining)."""
        ...


class Waiters:
    """The waiters of one process, by prediction id, and the loop that holds each.

    A wake-up cannot be lost: a waiter registers before its first read, and its flag is
    cleared *before* each read, never after, so an end published while a read is in flight
    leaves the flag set and the next loop turn reads again at once. (Clearing after the
    read, as an earlier version did, dropped exactly those wake-ups; under load, where reads
    are slow, that was most of them, and each lost one cost the full fallback interval.)"""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    async def wait(self, prediction_id: str, read: Callable[[], Awaitable[R | None]],
                   timeout: float, until: Callable[[], float | None] | None,
                   fallback_s: float) -> tuple[R | None, bool]:
        """See :meth:`Notifier.wait`. Without a wake-up, the row is re-read every
        ``fallback_s`` (+-50% jitter, so held requests do not all read at once); ``until``
        is checked at each wake-up (a draining process moves it closer and wakes
        everyone)."""
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
                cap = until() if until is not None else None
                if cap is not None:
                    deadline = min(deadline, cap)
                left = deadline - loop.time()
                if left <= 0:
                    return row, False
                nap = min(left, fallback_s * random.uniform(0.5, 1.5))
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

    def wake(self, prediction_id: str) -> None:
        for event in self._events.get(prediction_id, ()):
            event.set()

    def wake_all(self) -> None:
        for waiters in list(self._events.values()):
            for event in waiters:
                event.set()

    def __len__(self) -> int:
        return sum(len(w) for w in self._events.values())


class NotifierBase:
    """The part of a notifier that lives in its own process: the waiters and the listeners.
    An implementation adds ``start``/``close``/``publish`` (how an end travels), and wakes
    ``self.waiters`` when one arrives."""

    # Re-read this often (+-50% jitter) even without a wake-up: how long a lost one costs.
    fallback_s: float = 60.0

    def __init__(self) -> None:
        self.waiters = Waiters()
        self.listeners: list[Callable[[str], None]] = []

    async def wait(self, prediction_id: str, read: Callable[[], Awaitable[R | None]],
                   timeout: float,
                   until: Callable[[], float | None] | None = None) -> tuple[R | None, bool]:
        return await self.waiters.wait(prediction_id, read, timeout, until, self.fallback_s)

    def wake_all(self) -> None:
        self.waiters.wake_all()

    def _tell_listeners(self, prediction_id: str) -> None:
        for listener in self.listeners:
            listener(prediction_id)
