"""The rules of an account's balance: holds, captures, releases and top-ups.

- A prediction's price is held when it is stored and never takes the balance below zero
  (InsufficientBalance, 403); the hold is captured when the prediction completes and
  released, in full, when it fails, is blocked or is cancelled: users pay only for videos.
- An operator credits (top-up) or debits an account by a non-zero amount; a debit never
  takes the balance below zero either.
- The ledger is append-only and explains the balance: balance == sum(delta).

The SQL that enforces these atomically lives in store/ledger.py; holds and settlements
run inside the store's own transactions (store/repo.py), so the store never calls back up
here. This module is what the API, the console and the CLI call."""

from __future__ import annotations

from typing import Any

from reelgate.errors import ApiError
from reelgate.money import InsufficientBalance
from reelgate.store.admin import AdminStore
from reelgate.store.repo import Store

__all__ = ["InsufficientBalance", "ensure_affordable", "top_up"]


async def ensure_affordable(store: Store, account_id: str, price: int) -> None:
    """Refuse an account that cannot pay ``price`` before anything is fetched or stored.
    Only the cheap early answer: the hold taken with the insert is what guarantees it."""
    if price <= 0:
        return
    available = await store.balance(account_id)
    if price > available:
        raise InsufficientBalance(price, available)


async def top_up(admin: AdminStore, account_id: str, amount: int, note: str) -> dict[str, Any]:
    """Credit (amount > 0) or debit (amount < 0) an account; returns the account as the
    admin API shows it."""
    if amount == 0:
        raise ApiError(400, "amount: must not be zero")
    return await admin.adjust_balance(account_id, amount, note)
