"""The store's contract: one set of tests run against SQLite and PostgreSQL alike.

Predictions and their leases, the ledger's holds, captures and releases (exact under
concurrency), uploads, webhook deliveries and the scrape-time counts."""

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
from reelgate.store.metrics import unfinished_by_status
from reelgate.store.repo import ConcurrencyLimited, Store, new_id
from reelgate.store.tables import ledger, utcnow
from reelgate.store.uploads import UploadStore
from reelgate.store.webhooks import WebhookStore


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
              max_concurrent: int | None = None, webhook: str | None = None) -> str:
    pid = new_id()
    await store.insert_prediction(
        id=pid, account_id=account_id, key_id=key_id, model="veo3", scene="text-to-video",
        backend="sandbox", params={"prompt": "x", "duration": 8}, inputs={}, price=price,
        max_concurrent=max_concurrent, webhook=webhook,
    )
    return pid


async def ledger_of(store: Store, account_id: str) -> tuple[dict[str, tuple[int, int]], int]:
    """The account's ledger summed by kind ({kind: (amount, entries)}) and sum(delta)."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(
            select(ledger.c.kind, func.sum(ledger.c.amount), func.count())
            .where(ledger.c.account_id == account_id).group_by(ledger.c.kind)
        )).all()
        total = (await conn.execute(
            select(func.sum(ledger.c.delta)).where(ledger.c.account_id == account_id)
        )).scalar_one()
    return {k: (int(a), int(n)) for k, a, n in rows}, int(total or 0)


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
    by_kind, total = await ledger_of(store, account_id)
    assert by_kind["hold"] == (900, 3)
    assert by_kind["capture"] == (600, 2) and by_kind["release"] == (300, 1)
    assert total == await store.balance(account_id)


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


# --- predictions: leases -----------------------------------------------------------------


async def test_a_released_lease_is_claimable_at_once(store: Store) -> None:
    account_id, key_id = await account_with_key(store)
    pid = await add(store, account_id, key_id)
    assert await store.claim(pid, "w1", ttl_s=300)
    await store.release_lease(pid, "w2")  # not the holder: nothing changes
    assert await store.claim(pid, "w2", ttl_s=300) is None
    await store.release_lease(pid, "w1")  # shutdown hands it back
    taken = await store.claim(pid, "w2", ttl_s=300)
    assert taken is not None and taken.lease_owner == "w2" and taken.attempts == 2
    # Only the holder records progress; it learns there whether the user cancelled.
    assert await store.set_progress(pid, "w1", {"step": 1}) is None
    assert await store.set_progress(pid, "w2", {"step": 1}) is False
    assert await store.request_cancel(pid, account_id, ("sandbox",))
    assert await store.set_progress(pid, "w2", {"step": 2}) is True
    assert await store.cancel_running(pid, "w2", "cancelled")
    assert (await store.get(pid)).status == "cancelled"  # type: ignore[union-attr]


# --- the ledger: exact under concurrency -------------------------------------------------


async def test_concurrent_debits_never_take_the_balance_below_zero(store: Store) -> None:
    account_id, _ = await account_with_key(store, credit=1000)

    async def debit() -> int | None:
        try:
            async with store.engine.begin() as conn:
                return await adjust(conn, account_id=account_id, amount=-300, note="d")
        except InsufficientBalance as refused:
            assert refused.needed == 300 and refused.available < 300
            return None

    results = await asyncio.gather(*(debit() for _ in range(8)))
    assert sorted(r for r in results if r is not None) == [100, 400, 700]
    assert await store.balance(account_id) == 100
    by_kind, total = await ledger_of(store, account_id)
    assert by_kind == {"credit": (1000, 1), "debit": (900, 3)}
    assert total == 100


async def test_racing_ends_settle_the_hold_exactly_once(store: Store) -> None:
    account_id, key_id = await account_with_key(store, credit=10_000)
    pids = [await add(store, account_id, key_id, price=1000) for _ in range(4)]
    for pid in pids:
        assert await store.claim(pid, "w", 30)
    for pid in pids:
        # The worker completes, fails and cancels at once (a retry, a timeout, the user):
        # one end wins and it alone moves money.
        ends = await asyncio.gather(
            store.complete(pid, "w", ["v.mp4"]), store.fail(pid, "w", "boom"),
            store.cancel_running(pid, "w", "stop"), store.cancel(pid, account_id))
        assert sum(ends) == 1
    statuses = [(await store.get(p)).status for p in pids]  # type: ignore[union-attr]
    captured = 1000 * statuses.count("completed")
    by_kind, total = await ledger_of(store, account_id)
    assert by_kind["hold"] == (4000, 4)
    assert by_kind.get("capture", (0, 0)) == (captured, statuses.count("completed"))
    assert by_kind.get("release", (0, 0))[0] == 4000 - captured
    assert await store.balance(account_id) == 10_000 - captured == total


async def test_a_refused_hold_stores_nothing(store: Store) -> None:
    account_id, key_id = await account_with_key(store, credit=500)
    with pytest.raises(InsufficientBalance) as refused:
        await add(store, account_id, key_id, price=501, max_concurrent=1)
    assert (refused.value.needed, refused.value.available) == (501, 500)
    # Neither the row nor the concurrency slot nor any money moved.
    assert (await store.list_predictions(account_id))[1] == 0
    assert await add(store, account_id, key_id, price=500, max_concurrent=1)
    assert await store.balance(account_id) == 0


# --- uploads -----------------------------------------------------------------------------


async def test_uploads(store: Store) -> None:
    rows = UploadStore(store)
    account_id, _ = await account_with_key(store)
    other, _ = await account_with_key(store)
    ticket = await rows.insert(account_id=account_id, filename="a.png",
                               content_type="image/png", size=100, status="pending", ttl_s=60)
    ready = await rows.insert(account_id=account_id, filename="b.png", content_type="image/png",
                              size=50, status="ready", ttl_s=60, upload_id=new_id())
    await rows.insert(account_id=other, filename="c.png", content_type="image/png", size=7,
                      status="ready", ttl_s=60)
    old = await rows.insert(account_id=account_id, filename="d.png", content_type="image/png",
                            size=1000, status="ready", ttl_s=-1)
    assert await rows.get(ticket.id) == ticket  # what was written is what is read
    assert (await rows.get(ready.id)).status == "ready"  # type: ignore[union-attr]
    # The quota counts the account's own uploads that have not expired.
    assert await rows.bytes_in_use(account_id) == 150
    await rows.mark_ready(ticket.id)
    assert (await rows.get(ticket.id)).status == "ready"  # type: ignore[union-attr]
    assert await rows.expired() == [old.id]
    await rows.delete([old.id])
    await rows.delete([])
    assert await rows.get(old.id) is None and await rows.expired() == []


# --- webhook deliveries ------------------------------------------------------------------


async def test_a_webhook_delivery_is_written_with_the_end_and_claimed_once(store: Store) -> None:
    hooks = WebhookStore(store)
    account_id, key_id = await account_with_key(store)
    quiet = await add(store, account_id, key_id)  # no webhook: no delivery
    pid = await add(store, account_id, key_id, webhook="https://example.com/hook")
    assert await hooks.due(10) == []  # written when the prediction ends, not before
    for p in (quiet, pid):
        assert await store.claim(p, "w", 30)
        assert await store.complete(p, "w", ["v.mp4"])
    [delivery_id] = await hooks.due(10)
    got = await hooks.get(delivery_id)
    assert got is not None and got.prediction_id == pid and got.status == "pending"
    assert got.url == "https://example.com/hook" and got.attempts == 0
    claims = await asyncio.gather(*(hooks.claim(delivery_id, 120) for _ in range(5)))
    assert sum(claims) == 1
    assert await hooks.due(10) == []  # leased
    # A failed attempt frees the lease and waits for its retry time.
    await hooks.record(delivery_id, 1, status_code=500, error="HTTP 500", delivered=False,
                       failed=False, next_attempt_at=utcnow() + timedelta(hours=1))
    assert await hooks.due(10) == []
    after = await hooks.get(delivery_id)
    assert after is not None and after.attempts == 1 and after.last_status_code == 500
    assert after.lease_expires_at is None
    # The user asks for it again: due now, a fresh series of attempts.
    other, _ = await account_with_key(store)
    assert await hooks.retry(other, delivery_id) is None  # not theirs
    again = await hooks.retry(account_id, delivery_id)
    assert again is not None and again.attempts == 0 and again.status == "pending"
    assert await hooks.due(10) == [delivery_id]
    assert await hooks.claim(delivery_id, 120)
    await hooks.record(delivery_id, 1, status_code=204, error="", delivered=True, failed=False,
                       next_attempt_at=None)
    done = await hooks.get(delivery_id)
    assert done is not None and done.status == "delivered" and done.delivered_at is not None
    assert [d.id for d in await hooks.list(account_id)] == [delivery_id]
    assert await hooks.list(account_id, status="pending") == []
    assert await hooks.list(other) == []


async def test_webhook_secret_is_made_once(store: Store) -> None:
    hooks = WebhookStore(store)
    account_id, _ = await account_with_key(store)
    assert await hooks.scheme(account_id) is None  # the dialect's default
    secrets = await asyncio.gather(*(hooks.secret(account_id, f"whsec_{i}") for i in range(5)))
    assert len(set(secrets)) == 1 and secrets[0].startswith("whsec_")
    assert await hooks.secret(account_id, "whsec_later") == secrets[0]


# --- counts for the metrics --------------------------------------------------------------


async def test_unfinished_counts(store: Store) -> None:
    account_id, key_id = await account_with_key(store)
    before = await unfinished_by_status(store)
    ids = [await add(store, account_id, key_id) for _ in range(3)]
    assert await store.claim(ids[0], "w", 30)
    assert await store.claim(ids[1], "w", 30)
    assert await store.complete(ids[1], "w", ["v.mp4"])
    after = await unfinished_by_status(store)
    assert set(after) == set(before)  # every unfinished status is named, zero or not
    assert after["created"] == before["created"] + 1
    assert after["processing"] == before["processing"] + 1
