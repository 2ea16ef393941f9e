"""Everything that persists: the score cache (:mod:`.cache`), the budget ledger
(:mod:`.budget`), the claims of concurrent workers (:mod:`.claims`) and their backends,
SQLite or PostgreSQL.

``Store(target)`` opens the backend a path or URL names (see :class:`Store`);
:func:`open_store` is the same call under a name that says so.
"""

from __future__ import annotations

import os

from .base import Connection, Store, borrowed_store, coerce_store

__all__ = ["Connection", "Store", "borrowed_store", "coerce_store", "open_store"]


def open_store(target: str | os.PathLike[str] | None = None) -> Store:
    """Open the store a path, ``sqlite:///abs/path`` or ``postgresql://...`` URL names.

    Parameters
    ----------
    target : str, PathLike or None
        ``None`` is the default SQLite file in the user cache directory.

    Returns
    -------
    Store
        A :class:`~maas_tune.storage.sqlite.SQLiteStore` or
        :class:`~maas_tune.storage.postgres.PostgresStore`, schema created or upgraded.
    """
    return Store(target)
