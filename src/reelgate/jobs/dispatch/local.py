"""In-process dispatch, for the embedded server: a dispatched id goes straight onto the
worker pool's backlog in this process. Nothing is lost while the process lives, so the
reconciler takes rows at once (no grace): after a restart it finds what was accepted before
it, and rows whose worker died."""

from __future__ import annotations

from reelgate.jobs.dispatch.pool import WorkerPool


class LocalDispatch:
    kind = "in-process"

    def __init__(self, pool: WorkerPool | None) -> None:
        # None: this process runs no work (an admin command); a dispatch then waits for the
        # reconciler of the process that does.
        self.pool = pool

    async def start(self) -> None:
        if self.pool is not None:
            await self.pool.start(reconcile_backends=None, dispatch_grace_s=0.0)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stop()

    async def dispatch(self, prediction_id: str, backend: str) -> None:
        if self.pool is not None:
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
