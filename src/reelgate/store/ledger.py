"""The balance and its append-only ledger, in SQL.

Every balance change is one conditional UPDATE plus one ledger row in the same transaction,
so concurrent requests can never spend more than the balance, and the ledger always
explains the balance: balance == sum(delta). These functions take the caller's connection:
a hold is taken in the transaction that stores the prediction, a settlement in the one
that ends it (store/repo.py), so either both happen or neither. The rules around them
(who may top up, the early refusal before any input is fetched) are accounts/ledger.py."""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from reelgate.errors import NotFound
from reelgate.money import InsufficientBalance
from reelgate.store.tables import accounts, ledger, utcnow


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


async def balance(conn: AsyncConnection, account_id: str) -> int:
    """The account's available balance (0 for an account that does not exist)."""
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
        raise InsufficientBalance(amount, await balance(conn, account_id))
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
            balance_after=await balance(conn, account_id),
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
    balance below zero (InsufficientBalance), an unknown account is NotFound. Returns the
    new balance."""
    if amount == 0:
        # accounts/ledger.py refuses a zero top-up with a 400; a zero entry explains nothing.
        raise ValueError("a ledger adjustment must move the balance")
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
            raise InsufficientBalance(-amount, await balance(conn, account_id))
        raise NotFound(f"Account '{account_id}' not found")
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
