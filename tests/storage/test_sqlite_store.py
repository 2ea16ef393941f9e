"""SQLite-only store behaviour: the file, its pragmas, schema checks, error translation,
opening a file another connection has locked, closing.

Transactions, threads and fork are tested on both backends in ``test_storage.py``.
"""

from __future__ import annotations

import re
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from maas_tune._constants import (
    DB_SCHEMA_VERSION,
    DEFAULT_DB_NAME,
    ENV_CACHE_DIR,
    SQLITE_BUSY_TIMEOUT_S,
)
from maas_tune.errors import CacheCorruptionError, CacheError
from maas_tune.storage import Store, borrowed_store
from maas_tune.storage import sqlite as sqlite_store
from maas_tune.storage.sqlite import default_db_path, translate_sqlite_errors

from .._concurrency import THREAD_TIMEOUT_S


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "store.sqlite") as opened:
        yield opened


def _count(store: Store) -> int:
    with store.read() as conn:
        return conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 't%'").fetchone()[0]


def _put(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (key,))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_new_file_is_private_and_parents_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.sqlite"
    with Store(path) as store:
        with store.transaction() as conn:
            _put(conn, "t1")
        assert store.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(f"{path}-wal").stat().st_mode) == 0o600


def test_pragmas(store: Store) -> None:
    conn = store.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == int(SQLITE_BUSY_TIMEOUT_S * 1000)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert meta == {"application": "maas-tune", "schema_version": str(DB_SCHEMA_VERSION)}


def test_default_path_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cachedir"))
    assert default_db_path() == tmp_path / "cachedir" / DEFAULT_DB_NAME
    with Store() as store:
        assert store.path == tmp_path / "cachedir" / DEFAULT_DB_NAME
        assert store.path.exists()
    monkeypatch.delenv(ENV_CACHE_DIR)
    assert default_db_path().name == DEFAULT_DB_NAME
    assert "maas-tune" in str(default_db_path().parent)


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as first, first.transaction() as conn:
        _put(conn, "t1")
    with Store(path) as second:
        assert _count(second) == 1


def test_not_a_database_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is certainly not sqlite\n" * 100)
    with pytest.raises(CacheCorruptionError, match=r"junk\.sqlite") as info:
        Store(path)
    assert "another --cache path" in str(info.value)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    with pytest.raises(CacheCorruptionError, match="not a maas-tune store"):
        Store(path)


def test_newer_schema_asks_for_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with Store(path) as store, store.transaction() as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(DB_SCHEMA_VERSION + 1),)
        )
    with pytest.raises(CacheError, match="upgrade maas-tune") as info:
        Store(path)
    assert not isinstance(info.value, CacheCorruptionError)


def test_unwritable_location_is_cache_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="writable"):
        Store(blocker / "store.sqlite")


#: A lock error raised at once says that it waited (almost) nothing.
_GAVE_UP_AT_ONCE = (
    rf"another connection held it, and this one gave up after waiting 0\.0\d\d s of the "
    rf"{SQLITE_BUSY_TIMEOUT_S:g} s busy timeout"
)


@pytest.mark.parametrize(
    ("message", "expected", "fragment"),
    [
        ("database is locked", CacheError, _GAVE_UP_AT_ONCE),
        ("file is not a database", CacheCorruptionError, "delete it"),
        ("attempt to write a readonly database", CacheError, "read-only"),
        ("something odd", CacheError, "SQLite failed"),
    ],
    ids=["locked", "not-a-database", "read-only", "other"],
)
def test_translate_sqlite_errors(
    tmp_path: Path, message: str, expected: type, fragment: str
) -> None:
    with (
        pytest.raises(expected, match=fragment) as info,
        translate_sqlite_errors(tmp_path / "x.sqlite"),
    ):
        raise sqlite3.OperationalError(message)
    assert type(info.value) is expected
    assert "x.sqlite" in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


def test_close_then_reuse(store: Store) -> None:
    first = store.connection()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")
    assert store.connection() is not first
    assert _count(store) == 0


def test_borrowed_store_closes_only_what_it_opened(store: Store, tmp_path: Path) -> None:
    with borrowed_store(store) as same:
        assert same is store
    assert store.connection().execute("SELECT 1").fetchone() == (1,)
    with borrowed_store(tmp_path / "other.sqlite") as opened:
        conn = opened.connection()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection holding the file's write lock, as an opener switching it to WAL does."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_opening_waits_for_another_opener_switching_the_file_to_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite refuses the switch at once here, without calling the busy handler: the store
    # must try again itself until the other connection is done.
    path = tmp_path / "store.sqlite"
    holder = _hold_write_lock(path)
    refused, pauses = threading.Event(), []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        refused.set()
        time.sleep(seconds)

    monkeypatch.setattr(sqlite_store, "_pause", pause, raising=False)
    outcome: list[object] = []

    def open_it() -> None:
        try:
            with Store(path) as store:
                outcome.append(store.connection().execute("PRAGMA journal_mode").fetchone()[0])
        except Exception as exc:  # noqa: BLE001 - asserted on below
            outcome.append(exc)
        finally:
            refused.set()

    opener = threading.Thread(target=open_it)
    opener.start()
    refused.wait(THREAD_TIMEOUT_S)  # the opener was refused once (or gave up)
    holder.execute("COMMIT")
    opener.join(THREAD_TIMEOUT_S)
    holder.close()
    assert outcome == ["wal"]
    assert pauses, "the opener never met the lock"


def _open_new(path: Path) -> None:
    Store(path)


def _write_to_existing(path: Path) -> None:
    with Store(path) as store, store.transaction() as conn:
        _put(conn, "t1")


@pytest.mark.parametrize("blocked", [_open_new, _write_to_existing], ids=["open", "write"])
def test_lock_error_says_how_long_it_waited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: Callable[[Path], None]
) -> None:
    monkeypatch.setattr(sqlite_store, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "store.sqlite"
    if blocked is _write_to_existing:
        Store(path).close()
    holder = _hold_write_lock(path)
    try:
        with pytest.raises(CacheError, match="is locked") as info:
            blocked(path)
    finally:
        holder.close()
    message = str(info.value)
    waited = re.search(r"gave up after waiting ([0-9.]+) s of the 0\.2 s busy timeout", message)
    assert waited is not None, message
    assert float(waited.group(1)) >= 0.2, message  # it waited the timeout out, not 0 s
