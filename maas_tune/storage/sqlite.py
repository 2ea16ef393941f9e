"""The embedded backend: one SQLite file in WAL mode, locked whole by each write transaction."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from .._constants import DEFAULT_DB_NAME, ENV_CACHE_DIR, SQLITE_BUSY_TIMEOUT_S
from ..errors import CacheCorruptionError, CacheError
from .base import CONNS_LOCK, Connection, Store
from .url import sqlite_path

__all__ = ["SQLiteStore", "default_db_path", "translate_sqlite_errors"]

_LOG = logging.getLogger(__name__)

#: Name under which platformdirs files the user cache directory.
APP_NAME = "maas-tune"
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
#: Pauses between tries of the switch to WAL while another opener switches the file:
#: doubled from the first to the last, until the busy timeout has passed.
_WAL_RETRY_FIRST_S, _WAL_RETRY_MAX_S = 0.001, 0.1
#: How long to sleep between tries (tests inject their own).
_pause = time.sleep


class _Connection(sqlite3.Connection):
    """A connection that remembers the process that opened it (and can be weakly referenced).

    A statement that fails records how long it ran in the error's ``waited_s``, so that a
    "database is locked" error can say how long it waited for the lock.
    """

    owner_pid: int

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """Run one statement (see ``sqlite3.Connection.execute``)."""
        return _timed(super().execute, sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:
        """Run one statement per row (see ``sqlite3.Connection.executemany``)."""
        return _timed(super().executemany, sql, seq_of_parameters)


def _timed(run: Callable[[str, Any], sqlite3.Cursor], sql: str, parameters: Any) -> sqlite3.Cursor:
    """``run(sql, parameters)``; an error it raises notes how long it waited (:func:`_note_wait`)."""
    start = time.monotonic()
    try:
        return run(sql, parameters)
    except sqlite3.Error as exc:
        _note_wait(exc, start)
        raise


def _note_wait(exc: sqlite3.Error, start: float) -> None:
    """Record on ``exc`` the seconds since ``start``, unless it already says how long it waited."""
    if not hasattr(exc, "waited_s"):
        exc.waited_s = time.monotonic() - start  # type: ignore[attr-defined]


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11 only
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc).lower()


# SQLite forbids using a connection in a child after fork, and closing it there can
# disturb the parent's locks. Every live connection is pinned across fork so that the
# child's thread-state cleanup never closes one; the child opens its own instead.
# The lock is held across fork so that no other thread holds it in the child.
_LIVE: weakref.WeakSet[_Connection] = weakref.WeakSet()
_LOCK = CONNS_LOCK
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


def _switch_to_wal(conn: _Connection) -> str:
    """Run ``PRAGMA journal_mode = WAL`` until it is done or the busy timeout has passed.

    SQLite switches a file by reading its header, then upgrading that read to a write.
    When another connection holds the write lock (another opener switching the same
    file, say), the upgrade fails with SQLITE_BUSY at once: the busy handler is not
    called, since waiting while holding a read lock could deadlock. So the switch is
    tried again after a pause; once the other opener is done, the file is already in
    WAL mode and the next try has nothing to write.

    Returns
    -------
    str
        The journal mode now in force (``"wal"`` unless the file system cannot share memory).
    """
    start, pause = time.monotonic(), _WAL_RETRY_FIRST_S
    while True:
        left = SQLITE_BUSY_TIMEOUT_S - (time.monotonic() - start)
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(int(left * 1000), 0)}")
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.Error as exc:
            waited = time.monotonic() - start
            if not _is_busy(exc) or waited >= SQLITE_BUSY_TIMEOUT_S:
                exc.waited_s = waited  # type: ignore[attr-defined]
                raise
            _LOG.debug("switching to WAL: locked after %.3f s, trying again", waited)
            _pause(min(pause, SQLITE_BUSY_TIMEOUT_S - waited))
            pause = min(2 * pause, _WAL_RETRY_MAX_S)


def default_db_path() -> Path:
    """``$MAAS_TUNE_CACHE_DIR/maas-tune.sqlite`` if set, else that file in the user cache dir."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        return Path(env).expanduser() / DEFAULT_DB_NAME
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME)) / DEFAULT_DB_NAME


_ELSEWHERE = "or pass another --cache path"
# (primary result codes, words of the message, error class, what is wrong, what to do);
# ``{waited}`` and ``{timeout}`` are filled in when the error is raised.
_TRANSLATIONS: tuple[tuple[tuple[int, ...], tuple[str, ...], type[CacheError], str, str], ...] = (
    ((_SQLITE_NOTADB, _SQLITE_CORRUPT), ("not a database", "malformed"), CacheCorruptionError,
     "is not a SQLite database or is damaged",
     (f"if it is a maas-tune cache, delete it (answers are fetched again, budget counters are "
      f"lost), {_ELSEWHERE}")),
    ((_SQLITE_BUSY, _SQLITE_LOCKED), ("locked",), CacheError,
     ("is locked: another connection held it, and this one gave up after waiting "
      "{waited:.3f} s of the {timeout:g} s busy timeout"),
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
        Any other SQLite failure (locked, read-only, disk full, ...). A lock error says
        how long the failed statement waited (the whole block's time if it was not
        timed): the busy timeout, unless SQLite refused without waiting.
    """
    start = time.monotonic()
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11 only
        code, text = (None if code is None else code & 0xFF), str(exc).lower()
        waited = getattr(exc, "waited_s", time.monotonic() - start)
        for codes, words, error, problem, advice in _TRANSLATIONS:
            if code in codes or any(word in text for word in words):
                problem = problem.format(waited=waited, timeout=SQLITE_BUSY_TIMEOUT_S)
                raise error(f"{path} {problem} (sqlite: {exc}); {advice}") from exc
        raise CacheError(f"SQLite failed on {path} ({exc}); if it persists, {_ELSEWHERE}") from exc


class SQLiteStore(Store):
    """One SQLite file in WAL mode, with a connection per thread (and per process after fork).

    Parameters
    ----------
    target : str, PathLike or None
        The database file, or a ``sqlite:///abs/path`` URL; ``None`` means
        :func:`default_db_path`. Missing folders are created; a new file gets mode 0600
        (an existing one keeps its mode, which may have been widened on purpose).

    Raises
    ------
    CacheCorruptionError
        The file is not SQLite, or not a maas-tune store.
    CacheError
        The file cannot be opened or created, or its schema is newer than this version's.

    Notes
    -----
    Share one store between a cache and a budget on the same file: two store objects
    are two connections in a thread, and nesting their transactions would make one wait
    for the other.
    """

    dialect = "sqlite"
    _BEGIN = "BEGIN IMMEDIATE"

    def __init__(self, target: str | os.PathLike[str] | None = None) -> None:
        super().__init__(target)
        path = sqlite_path(target) if target is not None else default_db_path()
        # Absolute, so that threads opening connections later are immune to a chdir.
        self._path = Path(os.path.abspath(path))
        self._create_file()
        self._open_schema()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def url(self) -> str:
        """``sqlite:///`` and the absolute path."""
        return "sqlite:///" + self._path.as_posix().lstrip("/")

    @property
    def location(self) -> str:
        """The database file's path."""
        return str(self._path)

    @property
    def identity(self) -> str:
        """The file's resolved path: two stores on one file through a symlink are one."""
        return str(self._path.resolve())

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
            try:
                mode = _switch_to_wal(conn)
                conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
                conn.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
            except BaseException:
                conn.close()
                raise
        if mode.lower() != "wal":
            conn.close()
            raise CacheError(
                f"{self._path} cannot use write-ahead logging (journal mode stays {mode!r}), "
                "which safe concurrent use needs; put the cache on a local disk with --cache"
            )
        with _LOCK:
            _LIVE.add(conn)
        return conn

    def _errors(self) -> AbstractContextManager[None]:
        return translate_sqlite_errors(self._path)

    def table_names(self, conn: Connection) -> set[str]:
        """Every table of the file."""
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}

    def size_bytes(self) -> int:
        """Size of the database file and its write-ahead log."""
        files = (self._path, Path(f"{self._path}-wal"))
        return sum(os.path.getsize(p) for p in files if os.path.exists(p))
