"""The persistent query-budget ledger: reserve before sending, commit what was spent."""

from __future__ import annotations

import enum
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

from .._constants import RESERVATION_LEASE_S
from ..errors import ConfigurationError
from ..pricing import Price, check_price, check_usd
from ._ledger import MAX_COUNT, BudgetStatus, no_price_error
from ._ledger import check_count as _check_count
from ._ledger import refusal as _refusal
from ._ledger import statuses as _statuses
from ._liveness import hostname
from ._reclaim import ADD_SPENT_SQL as _ADD_SPENT_SQL
from ._reclaim import reclaim_dead as _reclaim_dead
from .base import Connection, Store, StoreHolder, borrowed_store, coerce_store

__all__ = [
    "KEEP",
    "MAX_COUNT",
    "BudgetStatus",
    "QueryBudget",
    "Reservation",
    "list_budgets",
    "reset_budget",
]

_LOG = logging.getLogger(__name__)

_RESERVE_SQL = (
    "INSERT INTO reservations "
    "(id, budget, queries, prompt_tokens, pid, hostname, created, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class _Keep(enum.Enum):
    KEEP = "keep"


#: Default of :meth:`QueryBudget.set_limits`: leave that limit as it is stored.
KEEP: Final = _Keep.KEEP
Limit: TypeAlias = "int | Literal[_Keep.KEEP] | None"
CostLimit: TypeAlias = "float | Literal[_Keep.KEEP] | None"

# Create the budget, or update the caps and price given (NULL: leave the stored one).
_UPSERT_SQL = (
    "INSERT INTO budgets (name, max_queries, max_prompt_tokens, max_cost, price_input, "
    "price_output, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET "
    "max_queries = COALESCE(excluded.max_queries, budgets.max_queries), "
    "max_prompt_tokens = COALESCE(excluded.max_prompt_tokens, budgets.max_prompt_tokens), "
    "max_cost = COALESCE(excluded.max_cost, budgets.max_cost), "
    "price_input = COALESCE(excluded.price_input, budgets.price_input), "
    "price_output = COALESCE(excluded.price_output, budgets.price_output), "
    "updated = excluded.updated"
)


@dataclass(frozen=True)
class Reservation:
    """Units set aside for one request; commit or release it exactly once."""

    id: str
    budget: str
    queries: int
    prompt_tokens: int


class QueryBudget(StoreHolder):
    """Named caps on queries, prompt tokens and cost, persisted and shared by processes.

    Parameters
    ----------
    name : str
        Budget name; all processes using the same store and name share one ledger.
    max_queries, max_prompt_tokens : int or None
        Caps to store. ``None`` leaves the stored cap as it is (unlimited for a new
        budget); use :meth:`set_limits` to remove a cap.
    max_cost : float or None
        Cap in US dollars on the cost of what is sent: the query and prompt-token
        counters at ``price`` (each query counted as one output token). Needs a price,
        given or stored. ``None`` leaves the stored cap as it is.
    price : Price or None
        What the model costs per million input and output tokens (see
        :mod:`maas_tune.pricing`), stored with the budget. ``None`` leaves the stored
        price as it is (none for a new budget: no cost is counted); use
        :meth:`set_price` to change it.
    store : Store, str, Path or None
        The store (share the cache's, so that both can commit in one transaction),
        or a path or URL to open one on; ``None`` is the default SQLite file.
    lease_s : float, default 900
        How long a reservation of this budget object holds before other workers may
        count it as spent (see Notes).

    Notes
    -----
    Call :meth:`reserve` before sending, then :meth:`commit` what was spent or
    :meth:`release` if the request provably was not billed. A reservation whose
    holder is gone is counted as spent the next time any budget on the store
    reserves or reports status: at once when the holder ran on this host and has
    exited, else when its lease runs out (another host's processes cannot be
    checked). A holder that was only slow still settles its reservation afterwards,
    and the counters are corrected to what it reports.

    The cost cap has the query cap's guarantee: a reservation of queries and prompt
    tokens reserves their cost at the stored price, and is refused when that would
    pass the cap. One price per budget: changing it re-prices what was already spent,
    so give each model its own budget.
    """

    def __init__(
        self,
        name: str,
        max_queries: int | None = None,
        max_prompt_tokens: int | None = None,
        *,
        max_cost: float | None = None,
        price: Price | None = None,
        store: Store | str | Path | None = None,
        lease_s: float = RESERVATION_LEASE_S,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a budget name must be a non-empty string, got {name!r}")
        _check_count("max_queries", max_queries, optional=True)
        _check_count("max_prompt_tokens", max_prompt_tokens, optional=True)
        check_usd("max_cost", max_cost, optional=True)
        check_price(price, optional=True)
        if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or lease_s <= 0:
            raise ConfigurationError(
                f"lease_s must be a positive number of seconds, got {lease_s!r}"
            )
        self._name = name
        self._lease_s = float(lease_s)
        self._store, self._owned = coerce_store(store)
        now = time.time()
        prices = (price.input_per_million, price.output_per_million) if price else (None, None)
        caps = (max_queries, max_prompt_tokens, None if max_cost is None else float(max_cost))
        with self._store.transaction() as conn:
            conn.execute(_UPSERT_SQL, (name, *caps, *prices, now, now))
            self._check_priced(conn)

    @property
    def name(self) -> str:
        """The budget's name."""
        return self._name

    def __repr__(self) -> str:
        return f"QueryBudget({self._name!r}, store={self._store.location!r})"

    def set_limits(
        self,
        *,
        max_queries: Limit = KEEP,
        max_prompt_tokens: Limit = KEEP,
        max_cost: CostLimit = KEEP,
    ) -> None:
        """Change the caps: a number sets one, ``None`` removes it, :data:`KEEP` leaves it.

        Raises
        ------
        ConfigurationError
            A value is out of range, or a cost cap is set on a budget without a price.
        """
        given = {"max_queries": max_queries, "max_prompt_tokens": max_prompt_tokens}
        changes: dict[str, object] = {c: v for c, v in given.items() if v is not KEEP}
        for column, value in changes.items():
            _check_count(column, value, optional=True)
        if max_cost is not KEEP:
            check_usd("max_cost", max_cost, optional=True)
            changes["max_cost"] = None if max_cost is None else float(max_cost)
        self._update(changes)

    def set_price(self, price: Price | None) -> None:
        """Store the price the counters are costed at (``None`` removes it); the cost is
        the counters at the price now stored, so a new price re-prices what was spent.

        Raises
        ------
        ConfigurationError
            ``price`` is not a :class:`Price`, or is ``None`` while a cost cap is set.
        """
        check_price(price, optional=True)
        values = (price.input_per_million, price.output_per_million) if price else (None, None)
        self._update(dict(zip(("price_input", "price_output"), values)))

    def _update(self, changes: dict[str, object]) -> None:
        """Set columns of the budget's row in one transaction, then check it stays priced."""
        with self._store.transaction() as conn:
            for column, value in changes.items():  # column names come from our own code
                conn.execute(
                    f"UPDATE budgets SET {column} = ?, updated = ? WHERE name = ?",
                    (value, time.time(), self._name),
                )
            self._check_priced(conn)

    def _check_priced(self, conn: Connection) -> None:
        """Refuse (rolling the transaction back) a cost cap without a price to count it at."""
        status = self._status(conn)
        if status.max_cost is not None and status.price is None:
            raise no_price_error(self._name)

    def _status(self, conn: Connection) -> BudgetStatus:
        found = _statuses(conn, self._name)
        if not found:
            raise ConfigurationError(
                f"budget {self._name!r} is missing from {self._store.location} (was the store "
                "replaced?); create it again with QueryBudget(name, max_queries=...)"
            )
        return found[0]

    def status(self) -> BudgetStatus:
        """Caps and counters, after counting dead holders' reservations as spent."""
        _reclaim_dead(self._store)
        with self._store.read() as conn:
            return self._status(conn)

    def reserve(self, queries: int, prompt_tokens: int = 0) -> Reservation:
        """Set units aside for a request about to be sent; atomic across threads and processes.

        Their cost at the stored price (a query counts one output token) is reserved too.

        Raises
        ------
        BudgetExceeded
            ``spent + reserved + requested`` would pass a cap (of queries, prompt tokens
            or cost); nothing is reserved, and nothing must be sent.
        """
        _check_count("queries", queries)
        _check_count("prompt_tokens", prompt_tokens)
        r = Reservation(uuid.uuid4().hex, self._name, queries, prompt_tokens)
        row = (r.id, r.budget, r.queries, r.prompt_tokens, os.getpid(), hostname())
        _reclaim_dead(self._store)  # committed even when the request is refused
        with self._store.transaction() as conn:
            # The budget's row lock (PostgreSQL; SQLite's transaction locks the whole file)
            # makes check-then-insert atomic: reservations of one budget queue here.
            conn.execute(
                f"SELECT name FROM budgets WHERE name = ?{self._store.for_update}", (self._name,)
            ).fetchall()
            refusal = _refusal(self._status(conn), queries, prompt_tokens)
            if refusal is None:
                now = time.time()
                conn.execute(_RESERVE_SQL, (*row, now, now + self._lease_s))
        if refusal is not None:
            raise refusal
        return r

    def commit(
        self,
        reservation: Reservation,
        *,
        queries: int | None = None,
        prompt_tokens: int | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Count a reservation as spent and drop it.

        Parameters
        ----------
        reservation : Reservation
            What :meth:`reserve` returned.
        queries, prompt_tokens : int or None
            What was actually spent (default: what was reserved). More than was
            reserved is recorded as well, with a warning: the ledger must hold what
            was billed.
        conn : Connection or None
            The connection of a caller's open ``store.transaction()``, to commit with
            other writes (e.g. the answers just paid for) atomically.

        Raises
        ------
        ConfigurationError
            The reservation belongs to another budget or was already settled.
        """
        spent_q = reservation.queries if queries is None else queries
        spent_t = reservation.prompt_tokens if prompt_tokens is None else prompt_tokens
        _check_count("queries", spent_q)
        _check_count("prompt_tokens", spent_t)
        if spent_q > reservation.queries or spent_t > reservation.prompt_tokens:
            wanted = (spent_q, spent_t, reservation.queries, reservation.prompt_tokens)
            _LOG.warning(
                "budget %r: spent %d/%d, more than the %d/%d reserved", self._name, *wanted
            )
        self._settle(reservation, spent_q, spent_t, conn)

    def release(self, reservation: Reservation, *, conn: Connection | None = None) -> None:
        """Drop a reservation unspent: only when the request was provably not billed."""
        self._settle(reservation, 0, 0, conn)

    def _settle(
        self,
        r: Reservation,
        queries: int,
        tokens: int,
        conn: Connection | None,
        *,
        missing_ok: bool = False,
    ) -> bool:
        """Drop the reservation and add what was spent; False if it was already gone.

        A reservation reclaimed for an expired lease is already in the spent counters
        at its full size: they are corrected by what was really spent.
        """
        if r.budget != self._name:
            raise ConfigurationError(
                f"reservation {r.id} belongs to budget {r.budget!r}, not {self._name!r}; "
                "commit or release it on the budget that made it"
            )
        with self._store.joining(conn) as c:
            held = c.execute(
                "DELETE FROM reservations WHERE id = ? RETURNING reclaimed, queries, prompt_tokens",
                (r.id,),
            ).fetchall()
            if not held:
                if missing_ok:
                    return False
                raise ConfigurationError(
                    f"reservation {r.id} of budget {self._name!r} was already committed or "
                    "released; settle each reservation exactly once"
                )
            reclaimed, held_queries, held_tokens = held[0]
            if reclaimed:
                _LOG.warning(
                    "budget %r: reservation %s settled after its lease expired; counters corrected",
                    self._name,
                    r.id,
                )
                queries, tokens = queries - held_queries, tokens - held_tokens
            if queries or tokens:
                c.execute(_ADD_SPENT_SQL, (queries, tokens, time.time(), self._name))
        return True

    @contextmanager
    def reserving(self, queries: int, prompt_tokens: int = 0) -> Iterator[Reservation]:
        """Reserve for the block: released if it raises, else committed as reserved if unsettled.

        Commit inside the block when the request may have been billed although an
        error follows (a timeout, an unreadable answer): an escaping error releases.
        """
        r = self.reserve(queries, prompt_tokens)
        try:
            yield r
        except BaseException:
            self._settle(r, 0, 0, None, missing_ok=True)
            raise
        self._settle(r, r.queries, r.prompt_tokens, None, missing_ok=True)


def list_budgets(store: Store | str | Path | None = None) -> list[BudgetStatus]:
    """Every budget's status, by name (dead holders' reservations counted as spent first)."""
    with borrowed_store(store) as resolved:
        _reclaim_dead(resolved)
        with resolved.read() as conn:
            return _statuses(conn)


def reset_budget(store: Store | str | Path | None, name: str) -> BudgetStatus:
    """Zero a budget's spent counters (caps and reservations stay); return its status before.

    Raises
    ------
    ConfigurationError
        No budget of that name exists in the store.
    """
    with borrowed_store(store) as resolved:
        _reclaim_dead(resolved)
        with resolved.transaction() as conn:
            conn.execute(
                f"SELECT name FROM budgets WHERE name = ?{resolved.for_update}", (name,)
            ).fetchall()
            found = _statuses(conn, name)
            if not found:
                known = ", ".join(repr(s.name) for s in _statuses(conn)) or "none"
                raise ConfigurationError(
                    f"no budget named {name!r} in {resolved.location} (known: {known}); "
                    "check the name"
                )
            zero = "UPDATE budgets SET spent_queries = 0, spent_prompt_tokens = 0, updated = ?"
            conn.execute(f"{zero} WHERE name = ?", (time.time(), name))
    return found[0]
