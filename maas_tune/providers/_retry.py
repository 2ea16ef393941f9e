"""Retry policy for HTTP providers: Retry-After parsing, jittered backoff and the tenacity loop."""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

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
        self, fn: Callable[[], T], *, sleep: Callable[[float], None] | None = None,
        allowed: Callable[[], bool] | None = None,
    ) -> T:
        """Call ``fn`` until it succeeds, fails for good, or retries run out.

        Parameters
        ----------
        fn : Callable[[], T]
            One attempt, e.g. a closure around :func:`~maas_tune.providers._http.request_json`.
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
            The last attempt's own exception (never a tenacity ``RetryError``); when
            retries ran out, its message ends with how many attempts were made.
        """
        retrying = self._retrying(sleep or self.sleep, allowed)
        try:
            return retrying(fn)
        except BaseException as exc:
            if is_retryable(exc):
                attempts = retrying.statistics.get("attempt_number")
                _LOG.debug("giving up after %d attempts: %s", attempts, exc)
                if isinstance(attempts, int) and attempts > 1 and exc.args:
                    exc.args = (f"{exc.args[0]} (gave up after {attempts} attempts)",
                                *exc.args[1:])
            raise

    async def acall(
        self, fn: Callable[[], Awaitable[T]], *, sleep: Callable[[float], Awaitable[None]],
        allowed: Callable[[], bool] | None = None,
    ) -> T:
        """:meth:`call` for an async attempt ``fn``, waiting with the async ``sleep``."""
        retrying = self._retrying(sleep, allowed, AsyncRetrying)
        try:
            return await retrying(fn)  # type: ignore[no-any-return]
        except BaseException as exc:
            if is_retryable(exc):
                attempts = retrying.statistics.get("attempt_number")
                if isinstance(attempts, int) and attempts > 1 and exc.args:
                    exc.args = (f"{exc.args[0]} (gave up after {attempts} attempts)",
                                *exc.args[1:])
            raise

    def _retrying(
        self, sleep: Any, allowed: Callable[[], bool] | None, kind: Any = None,
    ) -> Any:
        # The one place the tenacity policy is assembled; a fresh one per call keeps
        # its statistics private to that call (and thread-safe).
        def retryable(exc: BaseException) -> bool:
            return is_retryable(exc) and (allowed is None or allowed())

        return (kind or Retrying)(
            retry=retry_if_exception(retryable),
            wait=self._wait,
            stop=stop_after_attempt(self.max_retries + 1),
            sleep=sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        return retry_delay(state.attempt_number - 1, retry_after, rng=self.rng)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        _LOG.info(  # shown with --verbose: retries are normal on hosted APIs, but not free
            "attempt %d of %d failed (%s: %s); retrying in %.2f s",
            state.attempt_number,
            self.max_retries + 1,
            type(exc).__name__,
            exc,
            delay,
        )
