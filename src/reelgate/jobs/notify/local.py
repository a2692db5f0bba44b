"""In-process notifier: the embedded server, where the worker that ends a prediction and
the request waiting for it share one event loop. A wake-up cannot be lost here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from reelgate.jobs.notify.base import R, Waiters


class LocalNotifier:
    # Re-read this often even without a wake-up. In-process a wake-up is never lost, so
    # this is only a safety net.
    fallback_s: float = 60.0

    def __init__(self) -> None:
        self.waiters = Waiters()
        self.listeners: list[Callable[[str], None]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, prediction_id: str) -> None:
        self.waiters.wake(prediction_id)
        for listener in self.listeners:
            listener(prediction_id)

    async def wait(self, prediction_id: str, read: Callable[[], Awaitable[R | None]],
                   timeout: float,
                   until: Callable[[], float | None] | None = None) -> tuple[R | None, bool]:
        return await self.waiters.wait(prediction_id, read, timeout, until, self.fallback_s)

    def wake_all(self) -> None:
        self.waiters.wake_all()
