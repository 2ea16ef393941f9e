"""The storage seam: one database shared by the answer cache, the budget ledger and the claims.

A :class:`Store` hands out one connection per thread (and per process after fork) and
runs write transactions on it. The cache, budget and claim modules write portable SQL
with ``?`` placeholders; a backend runs it as its engine needs (PostgreSQL's adapter
turns ``?`` into ``%s``). Dialect differences that SQL cannot hide are attributes or
methods here (:attr:`Store.for_update`, :meth:`Store.size_bytes`).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..errors import ConfigurationError
from .url import backend_of

__all__ = ["Connection", "Cursor", "Store", "StoreHolder", "borrowed_store", "coerce_store"]

_LOG = logging.getLogger(__name__)

#: Guards every store's set of connections. SQLite's fork hooks hold it across fork, so
#: that no other thread holds it in the child.
CONNS_LOCK = threading.Lock()


class Cursor(Protocol):
    """What a statement returns: rows and the count of rows it changed."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the store's users call (``sqlite3.Connection`` fits)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any: ...


class Store:
    """A maas-tune database: SQLite file or PostgreSQL server, chosen by ``target``.

    ``Store(target)`` opens the backend ``target`` names, as ``pathlib.Path()`` returns
    a ``PosixPath``: a path, ``None`` (the default file) or ``sqlite:///abs/path`` gives a
    :class:`~maas_tune.storage.sqlite.SQLiteStore`, ``postgresql://user@host:port/db`` a
    :class:`~maas_tune.storage.postgres.PostgresStore`. Opening creates the schema, or
    upgrades an older one in place (see :mod:`maas_tune.storage.migrations`).

    Parameters
    ----------
    target : str, PathLike or None
        Where the data lives.

    Raises
    ------
    CacheError
        The database cannot be opened, or holds a newer schema than this maas-tune knows.
    CacheCorruptionError
        The database is not a maas-tune store, or is damaged.

    Notes
    -----
    Share one ``Store`` between a cache and a budget: the client then commits answers
    and spend in one transaction. A store pickles as its URL, so a worker process
    (multiprocessing, Ray) reopens the same database with its own connections.
    """

    #: ``"sqlite"`` or ``"postgresql"``: which migration steps apply.
    dialect: ClassVar[str]
    #: Appended to a ``SELECT`` to lock the rows read until the transaction ends
    #: (empty where the transaction already holds the whole database's write lock).
    for_update: ClassVar[str] = ""
    #: Statement that opens an outermost write transaction.
    _BEGIN: ClassVar[str] = "BEGIN"

    def __new__(cls, target: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any):
        backend = _backend_class(target) if cls is Store else cls
        return super().__new__(backend)

    def __init__(self, target: str | os.PathLike[str] | None = None) -> None:
        # A backend's __init__ reads ``target``; here only the per-thread connections.
        self._local = threading.local()
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- what each backend provides ---------------------------------------------------
    # Not abstract methods: ``Store(target)`` must type-check as the factory it is.
    @property
    def url(self) -> str:
        """A URL that opens this database again (it may hold a password: never log it)."""
        raise NotImplementedError

    @property
    def location(self) -> str:
        """Where the data lives, for messages: a file path, or the URL without password."""
        raise NotImplementedError

    @property
    def path(self) -> Path | None:
        """The database file, or None for a database server."""
        return None

    @property
    def identity(self) -> str:
        """Equal for two stores on the same database (and only then)."""
        return self.location

    def _connect(self) -> Any:
        """Open a connection with an ``owner_pid`` attribute, in autocommit mode."""
        raise NotImplementedError

    def _errors(self) -> AbstractContextManager[None]:
        """A block that turns the driver's exceptions into maas-tune errors."""
        raise NotImplementedError

    def size_bytes(self) -> int:
        """Bytes the database takes on disk."""
        raise NotImplementedError

    def table_names(self, conn: Connection) -> set[str]:
        """Tables of the database (of the current schema, on a server)."""
        raise NotImplementedError

    def lock_schema(self, conn: Connection) -> None:
        """Serialise schema changes across processes for the rest of the transaction."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (self.url,))

    def __enter__(self) -> Store:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_schema(self) -> None:
        from .migrations import ensure_schema

        ensure_schema(self)

    # -- connections and transactions (shared by the backends) ---------------------------
    def connection(self) -> Any:
        """This thread's connection, opened on first use (and again after fork or loss)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if (
            conn is not None
            and conn.owner_pid == os.getpid()
            and not getattr(conn, "broken", False)
        ):
            return conn
        local.conn = conn = self._connect()
        local.depth = 0
        with CONNS_LOCK:
            self._conns.add(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield this thread's connection inside one write transaction.

        Commits on success, rolls back on error. A nested ``transaction()`` in the same
        thread joins as a savepoint: an error inside undoes only the inner block;
        nothing is durable before the outermost commit. Driver errors in the block
        become :class:`~maas_tune.errors.CacheError`. On SQLite the outermost level
        takes the database's write lock at once (``BEGIN IMMEDIATE``); on PostgreSQL
        rows are locked as they are written, or read with :attr:`for_update`.
        """
        conn = self.connection()
        depth = self._local.depth
        name = f"maas_tune_{depth}"
        begin, commit = (
            (self._BEGIN, "COMMIT")
            if depth == 0
            else (f"SAVEPOINT {name}", f"RELEASE SAVEPOINT {name}")
        )
        with self._errors():
            conn.execute(begin)
            self._local.depth = depth + 1
            try:
                yield conn
                self._local.depth = depth
                conn.execute(commit)
            except BaseException:
                self._local.depth = depth
                self._undo(conn, depth, name)
                raise

    def _undo(self, conn: Any, depth: int, name: str) -> None:
        """Roll back, keeping the original error if the rollback fails too."""
        try:
            with self._errors():
                if depth == 0:
                    if conn.in_transaction:  # the engine may already have rolled back
                        conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    conn.execute(f"RELEASE SAVEPOINT {name}")
        except Exception as exc:  # noqa: BLE001 - the error being handled matters more
            _LOG.warning("rollback on %s failed: %s", self.location, exc)

    @contextmanager
    def joining(self, conn: Any | None) -> Iterator[Any]:
        """Use the caller's open transaction on ``conn``, or a new :meth:`transaction`.

        Raises
        ------
        ConfigurationError
            ``conn`` is given but no transaction is open on it.
        """
        if conn is None:
            with self.transaction() as own:
                yield own
            return
        if not conn.in_transaction:
            raise ConfigurationError(
                "conn has no open transaction, so the writes would not be atomic; pass the "
                "connection yielded by `with store.transaction() as conn:`"
            )
        with self._errors():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Any]:
        """This thread's connection for reads, each statement its own consistent snapshot.

        Inside a :meth:`transaction` of the same thread the reads see its writes.
        Driver errors become :class:`~maas_tune.errors.CacheError`.
        """
        conn = self.connection()
        with self._errors():
            yield conn

    def close(self) -> None:
        """Close every connection this process opened; the store reopens lazily if used again."""
        with CONNS_LOCK:
            conns = [c for c in self._conns if c.owner_pid == os.getpid()]
            self._conns = weakref.WeakSet()
            self._local = threading.local()
        for conn in conns:
            conn.close()


def _backend_class(target: str | os.PathLike[str] | None) -> type[Store]:
    if backend_of(target) == "postgresql":
        from .postgres import PostgresStore

        return PostgresStore
    from .sqlite import SQLiteStore

    return SQLiteStore


def coerce_store(store: Store | str | os.PathLike[str] | None) -> tuple[Store, bool]:
    """Return ``(store, owned)``: the given :class:`Store`, or a new one opened on a path or URL."""
    if isinstance(store, Store):
        return store, False
    return Store(store), True


class StoreHolder:
    """A store given to an object (borrowed) or opened by it (owned, closed by :meth:`close`):
    what :class:`~maas_tune.storage.cache.ScoreCache` and
    :class:`~maas_tune.storage.budget.QueryBudget` share."""

    _store: Store
    _owned: bool

    @property
    def store(self) -> Store:
        """The underlying store."""
        return self._store

    def close(self) -> None:
        """Close the store if this object opened it (a store it was given stays open)."""
        if self._owned:
            self._store.close()


@contextmanager
def borrowed_store(store: Store | str | os.PathLike[str] | None) -> Iterator[Store]:
    """A :class:`Store` for the block, closed afterwards only if it was opened here."""
    resolved, owned = coerce_store(store)
    try:
        yield resolved
    finally:
        if owned:
            resolved.close()
