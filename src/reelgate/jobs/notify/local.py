"""In-process notifier: the embedded server, where the worker that ends a prediction and
the request waiting for it share one event loop. A wake-up cannot be lost here."""

from __future__ import annotations

from reelgate.jobs.notify.base import NotifierBase


class LocalNotifier(NotifierBase):
    # In-process a wake-up is never lost, so the re-read is only a safety net.
    fallback_s: float = 60.0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, prediction_id: str) -> None:
        self.waiters.wake(prediction_id)
        self._tell_listeners(prediction_id)
