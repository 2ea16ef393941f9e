"""What an API session learns and keeps: facts about the server, and answered bodies
of failed batches (so a rerun never pays for them twice)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..errors import OfflineCacheMiss
from ._batch import Batch
from .base import FactStore

log = logging.getLogger("maas_tune.providers.session")

__all__ = ["ANSWERED_FACT", "FactAccess"]

#: Facts holding answered request bodies of samples that failed, by request key.
ANSWERED_FACT = "answered-request|"


class FactAccess:
    """The fact store of an :class:`~maas_tune.providers.session.APISession` (a mixin)."""

    _facts: FactStore | None
    _offline: bool
    _memo: dict[str, dict[str, Any]]  # answered bodies of failed batches
    _memo_lock: threading.Lock

    def _init_facts(self) -> None:
        self._facts = None
        self._offline = False
        self._memo = {}
        self._memo_lock = threading.Lock()

    def attach_facts(self, facts: FactStore, *, offline: bool = False) -> None:
        """Keep facts in ``facts``; with ``offline=True`` never send a request to learn one."""
        self._facts, self._offline = facts, offline

    def fact(self, key: str, what: str, learn: Callable[[], Any]) -> Any:
        """The JSON fact kept under ``key``, else ``learn()`` it (sending requests) and keep it.

        Raises
        ------
        OfflineCacheMiss
            In offline mode when the fact is not kept; ``what`` names it in the message.
        """
        kept = self._facts.recall(key) if self._facts is not None else None
        if kept is not None:
            return kept
        self.require_online(what)
        value = learn()
        if self._facts is not None:
            self._facts.remember(key, value)
        return value

    def _answered(self, key: str, recall: bool = True) -> dict[str, Any] | None:
        """An answered request body kept from a batch that failed (this process, or the
        fact store: an earlier run's)."""
        with self._memo_lock:
            body = self._memo.get(key)
        if body is None and recall:
            body = self.recall(ANSWERED_FACT + key)
        return body if isinstance(body, dict) else None

    def _load_answered(self) -> bool:
        """Load every kept answered body at once (one query per chunk, not per request);
        False where the fact store cannot list them (then each request asks)."""
        many = getattr(self._facts, "recall_prefixed", None)
        if self._facts is None:
            return True
        if not callable(many):
            return False
        found = {
            k[len(ANSWERED_FACT) :]: v
            for k, v in many(ANSWERED_FACT).items()
            if isinstance(v, dict)
        }
        with self._memo_lock:
            self._memo.update(found)
        return True

    def _keep_answered(self, batch: Batch) -> None:
        """Keep the answered bodies of a failed batch, so a rerun sends none of them again."""
        bodies = batch.kept()
        with self._memo_lock:
            self._memo.update(bodies)
        if not bodies or self._facts is None:
            return
        facts = {ANSWERED_FACT + key: body for key, body in bodies.items()}
        many = getattr(self._facts, "remember_many", None)
        try:  # one transaction: a cancellation must not wait for one commit per body
            if callable(many):
                many(facts)
            else:
                for key, body in facts.items():
                    self._facts.remember(key, body)
        except Exception as exc:  # noqa: BLE001 - the in-process memo still holds them
            log.warning("could not keep %d answered requests for a rerun: %s", len(facts), exc)

    def recall(self, key: str) -> Any | None:
        """The fact kept under ``key``, or None (no request)."""
        return self._facts.recall(key) if self._facts is not None else None

    def remember(self, key: str, value: Any) -> None:
        """Keep (or replace) the fact under ``key``, when a fact store is attached."""
        if self._facts is not None:
            self._facts.remember(key, value)

    def require_online(self, what: str) -> None:
        """Raise :class:`OfflineCacheMiss` naming ``what`` when requests are not allowed."""
        if self._offline:
            raise OfflineCacheMiss(what=what)
