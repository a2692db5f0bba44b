"""Operator queries: accounts, keys, credits, the ledger, usage and policy blocks.

Shared by the admin API and the ``reelgate accounts`` / ``reelgate keys`` commands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update

from reelgate.errors import ApiError, NotFound
from reelgate.money import format_money
from reelgate.store import ledger as ledger_sql
from reelgate.store.repo import Store
from reelgate.store.tables import (
    COMPLETED,
    FAILED,
    accounts,
    api_keys,
    ledger,
    policy_blocks,
    predictions,
    utcnow,
)


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def _account(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "name": m["name"],
        "balance": format_money(m["balance"]),
        "balance_micros": int(m["balance"]),
        "rate_per_minute": m["rate_per_minute"],
        "max_concurrent": m["max_concurrent"],
        "disabled": m["disabled_at"] is not None,
        # null: the dialect's default (WaveSpeed's v3 signature for the v3 dialect).
        "webhook_scheme": m["webhook_scheme"],
        "created_at": _iso(m["created_at"]),
    }


def _key(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "account_id": m["account_id"],
        "name": m["name"],
        "prefix": m["prefix"],  # never the key itself: only its hash is stored
        "allowed_models": m["allowed_models"],
        "running": m["running"],
        "created_at": _iso(m["created_at"]),
        "revoked_at": _iso(m["revoked_at"]),
    }


class AdminStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    async def resolve_account(self, ref: str) -> str:
        """An account id, or a unique account name."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts.c.id).where(accounts.c.id == ref))).first()
            if row:
                return str(row[0])
            rows = (await conn.execute(select(accounts.c.id).where(accounts.c.name == ref))).all()
        if len(rows) == 1:
            return str(rows[0][0])
        if len(rows) > 1:
            raise ApiError(400, f"account: several accounts are named '{ref}'; use the id")
        raise NotFound(f"Account '{ref}' not found")

    async def create_account(
        self, name: str, *, rate_per_minute: int | None = None, max_concurrent: int | None = None
    ) -> dict[str, Any]:
        account_id = await self.store.create_account(name)
        if rate_per_minute is not None or max_concurrent is not None:
            await self.set_limits(
                account_id, rate_per_minute=rate_per_minute, max_concurrent=max_concurrent
            )
        return await self.get_account(account_id)

    async def get_account(self, account_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        if row is None:
            raise NotFound(f"Account '{account_id}' not found")
        return _account(row)

    async def list_accounts(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(accounts).order_by(accounts.c.created_at))).all()
        return [_account(r) for r in rows]

    async def set_limits(
        self,
        account_id: str,
        *,
        rate_per_minute: int | None = None,
        max_concurrent: int | None = None,
        disabled: bool | None = None,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in (
            ("rate_per_minute", rate_per_minute),
            ("max_concurrent", max_concurrent),
        ):
            if value is not None:
                if value < 1:
                    raise ApiError(400, f"{name}: must be at least 1")
                values[name] = value
        if disabled is not None:
            values["disabled_at"] = utcnow() if disabled else None
        if values:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(accounts).where(accounts.c.id == account_id).values(**values)
                )
            await self.store.access_changed()
        return await self.get_account(account_id)

    async def set_webhook_scheme(self, account_id: str, scheme: str | None) -> dict[str, Any]:
        """How the account's webhooks are signed; None goes back to the dialect's default.
        The caller checks the name (the schemes live in jobs/signing.py)."""
        await self.get_account(account_id)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(accounts).where(accounts.c.id == account_id).values(webhook_scheme=scheme)
            )
        return await self.get_account(account_id)

    async def create_key(
        self, account_id: str, name: str, allowed_models: list[str] | None = None
    ) -> tuple[str, dict[str, Any]]:
        from reelgate import catalog

        await self.get_account(account_id)
        for model in allowed_models or []:
            if catalog.find(model) is None:
                raise ApiError(400, f"models: unknown model '{model}'")
        secret, record = await self.store.create_key(account_id, name, allowed_models)
        return secret, (await self.list_keys(key_id=record.id))[0]

    async def list_keys(
        self, account_id: str | None = None, key_id: str | None = None
    ) -> list[dict[str, Any]]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if account_id:
            query = query.where(api_keys.c.account_id == account_id)
        if key_id:
            query = query.where(api_keys.c.id == key_id)
        async with self.engine.connect() as conn:
            return [_key(r) for r in (await conn.execute(query)).all()]

    async def revoke_key(self, ref: str) -> dict[str, Any]:
        """Revoke by id or by prefix (what listings show)."""
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(api_keys.c.id).where((api_keys.c.id == ref) | (api_keys.c.prefix == ref))
                )
            ).all()
            if not rows:
                raise NotFound(f"Key '{ref}' not found")
            if len(rows) > 1:
                raise ApiError(400, f"key: '{ref}' matches several keys; use the id")
            key_id = rows[0][0]
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        await self.store.access_changed()
        return (await self.list_keys(key_id=key_id))[0]

    async def adjust_balance(self, account_id: str, amount: int, note: str) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            await ledger_sql.adjust(conn, account_id=account_id, amount=amount, note=note)
        return await self.get_account(account_id)

    async def ledger(
        self,
        account_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        query = select(ledger).where(ledger.c.account_id == account_id)
        if since:
            query = query.where(ledger.c.created_at >= since)
        if until:
            query = query.where(ledger.c.created_at < until)
        query = query.order_by(ledger.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "amount": format_money(r.amount),
                "amount_micros": int(r.amount),
                "delta_micros": int(r.delta),
                "balance_after": format_money(r.balance_after),
                "prediction_id": r.prediction_id,
                "model": r.model,
                "note": r.note,
                "created_at": _iso(r.created_at),
            }
            for r in rows
        ]

    async def usage(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        account_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Predictions, video seconds and money per account and model, by creation time."""
        seconds = func.sum(
            case(
                (
                    predictions.c.status == COMPLETED,
                    func.coalesce(predictions.c.params["duration"].as_integer(), 0),
                ),
                else_=0,
            )
        )
        charged = func.sum(case((predictions.c.status == COMPLETED, predictions.c.price), else_=0))
        query = (
            select(
                predictions.c.account_id,
                accounts.c.name,
                predictions.c.model,
                func.count().label("predictions"),
                func.sum(case((predictions.c.status == COMPLETED, 1), else_=0)).label("completed"),
                func.sum(case((predictions.c.status == FAILED, 1), else_=0)).label("failed"),
                seconds.label("video_seconds"),
                charged.label("charged"),
            )
            .join(accounts, accounts.c.id == predictions.c.account_id)
            .group_by(predictions.c.account_id, accounts.c.name, predictions.c.model)
            .order_by(accounts.c.name, predictions.c.model)
        )
        if since:
            query = query.where(predictions.c.created_at >= since)
        if until:
            query = query.where(predictions.c.created_at < until)
        if account_id:
            query = query.where(predictions.c.account_id == account_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "account_id": r.account_id,
                "account": r.name,
                "model": r.model,
                "predictions": int(r.predictions),
                "completed": int(r.completed or 0),
                "failed": int(r.failed or 0),
                "video_seconds": int(r.video_seconds or 0),
                "charged": format_money(int(r.charged or 0)),
                "charged_micros": int(r.charged or 0),
            }
            for r in rows
        ]

    async def policy_blocks(self, limit: int = 200) -> list[dict[str, Any]]:
        query = select(policy_blocks).order_by(policy_blocks.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "id": r.id,
                "account_id": r.account_id,
                "key_id": r.key_id,
                "model": r.model,
                "scene": r.scene,
                "category": r.category,
                "field": r.field,
                "text": r.text,
                "created_at": _iso(r.created_at),
            }
            for r in rows
        ]
