"""The persistent query-budget ledger: reserve before sending, commit what was spent."""

from __future__ import annotations

import enum
import logging
import os
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

from ._sqlite import Store, borrowed_store, coerce_store
from .errors import BudgetExceeded, ConfigurationError

__all__ = ["KEEP", "BudgetStatus", "QueryBudget", "Reservation", "list_budgets", "reset_budget"]

_LOG = logging.getLogger(__name__)

# Totals per budget: its row plus what its open reservations hold.
_STATUS_SQL = """
SELECT b.name, b.max_queries, b.spent_queries, COALESCE(SUM(r.queries), 0),
       b.max_prompt_tokens, b.spent_prompt_tokens, COALESCE(SUM(r.prompt_tokens), 0)
FROM budgets AS b LEFT JOIN reservations AS r ON r.budget = b.name
"""
_RESERVE_SQL = (
    "INSERT INTO reservations (id, budget, queries, prompt_tokens, pid, hostname, created) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ADD_SPENT_SQL = (
    "UPDATE budgets SET spent_queries = spent_queries + ?, "
    "spent_prompt_tokens = spent_prompt_tokens + ?, updated = ? WHERE name = ?"
)


class _Keep(enum.Enum):
    KEEP = "keep"


#: Default of :meth:`QueryBudget.set_limits`: leave that limit as it is stored.
KEEP: Final = _Keep.KEEP
Limit: TypeAlias = "int | Literal[_Keep.KEEP] | None"


@dataclass(frozen=True)
class Reservation:
    """Units set aside for one request; commit or release it exactly once."""

    id: str
    budget: str
    queries: int
    prompt_tokens: int


@dataclass(frozen=True)
class BudgetStatus:
    """A budget's caps and counters; a cap of ``None`` means unlimited."""

    name: str
    max_queries: int | None
    spent_queries: int
    reserved_queries: int
    max_prompt_tokens: int | None
    spent_prompt_tokens: int
    reserved_prompt_tokens: int

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


def _check_count(what: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        allowed = "a non-negative integer" + (" or None (unlimited)" if optional else "")
        raise ConfigurationError(f"{what} must be {allowed}, got {value!r}")


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs; when unsure, yes (its units stay reserved)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would terminate the process there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    try:  # a killed child that its parent has not reaped yet is a zombie: dead for us
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _reclaim_dead(conn: sqlite3.Connection) -> int:
    """Count the reservations of dead processes on this host as spent; return how many.

    The process may have sent its request and been billed before it died, so the
    units are spent, not released: the ledger may overcount, never undercount.
    """
    rows = conn.execute(
        "SELECT id, budget, queries, prompt_tokens, pid FROM reservations WHERE hostname = ?",
        (socket.gethostname(),),
    ).fetchall()
    alive: dict[int, bool] = {}
    now, reclaimed = time.time(), 0
    for rid, budget, queries, tokens, pid in rows:
        if pid not in alive:
            alive[pid] = _pid_alive(pid)
        if not alive[pid]:
            conn.execute(_ADD_SPENT_SQL, (queries, tokens, now, budget))
            conn.execute("DELETE FROM reservations WHERE id = ?", (rid,))
            _LOG.warning("budget %r: dead process %d held %d queries: spent", budget, pid, queries)
            reclaimed += 1
    return reclaimed


def _statuses(conn: sqlite3.Connection, name: str | None = None) -> list[BudgetStatus]:
    where, args = ("WHERE b.name = ? ", (name,)) if name is not None else ("", ())
    rows = conn.execute(f"{_STATUS_SQL} {where}GROUP BY b.name ORDER BY b.name", args).fetchall()
    return [BudgetStatus(*row) for row in rows]


def _refusal(status: BudgetStatus, queries: int, prompt_tokens: int) -> BudgetExceeded | None:
    for unit, requested in (("queries", queries), ("prompt_tokens", prompt_tokens)):
        limit = getattr(status, f"max_{unit}")
        used = getattr(status, f"spent_{unit}") + getattr(status, f"reserved_{unit}")
        if limit is not None and used + requested > limit:
            return BudgetExceeded(status.name, unit, limit, used, requested)
    return None


class QueryBudget:
    """A named cap on queries and prompt tokens, persisted in the store and shared by processes.

    Parameters
    ----------
    name : str
        Budget name; all processes using the same store and name share one ledger.
    max_queries, max_prompt_tokens : int or None
        Caps to store. ``None`` leaves the stored cap as it is (unlimited for a new
        budget); use :meth:`set_limits` to remove a cap.
    store : Store, str, Path or None
        The store (share the cache's, so that both can commit in one transaction),
        or a path to open one on; ``None`` is the default path.

    Notes
    -----
    Call :meth:`reserve` before sending, then :meth:`commit` what was spent or
    :meth:`release` if the request provably was not billed. Reservations held by a
    process of this host that has died are counted as spent the next time any
    budget on the store reserves or reports status (reservations from other hosts
    stay reserved: their liveness cannot be checked).
    """

    def __init__(
        self,
        name: str,
        max_queries: int | None = None,
        max_prompt_tokens: int | None = None,
        *,
        store: Store | str | Path | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a budget name must be a non-empty string, got {name!r}")
        _check_count("max_queries", max_queries, optional=True)
        _check_count("max_prompt_tokens", max_prompt_tokens, optional=True)
        self._name = name
        self._store, self._owned = coerce_store(store)
        now = time.time()
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO budgets (name, max_queries, max_prompt_tokens, created, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "max_queries = COALESCE(excluded.max_queries, max_queries), "
                "max_prompt_tokens = COALESCE(excluded.max_prompt_tokens, max_prompt_tokens), "
                "updated = excluded.updated",
                (name, max_queries, max_prompt_tokens, now, now),
            )

    @property
    def name(self) -> str:
        """The budget's name."""
        return self._name

    @property
    def store(self) -> Store:
        """The underlying store."""
        return self._store

    def __repr__(self) -> str:
        return f"QueryBudget({self._name!r}, store={str(self._store.path)!r})"

    def close(self) -> None:
        """Close the store if this budget opened it."""
        if self._owned:
            self._store.close()

    def set_limits(self, *, max_queries: Limit = KEEP, max_prompt_tokens: Limit = KEEP) -> None:
        """Change the caps: an int sets one, ``None`` removes it, :data:`KEEP` leaves it."""
        given = {"max_queries": max_queries, "max_prompt_tokens": max_prompt_tokens}
        changes = {column: value for column, value in given.items() if value is not KEEP}
        for column, value in changes.items():
            _check_count(column, value, optional=True)
        with self._store.transaction() as conn:
            for column, value in changes.items():  # column names come from the dict above
                conn.execute(
                    f"UPDATE budgets SET {column} = ?, updated = ? WHERE name = ?",
                    (value, time.time(), self._name),
                )

    def _status(self, conn: sqlite3.Connection) -> BudgetStatus:
        found = _statuses(conn, self._name)
        if not found:
            raise ConfigurationError(
                f"budget {self._name!r} is missing from {self._store.path} (was the file "
                "replaced?); create it again with QueryBudget(name, max_queries=...)"
            )
        return found[0]

    def status(self) -> BudgetStatus:
        """Caps and counters, after counting dead processes' reservations as spent."""
        with self._store.transaction() as conn:
            _reclaim_dead(conn)
            return self._status(conn)

    def reserve(self, queries: int, prompt_tokens: int = 0) -> Reservation:
        """Set units aside for a request about to be sent; atomic across threads and processes.

        Raises
        ------
        BudgetExceeded
            ``spent + reserved + requested`` would pass a cap; nothing is reserved,
            and nothing must be sent.
        """
        _check_count("queries", queries)
        _check_count("prompt_tokens", prompt_tokens)
        r = Reservation(uuid.uuid4().hex, self._name, queries, prompt_tokens)
        row = (r.id, r.budget, r.queries, r.prompt_tokens, os.getpid(), socket.gethostname())
        with self._store.transaction() as conn:
            _reclaim_dead(conn)  # committed even when the request is refused
            refusal = _refusal(self._status(conn), queries, prompt_tokens)
            if refusal is None:
                conn.execute(_RESERVE_SQL, (*row, time.time()))
        if refusal is not None:
            raise refusal
        return r

    def commit(
        self,
        reservation: Reservation,
        *,
        queries: int | None = None,
        prompt_tokens: int | None = None,
        conn: sqlite3.Connection | None = None,
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
        conn : sqlite3.Connection or None
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

    def release(self, reservation: Reservation, *, conn: sqlite3.Connection | None = None) -> None:
        """Drop a reservation unspent: only when the request was provably not billed."""
        self._settle(reservation, 0, 0, conn)

    def _settle(
        self,
        r: Reservation,
        queries: int,
        tokens: int,
        conn: sqlite3.Connection | None,
        *,
        missing_ok: bool = False,
    ) -> bool:
        """Drop the reservation and add what was spent; False if it was already gone."""
        if r.budget != self._name:
            raise ConfigurationError(
                f"reservation {r.id} belongs to budget {r.budget!r}, not {self._name!r}; "
                "commit or release it on the budget that made it"
            )
        with self._store.joining(conn) as c:
            if c.execute("DELETE FROM reservations WHERE id = ?", (r.id,)).rowcount == 0:
                if missing_ok:
                    return False
                raise ConfigurationError(
                    f"reservation {r.id} of budget {self._name!r} was already committed or "
                    "released; settle each reservation exactly once"
                )
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
    """Every budget's status, by name (dead processes' reservations counted as spent first)."""
    with borrowed_store(store) as resolved, resolved.transaction() as conn:
        _reclaim_dead(conn)
        return _statuses(conn)


def reset_budget(store: Store | str | Path | None, name: str) -> BudgetStatus:
    """Zero a budget's spent counters (caps and reservations stay); return its status before.

    Raises
    ------
    ConfigurationError
        No budget of that name exists in the store.
    """
    with borrowed_store(store) as resolved, resolved.transaction() as conn:
        _reclaim_dead(conn)
        found = _statuses(conn, name)
        if not found:
            known = ", ".join(repr(s.name) for s in _statuses(conn)) or "none"
            raise ConfigurationError(
                f"no budget named {name!r} in {resolved.path} (known: {known}); check the name"
            )
        zero = "UPDATE budgets SET spent_queries = 0, spent_prompt_tokens = 0, updated = ?"
        conn.execute(f"{zero} WHERE name = ?", (time.time(), name))
    return found[0]
