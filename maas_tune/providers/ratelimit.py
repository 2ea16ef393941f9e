"""Client-side rate limits (requests and tokens per minute): the bucket math and a local limiter.

A provider's rate limit is a property of the account, not of one process: when many
workers share it, each must wait its turn or the provider answers 429 to all of them.
This module holds the pure token-bucket arithmetic (:class:`TokenBucket`), the
configuration users pass (:class:`RateLimit`), the interface the HTTP session calls
(:class:`RateLimiter`) and its process-local implementation (:class:`LocalRateLimiter`).
The limiter shared by every worker of a Ray cluster is in :mod:`maas_tune.ray`; it
holds a :class:`TokenBucket` in one actor.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_BURST_S",
    "DEFAULT_PENALTY_S",
    "LocalRateLimiter",
    "RateLimit",
    "RateLimiter",
    "TokenBucket",
    "as_limiter",
    "book",
    "estimate_request_tokens",
    "parse_rate",
]

#: Characters per token assumed when a request's tokens are estimated (as ``count_tokens``
#: does without a tokenizer): an over-estimate for English, so the token cap errs safe.
CHARS_PER_TOKEN = 3
#: Default bucket capacity, in seconds of the rate: what may be sent at once after a pause.
DEFAULT_BURST_S = 1.0
#: How long everyone pauses after a 429 that says nothing about when to retry, in seconds.
DEFAULT_PENALTY_S = 1.0


def _check_rate(name: str, value: object) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ConfigurationError(
            f"{name} must be a positive number or None (no limit), got {value!r}; "
            "use the limit shown on the provider's rate-limit page"
        )


@dataclass(frozen=True)
class RateLimit:
    """A provider's rate limit, as its documentation states it.

    Parameters
    ----------
    requests_per_minute : float or None
        Most requests per minute; ``None`` is no request cap.
    tokens_per_minute : float or None
        Most tokens per minute (see :func:`estimate_request_tokens` for what a
        request counts); ``None`` is no token cap.
    burst_seconds : float, default 1.0
        How many seconds' worth of the rate may be sent at once after an idle
        spell (the bucket's capacity). Providers enforce their per-minute limits
        over windows shorter than a minute, so keep this small.

    Raises
    ------
    ConfigurationError
        A rate or the burst is not a positive number.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_seconds: float = DEFAULT_BURST_S

    def __post_init__(self) -> None:
        _check_rate("requests_per_minute", self.requests_per_minute)
        _check_rate("tokens_per_minute", self.tokens_per_minute)
        _check_rate("burst_seconds", self.burst_seconds)

    @property
    def unlimited(self) -> bool:
        """Whether neither requests nor tokens are capped."""
        return self.requests_per_minute is None and self.tokens_per_minute is None


class TokenBucket:
    """Pure token-bucket arithmetic for a request and a token rate, on a caller's clock.

    Each dimension refills at its rate up to a capacity of ``burst_seconds`` of
    that rate. :meth:`reserve` books a request at once and returns how long the
    caller must wait before sending it: the level may go negative (a debt later
    callers wait out), so callers are served in the order they reserve and a
    request larger than the capacity still gets through. Over any window of
    ``T`` seconds, at most ``capacity + rate * T`` units are granted.

    Parameters
    ----------
    limit : RateLimit
    now : float
        The clock's current time, in seconds (any monotonic clock).
    """

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self._rates = (_per_second(limit.requests_per_minute), _per_second(limit.tokens_per_minute))
        self._capacity = tuple(None if r is None else r * limit.burst_seconds for r in self._rates)
        self._levels = [c or 0.0 for c in self._capacity]  # start full
        self._since = now  # time of the levels; may lie ahead of now (a pause)

    def reserve(self, requests: float, tokens: float, now: float) -> float:
        """Book ``requests`` and ``tokens`` and return the seconds to wait before sending.

        Parameters
        ----------
        requests, tokens : float
            What the request costs (>= 0).
        now : float
            The current time on the bucket's clock.

        Returns
        -------
        float
            Seconds (>= 0) the caller must wait; the booking stands either way.
        """
        self._refill(now)
        start = max(self._since, now)
        wait = start - now
        for i, (rate, cost) in enumerate(zip(self._rates, (requests, tokens))):
            if rate is None:
                continue
            self._levels[i] -= cost
            if self._levels[i] < 0:
                wait = max(wait, start - now + -self._levels[i] / rate)
        return wait

    def penalize(self, seconds: float, now: float) -> None:
        """Send nothing for ``seconds`` (the server's Retry-After), then restart from empty."""
        self._refill(now)
        resume = now + max(0.0, seconds)
        if resume > self._since:
            self._since = resume
            self._levels = [min(level, 0.0) for level in self._levels]

    def _refill(self, now: float) -> None:
        elapsed = now - self._since
        if elapsed <= 0:
            return
        for i, (rate, cap) in enumerate(zip(self._rates, self._capacity)):
            if rate is not None and cap is not None:
                self._levels[i] = min(cap, self._levels[i] + elapsed * rate)
        self._since = now


def _per_second(per_minute: float | None) -> float | None:
    return None if per_minute is None else per_minute / 60.0


@runtime_checkable
class RateLimiter(Protocol):
    """What the HTTP session calls: wait for a turn, and pass on a server's request to pause."""

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        """Block until ``requests`` requests costing ``tokens`` tokens may be sent."""

    def penalize(self, seconds: float) -> None:
        """Make every user of this limiter wait ``seconds`` (a 429's Retry-After)."""


class LocalRateLimiter:
    """A thread-safe :class:`TokenBucket` for the threads of one process.

    Parameters
    ----------
    limit : RateLimit
    clock : callable, default time.monotonic
    sleep : callable, default time.sleep
        Called with each wait in seconds (tests inject a recorder).
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._bucket = TokenBucket(limit, clock())

    def __repr__(self) -> str:
        return f"LocalRateLimiter({self.limit!r})"

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        with self._lock:  # book under the lock, wait outside it: others book behind us
            wait = self._bucket.reserve(requests, tokens, self._clock())
        if wait > 0:
            self._sleep(wait)

    def reserve_many(self, costs: Sequence[tuple[int, int]]) -> list[float]:
        """Book several requests at once, in order: the seconds each waits before sending.

        Parameters
        ----------
        costs : sequence of (requests, tokens)

        Returns
        -------
        list of float
            Per booking, the wait (>= 0) from now; the bookings stand either way.
        """
        with self._lock:
            now = self._clock()
            return [self._bucket.reserve(r, t, now) for r, t in costs]

    def penalize(self, seconds: float) -> None:
        with self._lock:
            self._bucket.penalize(seconds, self._clock())


def as_limiter(rate_limit: RateLimit | RateLimiter | None) -> RateLimiter | None:
    """A limiter for ``rate_limit``: a :class:`RateLimit` gets a :class:`LocalRateLimiter`.

    Raises
    ------
    ConfigurationError
        ``rate_limit`` is neither None, a :class:`RateLimit` nor a :class:`RateLimiter`.
    """
    if rate_limit is None or isinstance(rate_limit, RateLimiter):
        return rate_limit
    if isinstance(rate_limit, RateLimit):
        return None if rate_limit.unlimited else LocalRateLimiter(rate_limit)
    raise ConfigurationError(
        f"rate_limit must be a RateLimit, a rate limiter or None, got {rate_limit!r}; "
        "e.g. rate_limit=RateLimit(requests_per_minute=500)"
    )


_PER = {"s": 60.0, "sec": 60.0, "second": 60.0, "m": 1.0, "min": 1.0, "minute": 1.0}


def parse_rate(text: str) -> RateLimit:
    """A request rate as the CLI takes it: ``"3000/min"``, ``"50/s"`` (also ``/m``,
    ``/sec``, ``/second``, ``/minute``).

    Raises
    ------
    ConfigurationError
        Not a positive number of requests per second or minute.
    """
    number, _, unit = str(text).strip().lower().partition("/")
    try:
        value = float(number)
    except ValueError:
        value = float("nan")
    factor = _PER.get(unit.strip())
    if factor is None or not (math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"a rate limit must be requests per second or minute, e.g. 3000/min or 50/s "
            f"(the account's limit from the provider's rate-limit page), got {text!r}"
        )
    return RateLimit(requests_per_minute=value * factor)


def book(limiter: RateLimiter, costs: Sequence[tuple[int, int]]) -> list[float] | None:
    """Book ``costs`` on ``limiter`` in one call when it can (``reserve_many``: for a shared
    limiter one round trip per chunk); None when it only has :meth:`RateLimiter.acquire`."""
    many = getattr(limiter, "reserve_many", None)
    return list(many(costs)) if callable(many) else None


def estimate_request_tokens(payload: Mapping[str, Any]) -> int:
    """Tokens a request counts against a tokens-per-minute limit, estimated from its body.

    Providers count the prompt plus the most tokens the answer may have
    (``max_tokens``). The prompt is not tokenized here (that would cost a request
    per request): its characters (``prompt``, each message's ``content``, or
    ``input``) are divided by :data:`CHARS_PER_TOKEN` (3, an over-estimate for
    English), plus one.

    Parameters
    ----------
    payload : mapping
        An OpenAI-style completions, chat or embeddings request body.

    Returns
    -------
    int
        Estimated prompt tokens plus ``max_tokens`` (0 if absent).
    """
    chars = _text_chars(payload.get("prompt")) + _text_chars(payload.get("input"))
    for message in payload.get("messages") or ():
        if isinstance(message, Mapping):
            chars += _text_chars(message.get("content"))
    max_tokens = payload.get("max_tokens") or 0
    extra = int(max_tokens) if isinstance(max_tokens, (int, float)) else 0
    return chars // CHARS_PER_TOKEN + 1 + extra


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, Mapping):  # e.g. a content part {"type": "text", "text": ...}
        return _text_chars(value.get("text"))
    return 0
