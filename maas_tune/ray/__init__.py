"""Distributed scoring and prediction on Ray: a pool of actors sharing one cache, budget and rate limit.

Each actor of a ``Dataset.map_batches`` pool holds one HTTP provider and a
:class:`~maas_tune.client.Client` on the shared store (``cache_url``), so a sample is
paid for once whichever worker scores it, the budget cap holds for all of them, and
one :class:`~maas_tune.ray.actors.BucketActor` paces every request to the
provider's rate limit. Needs the ``ray`` extra (``pip install 'maas-tune[ray]'``)::

    import ray
    from maas_tune.ray import BudgetSpec, ProviderConfig, score

    ds = ray.data.read_json("reviews.jsonl")            # a "text" column
    scored = score(ds, task, ProviderConfig("https://api.example.com/v1", "my-model"),
                   "/shared/maas-tune.sqlite", BudgetSpec("reviews", max_queries=1_000_000),
                   num_workers=8, rate_limit=RateLimit(requests_per_minute=3_000))
    scored.write_parquet("scored/")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._constants import MAX_RETRIES
from ..client import CLIENT_CHUNK_SIZE
from ..errors import ConfigurationError, MissingDependencyError
from ..providers.options import (
    API_KEY_ENV,
    DEFAULT_TIMEOUT_S,
    HTTPOptions,
    check_api_options,
    check_count,
    concurrency_for,
)
from ..providers.ratelimit import RateLimit, RateLimiter
from ..providers.spec import HTTP_KINDS, ProviderSpec
from ..storage.budget import QueryBudget
from ..task import Task
from .actors import BucketActor, Predictor, Scorer, SharedRateLimiter, WorkerSetup

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_NUM_WORKERS",
    "RATE_LIMIT_ACTOR",
    "RAY_NAMESPACE",
    "BudgetSpec",
    "ProviderConfig",
    "SharedRateLimiter",
    "predict",
    "score",
    "shared_rate_limiter",
]

#: Actors in the scoring pool when not told.
DEFAULT_NUM_WORKERS = 2
#: Rows per ``map_batches`` batch: a retried batch re-reads at most this many cache rows.
DEFAULT_BATCH_SIZE = 256
#: Logical CPUs reserved per scoring actor: they wait on the network, not the CPU.
DEFAULT_WORKER_CPUS = 0.25
#: Ray namespace of the named rate-limit actor (so every job on the cluster finds it).
RAY_NAMESPACE = "maas_tune"
#: Default name of the shared rate-limit actor.
RATE_LIMIT_ACTOR = "maas-tune-rate-limit"


def _ray() -> Any:
    try:
        import ray
        import ray.data  # the Data library is part of the extra
    except ImportError as exc:
        raise MissingDependencyError("ray[data]", "ray") from exc
    return ray


class ProviderConfig(ProviderSpec):
    """How each worker builds its provider: a :class:`~maas_tune.providers.spec.ProviderSpec`
    of an HTTP provider, without credentials.

    Parameters
    ----------
    base_url : str
        API root including the version, e.g. ``"https://api.example.com/v1"``; must
        not carry a key (``user:key@`` or ``?key=``).
    model : str
    kind : {"completions", "chat"}, default "completions"
        :class:`~maas_tune.providers.openai.OpenAICompletionsProvider` or
        :class:`~maas_tune.providers.chat.OpenAIChatProvider`.
    strategy : str, default "auto"
    max_concurrency : int or None, default None
        Requests in flight per worker; None follows the rate limit as
        :class:`~maas_tune.client.Client` does (up to 256 in flight under a limit, the
        limiter setting the pace; 4 without one).
    timeout : float, default 30.0
    max_retries : int, default 4
    api_key_env : str or None
        Environment variable holding the key *on the workers*; None reads
        :data:`~maas_tune.providers.options.API_KEY_ENV` (``MAAS_TUNE_API_KEY``,
        ``OPENAI_API_KEY``). The key is read in each worker process, so it never
        enters the Ray object store, task arguments or logs: set it on every node
        (e.g. from a secret), not through ``runtime_env``, which Ray stores.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        kind: str = "completions",
        strategy: str = "auto",
        max_concurrency: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
        api_key_env: str | None = None,
    ) -> None:
        check_api_options(base_url, model, concurrency_for(max_concurrency, None), timeout)
        if kind not in HTTP_KINDS:
            raise ConfigurationError(f"kind must be one of {HTTP_KINDS}, got {kind!r}")
        http = HTTPOptions(
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            api_key_env=api_key_env,
        )
        super().__init__(kind=kind, base_url=base_url, model=model, strategy=strategy, http=http)
        if self.carries_credentials():
            raise ConfigurationError(
                "base_url carries credentials or a query string, which would be copied to every "
                "worker; pass the bare API root and put the key in the workers' environment "
                f"({' or '.join(API_KEY_ENV)}, or the variable named by api_key_env)"
            )

    @property
    def max_concurrency(self) -> int | None:
        """Requests in flight per worker (None: as the rate limit calls for)."""
        return self.http.max_concurrency

    @property
    def timeout(self) -> float:
        """Per-request timeout in seconds."""
        return self.http.timeout

    @property
    def max_retries(self) -> int:
        """Retries of a failed request."""
        return self.http.max_retries

    @property
    def api_key_env(self) -> str | None:
        """The environment variable the workers read the key from (None: the defaults)."""
        return self.http.api_key_env


@dataclass(frozen=True)
class BudgetSpec:
    """A budget shared by every worker: its name in the store and the caps to store.

    Parameters
    ----------
    name : str
    max_queries, max_prompt_tokens : int or None
        Caps written to the ledger once, by the driver (``None`` keeps the stored one).
    """

    name: str
    max_queries: int | None = None
    max_prompt_tokens: int | None = None


def shared_rate_limiter(limit: RateLimit, *, name: str = RATE_LIMIT_ACTOR) -> SharedRateLimiter:
    """The rate limiter every worker of the cluster shares: a named actor holding one bucket.

    Call it on the driver (Ray must be initialised); the actor lives as long as the
    driver's job. A second call with the same ``name`` (another job, or a later
    run) returns the same bucket, set to ``limit``. Use one name per provider
    account: its limits are what the bucket enforces.

    Parameters
    ----------
    limit : RateLimit
    name : str
        The actor's name in the :data:`RAY_NAMESPACE` namespace.

    Returns
    -------
    SharedRateLimiter
        Picklable; pass it as ``rate_limit=`` to a provider, or to :func:`score`.
    """
    ray = _ray()
    if not isinstance(limit, RateLimit):
        raise ConfigurationError(f"limit must be a RateLimit, got {limit!r}")
    actor_class = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(BucketActor)
    actor = actor_class.options(name=name, namespace=RAY_NAMESPACE, get_if_exists=True).remote(
        limit
    )
    ray.get(actor.configure.remote(limit))
    return SharedRateLimiter(actor, limit)


def score(
    dataset: ray.data.Dataset,
    task: Task,
    provider_config: ProviderConfig,
    cache_url: str | Path,
    budget: BudgetSpec | str | None,
    *,
    num_workers: int = DEFAULT_NUM_WORKERS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rate_limit: RateLimit | SharedRateLimiter | None = None,
    num_cpus: float = DEFAULT_WORKER_CPUS,
    chunk_size: int = CLIENT_CHUNK_SIZE,
) -> ray.data.Dataset:
    """Label scores of every row, fetched by a pool of Ray actors sharing one cache and budget.

    Parameters
    ----------
    dataset : ray.data.Dataset
        Rows with a ``text`` column (and ``text_b`` for pair tasks); other columns
        are kept.
    task : Task
    provider_config : ProviderConfig
        Each actor builds one provider from it (the key comes from its environment).
    cache_url : str or Path
        The store every actor opens: ``ScoreCache(store=cache_url)``, and the
        budget ledger in it. All workers must reach it (a file on one machine; a
        database URL across machines).
    budget : BudgetSpec, str or None
        The shared budget (a name alone keeps the caps already stored); None: no cap.
    num_workers : int, default 2
        Actors in the pool, each with ``provider_config.max_concurrency`` requests in flight
        (by default as many as the rate limit calls for).
    batch_size : int, default 256
        Rows per batch handed to an actor.
    rate_limit : RateLimit, SharedRateLimiter or None
        The provider's limit, shared by all actors through :func:`shared_rate_limiter`.
    num_cpus : float, default 0.25
        Logical CPUs Ray reserves per actor (they mostly wait on the network).
    chunk_size : int, default 16
        Prompts per reservation / provider call / cache commit in each actor.

    Returns
    -------
    ray.data.Dataset
        Lazy: the input rows plus ``label_logprobs`` (K float32 per row),
        ``cache_hit``, ``prompt_tokens`` and ``scored``; scoring runs when it is
        consumed.

    Raises
    ------
    MissingDependencyError
        Ray is not installed.
    ConfigurationError
        An argument is invalid (checked here, on the driver).

    Notes
    -----
    Budget: the cap is never passed, whatever the number of workers (each chunk is
    reserved in the shared ledger before it is sent). When the cap is reached the
    job does not fail: rows it cannot pay for are not sent and come back with
    ``scored=False`` and NaN ``label_logprobs`` (a batch that no longer fits is
    scored chunk by chunk, so the cap is used up to one chunk). Everything paid for
    is cached: rerun with a higher cap and only the unscored rows are paid for.

    Failures: Ray Data restarts a dead actor and retries its batch. Answers already
    committed are cache hits on the retry; only the requests in flight when the
    worker died may be sent again (at most ``chunk_size`` per dead worker), and
    their reservation is counted as spent, so the ledger may over-count, never
    under-count, what was billed.
    """
    return _map(
        dataset,
        Scorer,
        (),
        _setup(task, provider_config, cache_url, budget, rate_limit, chunk_size),
        num_workers,
        batch_size,
        num_cpus,
    )


def predict(
    dataset: ray.data.Dataset,
    task: Task,
    provider_config: ProviderConfig,
    cache_url: str | Path,
    budget: BudgetSpec | str | None,
    decoder_dir: str | Path,
    *,
    num_workers: int = DEFAULT_NUM_WORKERS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rate_limit: RateLimit | SharedRateLimiter | None = None,
    num_cpus: float = DEFAULT_WORKER_CPUS,
    chunk_size: int = CLIENT_CHUNK_SIZE,
) -> ray.data.Dataset:
    """Predictions of a fitted decoder for every row: :func:`score`, then the decoder in each actor.

    Parameters
    ----------
    decoder_dir : str or Path
        A directory written by :func:`~maas_tune.persistence.save_decoder`, readable
        by every worker; each actor loads it once.
    dataset, task, provider_config, cache_url, budget, num_workers, batch_size, \
rate_limit, num_cpus, chunk_size
        As for :func:`score`.

    Returns
    -------
    ray.data.Dataset
        The :func:`score` columns plus ``prediction`` (class name) and
        ``probabilities`` (K float32 per row).
    """
    from ..persistence import load_decoder

    load_decoder(decoder_dir)  # fail here, not in every actor, if it cannot be read
    setup = _setup(task, provider_config, cache_url, budget, rate_limit, chunk_size)
    return _map(dataset, Predictor, (str(decoder_dir),), setup, num_workers, batch_size, num_cpus)


def _setup(
    task: Task,
    provider_config: ProviderConfig,
    cache_url: str | Path,
    budget: BudgetSpec | str | None,
    rate_limit: RateLimit | SharedRateLimiter | None,
    chunk_size: int,
) -> WorkerSetup:
    """Check the arguments and store the budget's caps, once, on the driver."""
    _ray()
    if not isinstance(task, Task):
        raise ConfigurationError(f"task must be a Task, got {task!r}")
    if not isinstance(provider_config, ProviderConfig):
        raise ConfigurationError(
            f"provider_config must be a ProviderConfig, got {provider_config!r}; "
            "e.g. ProviderConfig('https://api.example.com/v1', 'my-model')"
        )
    check_count("chunk_size", chunk_size)
    name = _budget_name(budget, str(cache_url))
    limiter: RateLimiter | None = None
    if isinstance(rate_limit, RateLimit):
        limiter = None if rate_limit.unlimited else shared_rate_limiter(rate_limit)
    elif isinstance(rate_limit, SharedRateLimiter) or rate_limit is None:
        limiter = rate_limit
    else:
        raise ConfigurationError(
            f"rate_limit must be a RateLimit, a SharedRateLimiter or None, got {rate_limit!r}; "
            "a process-local limiter would let each worker send the whole rate"
        )
    return WorkerSetup(task, provider_config, str(cache_url), name, limiter, chunk_size)


def _budget_name(budget: BudgetSpec | str | None, cache_url: str) -> str | None:
    if budget is None:
        return None
    spec = BudgetSpec(budget) if isinstance(budget, str) else budget
    if not isinstance(spec, BudgetSpec):
        raise ConfigurationError(
            f"budget must be a BudgetSpec, a budget name or None, got {budget!r}; "
            "e.g. BudgetSpec('my-job', max_queries=100_000)"
        )
    QueryBudget(spec.name, spec.max_queries, spec.max_prompt_tokens, store=cache_url).close()
    return spec.name


def _map(
    dataset: ray.data.Dataset,
    udf: type,
    extra_args: tuple[Any, ...],
    setup: WorkerSetup,
    num_workers: int,
    batch_size: int,
    num_cpus: float,
) -> ray.data.Dataset:
    ray = _ray()
    check_count("num_workers", num_workers)
    check_count("batch_size", batch_size)
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
        raise ConfigurationError(f"num_cpus must be a number >= 0, got {num_cpus!r}")
    return dataset.map_batches(
        udf,
        fn_constructor_args=(setup, *extra_args),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=num_cpus,
    )
