"""What one chunk holds of the budget: its worst case reserved before sending, grown one
request at a time when a lost answer must be retried, and settled at exactly what was spent.

A request whose answer is lost after sending (a timeout, a broken connection) may have
been billed, so retrying it may cost one request more than the strategy's worst case.
That request is reserved first (:meth:`ChunkHold.extend`); when the cap cannot take it,
the request is not retried, so the cap is never passed.
"""

from __future__ import annotations

from typing import Any

from ..errors import BudgetExceeded
from ..storage.budget import QueryBudget, Reservation

__all__ = ["ChunkHold"]


class ChunkHold:
    """The reservations of one chunk on ``budget`` (None: no budget, nothing held).

    Parameters
    ----------
    budget : QueryBudget or None
    queries, prompt_tokens : int
        The chunk's worst case, reserved at once (raises :class:`BudgetExceeded`).
    tokens_per_request : int
        Prompt tokens reserved with each request :meth:`extend` adds.
    """

    def __init__(
        self,
        budget: QueryBudget | None,
        queries: int,
        prompt_tokens: int,
        tokens_per_request: int,
    ) -> None:
        self.budget = budget
        self._per_request = tokens_per_request
        self._held: list[Reservation] = []
        if budget is not None:
            self._held.append(budget.reserve(queries, prompt_tokens))

    @property
    def queries(self) -> int | None:
        """Requests held (None without a budget: no cap)."""
        return sum(r.queries for r in self._held) if self.budget is not None else None

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self._held)

    def extend(self) -> bool:
        """Hold one more request, if the cap can take it."""
        if self.budget is None:
            return True
        try:
            self._held.append(self.budget.reserve(1, self._per_request))
        except BudgetExceeded:
            return False
        return True

    def settle(self, queries: int, prompt_tokens: int, conn: Any = None) -> None:
        """Count ``queries`` and ``prompt_tokens`` as spent, spread over what is held."""
        assert self.budget is not None
        for index, held in enumerate(self._held):
            last = index == len(self._held) - 1
            q = queries if last else min(queries, held.queries)
            t = prompt_tokens if last else min(prompt_tokens, held.prompt_tokens)
            self.budget.commit(held, queries=q, prompt_tokens=t, conn=conn)
            queries, prompt_tokens = queries - q, prompt_tokens - t

    def settle_failed(self, request_sent: bool) -> None:
        """Spend all that is held if a request may have been billed, else release it."""
        assert self.budget is not None
        for held in self._held:
            if request_sent:
                self.budget.commit(held)  # conservative: what may have been paid for
            else:
                self.budget.release(held)
