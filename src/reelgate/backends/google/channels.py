"""A pool of upstream channels (credentials): who takes the next piece of work.

Each channel has a weight, a cap on operations running at once, a cap on create calls per
minute, and a health state: a channel that answers 429 or 5xx is cooled down for a while and
new work goes to the others. The pool lives in the worker process; its state is mirrored to a
small JSON file so that ``reelgate google channels`` (another process) can show it.

Why by hand: the choice is a few lines of bookkeeping over state we must also show and wait
on (when does the next channel free up?), which a rate-limit library does not expose in one
place. Smooth weighted round-robin (nginx's) spreads work by weight without randomness, so
tests and operators see a predictable order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ChannelPool", "ChannelState", "NoChannel", "PoolMember", "read_status_file"]


class PoolMember(Protocol):
    """What the pool needs of a channel: Google's ChannelConfig, an upstream v3 provider's
    channel (backends/v3_upstream.py), or a whole backend in a mixed route
    (backends/mixed.py) all fit, so one model can be served across backends."""

    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def max_concurrency(self) -> int | None: ...
    @property
    def rate_per_minute(self) -> int | None: ...


log = logging.getLogger("reelgate.google")

RATE_WINDOW_S = 60.0


class NoChannel(Exception):
    """No eligible channel became free in time."""


@dataclass
class ChannelState:
    config: PoolMember
    in_flight: int = 0
    cooldown_until: float = 0.0  # monotonic
    cooldown_reason: str = ""
    last_error: str = ""
    last_error_at: str = ""  # ISO wall time
    submitted: int = 0
    completed: int = 0
    failures: int = 0
    starts: deque[float] = field(default_factory=deque)  # monotonic times of create calls
    current_weight: int = 0  # smooth weighted round-robin

    @property
    def name(self) -> str:
        return self.config.name


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class ChannelPool:
    def __init__(
        self,
        channels: Iterable[PoolMember],
        *,
        status_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states = {c.name: ChannelState(c) for c in channels}
        self.status_path = status_path
        self._clock = clock
        self._changed: asyncio.Condition | None = None

    # --- reading -------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._states)

    def get(self, name: str) -> ChannelState | None:
        return self._states.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._states.values())

    def _ready_at(self, s: ChannelState, now: float) -> float:
        """When ``s`` can take new work (math.inf: only a release can free it)."""
        if s.config.weight <= 0:
            return math.inf
        cap = s.config.max_concurrency or 0
        if cap and s.in_flight >= cap:
            return math.inf
        at = max(now, s.cooldown_until)
        rate = s.config.rate_per_minute or 0
        while s.starts and s.starts[0] <= now - RATE_WINDOW_S:
            s.starts.popleft()
        if rate and len(s.starts) >= rate:
            at = max(at, s.starts[len(s.starts) - rate] + RATE_WINDOW_S)
        return at

    # --- taking and giving back --------------------------------------------------------------

    def try_acquire(self, eligible: Iterable[str]) -> ChannelState | None:
        """Take a slot on the best ready channel among ``eligible`` now, or None."""
        now = self._clock()
        ready = [s for n in eligible if (s := self._states.get(n)) is not None
                 and self._ready_at(s, now) <= now]
        if not ready:
            return None
        total = sum(s.config.weight for s in ready)
        for s in ready:
            s.current_weight += s.config.weight
        best = max(ready, key=lambda s: s.current_weight)
        best.current_weight -= total
        best.in_flight += 1
        best.submitted += 1
        best.starts.append(now)
        self._publish()
        return best

    async def acquire(self, eligible: Iterable[str], timeout: float) -> ChannelState:
        """Wait (up to ``timeout`` seconds) for a slot on one of ``eligible``."""
        names = list(eligible)
        if all(s.config.weight <= 0 for n in names if (s := self._states.get(n)) is not None):
            raise NoChannel(self.describe(names))  # only drained channels: nothing will free up
        deadline = self._clock() + timeout
        cond = self._condition()
        while True:
            state = self.try_acquire(names)
            if state is not None:
                return state
            now = self._clock()
            if now >= deadline:
                raise NoChannel(self.describe(names))
            next_ready = min((self._ready_at(s, now) for n in names
                              if (s := self._states.get(n)) is not None), default=math.inf)
            wait = min(deadline, next_ready) - now
            async with cond:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=max(0.01, wait))

    def attach(self, name: str) -> ChannelState | None:
        """Count a resumed operation on ``name`` (it runs at Google whatever our caps say)."""
        s = self._states.get(name)
        if s is not None:
            s.in_flight += 1
            self._publish()
        return s

    def release(self, name: str, *, ok: bool | None = None) -> None:
        s = self._states.get(name)
        if s is None:
            return
        s.in_flight = max(0, s.in_flight - 1)
        if ok:
            s.completed += 1
        self._publish()
        self._notify()

    def cool_down(self, name: str, seconds: float, reason: str) -> None:
        s = self._states.get(name)
        if s is None:
            return
        s.cooldown_until = max(s.cooldown_until, self._clock() + max(0.0, seconds))
        s.cooldown_reason = reason
        s.failures += 1
        s.last_error = reason
        s.last_error_at = _iso(time.time())
        log.warning("channel %s cooling down for %.1fs: %s", name, seconds, reason)
        self._publish()

    def note_error(self, name: str, reason: str) -> None:
        """An error that says nothing about the channel's health (kept for the listing)."""
        s = self._states.get(name)
        if s is not None:
            s.last_error = reason
            s.last_error_at = _iso(time.time())
            self._publish()

    # --- showing -----------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        now, wall = self._clock(), time.time()
        out = []
        for s in self._states.values():
            cooling = max(0.0, s.cooldown_until - now)
            cap = s.config.max_concurrency or 0
            if s.config.weight <= 0:
                health = "drained"
            elif cooling > 0:
                health = "cooling"
            elif cap and s.in_flight >= cap:
                health = "full"
            else:
                health = "ok"
            out.append({
                "name": s.name,
                "mode": getattr(s.config, "mode", None),
                "health": health,
                "in_flight": s.in_flight,
                "cooling_until": _iso(wall + cooling) if cooling > 0 else None,
                "cooldown_reason": s.cooldown_reason if cooling > 0 else "",
                "submitted": s.submitted,
                "completed": s.completed,
                "failures": s.failures,
                "last_error": s.last_error,
                "last_error_at": s.last_error_at or None,
            })
        return out

    def describe(self, names: Iterable[str]) -> str:
        parts = []
        for row in self.snapshot():
            if row["name"] in names:
                extra = f" ({row['cooldown_reason']})" if row["cooldown_reason"] else ""
                parts.append(f"{row['name']}: {row['health']}{extra}")
        return "; ".join(parts) or "no channel"

    # --- internals ---------------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def wake() -> None:
            async with cond:
                cond.notify_all()

        with contextlib.suppress(RuntimeError):  # no running loop: nobody can be waiting
            asyncio.get_running_loop().create_task(wake())

    def _publish(self) -> None:
        if self.status_path is None:
            return
        doc = {"updated_at": _iso(time.time()), "pid": os.getpid(), "channels": self.snapshot()}
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_name(f"{self.status_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.status_path)
        except OSError as exc:  # the listing is a convenience; never fail work over it
            log.debug("cannot write %s: %s", self.status_path, exc)


def read_status_file(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
