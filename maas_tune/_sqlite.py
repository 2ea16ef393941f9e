"""The SQLite file shared by the answer cache and the budget ledger: schema, connections, locks."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._constants import DB_SCHEMA_VERSION, DEFAULT_DB_NAME, ENV_CACHE_DIR, SQLITE_BUSY_TIMEOUT_S
from .errors import CacheCorruptionError, CacheError, ConfigurationError

__all__ = ["Store", "borrowed_store", "coerce_store", "default_db_path", "translate_sqlite_errors"]

_LOG = logging.getLogger(__name__)

#: Name under which platformdirs files the user cache directory.
APP_NAME = "maas-tune"
#: Value of ``meta.application``: tells our files from other SQLite databases.
APP_MARKER = "maas-tune"
#: Permissions of a newly created store: cached answers and budgets are the user's own.
DB_FILE_MODE = 0o600
#: Permissions of a newly created cache directory.
DB_DIR_MODE = 0o700
#: ``FULL`` fsyncs the WAL at every commit. ``NORMAL`` already keeps every committed
#: transaction through ``kill -9`` of the process, but may lose the last ones on a power
#: loss or OS crash, which would forget queries that were paid for; one fsync per
#: transaction is cheap next to the network round trip each budget commit stands for.
SQLITE_SYNCHRONOUS = "FULL"

# Primary SQLite result codes (the low byte of extended codes).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 5, 6, 8
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Small columns first, blobs last: SQLite reads a row's columns in order.
    """CREATE TABLE answers (
        key TEXT PRIMARY KEY, model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
        created REAL NOT NULL, n_logprobs INTEGER NOT NULL, n_hidden INTEGER,
        logprobs BLOB NOT NULL, hidden BLOB)""",
    "CREATE INDEX answers_model ON answers (model)",
    """CREATE TABLE budgets (
        name TEXT PRIMARY KEY, max_queries INTEGER, max_prompt_tokens INTEGER,
        spent_queries INTEGER NOT NULL DEFAULT 0, spent_prompt_tokens INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL, updated REAL NOT NULL)""",
    """CREATE TABLE reservations (
        id TEXT PRIMARY KEY, budget TEXT NOT NULL, queries INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL, pid INTEGER NOT NULL, hostname TEXT NOT NULL,
        created REAL NOT NULL)""",
    "CREATE INDEX reservations_budget ON reservations (budget)",
)


class _Connection(sqlite3.Connection):
    """A connection that remembers the process that opened it (and can be weakly referenced)."""

    owner_pid: int


# SQLite forbids using a connection in a child after fork, and closing it there can
# disturb the parent's locks. Every live connection is pinned across fork so that the
# child's thread-state cleanup never closes one; the child opens its own instead.
# The lock is held across fork so that no other thread holds it in the child.
_LIVE: weakref.WeakSet[_Connection] = weakref.WeakSet()
_LOCK = threading.Lock()
_PINNED_FOR_FORK: list[_Connection] = []
_INHERITED: list[_Connection] = []


def _pin_before_fork() -> None:
    _LOCK.acquire()
    _PINNED_FOR_FORK[:] = list(_LIVE)


def _unpin_in_parent() -> None:
    _PINNED_FOR_FORK.clear()
    _LOCK.release()


def _keep_in_child() -> None:
    _INHERITED.extend(_PINNED_FOR_FORK)
    _PINNED_FOR_FORK.clear()
    _LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_pin_before_fork, after_in_parent=_unpin_in_parent, after_in_child=_keep_in_child
    )


def default_db_path() -> Path:
    """``$MAAS_TUNE_CACHE_DIR/maas-tune.sqlite`` if set, else that file in the user cache dir."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        return Path(env).expanduser() / DEFAULT_DB_NAME
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME)) / DEFAULT_DB_NAME


_ELSEWHERE = "or pass another --cache path"
# (primary result codes, words of the message, error class, what is wrong, what to do)
_TRANSLATIONS: tuple[tuple[tuple[int, ...], tuple[str, ...], type[CacheError], str, str], ...] = (
    ((_SQLITE_NOTADB, _SQLITE_CORRUPT), ("not a database", "malformed"), CacheCorruptionError,
     "is not a SQLite database or is damaged",
     f"if it is a maas-tune cache, delete it (answers are fetched again, budget counters are "
     f"lost), {_ELSEWHERE}"),
    ((_SQLITE_BUSY, _SQLITE_LOCKED), ("locked",), CacheError,
     f"is locked: another process held it for more than {SQLITE_BUSY_TIMEOUT_S:g} s",
     f"wait for the other maas-tune run to finish, {_ELSEWHERE}"),
    ((_SQLITE_READONLY,), ("readonly",), CacheError, "is read-only",
     f"make it and its folder writable, {_ELSEWHERE}"),
    ((_SQLITE_FULL,), ("disk is full",), CacheError, "is on a full disk",
     f"free some space {_ELSEWHERE}"),
    ((_SQLITE_CANTOPEN,), ("unable to open",), CacheError, "cannot be opened",
     f"check that its folder exists and is writable, {_ELSEWHERE}"),
)  # fmt: skip


@contextmanager
def translate_sqlite_errors(path: str | Path) -> Iterator[None]:
    """Turn ``sqlite3`` exceptions raised in the block into maas-tune errors naming ``path``.

    Raises
    ------
    CacheCorruptionError
        The file is not a SQLite database or is damaged.
    CacheError
        Any other SQLite failure (locked past the busy timeout, read-only, disk full, ...).
    """
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11 only
        code, text = (None if code is None else code & 0xFF), str(exc).lower()
        for codes, words, error, problem, advice in _TRANSLATIONS:
            if code in codes or any(word in text for word in words):
                raise error(f"{path} {problem} (sqlite: {exc}); {advice}") from exc
        raise CacheError(f"SQLite failed on {path} ({exc}); if it persists, {_ELSEWHERE}") from exc


class Store:
    """One SQLite file in WAL mode, with a connection per thread (and per process after fork).

    Parameters
    ----------
    path : str, Path or None
        The database file; ``None`` means :func:`default_db_path`. Missing folders are
        created; a new file gets mode 0600 (an existing one keeps its mode, which may
        have been widened on purpose).

    Raises
    ------
    CacheCorruptionError
        The file is not SQLite, or not a maas-tune store.
    CacheError
        The file cannot be opened or created, or its schema is not this version's.

    Notes
    -----
    Share one ``Store`` between a cache and a budget on the same file: two ``Store``
    objects are two connections in a thread, and nesting their transactions would
    make one wait for the other.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        # Absolute, so that threads opening connections later are immune to a chdir.
        self._path = Path(
            os.path.abspath(Path(path).expanduser() if path is not None else default_db_path())
        )
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._create_file()
        self._init_schema()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_file(self) -> None:
        try:
            self._path.parent.mkdir(mode=DB_DIR_MODE, parents=True, exist_ok=True)
            # Created here rather than by SQLite so that it is never readable by others,
            # not even for an instant; SQLite gives the -wal and -shm files the same mode.
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_FILE_MODE)
        except FileExistsError:
            return
        except OSError as exc:
            raise CacheError(
                f"cannot create the store {self._path} ({exc}); pass a writable --cache path "
                f"or set {ENV_CACHE_DIR}"
            ) from exc
        os.close(fd)

    def _connect(self) -> _Connection:
        with translate_sqlite_errors(self._path):
            conn = sqlite3.connect(
                self._path,
                timeout=SQLITE_BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN / COMMIT ourselves
                check_same_thread=False,  # one thread per connection; close() may come from another
                factory=_Connection,
            )
            conn.owner_pid = os.getpid()
            conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
        if str(mode).lower() != "wal":
            conn.close()
            raise CacheError(
                f"{self._path} cannot use write-ahead logging (journal mode stays {mode!r}), "
                "which safe concurrent use needs; put the cache on a local disk with --cache"
            )
        with _LOCK:
            self._conns.add(conn)
            _LIVE.add(conn)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after fork)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and conn.owner_pid == os.getpid():
            return conn
        local.conn = conn = self._connect()
        local.depth = 0
        return conn

    def _init_schema(self) -> None:
        with self.read() as conn:
            if self._check_schema(conn):
                return
        with self.transaction() as conn:
            if not self._check_schema(conn):  # another process may have won the race
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("application", APP_MARKER), ("schema_version", str(DB_SCHEMA_VERSION))],
                )

    def _check_schema(self, conn: sqlite3.Connection) -> bool:
        """True if the file holds our current schema, False if it is empty; else raise."""
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            return False
        meta = (
            dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        )
        if meta.get("application") != APP_MARKER:
            raise CacheCorruptionError(
                f"{self._path} is a SQLite database but not a maas-tune store; pass another "
                "--cache path (do not delete it unless you know no other program uses it)"
            )
        version = meta.get("schema_version", "")
        if not version.isdigit():
            raise CacheCorruptionError(
                f"{self._path} has no valid schema version ({version!r}); it is damaged: "
                f"delete it (cached answers are fetched again) {_ELSEWHERE}"
            )
        if int(version) != DB_SCHEMA_VERSION:
            fix = "upgrade maas-tune" if int(version) > DB_SCHEMA_VERSION else "delete it"
            raise CacheError(
                f"{self._path} has schema {version}, this maas-tune reads only schema "
                f"{DB_SCHEMA_VERSION}; {fix} {_ELSEWHERE}"
            )
        return True

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection inside one write transaction.

        Commits on success, rolls back on error. The outermost level is ``BEGIN
        IMMEDIATE``: it takes the write lock at once (waiting up to the busy timeout),
        so read-check-write sequences are atomic across threads and processes. A nested
        ``transaction()`` in the same thread joins as a savepoint: an error inside undoes
        only the inner block; nothing is durable before the outermost commit.
        ``sqlite3`` errors in the block become :class:`~maas_tune.errors.CacheError`.
        """
        conn = self.connection()
        depth = self._local.depth
        name = f"maas_tune_{depth}"
        begin, commit = (
            ("BEGIN IMMEDIATE", "COMMIT")
            if depth == 0
            else (f"SAVEPOINT {name}", f"RELEASE {name}")
        )
        with translate_sqlite_errors(self._path):
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

    def _undo(self, conn: sqlite3.Connection, depth: int, name: str) -> None:
        """Roll back, keeping the original error if the rollback fails too."""
        try:
            if depth == 0:
                if conn.in_transaction:  # SQLite may already have rolled back by itself
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
        except sqlite3.Error as exc:
            _LOG.warning("rollback on %s failed: %s", self._path, exc)

    @contextmanager
    def joining(self, conn: sqlite3.Connection | None) -> Iterator[sqlite3.Connection]:
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
        with translate_sqlite_errors(self._path):
            yield conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection for reads, each statement its own consistent snapshot.

        Inside a :meth:`transaction` of the same thread the reads see its writes.
        ``sqlite3`` errors become :class:`~maas_tune.errors.CacheError`.
        """
        conn = self.connection()
        with translate_sqlite_errors(self._path):
            yield conn

    def close(self) -> None:
        """Close every connection this process opened; the store reopens lazily if used again."""
        with _LOCK:
            conns = [c for c in self._conns if c.owner_pid == os.getpid()]
            self._conns = weakref.WeakSet()
            self._local = threading.local()
        for conn in conns:
            conn.close()


def coerce_store(store: Store | str | Path | None) -> tuple[Store, bool]:
    """Return ``(store, owned)``: the given :class:`Store`, or a new one opened on a path."""
    if isinstance(store, Store):
        return store, False
    return Store(store), True


@contextmanager
def borrowed_store(store: Store | str | Path | None) -> Iterator[Store]:
    """A :class:`Store` for the block, closed afterwards only if it was opened here."""
    resolved, owned = coerce_store(store)
    try:
        yield resolved
    finally:
        if owned:
            resolved.close()
