"""The scaled-out dispatch: one Redis stream per backend through taskiq-redis, consumed by
``reelgate worker`` processes on any machine.

Why taskiq with its Redis *stream* broker: it is maintained, asyncio-native, and a stream
with a consumer group gives acknowledgements and hands a dead consumer's unacknowledged
messages to another (XAUTOCLAIM), which a plain list does not. We use its message format
and broker (kick/listen/ack) but run our own consumer loop below rather than taskiq's
Receiver, so concurrency per backend, acknowledgement and shutdown are explicit in one
readable place. Nothing depends on a message arriving exactly once: the message only says
"look at prediction X", and the row decides (the claim is one conditional UPDATE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import timedelta

from taskiq import AsyncBroker
from taskiq_redis import RedisStreamBroker

from reelgate import metrics
from reelgate.jobs.runner import Runner, renew_forever
from reelgate.jobs.worker import worker_id
from reelgate.store.repo import Store
from reelgate.store.tables import utcnow

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
        self.brokers: dict[str, AsyncBroker] = {}
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


class QueueWorker:
    """Consume the streams of some backends, each with its own concurrency, plus a
    reconciler that runs rows nobody works on (lost messages, dead workers)."""

    def __init__(self, queue: RedisQueue, runner: Runner, store: Store, *,
                 concurrency: dict[str, int], reconcile_interval_s: float,
                 dispatch_grace_s: float = 10.0) -> None:
        self.queue = queue
        self.runner = runner
        self.store = store
        self.concurrency = concurrency
        self.reconcile_interval_s = reconcile_interval_s
        self.dispatch_grace_s = dispatch_grace_s
        self.owner = worker_id()
        self._running: set[asyncio.Task[None]] = set()
        # Ids being run here, so the reconciler does not start a second copy of one.
        self._active: set[str] = set()
        self._loops: list[asyncio.Task[None]] = []
        # The backends this process runs: those it has (configured) and a queue for.
        self._backends = [b for b in concurrency if b in queue.brokers]
        self._slots = {b: asyncio.Semaphore(max(1, n)) for b, n in concurrency.items()}
        # Per backend: "ok" while its consumer reads the stream, else why it does not.
        self._consumer_state = {b: "starting" for b in self._backends}
        self.reconnect_initial_s = 0.2
        self.reconnect_max_s = 5.0

    def consumer_states(self) -> dict[str, str]:
        return dict(self._consumer_state)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        for backend in self._backends:
            self._loops.append(asyncio.create_task(self._consume(backend),
                                                   name=f"consume-{backend}"))
        self._loops.append(asyncio.create_task(self._reconcile(), name="reconciler"))
        self._loops.append(asyncio.create_task(
            renew_forever(self.store, self.owner, self.runner.settings.lease_ttl_s),
            name="leases"))

    async def stop(self) -> None:
        """Stop taking work and hand back what runs (the runner releases each lease), so
        another worker resumes it at once."""
        for task in self._loops:
            task.cancel()
        for task in list(self._running):
            task.cancel()
        for task in [*self._loops, *self._running]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []

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
        broker = self.queue.brokers[backend]
        slots = self._slots[backend]
        async for message in broker.listen():
            await slots.acquire()
            try:
                prediction_id = str(broker.formatter.loads(message.data).args[0])
            except Exception:
                log.exception("dropping an unreadable queue message")
                await _ack(message)
                slots.release()
                continue
            self._spawn(prediction_id, slots, message)

    def _spawn(self, prediction_id: str, slots: asyncio.Semaphore, message: object) -> None:
        if prediction_id in self._active:
            slots.release()
            if message is not None:
                asyncio.create_task(_ack(message))
            return
        self._active.add(prediction_id)

        async def run() -> None:
            try:
                await self.runner.run(prediction_id, self.owner)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker error on prediction %s", prediction_id)
            finally:
                slots.release()
                self._active.discard(prediction_id)
            # Acknowledge only after the row was dealt with: a worker killed mid-run leaves
            # the message pending, to be claimed by another consumer.
            if message is not None:
                await _ack(message)

        task = asyncio.create_task(run(), name=f"prediction-{prediction_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _reconcile(self) -> None:
        while True:
            try:
                grace = utcnow() - timedelta(seconds=self.dispatch_grace_s)
                for prediction_id, backend in await self.store.stuck(
                    self._backends, created_before=grace, limit=100
                ):
                    slots = self._slots[backend]
                    if slots.locked() or prediction_id in self._active:
                        continue
                    await slots.acquire()
                    self._spawn(prediction_id, slots, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler pass failed")
            await asyncio.sleep(self.reconcile_interval_s)


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
