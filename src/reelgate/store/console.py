"""Queries the web console needs beyond the API's: a session's key by its hash, usage by
day, and what the operator's status page shows (work in progress, live workers)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import case, func, select

from reelgate.store.jobs import lease_live
from reelgate.store.repo import KeyRecord, Store
from reelgate.store.tables import (
    COMPLETED,
    PROCESSING,
    UNFINISHED,
    accounts,
    predictions,
    utcnow,
)


class ConsoleStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The live key whose SHA-256 is ``key_hash``: a console session keeps the hash,
        never the key, and is looked up again on every request so a revoked key or a
        disabled account ends its sessions at once."""
        return await self.store.key_by_hash(key_hash)

    async def account_name(self, account_id: str) -> str:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(accounts.c.name).where(accounts.c.id == account_id))
            ).first()
        return str(row[0]) if row else account_id

    async def models_used(self, account_id: str) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(predictions.c.model)
                .where(predictions.c.account_id == account_id)
                .group_by(predictions.c.model)
                .order_by(predictions.c.model)
            )
            return [r[0] for r in rows]

    async def usage_by_day(
        self, since: datetime, account_id: str | None = None
    ) -> dict[date, dict[str, dict[str, int]]]:
        """{day (UTC): {model: {"predictions", "completed", "seconds", "charged"}}} from
        ``since``, grouped by the database."""
        created = predictions.c.created_at
        if self.engine.dialect.name == "postgresql":
            # The day in UTC whatever the session's time zone.
            day = func.date(func.timezone("UTC", created))
        else:
            # SQLite's date() reads the stored ISO text, offset included, as UTC.
            day = func.date(created)
        completed = predictions.c.status == COMPLETED
        query = (
            select(
                day.label("day"),
                predictions.c.model,
                func.count().label("predictions"),
                func.sum(case((completed, 1), else_=0)).label("completed"),
                func.sum(case((completed, func.coalesce(
                    predictions.c.params["duration"].as_integer(), 0)), else_=0)).label("seconds"),
                func.sum(case((completed, predictions.c.price), else_=0)).label("charged"),
            )
            .where(created >= since)
            .group_by(day, predictions.c.model)
        )
        if account_id is not None:
            query = query.where(predictions.c.account_id == account_id)
        out: dict[date, dict[str, dict[str, int]]] = {}
        async with self.engine.connect() as conn:
            for row in await conn.execute(query):
                d = row.day if isinstance(row.day, date) else date.fromisoformat(str(row.day))
                out.setdefault(d, {})[row.model] = {
                    "predictions": int(row.predictions),
                    "completed": int(row.completed or 0),
                    "seconds": int(row.seconds or 0),
                    "charged": int(row.charged or 0),
                }
        return out

    async def unfinished_counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(predictions.c.backend, predictions.c.status, func.count())
                .where(predictions.c.status.in_(UNFINISHED))
                .group_by(predictions.c.backend, predictions.c.status)
            )
            return {f"{backend}/{status}": int(n) for backend, status, n in rows}

    async def live_workers(self) -> list[dict[str, Any]]:
        """Workers holding a live lease, with how many predictions each runs: what every
        process, local or remote, is doing right now, read from the rows themselves."""
        now = utcnow()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(
                    predictions.c.lease_owner,
                    predictions.c.backend,
                    func.count(),
                    func.max(predictions.c.lease_expires_at),
                )
                .where(
                    predictions.c.status == PROCESSING,
                    lease_live(predictions, now),
                )
                .group_by(predictions.c.lease_owner, predictions.c.backend)
                .order_by(predictions.c.lease_owner)
            )
            return [
                {"worker": owner, "backend": backend, "running": int(n), "lease_until": until}
                for owner, backend, n, until in rows
            ]
