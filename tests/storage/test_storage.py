"""The storage seam: URLs pick the backend; transactions, threads and fork behave alike on both.

Tests taking ``store`` run on SQLite and on PostgreSQL; ``test_sqlite_store.py`` keeps
what only a SQLite file has (modes, pragmas, damaged files).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading
from pathlib import Path

import pytest

from maas_tune.errors import CacheError, ConfigurationError, MissingDependencyError
from maas_tune.storage import Store, open_store
from maas_tune.storage.sqlite import SQLiteStore
from maas_tune.storage.url import backend_of, redact, sqlite_path

from .._servers import free_port


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as opened:
        yield opened


def _put(conn, key: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (key,))


def _keys(store: Store) -> set[str]:
    with store.read() as conn:
        return {row[0] for row in conn.execute("SELECT key FROM meta WHERE key LIKE 't%'")}


@pytest.mark.parametrize(
    ("target", "backend"),
    [
        ("/tmp/x.sqlite", "sqlite"),
        (Path("x.sqlite"), "sqlite"),
        (None, "sqlite"),
        ("sqlite:///tmp/x.sqlite", "sqlite"),
        ("postgresql://u@h:5432/db", "postgresql"),
        ("postgres://u@h/db", "postgresql"),
        ("C:\\cache\\x.sqlite", "sqlite"),
    ],
)
def test_backend_of(target: object, backend: str) -> None:
    assert backend_of(target) == backend  # type: ignore[arg-type]


def test_urls_and_redaction() -> None:
    assert sqlite_path("sqlite:///tmp/a/x.sqlite") == Path("/tmp/a/x.sqlite")
    assert sqlite_path("sqlite:////tmp/a/x.sqlite") == Path("/tmp/a/x.sqlite")
    redacted = redact("postgresql://u:hunter2@db.example:6432/x")
    assert redacted == "postgresql://u:***@db.example:6432/x"
    assert redact("postgresql://u@h/x") == "postgresql://u@h/x"
    with pytest.raises(ConfigurationError, match="no store backend") as info:
        backend_of("mysql://u:hunter2@h/x")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigurationError, match="names no local file"):
        sqlite_path("sqlite://host/x")


def test_store_opens_the_backend_its_target_names(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/a.sqlite".replace("////", "///")) as by_url:
        assert isinstance(by_url, SQLiteStore) and by_url.path == tmp_path / "a.sqlite"
        with open_store(tmp_path / "a.sqlite") as by_path:
            assert by_path.identity == by_url.identity and by_path.url == by_url.url


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"maas-tune\[postgres\]"):
        Store("postgresql://u@127.0.0.1:1/db")


def test_unreachable_server_is_named_without_its_password() -> None:
    pytest.importorskip("psycopg", reason="needs the 'postgres' extra")
    port = free_port()  # nothing listens there
    with pytest.raises(CacheError, match="cannot reach PostgreSQL") as info:
        Store(f"postgresql://maas:hunter2@127.0.0.1:{port}/db?connect_timeout=5")
    message = str(info.value)
    assert f"127.0.0.1:{port}/db" in message and "check that the server runs" in message
    assert "hunter2" not in message


def test_a_bad_postgres_url_is_a_configuration_error() -> None:
    pytest.importorskip("psycopg", reason="needs the 'postgres' extra")
    with pytest.raises(ConfigurationError, match="not a valid PostgreSQL URL") as info:
        Store("postgresql://u:hunter2@h/db?no_such_parameter=1")
    assert "hunter2" not in str(info.value)


def test_store_pickles_as_its_url(store: Store) -> None:
    with store.transaction() as conn:
        _put(conn, "t1")
    with pickle.loads(pickle.dumps(store)) as copy:
        assert type(copy) is type(store) and copy.identity == store.identity
        assert _keys(copy) == {"t1"}


def test_transaction_commits_rolls_back_and_nests(store: Store) -> None:
    with store.transaction() as conn:
        _put(conn, "t1")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        _put(conn, "t2")
        raise RuntimeError("boom")
    with store.transaction() as outer:
        _put(outer, "t3")
        with pytest.raises(RuntimeError), store.transaction() as inner:
            assert inner is outer
            _put(inner, "t4")
            raise RuntimeError("inner fails")
        _put(outer, "t5")
    assert _keys(store) == {"t1", "t3", "t5"}
    assert not store.connection().in_transaction


def test_nothing_is_durable_until_the_outermost_commit(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as outer:
        _put(outer, "t1")
        with store.transaction() as inner:
            _put(inner, "t2")
        raise RuntimeError("outer fails after the inner block finished")
    assert _keys(store) == set()


def test_sql_errors_become_cache_errors_and_roll_back(store: Store) -> None:
    with pytest.raises(CacheError), store.transaction() as conn:
        _put(conn, "t1")
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    assert not store.connection().in_transaction
    assert _keys(store) == set()
    with store.transaction() as conn:  # the connection is still usable
        _put(conn, "t2")
    assert _keys(store) == {"t2"}


def test_joining_requires_an_open_transaction(store: Store) -> None:
    with (
        pytest.raises(ConfigurationError, match="no open transaction"),
        store.joining(store.connection()),
    ):
        pass
    with store.transaction() as conn, store.joining(conn) as joined:
        assert joined is conn


def test_one_connection_per_thread(store: Store) -> None:
    seen: dict[str, object] = {}

    def grab(name: str) -> None:
        seen[name] = store.connection()
        with store.transaction() as conn:
            _put(conn, f"t-{name}")

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert store.connection() is store.connection()
    assert len({id(conn) for conn in seen.values()} | {id(store.connection())}) == 5
    assert len(_keys(store)) == 4


def _child_writes(store: Store, inherited: object) -> None:
    with store.transaction() as conn:
        _put(conn, "t-child")
    if conn is inherited:
        sys.exit(3)  # the child must never use its parent's connection


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_opens_a_fresh_connection(store: Store) -> None:
    with store.transaction() as conn:
        _put(conn, "t-parent")
    parent_conn = store.connection()
    child = multiprocessing.get_context("fork").Process(
        target=_child_writes, args=(store, parent_conn)
    )
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert store.connection() is parent_conn  # the parent's connection still works
    assert _keys(store) == {"t-parent", "t-child"}


def test_a_server_database_may_hold_other_programs_tables(postgres_server) -> None:
    import psycopg

    url = postgres_server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    with Store(url) as store:
        assert {"photos", "meta", "claims"} <= store.table_names(store.connection())
