"""Claims on prompts in flight: while one worker sends a prompt, the others wait for its answer.

The cache makes each prompt paid for once *after* its answer landed; a claim covers the
time before. A worker claims the uncached keys it is about to send; a key claimed by
another live worker is not sent but waited for. A claim is a lease: it holds until the
answers commit (which drops it in the same transaction), the send fails (dropped), or
its time runs out (the holder is presumed dead and any worker may take the key over).
The holder of a claim made on this host that has exited is dead at once.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence

from .._constants import CACHE_READ_CHUNK, CLAIM_LEASE_S
from ..errors import ConfigurationError
from ._liveness import hostname, presumed_dead
from .base import Connection, Store

__all__ = ["Claims"]

_LOG = logging.getLogger(__name__)

# Insert a claim, or take over one that expired, was ours, or whose holder died.
_UPSERT = (
    "INSERT INTO claims (key, owner, hostname, pid, expires) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, hostname = excluded.hostname, "
    "pid = excluded.pid, expires = excluded.expires "
    "WHERE claims.expires < ? OR claims.owner = excluded.owner OR claims.owner = ?"
)


def _chunks(keys: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(keys), CACHE_READ_CHUNK):
        yield keys[start : start + CACHE_READ_CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Claims:
    """One worker's claims on cache keys, in a store shared with other workers.

    Parameters
    ----------
    store : Store
        The store of the cache the answers go to.
    lease_s : float, default 300
        How long a claim holds off other workers; longer than a request with retries.
    owner : str or None
        Who holds the claims; by default a new id naming this host and process.
        Two ``Claims`` objects are two owners, even in one thread.

    Raises
    ------
    ConfigurationError
        ``lease_s`` is not a positive number.
    """

    def __init__(self, store: Store, *, lease_s: float = CLAIM_LEASE_S, owner: str | None = None):
        if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or lease_s <= 0:
            raise ConfigurationError(
                f"lease_s must be a positive number of seconds, got {lease_s!r}"
            )
        self._store = store
        self._lease_s = float(lease_s)
        self.owner = owner or f"{hostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def __repr__(self) -> str:
        return f"Claims(owner={self.owner!r}, store={self._store.location!r})"

    def holders(self, keys: Sequence[str]) -> dict[str, tuple[str, str, int, float]]:
        """Current claims on ``keys``: key to ``(owner, hostname, pid, expires)``."""
        found: dict[str, tuple[str, str, int, float]] = {}
        unique = sorted(set(keys))
        with self._store.read() as conn:
            for chunk in _chunks(unique):
                sql = (
                    "SELECT key, owner, hostname, pid, expires FROM claims "
                    f"WHERE key IN ({_marks(len(chunk))})"
                )
                for key, *holder in conn.execute(sql, tuple(chunk)):
                    found[key] = tuple(holder)  # type: ignore[assignment]
        return found

    def acquire(self, keys: Sequence[str]) -> set[str]:
        """Claim every key no live worker holds; return the keys now held by this owner.

        Keys this owner already holds are renewed. Atomic across workers: of two
        workers claiming one key at once, exactly one gets it.
        """
        unique = sorted(set(keys))  # one lock order for every worker: no deadlock
        if not unique:
            return set()
        now = time.time()
        holders = self.holders(unique)
        dead = {
            key: owner
            for key, (owner, host, pid, expires) in holders.items()
            if owner != self.owner and presumed_dead(host, pid, expires, now)
        }
        # Keys live workers hold are not written at all: a waiting worker polls by reads.
        free = [k for k in unique if k not in holders or k in dead or holders[k][0] == self.owner]
        if not free:
            return set()
        me = (self.owner, hostname(), os.getpid(), now + self._lease_s)
        rows = [(key, *me, now, dead.get(key, "")) for key in free]
        with self._store.transaction() as conn:
            conn.executemany(_UPSERT, rows)
            held = self._held(conn, free)
        for key in held & dead.keys():
            _LOG.warning(
                "claim on %s… taken over from %s (lease expired or process gone)",
                key[:12],
                dead[key],
            )
        return held

    def _held(self, conn: Connection, keys: Sequence[str]) -> set[str]:
        held: set[str] = set()
        for chunk in _chunks(keys):
            sql = f"SELECT key FROM claims WHERE owner = ? AND key IN ({_marks(len(chunk))})"
            held.update(row[0] for row in conn.execute(sql, (self.owner, *chunk)))
        return held

    def release(self, keys: Sequence[str], *, conn: Connection | None = None) -> None:
        """Drop this owner's claims on ``keys`` (others' claims stay).

        Parameters
        ----------
        keys : sequence of str
        conn : Connection or None
            The connection of a caller's open ``store.transaction()``, to drop the
            claims atomically with the answers they were for.
        """
        unique = sorted(set(keys))
        if not unique:
            return
        with self._store.joining(conn) as c:
            for chunk in _chunks(unique):
                c.execute(
                    f"DELETE FROM claims WHERE owner = ? AND key IN ({_marks(len(chunk))})",
                    (self.owner, *chunk),
                )
