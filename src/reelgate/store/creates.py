"""Group commit for new predictions: concurrent creates share one transaction.

Each create is the same three steps, atomic per create: take a concurrency slot on the key
(a conditional UPDATE), hold the price on the account (a conditional UPDATE and a ledger
row; see store/ledger.py), insert the row. A refused step leaves nothing of that create behind,
and other creates in the same transaction are not affected. Creates arriving while a batch
is being written wait for it and go together in the next one, so under load one commit
(and, on SQLite, one fsync) serves many creates, and nobody is answered before the
transaction holding their row has committed.

- SQLite: the batch runs in one thread hop on a private ``sqlite3`` connection with
  ``synchronous=FULL`` (the commit reaches the disk before anyone is answered). Going
  through the async engine cost a thread hop and a greenlet switch per statement, five per
  create; here it is one per batch. Values are encoded by the tables' own SQLAlchemy type
  processors, so rows are byte-for-byte what the engine writes. Another writer (the
  engine's connection, another process) waits for the batch in SQLite's busy handler; a
  batch holds the write lock for about one fsync.
- PostgreSQL: no batch of our own: each create is ONE statement (the slot, the hold, its
  ledger row and the insert as data-modifying CTEs), run in autocommit, so one round trip
  stores it and commits it; concurrent creates on the pool's connections share WAL flushes
  through PostgreSQL's own group commit. Row locks make the conditional UPDATEs exact
  under concurrency. Only a refused hold needs a second statement (to give the slot back).

A create with an Idempotency-Key first looks for the account's prediction under that key,
inside the same transaction (SQLite: under the batch's write lock, so it also sees an
earlier create of the same batch) or the same statement (PostgreSQL): a key already used
takes no slot and no hold and stores nothing; its create is answered with the earlier
prediction (Earlier), or refused with IdempotencyConflict when the request differs. Two
creates racing with one key on PostgreSQL both see no earlier row; the unique index lets
one insert win and the other's statement fails whole (slot and hold included): the caller
then reads the winner (Store.insert_prediction).

If anything unexpected fails in a SQLite batch, the batch is rolled back and each create
is retried alone, so one bad create cannot take others down with it."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, exists, func, insert, literal, select, update
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from reelgate.errors import ApiError
from reelgate.money import InsufficientBalance
from reelgate.store import ledger as ledger_sql
from reelgate.store.tables import accounts, api_keys, ledger, predictions

MAX_BATCH = 256

_SQLITE_EARLIER = ("SELECT id, request_hash FROM predictions "
                   "WHERE account_id = ? AND idempotency_key = ?")


class ConcurrencyLimited(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            429,
            f"Too many unfinished predictions for this key (limit {limit}); wait for one "
            "to end and try again",
            headers={"Retry-After": "5"},
        )


class IdempotencyConflict(ApiError):
    def __init__(self, key: str) -> None:
        super().__init__(
            409,
            f"Idempotency-Key '{key[:80]}' was already used with a different request; use a "
            "new key for a new request",
        )


@dataclass(frozen=True)
class Earlier:
    """A create whose Idempotency-Key the account already used with the same request: the
    prediction stored then (nothing new was stored)."""

    id: str


# What storing one create comes to: stored (None), refused, or answered by an earlier one.
Outcome = ApiError | Earlier | None


def _earlier(item: NewPrediction, found: tuple[str, str | None] | None) -> Outcome:
    """The outcome for a found (id, request_hash) under the create's key, or None if none."""
    if found is None:
        return None
    if found[1] != item.values.get("request_hash"):
        return IdempotencyConflict(item.values["idempotency_key"])
    return Earlier(found[0])


@dataclass
class NewPrediction:
    values: dict[str, Any]  # the predictions row, column -> value
    max_concurrent: int | None
    done: asyncio.Future[Outcome] = field(repr=False, default=None)  # type: ignore[arg-type]

    @property
    def price(self) -> int:
        return int(self.values["price"])


async def insert_one(conn: AsyncConnection, item: NewPrediction) -> Outcome:
    """One create inside an open transaction: (its key's earlier prediction,) slot, hold,
    row. Returns the refusal or the earlier prediction (and leaves nothing of this create
    behind) or None."""
    v = item.values
    if v.get("idempotency_key") is not None:
        found = (await conn.execute(
            select(predictions.c.id, predictions.c.request_hash)
            .where(predictions.c.account_id == v["account_id"],
                   predictions.c.idempotency_key == v["idempotency_key"]))).first()
        if found is not None:
            return _earlier(item, (found[0], found[1]))
    slot = update(api_keys).where(api_keys.c.id == v["key_id"])
    if item.max_concurrent is not None:
        slot = slot.where(api_keys.c.running < item.max_concurrent)
    result = await conn.execute(slot.values(running=api_keys.c.running + 1))
    if result.rowcount != 1:
        return ConcurrencyLimited(item.max_concurrent or 0)
    try:
        await ledger_sql.hold(conn, account_id=v["account_id"], prediction_id=v["id"],
                              amount=item.price, model=v["model"])
    except InsufficientBalance as refused:
        # The hold wrote nothing; give the slot back (exact: this transaction holds the
        # key row's lock, or SQLite's write lock, since the UPDATE above).
        await conn.execute(update(api_keys).where(api_keys.c.id == v["key_id"])
                           .values(running=api_keys.c.running - 1))
        return refused
    await conn.execute(insert(predictions).values(**v))
    return None


@functools.cache
def _one_statement(cols: tuple[str, ...], priced: bool, limited: bool, keyed: bool) -> Any:
    """A create as one PostgreSQL statement: (with an Idempotency-Key, the account's earlier
    prediction under it,) the slot, the hold (and its ledger row) and the insert, each
    conditional on the steps before it. It returns whether the slot was taken, the balance
    after the hold (None if none was taken), the ledger rows written, whether the row went
    in, and the earlier prediction's id and request hash (None if none, or no key). Built
    once per shape; the values are bound at execution."""
    slot_q = update(api_keys).where(api_keys.c.id == bindparam("c_key_id"))
    if limited:
        slot_q = slot_q.where(api_keys.c.running < bindparam("c_max"))
    earlier_of = (predictions.c.account_id == bindparam("p_account_id"),
                  predictions.c.idempotency_key == bindparam("p_idempotency_key"))
    if keyed:
        # All parts of one statement see the same snapshot: a key found here takes no slot
        # (and so no hold, no row), and the outputs below report what was found.
        slot_q = slot_q.where(~exists(select(predictions.c.id).where(*earlier_of)))
    slot = slot_q.values(running=api_keys.c.running + 1).returning(api_keys.c.id).cte("slot")
    conditions = [exists(select(slot.c.id))]
    outputs: list[Any] = [select(func.count()).select_from(slot).scalar_subquery()]
    if priced:
        price = bindparam("c_price", type_=accounts.c.balance.type)
        held = (update(accounts)
                .where(accounts.c.id == bindparam("p_account_id"), accounts.c.balance >= price,
                       exists(select(slot.c.id)))
                .values(balance=accounts.c.balance - price)
                .returning(accounts.c.balance).cte("held"))
        conditions.append(exists(select(held.c.balance)))
        entry = {"account_id": "p_account_id", "prediction_id": "p_id", "kind": "l_kind",
                 "amount": "c_price", "delta": "l_delta", "model": "p_model", "note": "l_note",
                 "created_at": "p_created_at"}
        led = (insert(ledger)
               .from_select([*entry, "balance_after"],
                            select(*[bindparam(name, type_=ledger.c[k].type)
                                     for k, name in entry.items()], held.c.balance))
               .returning(ledger.c.id).cte("led"))
        outputs += [select(held.c.balance).scalar_subquery(),
                    # Referenced so that it is part of the statement.
                    select(func.count()).select_from(led).scalar_subquery()]
    else:
        outputs += [literal(None, accounts.c.balance.type), literal(0)]
    ins = (insert(predictions)
           .from_select(list(cols), select(*[bindparam(f"p_{c}", type_=predictions.c[c].type)
                                             for c in cols]).where(*conditions))
           .returning(predictions.c.id).cte("ins"))
    outputs.append(select(func.count()).select_from(ins).scalar_subquery())
    if keyed:
        outputs += [select(predictions.c.id).where(*earlier_of).scalar_subquery(),
                    select(predictions.c.request_hash).where(*earlier_of).scalar_subquery()]
    else:
        outputs += [literal(None, predictions.c.id.type),
                    literal(None, predictions.c.request_hash.type)]
    return select(*outputs)


def _one_statement_params(item: NewPrediction) -> dict[str, Any]:
    v = item.values
    params = {f"p_{c}": x for c, x in v.items()}
    # Names that are no column's: the extra keys of an UPDATE's parameters that match a
    # column of its table would be added to its SET clause.
    params.update(c_key_id=v["key_id"], c_max=item.max_concurrent, c_price=item.price,
                  l_kind="hold", l_delta=-item.price, l_note="")
    return params


async def insert_one_statement(engine: AsyncEngine, item: NewPrediction) -> Outcome:
    """PostgreSQL: store one create in one autocommitted statement (see _one_statement), on
    a connection of ``engine`` set to AUTOCOMMIT; a connection found dead is replaced and
    the statement sent again (it did not commit: it never reached a live server)."""
    v = item.values
    for attempt in (1, 2):
        try:
            return await _insert_one_statement(engine, item, v)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


async def _insert_one_statement(engine: AsyncEngine, item: NewPrediction,
                                v: dict[str, Any]) -> Outcome:
    async with engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="AUTOCOMMIT")
        statement = _one_statement(tuple(v), item.price > 0, item.max_concurrent is not None,
                                   v.get("idempotency_key") is not None)
        slot, balance, _ledger, inserted, earlier_id, earlier_hash = (
            await conn.execute(statement, _one_statement_params(item))).one()
        if inserted == 1:
            return None
        if earlier_id is not None:
            return _earlier(item, (earlier_id, earlier_hash))
        if slot != 1:
            return ConcurrencyLimited(item.max_concurrent or 0)
        # The slot was taken but the balance was short: give the slot back.
        await conn.execute(update(api_keys).where(api_keys.c.id == v["key_id"])
                           .values(running=api_keys.c.running - 1))
        left = (await conn.execute(select(accounts.c.balance)
                                   .where(accounts.c.id == v["account_id"]))).scalar()
        return InsufficientBalance(item.price, int(left or 0))


class _SqliteWriter:
    """The SQLite side: one private connection used from one thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        dialect = pysqlite.dialect()
        # The dialect's own implementation of each type (dialect_impl), as the engine uses:
        # a TypeDecorator's bare bind_processor is its generic impl's, which leaves a
        # datetime to sqlite3's adapter ("...+00:00"), not SQLAlchemy's SQLite text form, and
        # rows written here would then sort apart from the engine's in time comparisons.
        self._pred_bind = {c.name: c.type.dialect_impl(dialect).bind_processor(dialect)
                           for c in predictions.c}
        self._ledger_bind = {c.name: c.type.dialect_impl(dialect).bind_processor(dialect)
                             for c in ledger.c}

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is synced at every commit, so an acknowledged create survives
            # a power cut, not only a crash. Group commit is what makes that affordable.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _encode(self, binds: dict[str, Any], values: dict[str, Any]) -> tuple[str, list[Any]]:
        cols = list(values)
        params = [binds[c](values[c]) if binds[c] else values[c] for c in cols]
        return f"({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", params

    def write(self, batch: list[NewPrediction]) -> list[Outcome]:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [self._one(conn, item) for item in batch]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    def _one(self, conn: sqlite3.Connection, item: NewPrediction) -> Outcome:
        # The same steps as insert_one (and store/ledger.hold), in SQL on the driver.
        v = item.values
        if v.get("idempotency_key") is not None:
            # Under the batch's write lock (BEGIN IMMEDIATE): exact against every other
            # writer, and it sees a create of this batch that used the key before us.
            found = conn.execute(_SQLITE_EARLIER,
                                 (v["account_id"], v["idempotency_key"])).fetchone()
            if found is not None:
                return _earlier(item, (found[0], found[1]))
        if item.max_concurrent is None:
            cur = conn.execute("UPDATE api_keys SET running = running + 1 WHERE id = ?",
                               (v["key_id"],))
        else:
            cur = conn.execute("UPDATE api_keys SET running = running + 1 WHERE id = ? "
                               "AND running < ?", (v["key_id"], item.max_concurrent))
        if cur.rowcount != 1:
            return ConcurrencyLimited(item.max_concurrent or 0)
        price = item.price
        if price > 0:
            row = conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ? AND "
                               "balance >= ? RETURNING balance",
                               (price, v["account_id"], price)).fetchone()
            if row is None:
                conn.execute("UPDATE api_keys SET running = running - 1 WHERE id = ?",
                             (v["key_id"],))
                left = conn.execute("SELECT balance FROM accounts WHERE id = ?",
                                    (v["account_id"],)).fetchone()
                return InsufficientBalance(price, int(left[0]) if left else 0)
            cols, params = self._encode(self._ledger_bind, {
                "account_id": v["account_id"], "prediction_id": v["id"], "kind": "hold",
                "amount": price, "delta": -price, "balance_after": int(row[0]),
                "model": v["model"], "note": "", "created_at": v["created_at"],
            })
            conn.execute(f"INSERT INTO ledger {cols}", params)
        cols, params = self._encode(self._pred_bind, v)
        conn.execute(f"INSERT INTO predictions {cols}", params)
        return None


class CreateBatcher:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._queue: asyncio.Queue[NewPrediction] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sqlite: _SqliteWriter | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._autocommit: bool = engine.dialect.name == "postgresql"
        if engine.dialect.name == "sqlite" and engine.url.database:
            self._sqlite = _SqliteWriter(engine.url.database)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="reelgate-creates")
        # PostgreSQL: each create is one statement on the process's own engine, run in
        # AUTOCOMMIT (see insert_one_statement): no pool of its own, so a process stays
        # within REELGATE_DB_POOL_SIZE + _DB_MAX_OVERFLOW connections. Creates queue for it
        # first-come first-served, at most the pool's size at once (the overflow stays for
        # the process's other queries): in the pool's own queue a freed connection goes to
        # whichever create asks first, and one woken for it that lost it waits again at the
        # back (measured, 64 connections creating: p99 400-810 ms, 128-190 ms with this).
        size = getattr(engine.pool, "size", None)
        self._fair = asyncio.Semaphore(max(1, size() if callable(size) else 5))

    async def submit(self, values: dict[str, Any], max_concurrent: int | None) -> str | None:
        """Store one new prediction; returns once it is committed, or raises its refusal.
        Returns None, or, when its Idempotency-Key was used already with the same request,
        the id of the prediction stored then (and nothing new is stored)."""
        if self._autocommit:
            async with self._fair:
                outcome = await insert_one_statement(self.engine,
                                                     NewPrediction(values, max_concurrent))
        else:
            outcome = await self._batched(values, max_concurrent)
        if isinstance(outcome, Earlier):
            return outcome.id
        if outcome is not None:
            raise outcome
        return None

    async def _batched(self, values: dict[str, Any], max_concurrent: int | None) -> Outcome:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="create-batcher")
        item = NewPrediction(values, max_concurrent, asyncio.get_running_loop().create_future())
        assert self._queue is not None
        self._queue.put_nowait(item)
        return await item.done

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._thread is not None:
            sqlite = self._sqlite
            if sqlite is not None:
                await asyncio.get_running_loop().run_in_executor(self._thread, sqlite.close)
            self._thread.shutdown(wait=False)

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results: Sequence[Outcome | BaseException] = await self._write(batch)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.done.done():
                        item.done.cancel()
                raise
            except Exception:
                results = await self._one_by_one(batch)
            for item, result in zip(batch, results, strict=True):
                if item.done.done():
                    continue
                if result is None or isinstance(result, (Earlier, ApiError)):
                    item.done.set_result(result)  # an outcome: stored, earlier or refused
                else:
                    item.done.set_exception(result)  # failed alone too

    async def _write(self, batch: list[NewPrediction]) -> list[Outcome]:
        if self._sqlite is not None:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._sqlite.write, batch)
        # Any other database (none is configured today): the same steps through the engine,
        # one transaction per batch.
        async with self.engine.begin() as conn:
            return [await insert_one(conn, item) for item in batch]

    async def _one_by_one(self, batch: list[NewPrediction]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException] = []
        for item in batch:
            try:
                results.append((await self._write([item]))[0])
            except Exception as exc:
                results.append(exc)
        return results
