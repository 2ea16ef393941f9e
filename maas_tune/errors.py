"""The exception tree of maas-tune: every error the SDK raises derives from one root.

::

    MaasTuneError
    ├── ConfigurationError          bad argument, option or environment (also a ValueError)
    │   ├── TaskError               template / verbalizer problems
    │   ├── DataError               data files: missing field, unknown label, bad encoding
    │   └── MissingDependencyError  an optional extra is not installed (also an ImportError)
    ├── BudgetExceeded              the next request would pass the query, token or cost cap
    ├── OfflineCacheMiss            offline mode and some samples are not cached
    ├── NotFittedError              a decoder used before ``fit`` (also a ValueError)
    ├── SerializationError          a saved decoder is corrupt, truncated or incompatible
    ├── CacheError                  the on-disk store cannot be used
    │   └── CacheCorruptionError    the file is not a maas-tune store or is damaged
    └── ProviderError               the model provider failed
        ├── ProviderConnectionError cannot connect
        │   └── ProviderTimeoutError
        ├── ProviderStatusError     the provider answered with an error status
        └── ProviderResponseError   the answer is malformed or lacks what was asked for

A cache miss is not an exception (``ScoreCache.get_many`` simply omits the key);
``OfflineCacheMiss`` is raised only when the user asked never to send a query.
"""

from __future__ import annotations

from ._money import format_usd

__all__ = [
    "BudgetExceeded",
    "CacheCorruptionError",
    "CacheError",
    "ConfigurationError",
    "DataError",
    "MaasTuneError",
    "MissingDependencyError",
    "NotFittedError",
    "OfflineCacheMiss",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderResponseError",
    "ProviderStatusError",
    "ProviderTimeoutError",
    "SerializationError",
    "TaskError",
]


class MaasTuneError(Exception):
    """Root of every exception raised by maas-tune."""


class ConfigurationError(MaasTuneError, ValueError):
    """An argument, option or environment setting is invalid."""


class TaskError(ConfigurationError):
    """A task's template or verbalizer is invalid."""


class DataError(ConfigurationError):
    """A data file or in-memory dataset is invalid."""


class MissingDependencyError(MaasTuneError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package!r} is required for this feature but is not installed; "
            f"install it with: pip install 'maas-tune[{extra}]'"
        )


class BudgetExceeded(MaasTuneError):
    """The next request would exceed a query budget; nothing was sent.

    Attributes
    ----------
    budget : str
        Name of the budget.
    unit : str
        ``"queries"``, ``"prompt_tokens"`` or ``"cost"`` (US dollars).
    limit, spent, requested : int or float
        The cap, what was already spent (committed plus reserved), and what the
        refused request needed (floats in US dollars for ``"cost"``).
    """

    def __init__(
        self, budget: str, unit: str, limit: float, spent: float, requested: float
    ) -> None:
        self.budget = budget
        self.unit = unit
        self.limit = limit
        self.spent = spent
        self.requested = requested
        cap = f"max_{unit}"
        value = "USD" if unit == "cost" else "N"
        super().__init__(
            f"{self.summary}; raise its cap (QueryBudget.set_limits({cap}=...), or `maas-tune "
            f"budget set {budget} --{cap.replace('_', '-')} {value}`) or use a cached run"
        )

    @property
    def summary(self) -> str:
        """What was refused, without advice (the CLI adds the flag that raises that cap)."""
        if self.unit == "cost":
            requested, spent, limit, remaining = (
                format_usd(x) for x in (self.requested, self.spent, self.limit, self.remaining)
            )
            return (
                f"budget {self.budget!r} would be exceeded: {requested} more cost requested, "
                f"{spent} of the {limit} cost cap already spent or reserved ({remaining} remaining)"
            )
        return (
            f"budget {self.budget!r} would be exceeded: {self.requested} more "
            f"{self.unit.replace('_', ' ')} requested, {self.spent} of {self.limit} already "
            f"spent or reserved ({self.remaining} remaining)"
        )

    @property
    def remaining(self) -> float:
        """How many units (or dollars) are still available under the cap."""
        return max(0, self.limit - self.spent)


class OfflineCacheMiss(MaasTuneError):
    """Offline (cache-only) mode was requested, but some samples are not cached."""

    def __init__(self, missing: int = 0, total: int = 0, *, what: str | None = None) -> None:
        self.missing = missing
        self.total = total
        subject = what or f"{missing} of {total} samples"
        verb = "is" if what else "are"
        super().__init__(
            f"offline mode: {subject} {verb} not in the cache and nothing was sent; "
            "run once without --offline to fetch them, or point --cache at the cache that has them"
        )


class NotFittedError(MaasTuneError, ValueError):
    """A decoder was used before ``fit`` was called."""


class SerializationError(MaasTuneError):
    """A saved decoder cannot be read: corrupt, truncated, or written for something else."""


class CacheError(MaasTuneError):
    """The on-disk cache / budget store cannot be used."""


class CacheCorruptionError(CacheError):
    """The store file is not a maas-tune database or is damaged."""


class ProviderError(MaasTuneError):
    """The model provider failed to answer.

    ``request_sent`` is True when the request may have reached the provider (and so
    may have been billed): the client then counts it as spent instead of releasing it.
    """

    request_sent: bool = False


class ProviderConnectionError(ProviderError):
    """The provider could not be reached."""


class ProviderTimeoutError(ProviderConnectionError):
    """The provider did not answer in time."""


class ProviderStatusError(ProviderError):
    """The provider answered with an error status.

    The message carries the status, error type, request id and an excerpt of the
    body, never credentials. ``retry_after`` is the delay the server asked for
    (seconds), if any.
    """

    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str | None = None,
        request_id: str | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        self.status = status
        self.error_type = error_type
        self.request_id = request_id
        self.body_excerpt = body_excerpt
        super().__init__(message)


class ProviderResponseError(ProviderError):
    """The provider's answer is malformed or lacks what was asked for."""
