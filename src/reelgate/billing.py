"""Money: prices, and holds, captures, releases and credits on an append-only ledger.

Amounts are integers of micro-units of the operator's currency (1 USD = 1_000_000), never
floats. Every balance change is one conditional UPDATE plus one ledger row in the same
transaction, so concurrent requests can never spend more than the balance, and the ledger
always explains the balance: balance == sum(delta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from reelgate import catalog
from reelgate.errors import ApiError
from reelgate.store.tables import accounts, ledger, utcnow

if TYPE_CHECKING:
    from reelgate.backends.base import Job
    from reelgate.settings import Settings

MICROS = 1_000_000

# Google's published price per second of video (audio included), by tier and resolution.
# The -pro names are served by the top Veo model, so they cost what it costs.
GOOGLE_PRICES: dict[str, dict[str, int]] = {
    "standard": {"720p": 400_000, "1080p": 400_000, "4k": 600_000},
    "pro": {"720p": 400_000, "1080p": 400_000, "4k": 600_000},
    "fast": {"720p": 100_000, "1080p": 120_000, "4k": 300_000},
}


class InsufficientBalance(ApiError):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            403,
            f"Insufficient balance: this request costs {format_money(needed)} and the "
            f"available balance is {format_money(available)}",
        )


def format_money(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{frac:06d}"


@dataclass(frozen=True)
class PriceTable:
    """Per-second prices (micro-units) by model and resolution, with the operator's markup.

    ``overrides`` maps a model name to {resolution: price} and optionally
    {"<resolution>/silent": price} for videos without audio where that differs."""

    overrides: dict[str, dict[str, int]]
    markup_percent: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceTable:
        return cls(dict(settings.prices), settings.price_markup_percent)

    def per_second(self, model: str, resolution: str, audio: bool = True) -> int:
        own = self.overrides.get(model, {})
        if not audio and f"{resolution}/silent" in own:
            base = own[f"{resolution}/silent"]
        elif resolution in own:
            base = own[resolution]
        elif (local := catalog.local_config(model)) is not None:
            base = local.price_micros  # the operator's own price for its GPUs
        else:
            base = GOOGLE_PRICES[catalog.MODELS[model].tier][resolution]
        # Round up to a whole micro-unit: the operator never sells below the configured price.
        return math.ceil(base * (100 + self.markup_percent) / 100)

    def price(self, model: str, resolution: str, duration: int, audio: bool = True) -> int:
        return self.per_second(model, resolution, audio) * duration

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for m in [*catalog.MODELS.values(), *catalog.LOCAL_MODELS.values()]:
            for res in (m.local.sizes if m.local is not None else catalog.RESOLUTIONS):
                rows.append(
                    {
                        "model": m.public_id,
                        "resolution": res,
                        "per_second": format_money(self.per_second(m.name, res)),
                        "per_second_without_audio": format_money(
                            self.per_second(m.name, res, audio=False)
                        ),
                        "per_second_micros": self.per_second(m.name, res),
                    }
                )
        return rows


def quote(job: Job, backend: str, settings: Settings) -> int:
    """What a job costs. Free backends (the sandbox, by default) cost nothing; a backend
    may price its own jobs (its ``price`` hook); the rest costs the catalog's price."""
    if backend in settings.free_backends:
        return 0
    from reelgate.backends.registry import NotConfigured, intake_backend

    try:
        own = intake_backend(backend, settings).price(job)
    except NotConfigured:
        own = None
    if own is not None:
        return own
    return PriceTable.from_settings(settings).price(
        job.model, job.resolution, job.duration, job.generate_audio
    )


async def _entry(
    conn: AsyncConnection,
    *,
    account_id: str,
    kind: str,
    amount: int,
    delta: int,
    balance_after: int,
    prediction_id: str | None = None,
    model: str | None = None,
    note: str = "",
) -> None:
    await conn.execute(
        insert(ledger).values(
            account_id=account_id,
            prediction_id=prediction_id,
            kind=kind,
            amount=amount,
            delta=delta,
            balance_after=balance_after,
            model=model,
            note=note,
            created_at=utcnow(),
        )
    )


async def _balance(conn: AsyncConnection, account_id: str) -> int:
    row = (
        await conn.execute(select(accounts.c.balance).where(accounts.c.id == account_id))
    ).first()
    return int(row[0]) if row else 0


async def hold(
    conn: AsyncConnection, *, account_id: str, prediction_id: str, amount: int, model: str
) -> None:
    """Reserve ``amount`` for a prediction, or raise InsufficientBalance. Runs inside the
    transaction that stores the prediction, so a refused hold stores nothing."""
    if amount <= 0:
        return
    result = await conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id, accounts.c.balance >= amount)
        .values(balance=accounts.c.balance - amount)
        .returning(accounts.c.balance)
    )
    row = result.first()
    if row is None:
        raise InsufficientBalance(amount, await _balance(conn, account_id))
    await _entry(
        conn,
        account_id=account_id,
        kind="hold",
        amount=amount,
        delta=-amount,
        balance_after=int(row[0]),
        prediction_id=prediction_id,
        model=model,
    )


async def settle(
    conn: AsyncConnection,
    *,
    account_id: str,
    prediction_id: str,
    amount: int,
    model: str,
    capture: bool,
    note: str = "",
) -> None:
    """End a prediction's hold: capture it (completed) or release it (failed, blocked,
    cancelled: users pay nothing for those). Called in the transaction that ends the row,
    which succeeds once; the ledger's unique (prediction_id, kind) guards it again."""
    if amount <= 0:
        return
    if capture:
        await _entry(
            conn,
            account_id=account_id,
            kind="capture",
            amount=amount,
            delta=0,
            balance_after=await _balance(conn, account_id),
            prediction_id=prediction_id,
            model=model,
            note=note,
        )
        return
    row = (
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(balance=accounts.c.balance + amount)
            .returning(accounts.c.balance)
        )
    ).first()
    assert row is not None
    await _entry(
        conn,
        account_id=account_id,
        kind="release",
        amount=amount,
        delta=amount,
        balance_after=int(row[0]),
        prediction_id=prediction_id,
        model=model,
        note=note,
    )


async def adjust(conn: AsyncConnection, *, account_id: str, amount: int, note: str) -> int:
    """Credit (amount > 0) or debit (amount < 0) an account; a debit never takes the
    balance below zero. Returns the new balance."""
    if amount == 0:
        raise ApiError(400, "amount: must not be zero")
    cond = [accounts.c.id == account_id]
    if amount < 0:
        cond.append(accounts.c.balance >= -amount)
    row = (
        await conn.execute(
            update(accounts)
            .where(*cond)
            .values(balance=accounts.c.balance + amount)
            .returning(accounts.c.balance)
        )
    ).first()
    if row is None:
        if await _account_exists(conn, account_id):
            raise InsufficientBalance(-amount, await _balance(conn, account_id))
        raise ApiError(404, f"Account '{account_id}' not found")
    await _entry(
        conn,
        account_id=account_id,
        kind="credit" if amount > 0 else "debit",
        amount=abs(amount),
        delta=amount,
        balance_after=int(row[0]),
        note=note,
    )
    return int(row[0])


async def _account_exists(conn: AsyncConnection, account_id: str) -> bool:
    row = (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first()
    return row is not None
