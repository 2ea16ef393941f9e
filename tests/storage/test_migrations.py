"""Versioned schema: a store of an older version is upgraded in place, a newer one refused.

Each test runs on SQLite and on PostgreSQL (the ``store_url`` fixture).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

import numpy as np
import pytest

from maas_tune._constants import DB_SCHEMA_VERSION
from maas_tune.errors import CacheCorruptionError, CacheError
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.storage.migrations import STEPS
from maas_tune.storage.url import backend_of, sqlite_path

from .._concurrency import run_at_once

# The schema maas-tune 0.x wrote (schema 1), verbatim: real files of that release exist.
_SQLITE_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
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
_V1_DATA = (
    ("INSERT INTO meta VALUES ('application', 'maas-tune'), ('schema_version', '1')", ()),
    (
        "INSERT INTO answers VALUES ('k1', 'm', 7, 1000.0, 2, NULL, ?, NULL)",
        (np.array([-1.0, -2.0], "<f4").tobytes(),),
    ),
    ("INSERT INTO budgets VALUES ('b', 10, NULL, 3, 30, 1000.0, 1000.0)", ()),
    ("INSERT INTO reservations VALUES ('r1', 'b', 2, 20, ?, 'elsewhere', ?)", ()),
)


def _write_v1(url: str) -> None:
    """Write a schema-1 store with an answer, a budget and an open reservation."""
    now = time.time()
    args = {3: (os.getpid(), now)}
    if backend_of(url) == "sqlite":
        with sqlite3.connect(sqlite_path(url)) as conn:
            for statement in _SQLITE_V1:
                conn.execute(statement)
            for i, (sql, params) in enumerate(_V1_DATA):
                conn.execute(sql, args.get(i, params))
        conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in STEPS[0].sql("postgresql"):
            conn.execute(statement)
        for i, (sql, params) in enumerate(_V1_DATA):
            conn.execute(sql.replace("?", "%s"), args.get(i, params))


def test_steps_are_numbered_one_to_the_current_version() -> None:
    assert [step.version for step in STEPS] == list(range(1, DB_SCHEMA_VERSION + 1))


def test_a_schema_1_store_is_upgraded_in_place(store_url: str) -> None:
    _write_v1(store_url)
    with Store(store_url) as store:
        with store.read() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            expires, reclaimed, created = conn.execute(
                "SELECT expires, reclaimed, created FROM reservations WHERE id = 'r1'"
            ).fetchone()
        assert meta["schema_version"] == str(DB_SCHEMA_VERSION)
        assert "claims" in store.table_names(store.connection())
        assert (expires, reclaimed) == (pytest.approx(created + 900), 0)
        # the old data reads as before
        np.testing.assert_array_equal(ScoreCache(store).get_many(["k1"])["k1"].logprobs, [-1, -2])
        status = QueryBudget("b", store=store).status()
        assert (status.spent_queries, status.reserved_queries, status.max_queries) == (3, 2, 10)
    with Store(store_url) as again:  # reopening finds the current version: nothing to do
        assert QueryBudget("b", store=again).status().spent_prompt_tokens == 30


def test_a_newer_schema_is_refused(store_url: str) -> None:
    with Store(store_url) as store, store.transaction() as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(DB_SCHEMA_VERSION + 1),)
        )
    with pytest.raises(CacheError, match="upgrade maas-tune") as info:
        Store(store_url)
    assert f"has schema {DB_SCHEMA_VERSION + 1}" in str(info.value)
    assert not isinstance(info.value, CacheCorruptionError)


def test_a_database_of_another_program_is_refused(store_url: str) -> None:
    with Store(store_url) as store, store.transaction() as conn:
        conn.execute("UPDATE meta SET value = 'photo-app' WHERE key = 'application'")
    with pytest.raises(CacheCorruptionError, match="not a maas-tune store"):
        Store(store_url)


def test_racing_openers_create_the_schema_once(store_url: str) -> None:
    def open_it(go: Callable[[], object]) -> None:
        go()
        Store(store_url).close()

    errors = run_at_once([open_it] * 6)
    assert errors == []
    with Store(store_url) as store, store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 2
