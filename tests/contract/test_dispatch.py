"""The Dispatch and Notifier ports: one set of tests run against every implementation
(in-process, in-process between the sibling processes of ``serve --workers N``, and Redis
streams / pub/sub). A new dispatcher or notifier is added to the
``dispatch_kind`` / ``notifiers`` fixtures below and must pass all of them.

The runner here is a stand-in that plays by the real runner's rules (claim the row, hold it
a while, end it, hand it back when cancelled), so the tests see what a user would: each
prediction ends once, a dead worker's row is taken over, a slow backend never runs more at
once than it declares."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reelgate.jobs.dispatch import Dispatch, LocalDispatch, RedisDispatch, RedisQueue, WorkerPool
from reelgate.jobs.notify import LocalNotifier, Notifier, RedisNotifier
from reelgate.jobs.siblings import Siblings
from reelgate.store import migrate
from reelgate.store.db import create_engine
from reelgate.store.repo import Prediction, Store, new_id

# Backends the tests dispatch to: one that declares its concurrency, one that does not (it
# gets the operator's default).
BACKENDS = ("slow", "other")
DEFAULT_CONCURRENCY = 3


class Backend:
    """Only what the dispatcher reads of a backend: its declared concurrency."""

    def __init__(self, concurrency: int | None = None) -> None:
        if concurrency is not None:
            self.concurrency = concurrency


class Runner:
    """Claims the row, holds it ``hold_s`` (or until ``gate`` opens), completes it; when
    cancelled, hands the row back as jobs.runner.Runner does."""

    def __init__(self, store: Store, *, hold_s: float = 0.0) -> None:
        self.store = store
        self.hold_s = hold_s
        self.gate: asyncio.Event | None = None
        self.runs: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.handed_back: list[str] = []

    async def run(self, prediction_id: str, owner: str) -> None:
        pred = await self.store.claim(prediction_id, owner, ttl_s=30)
        if pred is None:
            return  # ended, or another worker holds it
        self.runs[pred.id] += 1
        self.running[pred.backend] += 1
        self.peak[pred.backend] = max(self.peak[pred.backend], self.running[pred.backend])
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(self.hold_s)
        except asyncio.CancelledError:
            await self.store.release_lease(pred.id, owner)
            self.handed_back.append(pred.id)
            raise
        finally:
            self.running[pred.backend] -= 1
        await self.store.complete(pred.id, owner, ["out.mp4"])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'dispatch.db'}")
    await migrate.upgrade(engine)
    yield Store(engine)
    await engine.dispose()


@pytest.fixture(params=["in-process", "redis"])
def dispatch_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_url")  # skips (or fails, if required) without Redis
    return str(request.param)


MakeDispatch = Callable[..., Awaitable[Dispatch]]


@pytest.fixture
async def make_dispatch(request: pytest.FixtureRequest, dispatch_kind: str,
                        store: Store) -> AsyncIterator[MakeDispatch]:
    """Builds and starts a dispatcher of the kind under test, with a worker pool running
    ``runner``; stops whatever it built at the end."""
    started: list[Dispatch] = []
    prefix = f"contract-{uuid.uuid4().hex[:8]}"

    async def make(runner: Runner, backends: dict[str, Backend] | None = None,
                   overrides: dict[str, int] | None = None) -> Dispatch:
        pool = WorkerPool(runner, store,
                          backends=backends if backends is not None else {},
                          default_concurrency=lambda _name: DEFAULT_CONCURRENCY,
                          concurrency_overrides=overrides,
                          lease_ttl_s=30, reconcile_interval_s=0.1)
        dispatcher: Dispatch
        if dispatch_kind == "redis":
            url = request.getfixturevalue("redis_url")
            dispatcher = RedisDispatch(RedisQueue(url, BACKENDS, prefix=prefix), pool,
                                       dispatch_grace_s=0.3)
        else:
            dispatcher = LocalDispatch(pool)
        await dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in started:
        await dispatcher.stop()


async def add(store: Store, backend: str = "slow") -> str:
    account_id = await store.create_account(f"acct-{new_id()[:6]}")
    _, key = await store.create_key(account_id, "k")
    pid = new_id()
    await store.insert_prediction(
        id=pid, account_id=account_id, key_id=key.id, model="veo3", scene="text-to-video",
        backend=backend, params={"prompt": "x", "duration": 8}, inputs={})
    return pid


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def completed(store: Store, *ids: str) -> bool:
    rows = [await store.get(i) for i in ids]
    return all(r is not None and r.status == "completed" for r in rows)


async def row(store: Store, pid: str) -> Prediction:
    pred = await store.get(pid)
    assert pred is not None
    return pred


# --- Dispatch --------------------------------------------------------------------------------


async def test_dispatched_prediction_runs_once(store: Store, make_dispatch: MakeDispatch) -> None:
    runner = Runner(store, hold_s=0.2)
    dispatcher = await make_dispatch(runner, {"slow": Backend(2)})
    pid = await add(store)
    # Announced three times (a retried dispatch, a redelivered message): still one run.
    for _ in range(3):
        await dispatcher.dispatch(pid, "slow")
    await eventually(lambda: completed(store, pid))
    await asyncio.sleep(0.3)  # reconciler passes and late duplicates have had their chance
    assert runner.runs[pid] == 1
    pred = await row(store, pid)
    assert pred.attempts == 1 and pred.outputs == ["out.mp4"]


async def test_dead_workers_row_and_lost_dispatch_are_reconciled_once(
    store: Store, make_dispatch: MakeDispatch
) -> None:
    runner = Runner(store, hold_s=0.05)
    # A worker claimed this row and died: its lease runs out, nobody dispatches it again.
    orphan = await add(store)
    assert await store.claim(orphan, "dead-worker", ttl_s=0.3) is not None
    # Accepted, but its dispatch was lost (the process restarted, the broker was down).
    lost = await add(store, "other")
    await make_dispatch(runner, {"slow": Backend(2), "other": Backend()})
    await eventually(lambda: completed(store, orphan, lost))
    await asyncio.sleep(0.3)
    assert runner.runs == Counter({orphan: 1, lost: 1})
    assert (await row(store, orphan)).attempts == 2  # the dead worker's, then ours
    assert (await row(store, lost)).attempts == 1


async def test_each_backend_runs_at_most_its_declared_concurrency(
    store: Store, make_dispatch: MakeDispatch
) -> None:
    runner = Runner(store, hold_s=0.3)
    dispatcher = await make_dispatch(runner, {"slow": Backend(2), "other": Backend()})
    slow = [await add(store, "slow") for _ in range(6)]
    other = [await add(store, "other") for _ in range(6)]
    for pid in slow:
        await dispatcher.dispatch(pid, "slow")
    for pid in other:
        await dispatcher.dispatch(pid, "other")
    await eventually(lambda: completed(store, *slow, *other), timeout=30)
    # The declared limit, and the default for a backend that declares none; each reached,
    # so the limits are per backend, not one pool shared by both.
    assert runner.peak["slow"] == 2
    assert runner.peak["other"] == DEFAULT_CONCURRENCY
    assert set(runner.runs.values()) == {1}


async def test_the_operators_setting_beats_a_declared_concurrency(
    store: Store, make_dispatch: MakeDispatch
) -> None:
    runner = Runner(store, hold_s=0.2)
    dispatcher = await make_dispatch(runner, {"slow": Backend(4)}, overrides={"slow": 1})
    ids = [await add(store, "slow") for _ in range(3)]
    for pid in ids:
        await dispatcher.dispatch(pid, "slow")
    await eventually(lambda: completed(store, *ids))
    assert runner.peak["slow"] == 1


async def test_a_full_backend_does_not_hold_up_another(
    store: Store, make_dispatch: MakeDispatch
) -> None:
    runner = Runner(store)
    runner.gate = asyncio.Event()  # every run holds until the gate opens
    dispatcher = await make_dispatch(runner, {"slow": Backend(1), "other": Backend(1)})
    stuck = [await add(store, "slow") for _ in range(3)]
    for pid in stuck:
        await dispatcher.dispatch(pid, "slow")
    await eventually(lambda: _running(runner, "slow", 1))
    quick = await add(store, "other")
    await dispatcher.dispatch(quick, "other")
    await eventually(lambda: _running(runner, "other", 1))
    assert runner.running["slow"] == 1  # still one: the other backend got a slot of its own
    runner.gate.set()
    await eventually(lambda: completed(store, *stuck, quick))


async def _running(runner: Runner, backend: str, n: int) -> bool:
    return runner.running[backend] == n


async def test_stop_hands_running_work_back_for_the_next_worker(
    store: Store, make_dispatch: MakeDispatch
) -> None:
    first = Runner(store)
    first.gate = asyncio.Event()  # never opens: these runs are cut short by stop()
    dispatcher = await make_dispatch(first, {"slow": Backend(2)})
    ids = [await add(store) for _ in range(2)]
    for pid in ids:
        await dispatcher.dispatch(pid, "slow")
    await eventually(lambda: _running(first, "slow", 2))
    assert dispatcher.in_flight == 2
    await dispatcher.stop()
    # Nothing runs any more, and each row was handed back, not left to a lease to run out.
    assert dispatcher.in_flight == 0 and first.running["slow"] == 0
    assert sorted(first.handed_back) == sorted(ids)
    for pid in ids:
        pred = await row(store, pid)
        assert pred.status == "processing" and pred.lease_owner is None
    # The next worker takes them over at once (well within the 30 s lease).
    second = Runner(store, hold_s=0.05)
    t0 = time.monotonic()
    await make_dispatch(second, {"slow": Backend(2)})
    await eventually(lambda: completed(store, *ids))
    assert time.monotonic() - t0 < 10
    assert second.runs == Counter({pid: 1 for pid in ids})
    assert [(await row(store, pid)).attempts for pid in ids] == [2, 2]


async def test_a_sibling_without_workers_hands_work_to_the_one_with_them(
    store: Store, tmp_path: Path
) -> None:
    # serve --workers N: one process runs the pool; another accepts a prediction and
    # dispatches it over the sockets, and it runs at once (no reconciler needed).
    folder = tmp_path / "notify"
    worker_side, api_side = Siblings(folder, "worker"), Siblings(folder, "api")
    for s in (worker_side, api_side):
        await s.start()
    runner = Runner(store, hold_s=0.05)
    pool = WorkerPool(runner, store, backends={"slow": Backend(2)},
                      default_concurrency=lambda _name: DEFAULT_CONCURRENCY,
                      lease_ttl_s=30, reconcile_interval_s=3600)
    worker, api = LocalDispatch(pool, worker_side), LocalDispatch(None, api_side)
    await worker.start()
    await api.start()
    try:
        # Created before the pool's first reconciler pass ended: only the datagram can
        # bring it to the worker within this test.
        await asyncio.sleep(0.2)
        pid = await add(store)
        await api.dispatch(pid, "slow")
        await eventually(lambda: completed(store, pid), timeout=5)
        assert runner.runs[pid] == 1 and api.in_flight is None
    finally:
        await api.stop()
        await worker.stop()
        for s in (worker_side, api_side):
            await s.close()


# --- Notifier --------------------------------------------------------------------------------


@dataclass
class Notifiers:
    """Where an end is published (a worker) and where a caller waits for it (an API
    process): one notifier in-process, two that share a channel across processes."""

    publisher: Notifier
    waiter: Notifier


@pytest.fixture(params=["in-process", "sibling-sockets", "redis"])
async def notifiers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Notifiers]:
    made: list[LocalNotifier | RedisNotifier]
    siblings: list[Siblings] = []
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), f"contract-{uuid.uuid4().hex[:8]}"
        made = [RedisNotifier(url, prefix=prefix), RedisNotifier(url, prefix=prefix)]
    elif request.param == "sibling-sockets":
        # Two processes of one `serve --workers N`, as two socket names in one folder.
        siblings = [Siblings(tmp_path / "notify", name) for name in ("worker", "api")]
        for s in siblings:
            await s.start()
        made = [LocalNotifier(siblings[0]), LocalNotifier(siblings[1])]
    else:
        made = [LocalNotifier()]
    for n in made:
        # No safety-net re-read inside these tests: only a wake-up can end a wait early.
        n.fallback_s = 3600
        await n.start()
    yield Notifiers(publisher=made[0], waiter=made[-1])
    for n in made:
        await n.close()
    for s in siblings:
        await s.close()


class Row:
    def __init__(self, finished: bool) -> None:
        self.finished = finished


class Rows:
    """A prediction's row as the waiter reads it."""

    def __init__(self) -> None:
        self.finished = False
        self.reads = 0

    async def read(self) -> Row:
        self.reads += 1
        return Row(self.finished)


async def test_publish_wakes_the_waiter(notifiers: Notifiers) -> None:
    rows = Rows()
    heard: list[str] = []
    notifiers.publisher.listeners.append(heard.append)

    async def end_later() -> None:
        await asyncio.sleep(0.2)
        rows.finished = True
        await notifiers.publisher.publish("p1")

    ender = asyncio.create_task(end_later())
    t0 = time.monotonic()
    got, ended = await notifiers.waiter.wait("p1", rows.read, timeout=30)
    await ender
    assert ended and got is not None and got.finished
    assert time.monotonic() - t0 < 5  # woken, not timed out
    assert heard == ["p1"]


async def test_an_end_of_another_prediction_does_not_end_the_wait(notifiers: Notifiers) -> None:
    rows = Rows()

    async def other_ends() -> None:
        await asyncio.sleep(0.1)
        await notifiers.publisher.publish("someone-else")

    task = asyncio.create_task(other_ends())
    got, ended = await notifiers.waiter.wait("p2", rows.read, timeout=0.5)
    await task
    assert not ended and got is not None and not got.finished


async def test_wait_times_out_with_the_row_as_it_stands(notifiers: Notifiers) -> None:
    rows = Rows()
    t0 = time.monotonic()
    got, ended = await notifiers.waiter.wait("p3", rows.read, timeout=0.3)
    elapsed = time.monotonic() - t0
    assert not ended and got is not None and not got.finished
    assert 0.25 <= elapsed < 3


async def test_until_bounds_the_wait(notifiers: Notifiers) -> None:
    # A draining process answers held requests by its deadline, whatever their timeout.
    rows = Rows()
    loop = asyncio.get_running_loop()
    cap = loop.time() + 0.2
    t0 = time.monotonic()
    got, ended = await notifiers.waiter.wait("p4", rows.read, timeout=30, until=lambda: cap)
    assert not ended and got is not None
    assert time.monotonic() - t0 < 3


async def test_an_end_published_before_the_wait_is_not_lost(notifiers: Notifiers) -> None:
    # The worker ended the row and published before anyone waited: nobody heard the
    # publish, but the row says it ended, and the waiter answers at once.
    rows = Rows()
    rows.finished = True
    await notifiers.publisher.publish("p5")
    t0 = time.monotonic()
    got, ended = await notifiers.waiter.wait("p5", rows.read, timeout=30)
    assert ended and got is not None and got.finished
    assert rows.reads == 1 and time.monotonic() - t0 < 1


async def test_a_gone_row_ends_the_wait(notifiers: Notifiers) -> None:
    async def gone() -> Any:
        return None

    got, ended = await notifiers.waiter.wait("p6", gone, timeout=30)
    assert ended and got is None
