"""In-process workers for the embedded mode.

``dispatch`` only says "look at prediction X"; the row decides what happens. A reconciler
loop reads the table for rows that nobody announced (created before a restart, or whose
worker died and whose lease ran out) and dispatches them, so nothing depends on a message
surviving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from reelgate.jobs.runner import Runner, renew_forever
from reelgate.store.repo import Store

log = logging.getLogger("reelgate.jobs")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LocalWorkers:
    def __init__(self, runner: Runner, store: Store, *, concurrency: int,
                 reconcile_interval_s: float) -> None:
        self.runner = runner
        self.store = store
        self.concurrency = max(1, concurrency)
        self.reconcile_interval_s = reconcile_interval_s
        self.owner = worker_id()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        # Queued or running here: the reconciler must not queue them a second time.
        self._known: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        return len(self._known) - self._queue.qsize()

    async def dispatch(self, prediction_id: str) -> None:
        if prediction_id not in self._known:
            self._known.add(prediction_id)
            self._queue.put_nowait(prediction_id)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"reelgate-worker-{i}")
            for i in range(self.concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._reconcile(), name="reelgate-reconciler"))
        self._tasks.append(asyncio.create_task(
            renew_forever(self.store, self.owner, self.runner.settings.lease_ttl_s),
            name="reelgate-leases"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _work(self) -> None:
        while True:
            prediction_id = await self._queue.get()
            try:
                await self.runner.run(prediction_id, self.owner)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The row stays unfinished; the reconciler brings it back after the lease.
                log.exception("worker error on prediction %s", prediction_id)
            finally:
                self._known.discard(prediction_id)

    async def _reconcile(self) -> None:
        while True:
            try:
                for prediction_id in await self.store.claimable(limit=100):
                    await self.dispatch(prediction_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler pass failed")
            await asyncio.sleep(self.reconcile_interval_s)
