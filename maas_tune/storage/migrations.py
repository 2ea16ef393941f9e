"""Versioned schema: ordered migration steps, applied in place when a store is opened.

``meta.schema_version`` records the version a store is at. Opening a store at an older
version applies the missing steps in one transaction (under the schema lock, so that
racing workers upgrade once); a store at a newer version is refused. A step is never
edited once released: a change of schema is a new step at the end of :data:`STEPS`,
and ``DB_SCHEMA_VERSION`` is its number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .._constants import DB_SCHEMA_VERSION
from ..errors import CacheCorruptionError, CacheError
from .base import Connection, Store

__all__ = ["APP_MARKER", "STEPS", "Migration", "ensure_schema", "schema_version"]

_LOG = logging.getLogger(__name__)

#: Value of ``meta.application``: tells our databases from other programs'.
APP_MARKER = "maas-tune"

#: Column types per dialect; steps write ``{blob}``, ``{real}`` and ``{bigint}``.
#: PostgreSQL's REAL is 4 bytes and its INTEGER 4 bytes: times and counters need more.
_TYPES = {
    "sqlite": {"blob": "BLOB", "real": "REAL", "bigint": "INTEGER"},
    "postgresql": {"blob": "BYTEA", "real": "DOUBLE PRECISION", "bigint": "BIGINT"},
}


@dataclass(frozen=True)
class Migration:
    """One schema step: the statements that take a store from ``version - 1`` to ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]

    def sql(self, dialect: str) -> list[str]:
        """The statements with the dialect's column types."""
        return [statement.format(**_TYPES[dialect]) for statement in self.statements]


STEPS: tuple[Migration, ...] = (
    Migration(1, "answer cache and budget ledger", (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # Small columns first, blobs last: SQLite reads a row's columns in order.
        """CREATE TABLE answers (
            key TEXT PRIMARY KEY, model TEXT NOT NULL, prompt_tokens {bigint} NOT NULL,
            created {real} NOT NULL, n_logprobs INTEGER NOT NULL, n_hidden INTEGER,
            logprobs {blob} NOT NULL, hidden {blob})""",
        "CREATE INDEX answers_model ON answers (model)",
        """CREATE TABLE budgets (
            name TEXT PRIMARY KEY, max_queries {bigint}, max_prompt_tokens {bigint},
            spent_queries {bigint} NOT NULL DEFAULT 0,
            spent_prompt_tokens {bigint} NOT NULL DEFAULT 0,
            created {real} NOT NULL, updated {real} NOT NULL)""",
        """CREATE TABLE reservations (
            id TEXT PRIMARY KEY, budget TEXT NOT NULL, queries {bigint} NOT NULL,
            prompt_tokens {bigint} NOT NULL, pid INTEGER NOT NULL, hostname TEXT NOT NULL,
            created {real} NOT NULL)""",
        "CREATE INDEX reservations_budget ON reservations (budget)",
    )),
    Migration(2, "reservation leases and claims on prompts in flight", (
        # NULL: the reservation never expires (only its owner's death on this host frees it).
        "ALTER TABLE reservations ADD COLUMN expires {real}",
        # 1 once counted as spent for an expired lease; its owner may still settle it.
        "ALTER TABLE reservations ADD COLUMN reclaimed INTEGER NOT NULL DEFAULT 0",
        # Reservations made before leases existed get the lease of the time (900 s).
        "UPDATE reservations SET expires = created + 900",
        """CREATE TABLE claims (
            key TEXT PRIMARY KEY, owner TEXT NOT NULL, hostname TEXT NOT NULL,
            pid INTEGER NOT NULL, expires {real} NOT NULL)""",
    )),
    Migration(3, "label words an answer could only bound (top-k), not read exactly", (
        "ALTER TABLE answers ADD COLUMN floored INTEGER NOT NULL DEFAULT 0",
    )),
    Migration(4, "a cap in money per budget, and the price its counters are costed at", (
        # US dollars; NULL: no cap. A cap needs a price (the budget module refuses one alone).
        "ALTER TABLE budgets ADD COLUMN max_cost {real}",
        # US dollars per million input (prompt) and output tokens; NULL: no price known.
        "ALTER TABLE budgets ADD COLUMN price_input {real}",
        "ALTER TABLE budgets ADD COLUMN price_output {real}",
    )),
    Migration(5, "the states of a prompt's last tokens, kept with the answer", (
        # NULL: not asked for (or not given). Else n_tokens rows of little-endian float16.
        "ALTER TABLE answers ADD COLUMN n_tokens INTEGER",
        "ALTER TABLE answers ADD COLUMN tokens {blob}",
    )),
)  # fmt: skip

#: Tables some step creates: a database holding one of them but no marker is not ours.
_OUR_TABLES = frozenset({"meta", "answers", "budgets", "reservations", "claims"})
_ELSEWHERE = "pass another --cache path or URL"


def schema_version(store: Store, conn: Connection) -> int:
    """The version the store is at; 0 for a database maas-tune has not written yet.

    Raises
    ------
    CacheCorruptionError
        The database belongs to another program, or its version record is damaged.
    CacheError
        The store is at a newer version than this maas-tune knows.
    """
    tables = store.table_names(conn)
    # A server database may hold other programs' tables; a SQLite file must be ours alone.
    ours = tables & _OUR_TABLES if store.dialect == "postgresql" else tables
    if not ours:
        return 0
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    if meta.get("application") != APP_MARKER:
        kind = "SQLite" if store.dialect == "sqlite" else "PostgreSQL"
        raise CacheCorruptionError(
            f"{store.location} is a {kind} database but not a maas-tune store; {_ELSEWHERE} "
            "(do not delete it unless you know no other program uses it)"
        )
    version = meta.get("schema_version", "")
    if not version.isdigit() or int(version) < 1:
        raise CacheCorruptionError(
            f"{store.location} has no valid schema version ({version!r}); it is damaged: "
            f"delete it (cached answers are fetched again) or {_ELSEWHERE}"
        )
    if int(version) > DB_SCHEMA_VERSION:
        raise CacheError(
            f"{store.location} has schema {version}, this maas-tune reads schemas up to "
            f"{DB_SCHEMA_VERSION}; upgrade maas-tune or {_ELSEWHERE}"
        )
    return int(version)


def ensure_schema(store: Store) -> None:
    """Create the schema in an empty database, or upgrade an older one in place.

    Raises
    ------
    CacheCorruptionError, CacheError
        As :func:`schema_version`.
    """
    with store.read() as conn:
        if schema_version(store, conn) == DB_SCHEMA_VERSION:
            return
    with store.transaction() as conn:
        store.lock_schema(conn)
        start = schema_version(store, conn)  # another worker may have won the race
        for step in STEPS[start:DB_SCHEMA_VERSION]:
            for statement in step.sql(store.dialect):
                conn.execute(statement)
        if start == DB_SCHEMA_VERSION:
            return
        for key, value in (("application", APP_MARKER), ("schema_version", str(DB_SCHEMA_VERSION))):
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
    if start:
        _LOG.info("upgraded %s from schema %d to %d", store.location, start, DB_SCHEMA_VERSION)
