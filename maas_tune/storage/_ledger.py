"""A budget's caps and counters as read from the ledger, and the check that refuses a reservation.

Cost is not a counter of its own: it is the query and prompt-token counters at the
budget's stored price, so reserving queries and tokens reserves their cost, and every
guarantee of those counters (atomic reservations, dead holders counted as spent) holds
for money too.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from .._constants import OUTPUT_TOKENS_PER_QUERY
from .._money import exact
from ..errors import BudgetExceeded, ConfigurationError
from ..pricing import Price
from .base import Connection

__all__ = ["MAX_COUNT", "BudgetStatus", "check_count", "no_price_error", "refusal", "statuses"]

#: The largest cap or count the ledger holds: SQLite's INTEGER and PostgreSQL's BIGINT
#: are signed 64-bit.
MAX_COUNT: Final = 2**63 - 1

# Totals per budget: its row plus what its open reservations hold (a reclaimed one is
# already in the spent counters). The casts keep PostgreSQL's SUM from returning numeric.
_STATUS_SQL = """
SELECT b.name, b.max_queries, b.spent_queries, CAST(COALESCE(SUM(r.queries), 0) AS BIGINT),
       b.max_prompt_tokens, b.spent_prompt_tokens,
       CAST(COALESCE(SUM(r.prompt_tokens), 0) AS BIGINT),
       b.max_cost, b.price_input, b.price_output
FROM budgets AS b LEFT JOIN reservations AS r ON r.budget = b.name AND r.reclaimed = 0
"""


@dataclass(frozen=True)
class BudgetStatus:
    """A budget's caps and counters; a cap of ``None`` means unlimited.

    Costs are in US dollars: the counters at the budget's price (``None`` without one),
    each query counted as one output token (see :mod:`maas_tune.pricing`).
    """

    name: str
    max_queries: int | None
    spent_queries: int
    reserved_queries: int
    max_prompt_tokens: int | None
    spent_prompt_tokens: int
    reserved_prompt_tokens: int
    max_cost: float | None = None
    price_input: float | None = None
    price_output: float | None = None

    def _remaining(self, unit: str) -> int | None:
        cap = getattr(self, f"max_{unit}")
        if cap is None:
            return None
        return max(0, cap - getattr(self, f"spent_{unit}") - getattr(self, f"reserved_{unit}"))

    @property
    def remaining_queries(self) -> int | None:
        """Queries that can still be reserved (``None`` if unlimited)."""
        return self._remaining("queries")

    @property
    def remaining_prompt_tokens(self) -> int | None:
        """Prompt tokens that can still be reserved (``None`` if unlimited)."""
        return self._remaining("prompt_tokens")

    @property
    def price(self) -> Price | None:
        """The price the counters are costed at (``None``: no price stored)."""
        if self.price_input is None or self.price_output is None:
            return None
        return Price(self.price_input, self.price_output)

    def cost_of(self, queries: int, prompt_tokens: int) -> Decimal | None:
        """Exact US dollars of ``queries`` sending ``prompt_tokens`` at the budget's price."""
        price = self.price
        if price is None:
            return None
        return price.exact_cost(prompt_tokens, queries * OUTPUT_TOKENS_PER_QUERY)

    @property
    def spent_cost(self) -> float | None:
        """US dollars spent: the spent counters at the price (``None`` without a price)."""
        cost = self.cost_of(self.spent_queries, self.spent_prompt_tokens)
        return None if cost is None else float(cost)

    @property
    def reserved_cost(self) -> float | None:
        """US dollars held by requests in flight (``None`` without a price)."""
        cost = self.cost_of(self.reserved_queries, self.reserved_prompt_tokens)
        return None if cost is None else float(cost)

    @property
    def remaining_cost(self) -> float | None:
        """US dollars that can still be reserved (``None`` if no cost cap)."""
        if self.max_cost is None:
            return None
        used = self.cost_of(
            self.spent_queries + self.reserved_queries,
            self.spent_prompt_tokens + self.reserved_prompt_tokens,
        )
        return float(max(Decimal(0), exact(self.max_cost) - (used or Decimal(0))))


def check_count(what: str, value: object, *, optional: bool = False) -> None:
    """Refuse anything but an integer from 0 to :data:`MAX_COUNT` (``None`` if optional)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        allowed = "a non-negative integer" + (" or None (unlimited)" if optional else "")
        raise ConfigurationError(f"{what} must be {allowed}, got {value!r}")
    if value > MAX_COUNT:
        raise ConfigurationError(
            f"{what} must be at most {MAX_COUNT} (the ledger stores signed 64-bit integers), "
            f"got {value}" + ("; pass None for no cap" if optional else "")
        )


def statuses(conn: Connection, name: str | None = None) -> list[BudgetStatus]:
    """Every budget's status, by name (only ``name``'s when given)."""
    where, args = ("WHERE b.name = ? ", (name,)) if name is not None else ("", ())
    rows = conn.execute(f"{_STATUS_SQL} {where}GROUP BY b.name ORDER BY b.name", args).fetchall()
    return [BudgetStatus(*row) for row in rows]


def no_price_error(name: str) -> ConfigurationError:
    """A cost cap on a budget without a price: the cost cannot be counted."""
    return ConfigurationError(
        f"a cost cap on budget {name!r} needs a price to count its cost at; give one: "
        "QueryBudget(name, price=Price(input_per_million, output_per_million)) or, on the "
        f"command line, --price INPUT,OUTPUT (or `maas-tune budget set {name} --price "
        "INPUT,OUTPUT`); --api-model names in maas_tune.pricing.PRICES get theirs by default"
    )


def refusal(status: BudgetStatus, queries: int, prompt_tokens: int) -> BudgetExceeded | None:
    """Why reserving ``queries`` and ``prompt_tokens`` more would pass a cap, or ``None``.

    Raises
    ------
    ConfigurationError
        The budget has a cost cap but no price (nothing is reserved then either).
    """
    for unit, requested in (("queries", queries), ("prompt_tokens", prompt_tokens)):
        limit = getattr(status, f"max_{unit}")
        used = getattr(status, f"spent_{unit}") + getattr(status, f"reserved_{unit}")
        if limit is not None and used + requested > limit:
            return BudgetExceeded(status.name, unit, limit, used, requested)
    if status.max_cost is None:
        return None
    used_q = status.spent_queries + status.reserved_queries
    used_t = status.spent_prompt_tokens + status.reserved_prompt_tokens
    used = status.cost_of(used_q, used_t)
    total = status.cost_of(used_q + queries, used_t + prompt_tokens)
    if used is None or total is None:
        raise no_price_error(status.name)
    if total > exact(status.max_cost):  # exact decimals: landing on the cap is allowed
        wanted = status.cost_of(queries, prompt_tokens) or Decimal(0)
        return BudgetExceeded(status.name, "cost", status.max_cost, float(used), float(wanted))
    return None
