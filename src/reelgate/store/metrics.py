"""Counts for the scrape-time gauges (metrics.py), read from the database when asked."""

from __future__ import annotations

from sqlalchemy import func, select

from reelgate.store.repo import Store
from reelgate.store.tables import UNFINISHED, predictions


async def unfinished_by_status(store: Store) -> dict[str, int]:
    """How many predictions are in each unfinished status (every one of them named)."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(predictions.c.status, func.count())
            .where(predictions.c.status.in_(UNFINISHED))
            .group_by(predictions.c.status)
        )
        counts = {status: int(n) for status, n in rows.all()}
    return {status: counts.get(status, 0) for status in UNFINISHED}
