"""Money as reelgate counts it: integers of micro-units of the operator's currency
(1 USD = 1_000_000), never floats.

The lowest layer, beside errors.py: the store, the ledger's rules, prices and the pages all
count and print money, and refuse what a balance cannot pay, the same way without
importing each other."""

from __future__ import annotations

from reelgate.errors import ApiError

MICROS = 1_000_000


def format_money(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{frac:06d}"


class InsufficientBalance(ApiError):
    """A hold or a debit larger than the available balance: nothing was written."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            403,
            f"Insufficient balance: this request costs {format_money(needed)} and the "
            f"available balance is {format_money(available)}",
        )
        self.needed = needed
        self.available = available
