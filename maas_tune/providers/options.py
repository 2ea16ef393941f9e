"""How every request to an API is sent: the options all HTTP providers share
(:class:`HTTPOptions`, openai-python's constructor arguments), checked once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._constants import MAX_RETRIES
from ..errors import ConfigurationError
from .extras import extra_headers, extra_query, resolve_base_url
from .http import is_secret_name
from .ratelimit import RateLimit, RateLimiter

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT_S",
    "RATE_LIMITED_CONCURRENCY",
    "HTTPOptions",
    "Pairs",
    "check_api_options",
    "check_count",
    "concurrency_for",
]

#: Environment variables read for the API key, first match wins.
API_KEY_ENV = ("MAAS_TUNE_API_KEY", "OPENAI_API_KEY")
#: Default per-request timeout in seconds (connect, read, write and pool alike).
DEFAULT_TIMEOUT_S = 30.0
#: (name, value) pairs: headers or query parameters, hashable and picklable.
Pairs = tuple[tuple[str, str], ...]

#: Default number of requests in flight at once, without a rate limit.
DEFAULT_CONCURRENCY = 4
#: Default cap on the requests in flight with a rate limit: the limiter paces them, so
#: ``rate x latency`` are in flight (400/s at 200 ms: 80), up to this many.
RATE_LIMITED_CONCURRENCY = 256


def check_count(name: str, value: object) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")


def concurrency_for(max_concurrency: int | None, rate_limit: object) -> int:
    """The requests-in-flight cap: ``max_concurrency`` when given; else
    :data:`RATE_LIMITED_CONCURRENCY` under a rate limit (the limiter sets the pace, the
    latency the number in flight), :data:`DEFAULT_CONCURRENCY` without one."""
    if max_concurrency is not None:
        return max_concurrency
    unlimited = rate_limit is None or getattr(rate_limit, "unlimited", False) is True
    return DEFAULT_CONCURRENCY if unlimited else RATE_LIMITED_CONCURRENCY


def check_api_options(base_url: str, model: str, max_concurrency: int, timeout: float) -> None:
    """Check the options every HTTP provider takes; each error says what to pass instead."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"base_url must be an http:// or https:// URL, got {base_url!r}; "
            "e.g. 'http://127.0.0.1:8000/v1'"
        )
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
    check_count("max_concurrency", max_concurrency)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")


@dataclass(frozen=True)
class HTTPOptions:
    """How every request to the API is sent: the options all HTTP providers share.

    Attributes
    ----------
    timeout : float
        Per-request timeout in seconds.
    max_retries : int
        Retries of a failed request (connect errors, timeouts, 408/409/429/5xx).
    rate_limit : RateLimit, RateLimiter or None
        The account's limit, paced on the client side (None: no limit). A spec that is
        pickled holds a :class:`RateLimit` (or a shared limiter, which pickles).
    max_concurrency : int or None
        Requests in flight at most; None follows the rate limit (4 without one, up to
        256 with one).
    api_key_env : str or None
        Environment variable holding the key in the process that builds the provider;
        None reads ``MAAS_TUNE_API_KEY``, else ``OPENAI_API_KEY``.
    headers, query : tuple of (name, value)
        Sent with every request (openai-python's ``default_headers`` / ``default_query``).
    """

    timeout: float = DEFAULT_TIMEOUT_S
    max_retries: int = MAX_RETRIES
    rate_limit: RateLimit | RateLimiter | None = None
    max_concurrency: int | None = None
    api_key_env: str | None = None
    headers: Pairs = ()
    query: Pairs = ()

    def __repr__(self) -> str:
        def shown(found: Pairs) -> Pairs:
            return tuple((n, "***" if is_secret_name(n) else v) for n, v in found)

        return (
            f"HTTPOptions(timeout={self.timeout!r}, max_retries={self.max_retries!r}, "
            f"rate_limit={self.rate_limit!r}, max_concurrency={self.max_concurrency!r}, "
            f"api_key_env={self.api_key_env!r}, headers={shown(self.headers)!r}, "
            f"query={shown(self.query)!r})"
        )

    def api_key(self) -> str | None:
        """The key from :attr:`api_key_env` in this process (None: the providers read
        their default variables).

        Raises
        ------
        ConfigurationError
            ``api_key_env`` names a variable that is not set here.
        """
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigurationError(
                f"the environment variable {self.api_key_env} is not set in this process; set "
                "it where the provider is built (on Ray: on every node, not through "
                "runtime_env, which Ray stores)"
            )
        return key

    def keywords(self, limiter: RateLimit | RateLimiter | None) -> dict[str, Any]:
        """The keyword arguments of every HTTP provider's constructor, key included."""
        found: dict[str, Any] = {
            "api_key": self.api_key(),
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "rate_limit": limiter,
            "max_concurrency": self.max_concurrency,
        }
        if self.headers:
            found["default_headers"] = dict(self.headers)
        if self.query:
            found["default_query"] = dict(self.query)
        return found

    @classmethod
    def for_api(
        cls,
        base_url: str | None,
        model: str,
        timeout: float,
        max_retries: int,
        rate_limit: RateLimit | RateLimiter | None,
        max_concurrency: int | None,
        default_headers: Mapping[str, str] | None,
        default_query: Mapping[str, str] | None,
    ) -> tuple[str, HTTPOptions]:
        """What every HTTP provider's constructor does with the arguments they share
        (openai-python's): the base URL (``base_url=None`` reads ``MAAS_TUNE_BASE_URL``,
        else ``OPENAI_BASE_URL``) and the options its session takes, checked — the
        requests-in-flight cap follows the rate limit when not given, and headers and query
        parameters are checked by :func:`~maas_tune.providers.extras.extra_headers`.

        Raises
        ------
        ConfigurationError
            Naming the argument that is wrong and what to pass (a credential is not shown).
        """
        base_url = resolve_base_url(base_url)
        concurrency = concurrency_for(max_concurrency, rate_limit)
        check_api_options(base_url, model, concurrency, timeout)
        options = cls(
            timeout=timeout,
            max_retries=max_retries,
            rate_limit=rate_limit,
            max_concurrency=concurrency,
            headers=tuple(extra_headers(default_headers)),
            query=tuple(extra_query(default_query)),
        )
        return base_url, options

    def carries_credentials(self) -> bool:
        """Whether a header or query parameter has a credential-like name."""
        return any(is_secret_name(name) for name, _ in (*self.headers, *self.query))
