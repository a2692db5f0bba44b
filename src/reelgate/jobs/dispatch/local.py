"""In-process dispatch, for the embedded server: a dispatched id goes straight onto the
worker pool's backlog in this process. Nothing is lost while the process lives, so the
reconciler takes rows at once (no grace): after a restart it finds what was accepted before
it, and rows whose worker died.

With ``serve --workers N`` only one of the processes runs the pool; the others hand each
new id to it over the ``Siblings`` sockets (jobs/siblings.py), and its reconciler covers a
dropped datagram."""

from __future__ import annotations

from reelgate.jobs.dispatch.pool import WorkerPool
from reelgate.jobs.siblings import WORK, Siblings


class LocalDispatch:
    kind = "in-process"

    def __init__(self, pool: WorkerPool | None, siblings: Siblings | None = None) -> None:
        # None: this process runs no work (an admin command, or a sibling of the process
        # that does); a dispatch then goes to the siblings, or waits for a reconciler.
        self.pool = pool
        self.siblings = siblings

    async def start(self) -> None:
        if self.pool is None:
            return
        if self.siblings is not None:
            self.siblings.on(WORK, self._announced)
        await self.pool.start(reconcile_backends=None, dispatch_grace_s=0.0)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stop()

    async def dispatch(self, prediction_id: str, backend: str) -> None:
        if self.pool is not None:
            self.pool.offer(prediction_id, backend)
        elif self.siblings is not None:
            self.siblings.broadcast(WORK, f"{backend}:{prediction_id}")

    def _announced(self, payload: str) -> None:
        assert self.pool is not None
        backend, _, prediction_id = payload.partition(":")
        if prediction_id:
            self.pool.offer(prediction_id, backend)

    @property
    def in_flight(self) -> int | None:
        return self.pool.in_flight if self.pool is not None else None

    async def depth(self) -> dict[str, int]:
        return {"local": self.pool.queued} if self.pool is not None else {}

    async def check(self) -> dict[str, str]:
        return {}

    def consumer_states(self) -> dict[str, str]:
        return {}
