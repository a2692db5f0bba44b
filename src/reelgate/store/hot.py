"""The hot read path: the few point reads every poll makes (a key, the auth version, a
prediction), straight on the database driver.

Through SQLAlchemy's async engine each of these costs a pool checkout, a greenlet switch
and, on aiosqlite, a hop to the connection's thread and back; measured, that was most of a
poll's time. Here:

- SQLite: a private read-only ``sqlite3`` connection used directly on the event loop. A
  primary-key read in WAL mode takes tens of microseconds and never waits for the writer
  (readers see the last commit), so blocking the loop that long is cheaper than any hop.
- PostgreSQL: a small asyncpg pool of its own: one round trip per read, no statement
  compilation, and none of the engine pool's pre-ping (a second round trip per checkout).
  Readers queue for it first-come first-served (a semaphore as large as the pool), not in
  the pool's own queue: there a freed connection goes to whichever reader asks first, and a
  reader that was woken for it and lost it waits again at the back of the line (measured,
  64 connections polling through a pool of 4: p99 370-460 ms with p50 under 20 ms).

The SQL here is plain and indexed (primary keys, the unique key hash). Writes never go
through this module."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from reelgate.store.repo import KeyRecord, Prediction

# What an answer shows (present.py: params for enable_base64_output, progress, dialect) and
# a waiter needs; the request's inputs (image references: the bulk of a row) are not read.
_PRED_FIELDS = ("id", "account_id", "key_id", "model", "scene", "backend", "status", "params",
                "outputs", "error", "nsfw", "attempts", "created_at", "started_at",
                "completed_at", "updated_at", "price", "outputs_deleted_at", "progress",
                "dialect")
_DATETIMES = ("created_at", "started_at", "completed_at", "updated_at", "outputs_deleted_at")
_UNREAD: dict[str, Any] = {"inputs": {}, "lease_owner": None, "lease_expires_at": None,
           "upstream_ref": None, "webhook": None, "base_url": None}
# Rows whose decoded prediction is kept (a few MiB at most: inputs are not read).
MEMO_ROWS = 4096
_PRED_SQL = f"SELECT {', '.join(_PRED_FIELDS)} FROM predictions WHERE id = {{0}}"
_KEY_SQL = (
    "SELECT k.id, k.account_id, k.name, k.prefix, k.created_at, k.revoked_at, "
    "k.allowed_models, a.rate_per_minute, a.max_concurrent, a.disabled_at "
    "FROM api_keys k JOIN accounts a ON a.id = k.account_id "
    "WHERE k.key_hash = {0} AND k.revoked_at IS NULL"
)
_VERSION_SQL = "SELECT version FROM auth_version WHERE id = 1"


@functools.lru_cache(maxsize=16)
def _sqlite_sql(sql: str, args: int) -> str:
    """The statement with SQLite's placeholders, formatted once per statement."""
    return sql.format(*("?" * args))


async def _no_reset(_conn: Any) -> None:
    return None


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _js(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _prediction(row: Any) -> Prediction:
    values = dict(zip(_PRED_FIELDS, row, strict=True))
    for name in _DATETIMES:
        values[name] = _dt(values[name])
    values["outputs"] = _js(values["outputs"])
    values["params"] = _js(values["params"])
    values["progress"] = _js(values["progress"])
    values["nsfw"] = bool(values["nsfw"])
    return Prediction(**values, **_UNREAD)


def _key(row: Any) -> KeyRecord:
    (id_, account_id, name, prefix, created_at, revoked_at, allowed, rate, conc,
     disabled_at) = row
    return KeyRecord(id=id_, account_id=account_id, name=name, prefix=prefix,
                     created_at=_dt(created_at), revoked_at=_dt(revoked_at),  # type: ignore[arg-type]
                     allowed_models=_js(allowed), rate_per_minute=rate, max_concurrent=conc,
                     account_disabled=disabled_at is not None)


class HotReads:
    """Point reads for the poll path; ``open`` picks the SQLite or PostgreSQL way."""

    def __init__(self, engine: AsyncEngine, *, pg_pool_size: int = 4) -> None:
        """``pg_pool_size``: on PostgreSQL, the connections of the reads' own pool (counted
        by the caller inside the process's connection budget); 0 reads through ``engine``."""
        self.engine = engine
        self.pg_pool_size = pg_pool_size
        self._sqlite: sqlite3.Connection | None = None
        self._pool: Any = None
        self._fair = asyncio.Semaphore(max(1, pg_pool_size))
        # Decoded predictions by row version, least recently read first (Prediction is
        # frozen, so sharing one between requests is safe).
        self._decoded: dict[Hashable, Prediction] = {}
        if engine.dialect.name == "sqlite":
            path = engine.url.database
            assert path, "the hot path needs a file database"
            # isolation_level=None: autocommit, so no read transaction is left open (an
            # open one would pin the WAL and stop checkpoints).
            self._sqlite = sqlite3.connect(path, isolation_level=None, timeout=5,
                                           check_same_thread=False)
            self._sqlite.execute("PRAGMA query_only=1")
            self._sqlite.execute("PRAGMA busy_timeout=5000")

    async def start(self) -> None:
        if self._sqlite is None and self._pool is None and self.pg_pool_size > 0:
            import asyncpg

            dsn = self.engine.url.set(drivername="postgresql").render_as_string(
                hide_password=False)
            # Small: each read is one short round trip; the engine keeps the big pool.
            # reset: these reads change no session state, so the default reset query on
            # every release (a second round trip per read) is skipped; asyncpg still rolls
            # back a connection left in a transaction.
            self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=self.pg_pool_size,
                                                   reset=_no_reset)

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _row(self, sql: str, *args: Any) -> Any:
        if self._sqlite is not None:
            # fetchall: steps the statement to its end, so no read transaction stays open
            # (these are primary-key or unique lookups: at most one row).
            rows = self._sqlite.execute(_sqlite_sql(sql, len(args)), args).fetchall()
            return rows[0] if rows else None
        if self._pool is None:  # no pool of our own: the same SQL through the engine
            params = {f"p{i}": a for i, a in enumerate(args)}
            async with self.engine.connect() as conn:
                return (await conn.execute(text(sql.format(
                    *(f":p{i}" for i in range(len(args))))), params)).first()
        async with self._fair:  # so the pool always has a connection free (see top)
            return await self._pool.fetchrow(
                sql.format(*(f"${i + 1}" for i in range(len(args)))), *args)

    async def prediction(self, prediction_id: str, account_id: str) -> Prediction | None:
        """The prediction as clients see it. Its inputs, lease, upstream handle, webhook,
        base URL (and the columns present.py does not show) are NOT read (empty/None/default
        here): use Store.get for those."""
        read = await self.prediction_read(prediction_id, account_id)
        return read[0] if read is not None else None

    async def prediction_read(self, prediction_id: str,
                              account_id: str) -> tuple[Prediction, Hashable] | None:
        """``prediction``, with the row it was read from as a hashable version: two reads
        with equal versions are the same prediction, so a caller may reuse what it made of
        the first (the v3 answer's body). A poller reads the same row many times over: its
        decoding (five timestamps, three JSON columns) is done once per version."""
        row = await self._row(_PRED_SQL + " AND account_id = {1}", prediction_id, account_id)
        if row is None:
            return None
        version = tuple(row)
        try:
            pred = self._decoded.pop(version, None)
        except TypeError:  # a driver value that is not hashable: no memo for this row
            return _prediction(row), object()
        if pred is None:
            pred = _prediction(row)
        self._decoded[version] = pred  # (re)inserted last: the dict is oldest-first
        if len(self._decoded) > MEMO_ROWS:
            del self._decoded[next(iter(self._decoded))]
        return pred, version

    async def key(self, key_hash: str) -> KeyRecord | None:
        """The live key with this hash (see repo.hash_key) and its account's state."""
        row = await self._row(_KEY_SQL, key_hash)
        return _key(row) if row is not None else None

    async def auth_version(self) -> int:
        row = await self._row(_VERSION_SQL)
        return int(row[0]) if row is not None else 0
