"""Retry policy for HTTP providers: Retry-After parsing, jittered backoff and the retry loop."""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import TypeVar

from .._constants import (
    INITIAL_RETRY_DELAY_S,
    MAX_RETRIES,
    MAX_RETRY_AFTER_S,
    MAX_RETRY_DELAY_S,
    RETRY_JITTER_FRACTION,
    RETRYABLE_STATUSES,
)
from ..errors import (
    ConfigurationError,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeoutError,
)

__all__ = [
    "INITIAL_RETRY_DELAY_S",
    "MAX_RETRIES",
    "MAX_RETRY_AFTER_S",
    "MAX_RETRY_DELAY_S",
    "RETRYABLE_STATUSES",
    "RETRY_JITTER_FRACTION",
    "RetryPolicy",
    "is_retryable",
    "parse_retry_after",
    "retry_delay",
]

T = TypeVar("T")

_LOG = logging.getLogger("maas_tune.providers")

# 2 ** 32 * INITIAL is far above any cap; clamping avoids float overflow for absurd attempts.
_MAX_BACKOFF_EXPONENT = 32


def _finite_non_negative(value: float) -> float | None:
    return value if math.isfinite(value) and value >= 0 else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Read how long the server asks us to wait before retrying.

    Parameters
    ----------
    headers : Mapping[str, str]
        Response headers; names are matched case-insensitively.
        ``retry-after-ms`` (milliseconds) wins over ``retry-after``, which may be
        seconds (integer or decimal) or an HTTP date.
    now : float, optional
        Current POSIX time used to turn an HTTP date into a delay; defaults to
        :func:`time.time`.

    Returns
    -------
    float or None
        Seconds to wait, or None when no usable header is present (missing,
        negative, not finite, unparseable, or a date in the past).
    """
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms:
        try:
            parsed = _finite_non_negative(float(ms) / 1000.0)
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return _finite_non_negative(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown origin
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return _finite_non_negative(when.timestamp() - current)


def retry_delay(
    attempt: int, retry_after: float | None, *, rng: random.Random | None = None
) -> float:
    """How long to wait before the next retry.

    Parameters
    ----------
    attempt : int
        Number of retries already made (0 before the first retry).
    retry_after : float or None
        The server's requested delay in seconds (see :func:`parse_retry_after`).
    rng : random.Random, optional
        Source of jitter; pass a seeded one for deterministic delays.

    Returns
    -------
    float
        ``min(retry_after, MAX_RETRY_AFTER_S)`` when the server asked for a delay,
        otherwise ``min(INITIAL_RETRY_DELAY_S * 2**attempt, MAX_RETRY_DELAY_S)``
        reduced by up to ``RETRY_JITTER_FRACTION`` at random, so that many clients
        rate-limited together do not retry in lockstep.
    """
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        return min(retry_after, MAX_RETRY_AFTER_S)
    exponent = min(max(attempt, 0), _MAX_BACKOFF_EXPONENT)
    backoff = min(INITIAL_RETRY_DELAY_S * 2.0**exponent, MAX_RETRY_DELAY_S)
    draw = (rng or random).random()
    return backoff * (1.0 - RETRY_JITTER_FRACTION * draw)


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed request is worth retrying.

    Parameters
    ----------
    exc : BaseException
        The exception raised by the attempt.

    Returns
    -------
    bool
        True for connection errors, timeouts and statuses in
        :data:`RETRYABLE_STATUSES`; False for everything else (bad requests,
        authentication, malformed answers, programming errors).
    """
    if isinstance(exc, (ProviderConnectionError, ProviderTimeoutError)):
        return True
    if isinstance(exc, ProviderStatusError):
        return exc.status in RETRYABLE_STATUSES
    return False


@dataclass
class RetryPolicy:
    """Retries transient provider failures with Retry-After-aware backoff.

    Parameters
    ----------
    max_retries : int
        Retries after the first attempt; 0 disables retrying.
    sleep : Callable[[float], None]
        Called with each delay in seconds; tests inject a recorder.
    rng : random.Random, optional
        Source of jitter; pass a seeded one for deterministic delays.
    """

    max_retries: int = MAX_RETRIES
    sleep: Callable[[float], None] = field(default=time.sleep)
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ConfigurationError(
                f"max_retries must be an integer, got {self.max_retries!r}; pass e.g. max_retries=4"
            )
        if self.max_retries < 0:
            raise ConfigurationError(
                f"max_retries must be >= 0, got {self.max_retries}; pass 0 to disable retries"
            )

    def call(
        self,
        fn: Callable[[], T],
        *,
        sleep: Callable[[float], None] | None = None,
        allowed: Callable[[], bool] | None = None,
    ) -> T:
        """Call ``fn`` until it succeeds, fails for good, or retries run out.

        Parameters
        ----------
        fn : Callable[[], T]
            One attempt, e.g. a closure around :func:`~maas_tune.providers.http.request_json`.
        sleep : Callable[[float], None], optional
            Waits out each delay instead of :attr:`sleep` (e.g. a wait that a
            cancellation cuts short by raising).
        allowed : Callable[[], bool], optional
            Asked before each retry; False ends the retries (e.g. a budget reservation
            that cannot pay for another attempt).

        Returns
        -------
        T
            What the first successful attempt returned.

        Raises
        ------
        ProviderError
            The last attempt's own exception (never a wrapper); when
            retries ran out, its message ends with how many attempts were made.
        """
        attempt, wait = 1, sleep or self.sleep
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001  # re-raised when final; Ctrl-C never caught
                delay = self._after_failure(exc, attempt, allowed)
            wait(delay)
            attempt += 1

    async def acall(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]],
        allowed: Callable[[], bool] | None = None,
    ) -> T:
        """:meth:`call` for an async attempt ``fn``, waiting with the async ``sleep``."""
        attempt = 1
        while True:
            try:
                return await fn()
            except Exception as exc:  # noqa: BLE001  # re-raised when final; Ctrl-C never caught
                delay = self._after_failure(exc, attempt, allowed)
            await sleep(delay)
            attempt += 1

    def _after_failure(
        self, exc: BaseException, attempt: int, allowed: Callable[[], bool] | None
    ) -> float:
        """The delay before the next attempt after ``exc`` ended attempt ``attempt``
        (1-based); re-raises ``exc`` when it is final. The one place the policy lives
        (:meth:`call` and :meth:`acall` only loop)."""
        retryable = is_retryable(exc)
        if not retryable or attempt > self.max_retries or (allowed is not None and not allowed()):
            if retryable and attempt > 1 and exc.args:
                _LOG.debug("giving up after %d attempts: %s", attempt, exc)
                exc.args = (f"{exc.args[0]} (gave up after {attempt} attempts)", *exc.args[1:])
            raise exc
        delay = retry_delay(attempt - 1, getattr(exc, "retry_after", None), rng=self.rng)
        _LOG.info(  # shown with --verbose: retries are normal on hosted APIs, but not free
            "attempt %d of %d failed (%s: %s); retrying in %.2f s",
            attempt,
            self.max_retries + 1,
            type(exc).__name__,
            exc,
            delay,
        )
        return delay
