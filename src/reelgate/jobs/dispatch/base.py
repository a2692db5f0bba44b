"""The Dispatch port: how a stored prediction reaches a worker.

``dispatch(id, backend)`` only says "look at prediction X"; the row decides what happens
(the claim is one conditional UPDATE), so a duplicated, late or lost message costs nothing
but a little time: a reconciler reads the table for rows nobody works on (created before a
restart, a lost message, a worker that died and whose lease ran out) and runs them.

Two implementations: in-process (local.py, the embedded server) and Redis streams
(redis.py, ``reelgate worker`` processes on any machine). Both run their work through the
same :class:`~reelgate.jobs.dispatch.pool.WorkerPool`: one worker loop, one concurrency
limit per backend, one reconciler query."""

from __future__ import annotations

from typing import Protocol


class Runs(Protocol):
    """What a worker pool runs: ``jobs.runner.Runner`` (claim the row, generate, end it)."""

    async def run(self, prediction_id: str, owner: str) -> None: ...


class Dispatch(Protocol):
    # Shown on the console's system page ("in-process", "Redis streams").
    kind: str

    async def start(self) -> None:
        """Connect; in a process that runs work, start consuming, renewing leases and
        reconciling."""
        ...

    async def stop(self) -> None:
        """Stop taking work and hand back what runs (each lease is released, so another
        worker resumes it at once); then disconnect."""
        ...

    async def dispatch(self, prediction_id: str, backend: str) -> None:
        """Announce a stored prediction to whoever runs ``backend``'s work."""
        ...

    @property
    def in_flight(self) -> int | None:
        """Predictions running in this process; None where it runs no work."""
        ...

    async def depth(self) -> dict[str, int]:
        """Dispatched predictions waiting for a worker, by queue (for /metrics and the
        console); empty where this process can see no queue."""
        ...

    async def check(self) -> dict[str, str]:
        """Readiness of the dispatch's own dependencies, for /readyz: "ok" or what is
        wrong, by name; empty when there is nothing outside the process to check."""
        ...

    def consumer_states(self) -> dict[str, str]:
        """Per backend consumed here: "ok" while it reads its queue, else why not. Safe to
        call from another thread (a worker's /readyz)."""
        ...
