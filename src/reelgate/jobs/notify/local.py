"""In-process notifier: the embedded server, where the worker that ends a prediction and
the request waiting for it share one event loop, so a wake-up cannot be lost. With
``serve --workers N`` the other API processes of the server hear each end too, over the
``Siblings`` sockets (jobs/siblings.py)."""

from __future__ import annotations

from reelgate.jobs.notify.base import NotifierBase
from reelgate.jobs.siblings import ENDED, Siblings


class LocalNotifier(NotifierBase):
    # In-process a wake-up is never lost, so the re-read is only a safety net. (Between
    # sibling processes a datagram is dropped only when a receiver's queue is full.)
    fallback_s: float = 60.0

    def __init__(self, siblings: Siblings | None = None) -> None:
        super().__init__()
        self.siblings = siblings

    async def start(self) -> None:
        if self.siblings is not None:
            # An end in a sibling wakes our waiters (and listeners) as one of ours would.
            self.siblings.on(ENDED, self._ended)

    async def close(self) -> None:
        return None

    async def publish(self, prediction_id: str) -> None:
        self._ended(prediction_id)
        if self.siblings is not None:
            self.siblings.broadcast(ENDED, prediction_id)

    def _ended(self, prediction_id: str) -> None:
        self.waiters.wake(prediction_id)
        self._tell_listeners(prediction_id)
