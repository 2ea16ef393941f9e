"""The content-hashed answer cache: each prompt is scored once, keyed by all that shaped it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._constants import CACHE_READ_CHUNK, CACHE_SCHEMA_VERSION
from ..errors import ConfigurationError
from ..scores import ProviderAnswer
from ._rows import COLUMNS, INSERT, SELECT, CachedAnswer, decode_row, encode_row
from .base import Connection, Store, StoreHolder, coerce_store

__all__ = ["CacheStats", "CachedAnswer", "ScoreCache", "cache_key"]


def cache_key(
    fingerprint: Mapping[str, Any],
    prompt: str,
    token_ids: Sequence[int],
    options: Mapping[str, Any] | None = None,
) -> str:
    """Content hash of one request: equal keys mean the provider would give equal answers.

    Parameters
    ----------
    fingerprint : mapping
        The provider's :meth:`~maas_tune.providers.base.Provider.fingerprint`.
    prompt : str
        The full prompt text.
    token_ids : sequence of int, length t
        The label tokens scored, in order.
    options : mapping or None
        Anything else that changes the answer (e.g. whether hidden states were
        asked for); ``None`` is the same as ``{}``.

    Returns
    -------
    str
        SHA-256 hex digest (64 characters) of the canonical JSON of these fields
        and ``CACHE_SCHEMA_VERSION``.

    Raises
    ------
    ConfigurationError
        If the fingerprint or options are not JSON-serialisable (or hold NaN).
    """
    payload = {
        "schema": CACHE_SCHEMA_VERSION,
        "fingerprint": dict(fingerprint),
        "prompt": prompt,
        "token_ids": [int(t) for t in token_ids],
        "options": dict(options or {}),
    }
    try:
        text = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot build a cache key: the provider fingerprint or options are not plain "
            f"JSON ({exc}); use only str, int, float, bool, None, lists and dicts there"
        ) from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    """What a store holds: see :meth:`ScoreCache.stats`.

    Attributes
    ----------
    path : Path or None
        The database file (None on a database server).
    entries : int
        Cached answers.
    size_bytes : int
        Size on disk of the database (for SQLite with its write-ahead log).
    per_model : dict of str to int
        Entries per ``model`` given to :meth:`ScoreCache.put_many` (``""`` if none was).
    oldest, newest : float or None
        Unix times of the oldest and newest entry (None when empty).
    """

    path: Path | None
    entries: int
    size_bytes: int
    per_model: dict[str, int] = field(default_factory=dict)
    oldest: float | None = None
    newest: float | None = None
    #: Where the store lives: the file's path, or the server URL without password.
    location: str = ""


#: Prefix of provider facts in the store's ``meta`` table.
_FACT_PREFIX = "fact:"


class ScoreCache(StoreHolder):
    """Answers keyed by :func:`cache_key`, in the store shared with the budget ledger.

    Parameters
    ----------
    store : Store, str, Path or None
        An open :class:`~maas_tune.storage.Store` (shared, not closed by :meth:`close`),
        or a path or URL to open one on (``sqlite:///abs/path``,
        ``postgresql://user@host:port/db``); ``None`` is the default SQLite file.

    Notes
    -----
    Besides answers, the cache keeps small facts providers learn about their server
    (:meth:`remember` / :meth:`recall`: the capability probe, label token ids), so
    reruns and offline runs need no request for them; ``clear`` keeps them.
    """

    def __init__(self, store: Store | str | Path | None = None) -> None:
        self._store, self._owned = coerce_store(store)

    def __repr__(self) -> str:
        return f"ScoreCache({self._store.location!r})"

    def get_many(self, keys: Sequence[str]) -> dict[str, CachedAnswer]:
        """Look keys up; a key that is not cached is simply absent from the result.

        Parameters
        ----------
        keys : sequence of str, length n
            Keys from :func:`cache_key`.

        Returns
        -------
        dict of str to CachedAnswer
            At most n entries (duplicates collapse).
        """
        unique = list(dict.fromkeys(keys))
        found: dict[str, CachedAnswer] = {}
        with self._store.read() as conn:
            for start in range(0, len(unique), CACHE_READ_CHUNK):
                chunk = unique[start : start + CACHE_READ_CHUNK]
                # Equal SQL text for equal chunk sizes: sqlite3 reuses the prepared statement.
                for row in conn.execute(f"{SELECT}({','.join('?' * len(chunk))})", chunk):
                    found[row[0]] = decode_row(self._store.location, row)
        return found

    def put_many(
        self,
        items: Mapping[str, ProviderAnswer | CachedAnswer],
        *,
        model: str = "",
        conn: Connection | None = None,
    ) -> None:
        """Store answers (replacing any under the same keys), all or none.

        Parameters
        ----------
        items : mapping of str to ProviderAnswer or CachedAnswer
            A :class:`CachedAnswer` keeps its ``created`` time; others get now.
        model : str
            Model name, kept for :meth:`stats` and :meth:`clear` only.
        conn : Connection or None
            The connection of a caller's open ``store.transaction()``, to commit these
            writes atomically with other ones (e.g. a budget commit); by default the
            writes get a transaction of their own.

        Raises
        ------
        ProviderResponseError
            An answer has NaN or +inf log-probabilities, a non-finite hidden state,
            a wrong shape or bad usage; nothing is stored.
        """
        now = time.time()
        # Validate all first. Sorted: concurrent writers lock rows in one order (no deadlock).
        rows = sorted(encode_row(key, answer, model, now) for key, answer in items.items())
        if not rows:
            return
        with self._store.joining(conn) as c:
            c.executemany(INSERT, rows)

    def remember(self, key: str, value: Any) -> None:
        """Keep a small JSON fact a provider learnt about its server (see :class:`FactStore`)."""
        text = json.dumps(value, sort_keys=True)
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_FACT_PREFIX + key, text),
            )

    def remember_many(self, facts: Mapping[str, Any]) -> None:
        """:meth:`remember` each of ``facts`` (key -> value), all in one transaction."""
        rows = [(_FACT_PREFIX + k, json.dumps(v, sort_keys=True)) for k, v in facts.items()]
        if not rows:
            return
        with self._store.transaction() as conn:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rows,
            )

    def recall(self, key: str) -> Any | None:
        """A fact kept by :meth:`remember`, or None."""
        with self._store.read() as conn:
            row = conn.execute(
                "SELECT value FROM meta WHERE key = ?", (_FACT_PREFIX + key,)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def recall_prefixed(self, prefix: str) -> dict[str, Any]:
        """Every fact whose key starts with ``prefix`` (one query), by key."""
        start = _FACT_PREFIX + prefix
        with self._store.read() as conn:
            rows = conn.execute(
                "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(start), start)
            ).fetchall()
        return {str(k)[len(_FACT_PREFIX) :]: json.loads(v) for k, v in rows}

    def __len__(self) -> int:
        with self._store.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def stats(self) -> CacheStats:
        """Entries, size on disk, entries per model, age range."""
        with self._store.read() as conn:
            entries, oldest, newest = conn.execute(
                "SELECT COUNT(*), MIN(created), MAX(created) FROM answers"
            ).fetchone()
            models = dict(
                conn.execute(
                    "SELECT model, COUNT(*) FROM answers GROUP BY model ORDER BY model"
                ).fetchall()
            )
        return CacheStats(
            path=self._store.path,
            entries=int(entries),
            size_bytes=self._store.size_bytes(),
            per_model={model: int(n) for model, n in models.items()},
            oldest=oldest,
            newest=newest,
            location=self._store.location,
        )

    def _iter_records(self) -> Iterator[dict[str, Any]]:
        sql = f"SELECT {COLUMNS}, model FROM answers ORDER BY created, key"
        with self._store.read() as conn:
            for row in conn.execute(sql):
                answer = decode_row(self._store.location, row[:-1])
                yield {
                    "key": row[0],
                    "model": row[-1],
                    "logprobs": answer.logprobs.tolist(),
                    "hidden": None if answer.hidden is None else answer.hidden.tolist(),
                    "prompt_tokens": answer.prompt_tokens,
                    "created": answer.created,
                    "floored": answer.floored,
                    "token_features": None
                    if answer.token_features is None
                    else answer.token_features.astype(np.float32).tolist(),
                }

    def export(self, dest: str | Path | TextIO) -> int:
        """Write every entry as JSON Lines, oldest first.

        Each line is ``{key, model, logprobs, hidden, prompt_tokens, created, floored,
        token_features}``; ``hidden`` is a list or null, ``token_features`` a list of
        lists (tokens × width) or null. A log-probability of -inf is written as
        ``-Infinity``, as Python's :mod:`json` does.

        Parameters
        ----------
        dest : str, Path or text file
            A path (overwritten) or an open text stream.

        Returns
        -------
        int
            Number of entries written.
        """
        if isinstance(dest, (str, Path)):
            with open(dest, "w", encoding="utf-8") as stream:
                return self._write_jsonl(stream)
        return self._write_jsonl(dest)

    def _write_jsonl(self, stream: TextIO) -> int:
        count = 0
        for record in self._iter_records():
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
        return count

    def clear(self, model: str | None = None) -> int:
        """Delete every entry, or only those stored for ``model``; return how many went."""
        with self._store.transaction() as conn:
            if model is None:
                return conn.execute("DELETE FROM answers").rowcount
            return conn.execute("DELETE FROM answers WHERE model = ?", (model,)).rowcount
