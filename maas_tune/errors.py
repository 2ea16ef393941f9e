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
        ├── ProviderStatusError     the provider answered with an error status (``status_code``)
        │   ├── BadRequestError           400
        │   ├── AuthenticationError       401
        │   ├── PermissionDeniedError     403
        │   ├── NotFoundError             404
        │   ├── ConflictError             409
        │   ├── UnprocessableEntityError  422
        │   ├── RateLimitError            429
        │   └── InternalServerError       >= 500
        └── ProviderResponseError   the answer is malformed or lacks what was asked for

A cache miss is not an exception (``ScoreCache.get_many`` simply omits the key);
``OfflineCacheMiss`` is raised only when the user asked never to send a query.

The status subclasses carry openai-python's names, so ``except RateLimitError`` reads the
same with either SDK; one factory (:func:`maas_tune.providers.http.status_error`) picks
the class, and other statuses (408, 413, ...) stay plain ``ProviderStatusError``.
"""

from __future__ import annotations

from typing import Any

from ._money import format_usd

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceeded",
    "CacheCorruptionError",
    "CacheError",
    "ConfigurationError",
    "ConflictError",
    "DataError",
    "InternalServerError",
    "MaasTuneError",
    "MissingDependencyError",
    "NotFittedError",
    "NotFoundError",
    "OfflineCacheMiss",
    "PermissionDeniedError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderResponseError",
    "ProviderStatusError",
    "ProviderTimeoutError",
    "RateLimitError",
    "SerializationError",
    "TaskError",
    "UnprocessableEntityError",
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

    @property
    def status_code(self) -> int:
        """The HTTP status (openai-python's name for :attr:`status`)."""
        return self.status

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments: the default pickling (Ray, multiprocessing) would fail.
        fields = {
            "status": self.status,
            "error_type": self.error_type,
            "request_id": self.request_id,
            "body_excerpt": self.body_excerpt,
        }
        return (_rebuild_status_error, (type(self), self.args, fields, self.__dict__.copy()))


def _rebuild_status_error(
    cls: type[ProviderStatusError],
    args: tuple[Any, ...],
    fields: dict[str, Any],
    state: dict[str, Any],
) -> ProviderStatusError:
    err = cls(*(args or ("",)), **fields)
    err.__dict__.update(state)
    return err


class BadRequestError(ProviderStatusError):
    """HTTP 400: the provider refused the request as malformed."""


class AuthenticationError(ProviderStatusError):
    """HTTP 401: the API key is missing or invalid."""


class PermissionDeniedError(ProviderStatusError):
    """HTTP 403: the key may not use this model or endpoint."""


class NotFoundError(ProviderStatusError):
    """HTTP 404: no such route or model (check the base URL and the model name)."""


class ConflictError(ProviderStatusError):
    """HTTP 409: the provider reported a conflict (retried automatically)."""


class UnprocessableEntityError(ProviderStatusError):
    """HTTP 422: the request was well-formed but its values were refused."""


class RateLimitError(ProviderStatusError):
    """HTTP 429: rate limit or quota reached (retried automatically after the delay asked)."""


class InternalServerError(ProviderStatusError):
    """HTTP 500 or above: the provider failed on its side (most are retried automatically)."""


class ProviderResponseError(ProviderError):
    """The provider's answer is malformed or lacks what was asked for."""
