"""The frame shared by the HTTP scoring providers: their API session, and a probed strategy."""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from .._constants import MAX_RETRIES
from ..ratelimit import RateLimit, RateLimiter
from ._http import public_url
from ._session import APISession
from .base import FactStore, Provider

__all__ = ["RemoteProvider"]


class RemoteProvider(Provider):
    """A provider behind an OpenAI-style API whose ``"auto"`` strategy is found by a probe.

    Subclasses validate their options, call ``super().__init__`` and implement
    :attr:`probe_result` (whose ``strategy`` resolves ``"auto"``) and the contract.

    Attributes
    ----------
    base_url : str
        The API root without credentials (shown, and part of the keys of kept facts).
    model : str
    max_concurrency : int
    probe_requests : int
        Probe requests this provider sent (never charged to a budget).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        strategy: str,
        *,
        api_key: str | None,
        max_concurrency: int,
        timeout: float,
        max_retries: int = MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rate_limit: RateLimit | RateLimiter | None = None,
    ) -> None:
        self.base_url = public_url(base_url)  # shown and kept in the cache: no credentials
        self.model = model
        self.max_concurrency = max_concurrency
        self.probe_requests = 0
        self._requested = strategy
        self._words: dict[int, str] = {}  # label token id -> word, from label_token_ids
        self._lock = threading.Lock()
        self._session = APISession(
            base_url, api_key=api_key, timeout=timeout, max_concurrency=max_concurrency,
            max_retries=max_retries, transport=transport, sleep=sleep, rate_limit=rate_limit,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, "
            f"strategy={self._requested!r})"
        )

    @property
    def strategy(self) -> str:
        """The strategy in use; under ``"auto"`` the first access probes the server."""
        if self._requested != "auto":
            return self._requested
        return str(self.probe_result.strategy)

    @property
    @abc.abstractmethod
    def probe_result(self) -> Any:
        """What the capability probe found; its ``strategy`` is the one ``"auto"`` uses."""

    def attach_facts(self, facts: FactStore, *, offline: bool = False) -> None:
        """Keep the probe result and label token ids in ``facts`` (the client's cache);
        with ``offline=True`` send nothing and raise :class:`OfflineCacheMiss` instead."""
        self._session.attach_facts(facts, offline=offline)

    def close(self) -> None:
        self._session.close()
