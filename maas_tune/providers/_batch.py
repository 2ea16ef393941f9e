"""One batch of HTTP requests: what it may have cost and how to stop it, so that what was
answered is kept when something fails or the user presses Ctrl-C (the requests are sent
by :meth:`~maas_tune.providers.session.APISession.amap`).

A hosted API bills every request it answers, and may bill one whose answer never
arrived (a timeout, a connection lost after sending, a request in flight at Ctrl-C).
:class:`Batch` counts both as they happen, so the client can charge exactly that and
keep every answer that did arrive, whatever ends the batch. Status errors (4xx, 429,
5xx) are answers saying the work was not done; hosted APIs do not bill them.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import MaasTuneError, ProviderError

__all__ = [
    "Batch",
    "BatchOutcome",
    "Cancelled",
    "Events",
    "ReservationSpent",
    "bound_tokens",
]

R = TypeVar("R")

#: Tokens a tokenizer may add to any text (BOS, EOS, role markers): part of the bound.
SPECIAL_TOKENS_BOUND = 8

#: Called with ``"answered"`` (one item done), ``"retry"`` or ``"rate_limited"`` (a 429).
Events = Callable[[str], None]


class Cancelled(MaasTuneError):
    """The batch was cancelled (Ctrl-C or an earlier failure): nothing more is sent."""


class ReservationSpent(ProviderError):
    """A retry would send more requests than the batch reserved (lost answers ate the
    headroom): not sent, so the budget cap holds; what was answered is kept."""


def bound_tokens(text: str) -> int:
    """A number of tokens ``text`` cannot exceed with any byte-level tokenizer.

    Every token of a byte-level BPE (tiktoken, Llama 3, Gemma's SentencePiece with byte
    fallback) covers at least one UTF-8 byte, so the byte count plus the special
    tokens a request may add is a sound upper bound, whatever the script (CJK
    characters are 3 bytes each).
    """
    return len(text.encode("utf-8", "surrogatepass")) + SPECIAL_TOKENS_BOUND


@dataclass
class BatchOutcome(Generic[R]):
    """What a batch that ended early leaves behind (attached to the error as ``outcome``).

    Attributes
    ----------
    results : dict of int to R
        The items that were answered in full, by index.
    answered : int
        Requests answered with 2xx (billed).
    unknown : int
        Requests whose answer never arrived after they were sent, or still in flight
        when the batch was cancelled (may have been billed: counted as spent).
    prompt_tokens : int
        Prompt tokens of the answered requests (usage), plus a bound for the unknown ones.
    """

    results: dict[int, R] = field(default_factory=dict)
    answered: int = 0
    unknown: int = 0
    prompt_tokens: int = 0

    @property
    def billable(self) -> int:
        """Requests to charge: answered plus unknown."""
        return self.answered + self.unknown


class Batch:
    """Thread-safe counters of one batch of requests, and its cancellation switch."""

    def __init__(
        self,
        events: Events | None = None,
        max_requests: int | None = None,
        extend: Callable[[], bool] | None = None,
    ) -> None:
        self.max_requests = max_requests
        self._extend = extend
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._frozen: BatchOutcome[Any] | None = None
        self._events = events
        self.answered = self.unknown = self.in_flight = self.prompt_tokens = 0
        self.in_flight_tokens = 0
        self._bodies: dict[str, dict[str, Any]] = {}  # request key -> answered body
        self.retries = self.rate_limited = 0

    # -- cancellation -------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the batch was cancelled."""
        if self._cancel.is_set():
            raise Cancelled("the batch was cancelled; nothing more is sent")

    def sleep(self, seconds: float, sleep: Callable[[float], None] | None = None) -> None:
        """Wait ``seconds`` (through ``sleep`` when injected), cut short by cancellation."""
        if sleep is not None:
            sleep(seconds)
        elif seconds > 0 and math.isfinite(seconds):
            self._cancel.wait(seconds)
        self.check()

    def cancel(self) -> BatchOutcome[Any]:
        """Stop sending and retrying; what is in flight now counts as spent. Idempotent."""
        with self._lock:
            self._cancel.set()
            if self._frozen is None:
                self._frozen = self._snapshot({})
            return self._frozen

    # -- accounting ---------------------------------------------------------------
    def can_send(self) -> bool:
        """Whether one more request stays within ``max_requests``."""
        with self._lock:
            return self._room(self.answered + self.unknown + self.in_flight)

    def _room(self, used: int) -> bool:
        """Whether one more request fits, holding one more of the budget if it must."""
        if self.max_requests is None or used < self.max_requests:
            return True
        if self._extend is not None and self._extend():
            self.max_requests += 1
            return True
        return False

    @contextmanager
    def sending(self, bound: int) -> Any:
        """Around one HTTP attempt: in flight while inside; ``bound`` bounds its tokens.

        Raises
        ------
        ReservationSpent
            The attempt would pass ``max_requests`` (requests billed or possibly billed).
        """
        with self._lock:
            used = self.answered + self.unknown + self.in_flight
            if not self._room(used):
                raise ReservationSpent(
                    f"not sending: {used} requests of this batch were billed or may have been "
                    f"(answers lost to timeouts or broken connections), all {self.max_requests} "
                    "it could reserve under the budget's cap; what was answered is kept"
                )
            self.in_flight += 1
            self.in_flight_tokens += bound
        try:
            yield
        except (asyncio.CancelledError, KeyboardInterrupt):
            self.cancel()  # before leaving: this request, still in flight, counts as spent
            raise
        finally:
            with self._lock:
                self.in_flight -= 1
                self.in_flight_tokens -= bound

    def record(self, outcome: str, prompt_tokens: int = 0) -> None:
        """Count one attempt's outcome: ``"answered"`` (2xx), ``"unknown"``, ``"retry"``,
        ``"rate_limited"``. Ignored once cancelled (the charge is already fixed)."""
        with self._lock:
            if self._frozen is not None:
                return
            if outcome == "answered":
                self.answered += 1
                self.prompt_tokens += prompt_tokens
            elif outcome == "unknown":
                self.unknown += 1
                self.prompt_tokens += prompt_tokens
            elif outcome == "retry":
                self.retries += 1
            elif outcome == "rate_limited":
                self.rate_limited += 1
        if self._events is not None and outcome in ("retry", "rate_limited"):
            self._events(outcome)

    def outcome(self, results: dict[int, Any]) -> BatchOutcome[Any]:
        """The outcome so far (frozen at cancellation), with ``results``."""
        with self._lock:
            frozen = self._frozen or self._snapshot({})
            return BatchOutcome(
                dict(results), frozen.answered, frozen.unknown, frozen.prompt_tokens
            )

    def _snapshot(self, results: dict[int, Any]) -> BatchOutcome[Any]:
        # In flight now: sent, answer not read; counted as spent, with their token bound.
        return BatchOutcome(
            results,
            self.answered,
            self.unknown + self.in_flight,
            self.prompt_tokens + self.in_flight_tokens,
        )

    def keep(self, key: str, body: dict[str, Any]) -> None:
        """Remember an answered body (kept beyond the batch only if the batch fails)."""
        with self._lock:
            self._bodies[key] = body

    def discard(self, key: str) -> None:
        """Forget an answered body that turned out unusable (it must not be reused)."""
        with self._lock:
            self._bodies.pop(key, None)

    def kept(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._bodies)

    def item_done(self) -> None:
        if self._events is not None:
            self._events("answered")
