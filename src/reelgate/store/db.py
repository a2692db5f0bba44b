"""Engine creation: one async engine per process, tuned per database."""

from __future__ import annotations

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5,
                  pool_timeout_s: float = 30.0) -> AsyncEngine:
    """The process's engine. On PostgreSQL the pool is bounded by ``pool_size`` +
    ``max_overflow`` (settings ``REELGATE_DB_POOL_SIZE`` / ``_MAX_OVERFLOW``): every process
    of a deployment opens at most that many connections, so the sum over processes can be
    kept under the server's ``max_connections`` (100 by default). A query that finds the
    pool exhausted waits up to ``pool_timeout_s`` for a connection instead of failing."""
    if url.startswith("sqlite"):
        # One connection per process: SQLite has one writer at a time anyway, and
        # connections competing for the write lock wait in SQLite's busy handler, which
        # sleeps in steps of up to 100 ms (measured: p99 over a second under load). Queueing
        # on the pool instead costs microseconds; each statement is short.
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0, pool_timeout=60
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers run beside the one writer; a busy timeout makes a second
            # writer wait instead of failing with "database is locked".
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # A worker may hold thousands of predictions; a burst of their queries waits for a
    # connection (pool_timeout) rather than failing: the work is waiting on upstream anyway.
    return create_async_engine(
        url, pool_size=max(1, pool_size), max_overflow=max(0, max_overflow),
        pool_timeout=pool_timeout_s, pool_pre_ping=True,
    )


async def ping(engine: AsyncEngine) -> None:
    """One round trip to the database (readiness checks); raises if it cannot be reached."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
