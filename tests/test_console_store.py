"""The console's queries (store/console.py) and the poster column, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from reelgate.store import migrate
from reelgate.store.console import ConsoleStore
from reelgate.store.db import create_engine
from reelgate.store.ledger import adjust
from reelgate.store.repo import Store, hash_key, new_id
from reelgate.store.tables import utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    await migrate.upgrade(engine)
    yield Store(engine)
    await engine.dispose()


async def add(store: Store, account_id: str, key_id: str, model: str, price: int,
              duration: int) -> str:
    pid = new_id()
    await store.insert_prediction(
        id=pid, account_id=account_id, key_id=key_id, model=model, scene="text-to-video",
        backend="sandbox", params={"prompt": "x", "duration": duration}, inputs={}, price=price,
    )
    return pid


async def test_key_by_hash_follows_revocation_and_account_state(store: Store) -> None:
    console = ConsoleStore(store)
    account_id = await store.create_account("hashy")
    secret, key = await store.create_key(account_id, "k")
    found = await console.key_by_hash(hash_key(secret))
    assert found is not None and found.id == key.id and not found.account_disabled
    assert await console.key_by_hash(hash_key(secret + "x")) is None
    assert await console.account_name(account_id) == "hashy"
    from reelgate.store.admin import AdminStore

    await AdminStore(store).set_limits(account_id, disabled=True)
    assert (await console.key_by_hash(hash_key(secret))).account_disabled  # type: ignore[union-attr]
    await AdminStore(store).revoke_key(key.id)
    assert await console.key_by_hash(hash_key(secret)) is None


async def test_usage_by_day_live_workers_and_posters(store: Store) -> None:
    console = ConsoleStore(store)
    account_id = await store.create_account("usage")
    _, key = await store.create_key(account_id, "k")
    async with store.engine.begin() as conn:
        await adjust(conn, account_id=account_id, amount=10_000_000, note="t")
    done = await add(store, account_id, key.id, "veo3.1-fast", 800_000, 8)
    failed = await add(store, account_id, key.id, "veo3.1-fast", 400_000, 4)
    running = await add(store, account_id, key.id, "veo3", 1_600_000, 4)
    for pid in (done, failed, running):
        assert await store.claim(pid, "worker-a", 30) is not None
    assert await store.complete(done, "worker-a", ["ab/x.mp4"], "ab/x.jpg")
    assert await store.fail(failed, "worker-a", "nope")

    got = await store.get(done)
    assert got is not None and got.poster == "ab/x.jpg"
    # Deleting the outputs hands back the poster's key with the video's, and forgets both.
    assert await store.delete_outputs(done, account_id) == ["ab/x.mp4", "ab/x.jpg"]
    got = await store.get(done)
    assert got is not None and got.poster is None and got.outputs == []

    by_day = await console.usage_by_day(utcnow() - timedelta(days=1), account_id)
    (day,) = by_day
    assert day == utcnow().date()
    assert by_day[day]["veo3.1-fast"] == {"predictions": 2, "completed": 1, "seconds": 8,
                                          "charged": 800_000}
    assert by_day[day]["veo3"] == {"predictions": 1, "completed": 0, "seconds": 0, "charged": 0}
    assert await console.usage_by_day(utcnow() + timedelta(days=1), account_id) == {}

    workers = await console.live_workers()
    assert [(w["worker"], w["backend"], w["running"]) for w in workers] == [
        ("worker-a", "sandbox", 1)]
    assert await console.unfinished_counts() == {"sandbox/processing": 1}
    assert await console.models_used(account_id) == ["veo3", "veo3.1-fast"]
