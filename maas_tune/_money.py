"""Money arithmetic: exact dollars for token counts at prices per million tokens, and their display.

The ledger stores prices and caps as floats; the cap is compared in exact decimal
arithmetic on the decimals those floats were written as (``repr`` gives back ``0.15``
for ``0.15``), so that a cost landing exactly on the cap is allowed and a cent more is
refused, with no binary rounding in between.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Final

__all__ = ["TOKENS_PER_PRICE_UNIT", "dollars", "exact", "format_usd"]

#: Prices are quoted per this many tokens.
TOKENS_PER_PRICE_UNIT: Final = 1_000_000
#: Significant digits of the arithmetic: a count up to 2**63 (19 digits) times a price of
#: 17 significant digits, summed, is exact with room to spare.
_DIGITS: Final = 60
#: Decimal places shown by :func:`format_usd` at most (a millionth of a cent).
_SHOWN_PLACES: Final = 8


def exact(value: float) -> Decimal:
    """The decimal a float was written as: ``exact(0.15) == Decimal("0.15")``."""
    return Decimal(repr(float(value)))


def dollars(
    input_tokens: int, output_tokens: int, input_per_million: float, output_per_million: float
) -> Decimal:
    """Exact cost in USD of ``input_tokens`` and ``output_tokens`` at prices per million."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        total = input_tokens * exact(input_per_million) + output_tokens * exact(output_per_million)
        return total / TOKENS_PER_PRICE_UNIT


def format_usd(amount: float | Decimal) -> str:
    """``$4.00``, ``$0.0012``, ``$0.00000015``: cents always, smaller digits where they count."""
    text = f"{Decimal(amount) if isinstance(amount, Decimal) else amount:.{_SHOWN_PLACES}f}"
    whole, _, places = text.partition(".")
    places = places.rstrip("0").ljust(2, "0")
    return f"${whole}.{places}"
