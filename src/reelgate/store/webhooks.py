"""Webhook deliveries and the accounts' webhook settings, in SQL.

A delivery row is written in the transaction that ends its prediction (store/repo.py);
jobs/webhooks.py claims due rows here with a short lease, POSTs them, and records the
outcome. Every claim is a conditional UPDATE, so two senders never POST one row at once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select, update

from reelgate.store.jobs import lease_free
from reelgate.store.repo import Store
from reelgate.store.tables import accounts, utcnow, webhook_deliveries


@dataclass(frozen=True)
class Delivery:
    id: str
    prediction_id: str
    account_id: str
    url: str
    status: str  # pending, delivered, failed
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    lease_expires_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


def _delivery(row: Any) -> Delivery:
    return Delivery(**{c: row._mapping[c] for c in Delivery.__dataclass_fields__})


class WebhookStore:
    def __init__(self, store: Store) -> None:
        self.engine = store.engine

    # --- the account's settings ------------------------------------------------------------

    async def secret(self, account_id: str, candidate: str) -> str:
        """The account's signing secret; ``candidate`` becomes it if it has none yet (the
        conditional UPDATE makes two concurrent first uses agree on one secret)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id, accounts.c.webhook_secret.is_(None))
                .values(webhook_secret=candidate)
            )
            row = (
                await conn.execute(
                    select(accounts.c.webhook_secret).where(accounts.c.id == account_id)
                )
            ).first()
        assert row is not None
        return str(row[0])

    async def scheme(self, account_id: str) -> str | None:
        """The signature scheme the account chose, or None (its dialect's default)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(accounts.c.webhook_scheme).where(accounts.c.id == account_id)
                )
            ).first()
        return row[0] if row else None

    # --- the sender ------------------------------------------------------------------------

    async def due(self, limit: int) -> list[str]:
        """Ids of pending deliveries whose time has come and that no sender holds."""
        now = utcnow()
        async with self.engine.connect() as conn:
            return [
                r[0]
                for r in await conn.execute(
                    select(webhook_deliveries.c.id)
                    .where(
                        webhook_deliveries.c.status == "pending",
                        webhook_deliveries.c.next_attempt_at <= now,
                        lease_free(webhook_deliveries, now),
                    )
                    .order_by(webhook_deliveries.c.next_attempt_at)
                    .limit(limit)
                )
            ]

    async def claim(self, delivery_id: str, lease_s: float) -> bool:
        """Take a pending delivery for ``lease_s`` seconds unless another sender holds it."""
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.id == delivery_id,
                    webhook_deliveries.c.status == "pending",
                    lease_free(webhook_deliveries, now),
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
        return result.rowcount == 1

    async def get(self, delivery_id: str) -> Delivery | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
                )
            ).first()
        return _delivery(row) if row else None

    async def record(
        self,
        delivery_id: str,
        attempts: int,
        *,
        status_code: int | None,
        error: str,
        delivered: bool,
        failed: bool,
        next_attempt_at: datetime | None,
    ) -> None:
        """Write an attempt's outcome and free the lease: ``delivered`` or ``failed`` for
        good, else still pending until ``next_attempt_at``."""
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": status_code,
            "last_error": error,
            "lease_expires_at": None,
        }
        if delivered:
            values.update(status="delivered", delivered_at=utcnow(), next_attempt_at=None)
        elif failed:
            values.update(status="failed", next_attempt_at=None)
        else:
            values["next_attempt_at"] = next_attempt_at
        async with self.engine.begin() as conn:
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(**values)
            )

    # --- for the API -----------------------------------------------------------------------

    async def list(
        self,
        account_id: str,
        prediction_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """The account's deliveries, newest first."""
        cond = [webhook_deliveries.c.account_id == account_id]
        if prediction_id:
            cond.append(webhook_deliveries.c.prediction_id == prediction_id)
        if status:
            cond.append(webhook_deliveries.c.status == status)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(webhook_deliveries)
                    .where(and_(*cond))
                    .order_by(webhook_deliveries.c.created_at.desc())
                    .limit(limit)
                )
            ).all()
        return [_delivery(r) for r in rows]

    async def retry(self, account_id: str, delivery_id: str) -> Delivery | None:
        """Make one of the account's deliveries due now, with a fresh series of attempts."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.id == delivery_id,
                    webhook_deliveries.c.account_id == account_id,
                )
                .values(
                    status="pending", attempts=0, next_attempt_at=utcnow(), lease_expires_at=None
                )
            )
            row = (
                await conn.execute(
                    select(webhook_deliveries).where(
                        webhook_deliveries.c.id == delivery_id,
                        webhook_deliveries.c.account_id == account_id,
                    )
                )
            ).first()
        return _delivery(row) if row else None
