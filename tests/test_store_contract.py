"""The store's behaviour, one set of tests run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from reelgate.money import InsufficientBalance
from reelgate.store import migrate
from reelgate.store.db import create_engine
from reelgate.store.ledger import adjust
from reelgate.store.repo import ConcurrencyLimited, Store, new_id
from reelgate.store.tables import ledger, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await migrate.upgrade(engine)  # a second run is a no-op
    yield Store(engine)
    await engine.dispose()


async def account_with_key(store: Store, credit: int = 0) -> tuple[str, str]:
    account_id = await store.create_account(f"acct-{new_id()[:6]}")
    _, key = await store.create_key(account_id, "k")
    if credit:
        async with store.engine.begin() as conn:
            await adjust(conn, account_id=account_id, amount=credit, note="test")
    return account_id, key.id


async def add(store: Store, account_id: str, key_id: str, *, price: int = 0,
              max_concurrent: int | None = None) -> str:
    pid = new_id()
    await store.insert_prediction(
        id=pid, account_id=account_id, key_id=key_id, model="veo3", scene="text-to-video",
        backend="sandbox", params={"prompt": "x", "duration": 8}, inputs={}, price=price,
        max_concurrent=max_concurrent,
    )
    return pid


async def test_claim_is_exclusive_until_the_lease_expires(store: Store) -> None:
    account_id, key_id = await account_with_key(store)
    pid = await add(store, account_id, key_id)
    first = await store.claim(pid, "w1", ttl_s=0.5)
    assert first is not None and first.status == "processing" and first.attempts == 1
    assert await store.claim(pid, "w2", ttl_s=0.5) is None
    assert await store.renew_lease(pid, "w1", ttl_s=0.5)
    assert not await store.renew_lease(pid, "w2", ttl_s=0.5)
    await asyncio.sleep(0.7)
    second = await store.claim(pid, "w2", ttl_s=30)
    assert second is not None and second.attempts == 2
    assert second.started_at == first.started_at  # execution time counts from the first start
    # The old owner can neither renew nor end it any more.
    assert not await store.renew_lease(pid, "w1", ttl_s=30)
    assert not await store.complete(pid, "w1", ["x.mp4"])
    assert await store.complete(pid, "w2", ["x.mp4"])
    assert not await store.complete(pid, "w2", ["x.mp4"])  # ends once
    assert not await store.fail(pid, "w2", "late")
    done = await store.get(pid)
    assert done is not None and done.status == "completed" and done.outputs == ["x.mp4"]


async def test_renew_leases_extends_all_of_one_owner(store: Store) -> None:
    account_id, key_id = await account_with_key(store)
    mine = [await add(store, account_id, key_id) for _ in range(3)]
    theirs = await add(store, account_id, key_id)
    for pid in mine:
        assert await store.claim(pid, "w1", ttl_s=0.5)
    assert await store.claim(theirs, "w2", ttl_s=0.5)
    assert await store.renew_leases("w1", ttl_s=30) == 3
    await asyncio.sleep(0.7)
    # w1's leases live on; w2's ran out and can be taken over.
    assert all([await store.claim(pid, "w3", ttl_s=30) is None for pid in mine])
    assert await store.claim(theirs, "w3", ttl_s=30) is not None


async def test_concurrent_claims_one_winner(store: Store) -> None:
    account_id, key_id = await account_with_key(store)
    pid = await add(store, account_id, key_id)
    results = await asyncio.gather(*(store.claim(pid, f"w{i}", 30) for i in range(10)))
    assert sum(r is not None for r in results) == 1


async def test_holds_never_overspend_and_settle_once(store: Store) -> None:
    account_id, key_id = await account_with_key(store, credit=1000)

    async def try_add() -> str | None:
        try:
            return await add(store, account_id, key_id, price=300)
        except InsufficientBalance:
            return None

    made = [p for p in await asyncio.gather(*(try_add() for _ in range(12))) if p]
    assert len(made) == 3
    assert await store.balance(account_id) == 100
    for i, pid in enumerate(made):
        assert await store.claim(pid, "w", 30)
        if i == 0:
            assert await store.fail(pid, "w", "boom")
        else:
            assert await store.complete(pid, "w", ["v.mp4"])
    assert await store.balance(account_id) == 400  # the failed one came back
    async with store.engine.connect() as conn:
        rows = (await conn.execute(
            select(ledger.c.kind, func.sum(ledger.c.amount), func.count())
            .where(ledger.c.account_id == account_id).group_by(ledger.c.kind)
        )).all()
        total = (await conn.execute(
            select(func.sum(ledger.c.delta)).where(ledger.c.account_id == account_id)
        )).scalar_one()
    by_kind = {k: (int(a), int(n)) for k, a, n in rows}
    assert by_kind["hold"] == (900, 3)
    assert by_kind["capture"] == (600, 2) and by_kind["release"] == (300, 1)
    assert int(total) == await store.balance(account_id)


async def test_concurrency_slots(store: Store) -> None:
    account_id, key_id = await account_with_key(store)
    first = await add(store, account_id, key_id, max_concurrent=1)
    with pytest.raises(ConcurrencyLimited):
        await add(store, account_id, key_id, max_concurrent=1)
    assert await store.cancel(first, account_id)
    assert not await store.cancel(first, account_id)
    second = await add(store, account_id, key_id, max_concurrent=1)
    assert await store.claim(second, "w", 30)
    assert not await store.cancel(second, account_id)  # started: too late to cancel


async def test_ledger_refuses_updates_and_deletes(store: Store) -> None:
    account_id, _ = await account_with_key(store, credit=5)
    for sql in ("UPDATE ledger SET amount = 0", "DELETE FROM ledger"):
        with pytest.raises(Exception, match="append-only"):
            async with store.engine.begin() as conn:
                await conn.execute(text(sql))


async def test_stuck_and_listing(store: Store) -> None:
    account_id, key_id = await account_with_key(store)
    ids = [await add(store, account_id, key_id) for _ in range(5)]
    later = utcnow() + timedelta(seconds=5)
    assert {i for i, _ in await store.stuck(["sandbox"], created_before=later, limit=10)} \
        == set(ids)
    assert await store.stuck(["sandbox"], created_before=utcnow() - timedelta(hours=1),
                             limit=10) == []
    assert await store.stuck(["google"], created_before=later, limit=10) == []
    await store.claim(ids[0], "w", ttl_s=30)
    stuck = {i for i, _ in await store.stuck(["sandbox"], created_before=later, limit=10)}
    assert ids[0] not in stuck
    page, total = await store.list_predictions(account_id, page=1, page_size=2)
    assert total == 5 and [p.id for p in page] == ids[::-1][:2]
    running, n = await store.list_predictions(account_id, status="processing")
    assert n == 1 and running[0].id == ids[0]


async def test_cursor_pages_and_dialect(store: Store) -> None:
    """The OpenAI Videos list's cursor pages (after=<id>), on both databases; the row keeps
    the dialect a prediction came through."""
    account_id, key_id = await account_with_key(store)
    other, other_key = await account_with_key(store)
    ids = [await add(store, account_id, key_id) for _ in range(5)]
    await add(store, other, other_key)  # another tenant's: never listed
    pid = new_id()
    await store.insert_prediction(
        id=pid, account_id=account_id, key_id=key_id, model="veo3", scene="text-to-video",
        backend="sandbox", params={"prompt": "x"}, inputs={}, dialect="openai")
    ids.append(pid)
    got = await store.get(pid)
    assert got is not None and got.dialect == "openai"
    assert (await store.get(ids[0])).dialect == "v3"  # type: ignore[union-attr]
    # The same order as the page-numbered v3 list (newest first, ties by id).
    newest_first = [p.id for p in (await store.list_predictions(account_id, page_size=100))[0]]
    assert sorted(newest_first) == sorted(ids)
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_after(account_id, after=after, limit=2)
        assert page is not None
        items, more = page
        seen += [p.id for p in items]
        if not more:
            break
        after = items[-1].id
    assert seen == newest_first
    oldest_first = list(reversed(newest_first))
    rest = await store.list_after(account_id, after=oldest_first[1], limit=10, ascending=True)
    assert rest is not None and [p.id for p in rest[0]] == oldest_first[2:] and not rest[1]
    assert await store.list_after(account_id, after=new_id(), limit=2) is None
    assert await store.list_after(other, after=ids[0], limit=2) is None  # not theirs
