"""The scaled-out Dispatch: one Redis stream per backend through taskiq-redis, consumed by
``reelgate worker`` processes on any machine.

Why taskiq with its Redis *stream* broker: it is maintained, asyncio-native, and a stream
with a consumer group gives acknowledgements and hands a dead consumer's unacknowledged
messages to another (XAUTOCLAIM), which a plain list does not. We use its message format
and broker (kick/listen/ack) but run our own consumer loop below rather than taskiq's
Receiver, so concurrency per backend (the worker pool's slots), acknowledgement and shutdown
are explicit in one readable place. Nothing depends on a message arriving exactly once: the
message only says "look at prediction X", and the row decides (the claim is one conditional
UPDATE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from functools import partial

from taskiq import AckableMessage
from taskiq_redis import RedisStreamBroker

from reelgate import metrics
from reelgate.jobs.dispatch.pool import WorkerPool, worker_id

log = logging.getLogger("reelgate.jobs")

TASK_NAME = "reelgate.run_prediction"


async def _run_prediction(prediction_id: str) -> None:
    """The task as taskiq knows it; workers consume the stream themselves (see module
    docstring), so this body never runs."""
    raise RuntimeError("consumed by reelgate workers, not by taskiq's receiver")


def queue_name(backend: str, prefix: str = "reelgate") -> str:
    return f"{prefix}:predictions:{backend}"


class RedisQueue:
    """Dispatch side: used by API processes (and by workers' reconcilers)."""

    def __init__(self, url: str, backends: Iterable[str], *, prefix: str = "reelgate",
                 prefetch: int = 50) -> None:
        self.url = url
        self.prefix = prefix
        self.brokers: dict[str, RedisStreamBroker] = {}
        self._tasks = {}
        for backend in backends:
            broker = RedisStreamBroker(
                url,
                queue_name=queue_name(backend, prefix),
                consumer_group_name="reelgate-workers",
                consumer_name=worker_id(),
                xread_count=prefetch,
                # A consumer that died keeps its read messages pending; after this long
                # another consumer claims them (the reconciler covers the row anyway).
                idle_timeout=60_000,
                xread_block=1000,
                # A group created after its stream (Redis restarted without persistence,
                # and an API process added messages before any worker was back) must read
                # the stream from its start, not from "now": "$" would skip those messages.
                consumer_id="0",
            )
            self.brokers[backend] = broker
            self._tasks[backend] = broker.register_task(_run_prediction, task_name=TASK_NAME)

    async def start(self) -> None:
        for backend, broker in self.brokers.items():
            try:
                await asyncio.wait_for(broker.startup(), 5)
            except Exception as exc:
                # A process may start while Redis is down: creates are stored and run by
                # the reconciler meanwhile, and consumers declare their group on connect.
                log.warning("queue for %s not reachable at start (%s); going on",
                            backend, type(exc).__name__)

    async def close(self) -> None:
        for broker in self.brokers.values():
            await broker.shutdown()

    async def dispatch(self, prediction_id: str, backend: str) -> None:
        task = self._tasks.get(backend)
        if task is None:
            raise RuntimeError(f"no queue for backend {backend!r}")
        # After Redis restarted, the pool's first connection is a dead one: its error drops
        # it from the pool, and the next try gets a fresh connection.
        for attempt in range(3):
            try:
                await task.kiq(prediction_id)
                return
            except Exception:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def declare_group(self, backend: str) -> None:
        """Create the backend's consumer group (and stream) unless it exists: at start, and
        after a reconnect, since a restarted Redis may have lost both."""
        from redis.asyncio import Redis
        from redis.exceptions import ResponseError

        broker = self.brokers[backend]
        async with Redis(connection_pool=broker.connection_pool) as redis:
            try:
                await redis.xgroup_create(broker.queue_name, broker.consumer_group_name,
                                          id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def ping(self) -> None:
        from redis.asyncio import Redis

        async with Redis.from_url(self.url) as redis:
            await redis.ping()

    async def depth(self) -> dict[str, int]:
        """Messages waiting per backend stream (for /metrics)."""
        from redis.asyncio import Redis

        out: dict[str, int] = {}
        async with Redis.from_url(self.url) as redis:
            for backend in self.brokers:
                try:
                    groups = await redis.xinfo_groups(queue_name(backend, self.prefix))
                    out[backend] = sum(int(g.get("lag") or 0) + int(g.get("pending") or 0)
                                       for g in groups)
                except Exception:
                    out[backend] = 0
        return out


class RedisDispatch:
    """Dispatch through the streams. Every process dispatches; a process that runs work
    (``reelgate worker``, given a pool) also consumes the streams of the backends it runs,
    each within that backend's concurrency, and reconciles their rows."""

    kind = "Redis streams"

    def __init__(self, queue: RedisQueue, pool: WorkerPool | None, *,
                 dispatch_grace_s: float = 10.0) -> None:
        self.queue = queue
        self.pool = pool
        self.dispatch_grace_s = dispatch_grace_s
        self._loops: list[asyncio.Task[None]] = []
        # The backends this process runs: those it has (configured) and a queue for.
        self._backends = ([b for b in pool.backends if b in queue.brokers]
                          if pool is not None else [])
        # Per backend: "ok" while its consumer reads the stream, else why it does not.
        self._consumer_state = {b: "starting" for b in self._backends}
        self.reconnect_initial_s = 0.2
        self.reconnect_max_s = 5.0

    def consumer_states(self) -> dict[str, str]:
        return dict(self._consumer_state)

    @property
    def in_flight(self) -> int | None:
        return self.pool.in_flight if self.pool is not None else None

    async def depth(self) -> dict[str, int]:
        return await self.queue.depth()

    async def check(self) -> dict[str, str]:
        try:
            await asyncio.wait_for(self.queue.ping(), 5)
            checks = {"queue": "ok"}
        except Exception as exc:
            checks = {"queue": f"{type(exc).__name__}: {exc}"[:200]}
        # A consumer that lost the broker says so until it has reconnected.
        checks.update({f"consumer:{b}": state for b, state in self.consumer_states().items()})
        return checks

    async def dispatch(self, prediction_id: str, backend: str) -> None:
        await self.queue.dispatch(prediction_id, backend)

    async def start(self) -> None:
        await self.queue.start()
        if self.pool is None:
            return
        for backend in self._backends:
            self._loops.append(asyncio.create_task(self._consume(backend),
                                                   name=f"consume-{backend}"))
        await self.pool.start(reconcile_backends=self._backends,
                              dispatch_grace_s=self.dispatch_grace_s)

    async def stop(self) -> None:
        """Stop reading, hand back what runs (the runner releases each lease, so another
        worker resumes it at once), then disconnect."""
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []
        if self.pool is not None:
            await self.pool.stop()
        await self.queue.close()

    async def _consume(self, backend: str) -> None:
        """Read the backend's stream for ever. A broker error (Redis restarted, unreachable,
        the group gone) is logged, shown in /readyz and metrics, and followed by a
        reconnect with capped exponential backoff: the loop never dies silently, and work
        queued after the broker is back is read at once, not left to the reconciler."""
        delay = self.reconnect_initial_s
        while True:
            try:
                await self.queue.declare_group(backend)
                self._set_state(backend, "ok")
                delay = self.reconnect_initial_s
                await self._read(backend)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.QUEUE_CONSUMER_ERRORS.labels(backend).inc()
                self._set_state(backend, f"reconnecting after {type(exc).__name__}")
                log.warning("queue consumer for %s lost the broker (%s: %s); reconnecting in "
                            "%.1f s", backend, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(self.reconnect_max_s, delay * 2)

    def _set_state(self, backend: str, state: str) -> None:
        if self._consumer_state.get(backend) != state and state == "ok":
            if self._consumer_state.get(backend, "starting") != "starting":
                log.info("queue consumer for %s reconnected", backend)
        self._consumer_state[backend] = state
        metrics.QUEUE_CONSUMER_UP.labels(backend).set(1 if state == "ok" else 0)

    async def _read(self, backend: str) -> None:
        assert self.pool is not None
        broker = self.queue.brokers[backend]
        slot = self.pool.slot(backend)
        async for message in broker.listen():
            await slot.acquire()
            try:
                data = message.data if isinstance(message, AckableMessage) else message
                prediction_id = str(broker.formatter.loads(data).args[0])
            except Exception:
                log.exception("dropping an unreadable queue message")
                await _ack(message)
                slot.release()
                continue
            self.pool.spawn(prediction_id, backend, partial(_ack, message))


async def _ack(message: object) -> None:
    ack = getattr(message, "ack", None)
    if ack is None:
        return
    try:
        result = ack()
        if asyncio.iscoroutine(result):
            await result
    except Exception as exc:
        # The row was dealt with; an unacknowledged message is only redelivered, and the
        # row makes the second delivery a no-op.
        log.warning("queue acknowledgement failed (%s)", type(exc).__name__)
