"""Queries. Every state change of a prediction is one conditional UPDATE, so two workers,
a duplicated queue message or a restarted process can never move a row twice."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, literal, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from reelgate.store import jobs, ledger
from reelgate.store.creates import (  # noqa: F401 (ConcurrencyLimited, IdempotencyConflict re-exported)
    ConcurrencyLimited,
    CreateBatcher,
    IdempotencyConflict,
)
from reelgate.store.tables import (
    CANCELLED,
    COMPLETED,
    CREATED,
    ENDED,
    FAILED,
    PROCESSING,
    UTCDateTime,
    accounts,
    api_keys,
    policy_blocks,
    predictions,
    utcnow,
    webhook_deliveries,
)

KEY_PREFIX = "rg_"


def new_id() -> str:
    return uuid.uuid4().hex


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    account_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    allowed_models: list[str] | None = None
    # The owning account's limits (None: the server default) and state.
    rate_per_minute: int | None = None
    max_concurrent: int | None = None
    account_disabled: bool = False


@dataclass(frozen=True)
class Prediction:
    id: str
    account_id: str
    key_id: str
    model: str
    scene: str
    backend: str
    status: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    outputs: list[str]
    error: str
    nsfw: bool
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    upstream_ref: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    price: int = 0
    webhook: str | None = None
    base_url: str | None = None
    outputs_deleted_at: datetime | None = None
    progress: dict[str, Any] | None = None
    cancel_requested_at: datetime | None = None
    poster: str | None = None
    submit_intent: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    dialect: str = "v3"

    @property
    def finished(self) -> bool:
        return self.status in ENDED

    @property
    def execution_ms(self) -> int:
        if self.started_at is None:
            return 0
        end = self.completed_at or utcnow()
        return max(0, int((end - self.started_at).total_seconds() * 1000))


_NULLABLE = ("lease_owner", "lease_expires_at", "upstream_ref", "started_at", "completed_at",
             "submit_intent", "poster")


def _prediction(row: Any) -> Prediction:
    return Prediction(**{c: row._mapping[c] for c in Prediction.__dataclass_fields__})


class Store:
    def __init__(self, engine: AsyncEngine, checkpoint_engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        # Submission intents and upstream handles are written through connections of their
        # own: the moment between an upstream accepting work and its handle being on the row
        # must not include a wait for the shared pool (thousands of polls may hold it).
        self.checkpoint_engine = checkpoint_engine or engine
        # Lease renewals: one statement per worker every third of the TTL, which must never
        # queue behind work (a late renewal hands live work to another worker).
        self.lease_engine = self.checkpoint_engine
        self.creates = CreateBatcher(engine)
        # Called after a key's or an account's access changed (revoked, disabled, limits):
        # API processes keep key records in memory (keycache.py) and are told here.
        self.on_access_change: list[Callable[[], Awaitable[None]]] = []

    async def close(self) -> None:
        await self.creates.close()

    async def access_changed(self) -> None:
        for hook in self.on_access_change:
            await hook()

    # --- accounts and keys ---------------------------------------------------------------

    async def create_account(self, name: str) -> str:
        account_id = new_id()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(accounts).values(id=account_id, name=name, created_at=utcnow())
            )
        return account_id

    async def find_account_by_name(self, name: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(accounts.c.id).where(accounts.c.name == name).limit(1)
                )
            ).first()
        return row[0] if row else None

    async def create_key(
        self, account_id: str, name: str, allowed_models: list[str] | None = None
    ) -> tuple[str, KeyRecord]:
        """Return the new secret (shown once, never stored) and its record."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id=new_id(),
            account_id=account_id,
            name=name,
            prefix=secret[:10],
            created_at=utcnow(),
            revoked_at=None,
            allowed_models=allowed_models,
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=record.id,
                    account_id=account_id,
                    name=name,
                    prefix=record.prefix,
                    key_hash=hash_key(secret),
                    created_at=record.created_at,
                    allowed_models=allowed_models,
                )
            )
        return secret, record

    async def authenticate(self, secret: str) -> KeyRecord | None:
        return await self.key_by_hash(hash_key(secret))

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The live (unrevoked) key whose SHA-256 is ``key_hash``, with its account's limits."""
        query = (
            select(
                api_keys,
                accounts.c.rate_per_minute,
                accounts.c.max_concurrent,
                accounts.c.disabled_at,
            )
            .join(accounts, accounts.c.id == api_keys.c.account_id)
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        return KeyRecord(
            id=m["id"],
            account_id=m["account_id"],
            name=m["name"],
            prefix=m["prefix"],
            created_at=m["created_at"],
            revoked_at=m["revoked_at"],
            allowed_models=m["allowed_models"],
            rate_per_minute=m["rate_per_minute"],
            max_concurrent=m["max_concurrent"],
            account_disabled=m["disabled_at"] is not None,
        )

    async def record_policy_block(self, *, key: KeyRecord, model: str, scene: str,
                                  category: str, field: str, text: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(policy_blocks).values(
                    account_id=key.account_id,
                    key_id=key.id,
                    model=model,
                    scene=scene,
                    category=category,
                    field=field,
                    text=text,
                    created_at=utcnow(),
                )
            )

    async def balance(self, account_id: str) -> int:
        async with self.engine.connect() as conn:
            return await ledger.balance(conn, account_id)

    # --- predictions ---------------------------------------------------------------------

    async def insert_prediction(
        self,
        *,
        id: str,
        account_id: str,
        key_id: str,
        model: str,
        scene: str,
        backend: str,
        params: dict[str, Any],
        inputs: dict[str, Any],
        price: int = 0,
        max_concurrent: int | None = None,
        webhook: str | None = None,
        base_url: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        dialect: str = "v3",
    ) -> Prediction:
        """Store a new prediction together with its concurrency slot and its hold, in one
        transaction: either all three happen or none (ConcurrencyLimited or
        InsufficientBalance is raised and nothing is stored).

        With an ``idempotency_key``, the account's earlier prediction under that key is
        returned instead (its id differs from ``id``: nothing new is stored or held), or
        IdempotencyConflict is raised when it was made from another request. The key is
        looked up by the group-commit writer (store/creates.py) in the create's own
        transaction (SQLite) or statement (PostgreSQL). Two creates racing with one key on
        PostgreSQL: the unique index lets one insert win, the other rolls back (slot and
        hold included) and returns the winner's row."""
        try:
            return await self._insert_prediction(
                id=id, account_id=account_id, key_id=key_id, model=model, scene=scene,
                backend=backend, params=params, inputs=inputs, price=price,
                max_concurrent=max_concurrent, webhook=webhook, base_url=base_url,
                idempotency_key=idempotency_key, request_hash=request_hash, dialect=dialect)
        except IntegrityError:
            if idempotency_key is None:
                raise
            earlier = await self.find_idempotent(account_id, idempotency_key, request_hash)
            if earlier is None:
                raise
            return earlier

    async def find_idempotent(self, account_id: str, idempotency_key: str,
                              request_hash: str | None) -> Prediction | None:
        """The account's prediction made under ``idempotency_key``, if any; raises
        IdempotencyConflict when it was made from a different request."""
        async with self.engine.connect() as conn:
            return await self._find_idempotent(conn, account_id, idempotency_key, request_hash)

    @staticmethod
    async def _find_idempotent(conn: Any, account_id: str, idempotency_key: str,
                               request_hash: str | None) -> Prediction | None:
        row = (await conn.execute(
            select(predictions).where(predictions.c.account_id == account_id,
                                      predictions.c.idempotency_key == idempotency_key)
        )).first()
        if row is None:
            return None
        pred = _prediction(row)
        if pred.request_hash != request_hash:
            raise IdempotencyConflict(idempotency_key)
        return pred

    async def _insert_prediction(
        self, *, id: str, account_id: str, key_id: str, model: str, scene: str, backend: str,
        params: dict[str, Any], inputs: dict[str, Any], price: int,
        max_concurrent: int | None, webhook: str | None, base_url: str | None,
        idempotency_key: str | None, request_hash: str | None, dialect: str,
    ) -> Prediction:
        now = utcnow()
        values = dict(
            id=id,
            account_id=account_id,
            key_id=key_id,
            model=model,
            scene=scene,
            backend=backend,
            status=CREATED,
            params=params,
            inputs=inputs,
            outputs=[],
            error="",
            nsfw=False,
            attempts=0,
            price=price,
            webhook=webhook,
            base_url=base_url,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            dialect=dialect,
            created_at=now,
            updated_at=now,
        )
        # Group commit (store/creates.py): concurrent creates share a transaction; this
        # returns once ours is committed, or raises its refusal with nothing stored. With an
        # Idempotency-Key already used (same request), the writer stores nothing and names
        # the earlier prediction, read here once committed.
        earlier_id = await self.creates.submit(values, max_concurrent)
        if earlier_id is not None:
            earlier = await self.get(earlier_id)
            if earlier is None:  # predictions are never deleted
                raise RuntimeError(f"prediction {earlier_id} is gone")
            return earlier
        # The row is exactly what was inserted: no need to read it back.
        fields = Prediction.__dataclass_fields__
        given: dict[str, Any] = {k: v for k, v in values.items() if k in fields}
        given.update({k: None for k in fields if k not in values and k in _NULLABLE})
        return Prediction(**given)

    async def get(self, prediction_id: str, *, account_id: str | None = None) -> Prediction | None:
        query = select(predictions).where(predictions.c.id == prediction_id)
        if account_id is not None:
            query = query.where(predictions.c.account_id == account_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _prediction(row) if row else None

    async def stuck(self, backends: list[str] | None, *, created_before: datetime,
                    limit: int) -> list[tuple[str, str]]:
        """(id, backend) of rows nobody works on: created before ``created_before`` and never
        claimed (their dispatch was lost), or running under an expired lease (dead worker).
        The reconciler's query, shared by every dispatcher (store/jobs.py)."""
        return await jobs.unattended(self.engine, backends=backends,
                                     created_before=created_before, limit=limit)

    async def claim(self, prediction_id: str, owner: str, ttl_s: float) -> Prediction | None:
        """Take the lease on a row if nobody holds a live one. Returns the row, or None if
        another worker has it or it has ended."""
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(predictions)
                .where(predictions.c.id == prediction_id, jobs.claimable(now))
                .values(
                    status=PROCESSING,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=ttl_s),
                    attempts=predictions.c.attempts + 1,
                    # executionTime counts from the first start, across restarts.
                    started_at=func.coalesce(
                        predictions.c.started_at, literal(now, type_=UTCDateTime())
                    ),
                    updated_at=now,
                )
                .returning(*predictions.c)
            )
            row = result.first()
        # RETURNING gives the claimed row in the same round trip (SQLite 3.35+, PostgreSQL).
        return _prediction(row) if row is not None else None

    async def renew_leases(self, owner: str, ttl_s: float) -> int:
        """Extend every lease ``owner`` holds, in one statement: a worker with thousands of
        predictions in flight renews them all at once, not one query each."""
        now = utcnow()
        # Through a connection of its own: a renewal stuck behind a busy pool lets the
        # leases lapse, and other workers take over work that is alive.
        async with self.lease_engine.begin() as conn:
            result = await conn.execute(
                update(predictions)
                .where(predictions.c.lease_owner == owner,
                       predictions.c.status == PROCESSING)
                .values(lease_expires_at=now + timedelta(seconds=ttl_s))
            )
        return int(result.rowcount)

    async def renew_lease(self, prediction_id: str, owner: str, ttl_s: float) -> bool:
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(predictions)
                .where(
                    predictions.c.id == prediction_id,
                    predictions.c.status == PROCESSING,
                    predictions.c.lease_owner == owner,
                )
                .values(lease_expires_at=now + timedelta(seconds=ttl_s), updated_at=now)
            )
        return result.rowcount == 1

    async def release_lease(self, prediction_id: str, owner: str) -> None:
        """Hand a row back at shutdown so another worker can take it at once."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(predictions)
                .where(
                    predictions.c.id == prediction_id,
                    predictions.c.status == PROCESSING,
                    predictions.c.lease_owner == owner,
                )
                .values(lease_expires_at=None, lease_owner=None, updated_at=utcnow())
            )

    async def set_upstream_ref(self, prediction_id: str, owner: str, ref: str) -> bool:
        async with self.checkpoint_engine.begin() as conn:
            result = await conn.execute(
                update(predictions)
                .where(predictions.c.id == prediction_id, predictions.c.lease_owner == owner)
                .values(upstream_ref=ref, updated_at=utcnow())
            )
        return result.rowcount == 1

    async def set_submit_intent(self, prediction_id: str, owner: str, intent: str) -> bool:
        """Record, durably, that a submission is about to be sent (before it is sent)."""
        async with self.checkpoint_engine.begin() as conn:
            result = await conn.execute(
                update(predictions)
                .where(predictions.c.id == prediction_id, predictions.c.lease_owner == owner,
                       predictions.c.status == PROCESSING)
                .values(submit_intent=intent, updated_at=utcnow())
            )
        return result.rowcount == 1

    async def clear_submit_intent(self, prediction_id: str, owner: str) -> bool:
        """Forget an intent that is known not to have reached the upstream (it refused the
        call outright), so a crash now does not count it as unconfirmed."""
        async with self.checkpoint_engine.begin() as conn:
            result = await conn.execute(
                update(predictions)
                .where(predictions.c.id == prediction_id, predictions.c.lease_owner == owner,
                       predictions.c.upstream_ref.is_(None))
                .values(submit_intent=None, updated_at=utcnow())
            )
        return result.rowcount == 1

    async def set_progress(self, prediction_id: str, owner: str,
                           progress: dict[str, Any]) -> bool | None:
        """Record a running row's progress. Returns whether the user asked to cancel it, or
        None when ``owner`` no longer holds the row (lease taken over, or ended)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(predictions)
                    .where(predictions.c.id == prediction_id,
                           predictions.c.status == PROCESSING,
                           predictions.c.lease_owner == owner)
                    .values(progress=progress, updated_at=utcnow())
                    .returning(predictions.c.cancel_requested_at)
                )
            ).first()
        if row is None:
            return None
        return row.cancel_requested_at is not None

    async def request_cancel(self, prediction_id: str, account_id: str,
                             backends: tuple[str, ...]) -> bool:
        """Ask the worker running a prediction on one of ``backends`` (those that can stop
        between steps) to stop it; the worker ends the row and releases its hold."""
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(predictions)
                .where(predictions.c.id == prediction_id,
                       predictions.c.account_id == account_id,
                       predictions.c.status == PROCESSING,
                       predictions.c.backend.in_(backends))
                .values(cancel_requested_at=func.coalesce(
                    predictions.c.cancel_requested_at, literal(now, type_=UTCDateTime())),
                    updated_at=now)
            )
        return result.rowcount == 1

    async def cancel_running(self, prediction_id: str, owner: str, error: str) -> bool:
        """End a running row the user cancelled (by its lease holder); nothing is charged."""
        return await self._finish(prediction_id, owner, status=CANCELLED, error=error)

    async def complete(self, prediction_id: str, owner: str, outputs: list[str],
                       poster: str | None = None) -> bool:
        return await self._finish(prediction_id, owner, status=COMPLETED, outputs=outputs,
                                  poster=poster)

    async def fail(self, prediction_id: str, owner: str | None, error: str, *,
                   nsfw: bool = False) -> bool:
        return await self._finish(prediction_id, owner, status=FAILED, error=error, nsfw=nsfw)

    async def cancel(self, prediction_id: str, account_id: str) -> bool:
        """Cancel a prediction that no worker has started; its hold is released."""
        return await self._finish(prediction_id, None, status=CANCELLED,
                                  account_id=account_id,
                                  error="Cancelled by the user before it started.")

    async def _finish(self, prediction_id: str, owner: str | None, *, status: str,
                      account_id: str | None = None, **values: Any) -> bool:
        """End a row once. Only the lease holder may end a running row (a worker whose
        lease expired and was taken over must not overwrite the new worker's result);
        without an owner, only a row nobody started can be ended."""
        now = utcnow()
        cond = [predictions.c.id == prediction_id]
        if account_id is not None:
            cond.append(predictions.c.account_id == account_id)
        if owner is None:
            cond.append(predictions.c.status == CREATED)
        else:
            cond += [predictions.c.status == PROCESSING, predictions.c.lease_owner == owner]
        async with self.engine.begin() as conn:
            ended = (
                await conn.execute(
                    update(predictions)
                    .where(*cond)
                    .values(
                        status=status,
                        completed_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                        **values,
                    )
                    .returning(
                        predictions.c.key_id,
                        predictions.c.account_id,
                        predictions.c.price,
                        predictions.c.model,
                        predictions.c.webhook,
                    )
                )
            ).first()
            if ended is None:
                return False
            if ended.webhook:
                await conn.execute(
                    insert(webhook_deliveries).values(
                        id=f"msg_{new_id()}",
                        prediction_id=prediction_id,
                        account_id=ended.account_id,
                        url=ended.webhook,
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
            # The row ended exactly once: free its slot and settle its hold with it.
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == ended.key_id, api_keys.c.running > 0)
                .values(running=api_keys.c.running - 1)
            )
            await ledger.settle(
                conn,
                account_id=ended.account_id,
                prediction_id=prediction_id,
                amount=int(ended.price),
                model=ended.model,
                capture=status == COMPLETED,
                note=status,
            )
        return True

    async def list_predictions(
        self,
        account_id: str,
        *,
        status: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page: int = 1,
        page_size: int = 20,
        scene: str | None = None,
    ) -> tuple[list[Prediction], int]:
        """One page of an account's predictions, newest first, and the total matching."""
        cond = [predictions.c.account_id == account_id]
        if status:
            cond.append(predictions.c.status == status)
        if model:
            cond.append(predictions.c.model == model)
        if scene:
            cond.append(predictions.c.scene == scene)
        if since:
            cond.append(predictions.c.created_at >= since)
        if until:
            cond.append(predictions.c.created_at < until)
        async with self.engine.connect() as conn:
            total = (
                await conn.execute(select(func.count()).select_from(predictions).where(*cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    select(predictions)
                    .where(*cond)
                    .order_by(predictions.c.created_at.desc(), predictions.c.id.desc())
                    .offset((page - 1) * page_size)
                    .limit(page_size)
                )
            ).all()
        return [_prediction(r) for r in rows], int(total)

    async def delete_outputs(self, prediction_id: str, account_id: str) -> list[str] | None:
        """Forget an ended prediction's videos and return their storage keys (the caller
        deletes the files); None if there is no such ended prediction. The row keeps its
        history (status, money); only the files go."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(predictions.c.outputs, predictions.c.poster).where(
                        predictions.c.id == prediction_id,
                        predictions.c.account_id == account_id,
                        predictions.c.status.in_(ENDED),
                    )
                )
            ).first()
            if row is None:
                return None
            now = utcnow()
            await conn.execute(
                update(predictions)
                .where(predictions.c.id == prediction_id)
                .values(outputs=[], poster=None, outputs_deleted_at=now, updated_at=now)
            )
        # The poster frame is a picture of the video: it goes with it.
        return list(row[0] or []) + ([row[1]] if row[1] else [])

    async def list_after(self, account_id: str, *, after: str | None, limit: int,
                         ascending: bool = False) -> tuple[list[Prediction], bool] | None:
        """A page of an account's predictions by creation time after the one with id
        ``after`` (cursor pagination, as the OpenAI Videos list pages), and whether more
        follow; None if ``after`` names no prediction of this account."""
        cond = [predictions.c.account_id == account_id]
        key = tuple_(predictions.c.created_at, predictions.c.id)
        async with self.engine.connect() as conn:
            if after:
                row = (await conn.execute(
                    select(predictions.c.created_at, predictions.c.id).where(
                        predictions.c.id == after, predictions.c.account_id == account_id)
                )).first()
                if row is None:
                    return None
                cursor = tuple_(literal(row[0], UTCDateTime()), literal(row[1]))
                cond.append(key > cursor if ascending else key < cursor)
            order = ((predictions.c.created_at.asc(), predictions.c.id.asc()) if ascending
                     else (predictions.c.created_at.desc(), predictions.c.id.desc()))
            rows = (await conn.execute(
                select(predictions).where(*cond).order_by(*order).limit(limit + 1)
            )).all()
        return [_prediction(r) for r in rows[:limit]], len(rows) > limit
