"""Prices of hosted models, per million input and output tokens, and the cost of a run.

A scoring request sends a prompt (input tokens) and asks for at most one answer token
(``max_tokens=1``, or 0 for the server extension and echo), so its output is counted
as :data:`OUTPUT_TOKENS_PER_QUERY` token: an upper bound, as a cap needs. Embedding
requests return no tokens and are counted the same way (a slight overcount).

:data:`PRICES` holds a few common hosted models as examples. Prices change, providers
differ, and discounts (cached input, batch) are not modelled: check your provider's
pricing page and pass your own :class:`Price` where it differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Final

from ._constants import OUTPUT_TOKENS_PER_QUERY
from ._money import dollars, format_usd
from .errors import ConfigurationError

__all__ = [
    "OUTPUT_TOKENS_PER_QUERY",
    "PRICES",
    "PRICES_AS_OF",
    "Price",
    "check_price",
    "check_usd",
    "format_usd",
    "price_for",
]


def check_usd(what: str, value: object, *, optional: bool = False) -> None:
    """Refuse anything but a finite, non-negative number of dollars (``None`` if optional)."""
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        allowed = "a finite number >= 0" + (" or None (no cap)" if optional else "")
        raise ConfigurationError(f"{what} must be {allowed} (US dollars), got {value!r}")


def check_price(price: object, *, optional: bool = False) -> None:
    """Refuse anything but a :class:`Price` (or ``None`` if optional)."""
    if (optional and price is None) or isinstance(price, Price):
        return
    raise ConfigurationError(
        f"price must be a maas_tune.pricing.Price(input_per_million, output_per_million)"
        f"{' or None' if optional else ''}, got {price!r}"
    )


@dataclass(frozen=True)
class Price:
    """What a model costs, in US dollars per million tokens.

    Parameters
    ----------
    input_per_million : float
        Price of a million input (prompt) tokens.
    output_per_million : float
        Price of a million output (generated) tokens.

    Examples
    --------
    >>> Price(0.15, 0.60).cost(input_tokens=2_000_000, output_tokens=1_000)
    0.3006
    """

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        check_usd("input_per_million", self.input_per_million)
        check_usd("output_per_million", self.output_per_million)
        # Stored as floats: the ledger's columns are REAL / DOUBLE PRECISION.
        object.__setattr__(self, "input_per_million", float(self.input_per_million))
        object.__setattr__(self, "output_per_million", float(self.output_per_million))

    @classmethod
    def parse(cls, text: str) -> Price:
        """``"0.15,0.60"`` (input, output per million) as a price (the CLI's ``--price``)."""
        parts = [part.strip() for part in str(text).split(",")]
        try:
            values = [float(part) for part in parts]
        except ValueError:
            values = []
        if len(values) != 2:
            raise ConfigurationError(
                f"a price is INPUT,OUTPUT in US dollars per million tokens, e.g. 0.15,0.60; "
                f"got {text!r}"
            )
        return cls(*values)

    def cost(self, input_tokens: int, output_tokens: int = 0) -> float:
        """Cost in US dollars of ``input_tokens`` and ``output_tokens``."""
        return float(self.exact_cost(input_tokens, output_tokens))

    def exact_cost(self, input_tokens: int, output_tokens: int = 0) -> Decimal:
        """:meth:`cost` as an exact ``decimal.Decimal`` (no binary rounding)."""
        return dollars(input_tokens, output_tokens, self.input_per_million, self.output_per_million)

    def query_cost(self, queries: int, prompt_tokens: int) -> float:
        """Cost of ``queries`` scoring requests sending ``prompt_tokens`` in all: each
        request counted as :data:`OUTPUT_TOKENS_PER_QUERY` output token."""
        return self.cost(prompt_tokens, queries * OUTPUT_TOKENS_PER_QUERY)

    def __str__(self) -> str:
        per = "per million input/output tokens"
        return f"{format_usd(self.input_per_million)}/{format_usd(self.output_per_million)} {per}"


#: When the prices of :data:`PRICES` were published (OpenAI's standard tier).
PRICES_AS_OF: Final = "2025-06"

#: Example prices of common hosted models with log-probabilities (OpenAI's standard-tier
#: list prices per million tokens, as published on https://openai.com/api/pricing in
#: June 2025). They are examples, not a promise: prices change and other hosts of these
#: models charge differently, so check your provider's page and override them with
#: ``price=Price(...)`` (CLI: ``--price INPUT,OUTPUT``).
PRICES: Final[Mapping[str, Price]] = MappingProxyType(
    {
        "gpt-3.5-turbo-instruct": Price(1.50, 2.00),
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4o": Price(2.50, 10.00),
        "gpt-4.1": Price(2.00, 8.00),
        "gpt-4.1-mini": Price(0.40, 1.60),
        "gpt-4.1-nano": Price(0.10, 0.40),
    }
)


def price_for(model: str, table: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model`` in ``table`` (default :data:`PRICES`), or ``None``.

    The name is matched exactly, ignoring case, after an ``openai/`` prefix (OpenRouter's
    names); a dated snapshot such as ``gpt-4o-2024-05-13`` is not matched, since it may
    cost something else.

    Examples
    --------
    >>> price_for("gpt-4o-mini")
    Price(input_per_million=0.15, output_per_million=0.6)
    >>> price_for("my-model", {**PRICES, "my-model": Price(1, 2)}).input_per_million
    1.0
    """
    table = PRICES if table is None else table
    name = str(model).strip()
    lowered = {key.lower(): price for key, price in table.items()}
    for candidate in (name, name.lower(), name.lower().removeprefix("openai/")):
        if candidate in table:
            return table[candidate]
        if candidate in lowered:
            return lowered[candidate]
    return None
