"""Former home of the store, kept so that ``from maas_tune._sqlite import Store`` still works."""

from __future__ import annotations

from .storage.base import Store, borrowed_store, coerce_store
from .storage.sqlite import SQLiteStore, default_db_path, translate_sqlite_errors

__all__ = [
    "SQLiteStore",
    "Store",
    "borrowed_store",
    "coerce_store",
    "default_db_path",
    "translate_sqlite_errors",
]
