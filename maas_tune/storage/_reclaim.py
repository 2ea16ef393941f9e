"""Reservations whose holder is gone are counted as spent: the ledger never undercounts."""

from __future__ import annotations

import logging
import time

from .._constants import RECLAIMED_KEEP_S
from ._liveness import hostname, presumed_dead
from .base import Store

__all__ = ["ADD_SPENT_SQL", "reclaim_dead"]

_LOG = logging.getLogger(__name__)

#: Add to a budget's spent counters: (queries, prompt tokens, now, budget name).
ADD_SPENT_SQL = (
    "UPDATE budgets SET spent_queries = spent_queries + ?, "
    "spent_prompt_tokens = spent_prompt_tokens + ?, updated = ? WHERE name = ?"
)


def reclaim_dead(store: Store) -> int:
    """Count the reservations of dead holders as spent; return how many.

    A holder is dead when its lease expired, or when it ran on this host and has exited.
    It may have sent its request and been billed before it died, so the units are
    spent, not released: the ledger may overcount, never undercount. An expired holder
    may still be alive (a very slow request): its reservation stays, marked reclaimed,
    so that its own commit or release later corrects the counters.
    """
    now = time.time()
    with store.read() as conn:
        rows = conn.execute(
            "SELECT id, budget, queries, prompt_tokens, pid, hostname, expires FROM reservations "
            "WHERE reclaimed = 0 AND (hostname = ? OR expires < ?) ORDER BY budget, id",
            (hostname(), now),
        ).fetchall()
    dead = [row for row in rows if presumed_dead(row[5], row[4], row[6], now)]
    if not dead:
        return 0
    reclaimed = 0
    with store.transaction() as conn:
        for rid, budget, queries, tokens, pid, host, expires in dead:
            expired = expires is not None and expires < now
            # Conditional, so that two workers reclaiming at once count it once.
            mark = (
                "UPDATE reservations SET reclaimed = 1 WHERE id = ? AND reclaimed = 0"
                if expired
                else "DELETE FROM reservations WHERE id = ? AND reclaimed = 0"
            )
            if conn.execute(mark, (rid,)).rowcount:
                conn.execute(ADD_SPENT_SQL, (queries, tokens, now, budget))
                why = "lease expired" if expired else f"process {pid} on {host} died"
                _LOG.warning("budget %r: %s holding %d queries: spent", budget, why, queries)
                reclaimed += 1
        # Reclaimed long ago: its holder is not coming back to settle it.
        conn.execute(
            "DELETE FROM reservations WHERE reclaimed = 1 AND expires < ?",
            (now - RECLAIMED_KEEP_S,),
        )
    return reclaimed
