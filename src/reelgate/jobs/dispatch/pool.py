"""The worker side every dispatcher shares: one worker loop, a concurrency limit per
backend, lease renewal and the reconciler.

Predictions reach the pool two ways. A dispatcher's own consumer (a Redis stream reader)
takes a backend slot and hands the id to :meth:`WorkerPool.spawn`; anything else (an
in-process dispatch, the reconciler's finds) is :meth:`WorkerPool.offer`-ed onto the
backend's backlog, which a feeder drains as slots free up. Either way the id runs in
:meth:`WorkerPool._run`, the one place a prediction is run, and never twice at once in one
process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping
from datetime import timedelta
from typing import Any

from reelgate.jobs.dispatch.base import Runs
from reelgate.store.repo import Store
from reelgate.store.tables import utcnow

log = logging.getLogger("reelgate.jobs")

# Rows the reconciler takes per pass; the next pass takes the next ones.
RECONCILE_BATCH = 100


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def concurrency_of(backend: object, default: int) -> int:
    """What a backend declares it can run at once in one process (``Backend.concurrency``),
    else ``default`` (the operator's setting for that backend)."""
    declared = getattr(backend, "concurrency", None)
    return max(1, int(declared)) if declared is not None else max(1, default)


class WorkerPool:
    def __init__(self, runner: Runs, store: Store, *, backends: Mapping[str, object],
                 default_concurrency: Callable[[str], int], lease_ttl_s: float,
                 reconcile_interval_s: float,
                 concurrency_overrides: Mapping[str, int] | None = None) -> None:
        self.runner = runner
        self.store = store
        # The backends this process runs, by name (their objects declare concurrency).
        self.backends = backends
        self.default_concurrency = default_concurrency
        # The operator's word (REELGATE_BACKEND_CONCURRENCY) beats what a backend declares.
        self.concurrency_overrides = dict(concurrency_overrides or {})
        self.lease_ttl_s = lease_ttl_s
        self.reconcile_interval_s = reconcile_interval_s
        self.owner = worker_id()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._backlog: dict[str, asyncio.Queue[str]] = {}
        self._feeders: dict[str, asyncio.Task[None]] = {}
        # Ids in a backlog or running here: neither the reconciler nor a redelivered message
        # may start a second copy of one.
        self._known: set[str] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._acks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._started = False

    def concurrency(self, backend: str) -> int:
        if backend in self.concurrency_overrides:
            return max(1, self.concurrency_overrides[backend])
        return concurrency_of(self.backends.get(backend),
                              self.default_concurrency(backend))

    def slot(self, backend: str) -> asyncio.Semaphore:
        """The backend's concurrency limit in this process (made on first use: a row may
        name a backend that is not configured here, and the runner fails it)."""
        slot = self._slots.get(backend)
        if slot is None:
            slot = self._slots[backend] = asyncio.Semaphore(self.concurrency(backend))
        return slot

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return sum(q.qsize() for q in self._backlog.values())

    async def start(self, *, reconcile_backends: Collection[str] | None,
                    dispatch_grace_s: float) -> None:
        """Start renewing leases and reconciling rows of ``reconcile_backends`` (None: every
        backend) created more than ``dispatch_grace_s`` ago, and drain the backlogs."""
        self._started = True
        for backend in list(self._backlog):
            self._ensure_feeder(backend)
        self._loops.append(asyncio.create_task(
            self._reconcile(reconcile_backends, dispatch_grace_s), name="reelgate-reconciler"))
        self._loops.append(asyncio.create_task(self._renew_leases(), name="reelgate-leases"))

    async def stop(self) -> None:
        """Stop taking work and cancel what runs: the runner hands each row back (releases
        its lease), so another worker resumes it at once."""
        self._started = False
        tasks = [*self._loops, *self._feeders.values(), *self._running]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []
        self._feeders = {}
        self._backlog = {}
        self._known.clear()

    def offer(self, prediction_id: str, backend: str) -> None:
        """Run ``prediction_id`` when ``backend`` has a free slot, unless it is queued or
        running here already."""
        if prediction_id in self._known:
            return
        self._known.add(prediction_id)
        queue = self._backlog.get(backend)
        if queue is None:
            queue = self._backlog[backend] = asyncio.Queue()
        queue.put_nowait(prediction_id)
        if self._started:
            self._ensure_feeder(backend)

    def spawn(self, prediction_id: str, backend: str,
              after: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Run ``prediction_id`` now, in a slot of ``backend`` the caller has taken;
        ``after`` runs once the row was dealt with (a queue acknowledgement). An id already
        queued or running here is not started twice: its slot is given back at once."""
        if prediction_id in self._known:
            self.slot(backend).release()
            if after is not None:
                task = asyncio.create_task(after())
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)
            return
        self._known.add(prediction_id)
        self._start(prediction_id, backend, after)

    def _start(self, prediction_id: str, backend: str,
               after: Callable[[], Coroutine[Any, Any, None]] | None) -> None:
        task = asyncio.create_task(self._run(prediction_id, backend, after),
                                   name=f"prediction-{prediction_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, prediction_id: str, backend: str,
                   after: Callable[[], Coroutine[Any, Any, None]] | None) -> None:
        """The worker loop's body, for every dispatcher: run the row, free the slot."""
        try:
            await self.runner.run(prediction_id, self.owner)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The row stays unfinished; the reconciler brings it back after the lease.
            log.exception("worker error on prediction %s", prediction_id)
        finally:
            self.slot(backend).release()
            self._known.discard(prediction_id)
        # Acknowledge only after the row was dealt with: a worker killed mid-run leaves
        # its message pending, to be claimed by another consumer.
        if after is not None:
            await after()

    def _ensure_feeder(self, backend: str) -> None:
        if backend not in self._feeders:
            self._feeders[backend] = asyncio.create_task(self._feed(backend),
                                                         name=f"reelgate-feed-{backend}")

    async def _feed(self, backend: str) -> None:
        queue = self._backlog[backend]
        slot = self.slot(backend)
        while True:
            # The slot first: ids stay in the backlog (and count as queued) until one frees.
            await slot.acquire()
            try:
                prediction_id = await queue.get()
            except BaseException:
                slot.release()
                raise
            self._start(prediction_id, backend, None)

    async def _reconcile(self, backends: Collection[str] | None, grace_s: float) -> None:
        while True:
            try:
                found = await self.store.stuck(
                    None if backends is None else list(backends),
                    created_before=utcnow() - timedelta(seconds=grace_s),
                    limit=RECONCILE_BATCH)
                for prediction_id, backend in found:
                    self.offer(prediction_id, backend)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler pass failed")
            await asyncio.sleep(self.reconcile_interval_s)

    async def _renew_leases(self) -> None:
        """Keep every lease of this pool alive, a third of the TTL apart, in one statement.
        If this process stalls or dies, the leases run out and other workers take the rows
        over."""
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            try:
                await self.store.renew_leases(self.owner, self.lease_ttl_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease renewal failed")
