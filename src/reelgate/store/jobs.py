"""The work queue as the database sees it: leases and the reconciler's query.

A lease (``lease_expires_at``) is how a worker says "I am on this row"; it is renewed while
the worker lives and simply runs out when it dies. Whether a row is free to take is one
condition, written once here and used by every claim, every reconciler and the webhook
sender, so the rule cannot drift between them."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, Table, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from reelgate.store.tables import CREATED, PROCESSING, predictions, utcnow


def lease_free(table: Table, now: datetime) -> ColumnElement[bool]:
    """Nobody holds a live lease on the row: never leased, handed back, or run out."""
    return or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now)


def lease_live(table: Table, now: datetime) -> ColumnElement[bool]:
    """Somebody holds the row and was alive at their last renewal (the complement of
    :func:`lease_free`)."""
    return table.c.lease_expires_at >= now


def claimable(now: datetime, *, created_before: datetime | None = None) -> ColumnElement[bool]:
    """A prediction a worker may take: never started (and, with ``created_before``, created
    before then), or started by a worker whose lease is no longer live."""
    never_started = predictions.c.status == CREATED
    if created_before is not None:
        never_started = and_(never_started, predictions.c.created_at < created_before)
    return or_(never_started,
               and_(predictions.c.status == PROCESSING, lease_free(predictions, now)))


async def unattended(engine: AsyncEngine, *, backends: Collection[str] | None,
                     created_before: datetime, limit: int) -> list[tuple[str, str]]:
    """The reconciler's one query: (id, backend) of the oldest rows nobody works on, on
    ``backends`` (None: every backend). A row created after ``created_before`` is left to
    the dispatch that announced it (its message is probably still on its way); a running
    row whose lease ran out lost its worker."""
    now = utcnow()
    query = (
        select(predictions.c.id, predictions.c.backend)
        .where(claimable(now, created_before=created_before))
        .order_by(predictions.c.created_at)
        .limit(limit)
    )
    if backends is not None:
        query = query.where(predictions.c.backend.in_(list(backends)))
    async with engine.connect() as conn:
        return [(r[0], r[1]) for r in await conn.execute(query)]
