"""The options every HTTP provider takes, checked once: the requests-in-flight cap and
the API root, model and timeout."""

from __future__ import annotations

from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_CONCURRENCY",
    "RATE_LIMITED_CONCURRENCY",
    "check_api_options",
    "check_count",
    "concurrency_for",
]

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
