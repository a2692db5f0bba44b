"""Money as reelgate counts it: integers of micro-units of the operator's currency
(1 USD = 1_000_000), never floats.

The lowest layer, beside errors.py: the store, the ledger's rules, prices and the pages all
count and print money, and refuse what a balance cannot pay, the same way without
importing each other."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from reelgate.errors import ApiError, InvalidInput

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


# The largest amount an operator may move at once (fits every database's integer column).
MAX_MICROS = 10**15


def parse_money(value: str | int | float | None, micros: int | None) -> int:
    """Exact decimal money ("12.50") to micro-units; floats are refused by design."""
    if micros is not None:
        return micros
    if value is None:
        raise InvalidInput("amount", 'is required (a decimal string such as "10.00")')
    if isinstance(value, float):
        raise InvalidInput("amount", 'must be a decimal string such as "10.00", not a float')
    if isinstance(value, str) and len(value) > 40:
        raise InvalidInput("amount", "is too long for an amount")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise InvalidInput("amount", f"is not a decimal number: {str(value)[:40]!r}") from None
    if not d.is_finite() or abs(d) > MAX_MICROS // MICROS:
        raise InvalidInput("amount", f"must be a finite amount of at most "
                           f"{MAX_MICROS // MICROS}")
    scaled = d * MICROS
    if scaled != scaled.to_integral_value():
        raise InvalidInput("amount", "has more than 6 decimal places")
    return int(scaled)
