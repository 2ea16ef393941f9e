"""The server backend: a PostgreSQL database (psycopg 3) shared by workers on many hosts."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from .._constants import POSTGRES_CONNECT_TIMEOUT_S, POSTGRES_LOCK_TIMEOUT_S
from ..errors import CacheCorruptionError, CacheError, ConfigurationError, MissingDependencyError
from .base import Connection, Store
from .url import redact

__all__ = ["PostgresStore", "translate_postgres_errors"]

#: Key of the advisory lock that serialises schema creation and upgrades ("maas" in ASCII).
SCHEMA_LOCK_KEY = 0x6D616173
#: ``application_name`` the server shows in ``pg_stat_activity``.
APPLICATION_NAME = "maas-tune"

# (SQLSTATEs, words of a connection failure's message (it has no SQLSTATE), error class,
#  what is wrong, what to do)
_TRANSLATIONS: tuple[tuple[frozenset[str], tuple[str, ...], type[CacheError], str, str], ...] = (
    (frozenset({"28P01", "28000"}), ("authentication failed", "no pg_hba.conf entry"), CacheError,
     "refused the login", "check the user and password in the URL (or PGPASSWORD, ~/.pgpass)"),
    (frozenset({"3D000"}), ("does not exist",), CacheError, "has no such database",
     "create it (e.g. `createdb NAME`) or fix the database name in the URL"),
    (frozenset({"53300"}), ("too many clients", "remaining connection slots"), CacheError,
     "has no connection slots left",
     "run fewer worker threads or processes, or raise the server's max_connections"),
    (frozenset({"40P01", "40001", "55P03"}), (), CacheError,
     f"kept a row locked by another worker (deadlock or past {POSTGRES_LOCK_TIMEOUT_S:g} s)",
     "retry; if it persists, look for a stuck worker in pg_stat_activity"),
    (frozenset({"53100"}), (), CacheError, "is on a full disk", "free space on the server"),
    (frozenset({"42501"}), (), CacheError, "denies this user the rights it needs",
     "grant it CREATE and USAGE on the schema, or connect as the tables' owner"),
    (frozenset({"XX001", "XX002"}), (), CacheCorruptionError, "reports damaged data",
     "repair the database (REINDEX, restore a backup) or point the URL at another one"),
)  # fmt: skip


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise MissingDependencyError("psycopg", "postgres") from exc
    return psycopg


@functools.lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    """The statement with psycopg's placeholders: ``?`` becomes ``%s``, a literal ``%`` doubles.

    maas-tune's statements hold no ``?`` or ``%`` inside string literals.
    """
    return sql.replace("%", "%%").replace("?", "%s")


class _Connection:
    """A psycopg connection in autocommit mode that runs maas-tune's ``?`` SQL."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.owner_pid = os.getpid()

    @property
    def in_transaction(self) -> bool:
        """Whether a ``BEGIN`` is open (also when a failed statement aborted it)."""
        return self.raw.info.transaction_status != _psycopg().pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        """Whether the connection was lost or closed: the store opens another one."""
        return bool(self.raw.closed or self.raw.broken)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self.raw.execute(_dialect(sql), tuple(parameters) or None)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        cursor = self.raw.cursor()
        cursor.executemany(_dialect(sql), list(seq_of_parameters))
        return cursor

    def close(self) -> None:
        self.raw.close()


@contextmanager
def translate_postgres_errors(location: str, password: str | None = None) -> Iterator[None]:
    """Turn psycopg exceptions raised in the block into maas-tune errors naming ``location``.

    Parameters
    ----------
    location : str
        The server and database, without password (:attr:`PostgresStore.location`).
    password : str or None
        Scrubbed from the driver's message, should it echo it.

    Raises
    ------
    CacheCorruptionError
        The server reports damaged data.
    CacheError
        Any other failure: unreachable server, login refused, missing database, lock
        timeout or deadlock, full disk, ...
    """
    psycopg = _psycopg()
    try:
        yield
    except psycopg.Error as exc:
        text = " ".join(str(exc).split())
        if password:
            text = text.replace(password, "***")
        state = getattr(exc, "sqlstate", None)
        connecting = isinstance(exc, psycopg.OperationalError) and state is None
        for states, words, error, problem, advice in _TRANSLATIONS:
            if state in states or (connecting and any(w in text for w in words)):
                raise error(f"PostgreSQL at {location} {problem} ({text}); {advice}") from exc
        if connecting:
            raise CacheError(
                f"cannot reach PostgreSQL at {location} ({text}); check that the server runs "
                "and that the URL's host, port and database are right"
            ) from exc
        raise CacheError(
            f"PostgreSQL failed on {location} ({text}); if it persists, check the server's log"
        ) from exc


class PostgresStore(Store):
    """A PostgreSQL database, with a connection per thread (and per process after fork).

    Parameters
    ----------
    target : str
        A libpq URL, ``postgresql://user[:password]@host[:port]/database[?param=value]``.
        The password may instead come from ``PGPASSWORD`` or ``~/.pgpass``.

    Raises
    ------
    MissingDependencyError
        psycopg is not installed (``pip install 'maas-tune[postgres]'``).
    CacheError
        The server cannot be reached, refuses the login, lacks the database, or holds a
        newer schema than this maas-tune knows.
    CacheCorruptionError
        The database holds maas-tune's tables without its marker.

    Notes
    -----
    Each thread of each worker holds one server connection while the store is open:
    size ``max_connections`` for workers × threads. Transactions run at READ COMMITTED;
    the budget locks its row with ``SELECT ... FOR UPDATE`` before it checks the cap,
    so reservations are atomic across workers. A child process never uses (or closes)
    its parent's connections: psycopg leaves them alone after fork, and the store opens
    new ones.
    """

    dialect = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        psycopg = _psycopg()
        self._url = target
        try:
            self._params = psycopg.conninfo.conninfo_to_dict(target)
        except psycopg.Error as exc:
            problem = " ".join(str(exc).split())
            raise ConfigurationError(
                f"{redact(target)!r} is not a valid PostgreSQL URL ({problem}); write "
                "postgresql://user[:password]@host[:port]/database[?param=value]"
            ) from exc
        host = self._params.get("host") or "localhost"
        port = self._params.get("port") or "5432"
        user = self._params.get("user")
        self._where = f"{host}:{port}/{self._params.get('dbname') or user or ''}"
        self._location = f"postgresql://{user + '@' if user else ''}{self._where}"
        self._open_schema()

    @property
    def url(self) -> str:
        """The URL given (with its password, if any: never log it)."""
        return self._url

    @property
    def location(self) -> str:
        """``postgresql://user@host:port/database``, without password."""
        return self._location

    @property
    def identity(self) -> str:
        """Server, port, database and session options (not the user)."""
        return f"{self._where} {self._params.get('options', '')}".strip()

    def _connect(self) -> _Connection:
        psycopg = _psycopg()
        options = f"-c lock_timeout={int(POSTGRES_LOCK_TIMEOUT_S * 1000)}"
        given = self._params.get("options")
        with self._errors():
            raw = psycopg.connect(
                self._url,
                autocommit=True,  # we issue BEGIN / COMMIT ourselves, as on SQLite
                connect_timeout=self._params.get("connect_timeout", POSTGRES_CONNECT_TIMEOUT_S),
                application_name=self._params.get("application_name", APPLICATION_NAME),
                options=f"{given} {options}" if given else options,
            )
        return _Connection(raw)

    def _errors(self) -> AbstractContextManager[None]:
        return translate_postgres_errors(self._location, self._params.get("password"))

    def table_names(self, conn: Connection) -> set[str]:
        """Tables of the connection's current schema (other schemas are other apps')."""
        sql = (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {row[0] for row in conn.execute(sql)}

    def lock_schema(self, conn: Connection) -> None:
        """Take a transaction-scoped advisory lock: one worker creates or upgrades at a time."""
        conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))

    def size_bytes(self) -> int:
        """Size of the database on the server (all of it, with other apps' tables if any)."""
        with self.read() as conn:
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
