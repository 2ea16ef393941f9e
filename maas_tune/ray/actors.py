"""What runs inside Ray workers: the shared rate-limit bucket and the scoring/prediction UDFs.

Nothing here imports Ray: :mod:`maas_tune.ray` wraps these classes in ``ray.remote`` or
hands them to ``Dataset.map_batches``, which builds one instance per actor of the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..client import Client
from ..data import Example
from ..errors import BudgetExceeded, DataError
from ..providers.base import Provider
from ..providers.ratelimit import RateLimit, RateLimiter, TokenBucket
from ..scores import Scores
from ..storage.budget import QueryBudget
from ..storage.cache import ScoreCache
from ..task import Task

__all__ = [
    "BucketActor",
    "Predictor",
    "ProviderFactory",
    "Scorer",
    "SharedRateLimiter",
    "WorkerSetup",
]

Batch = dict[str, np.ndarray]

_LOG = logging.getLogger(__name__)


class BucketActor:
    """One :class:`~maas_tune.providers.ratelimit.TokenBucket` on the actor's clock, for every worker.

    Ray runs an actor's calls one at a time, so each booking is atomic; callers
    receive how long to wait and sleep on their side, so the actor never blocks.
    Waits are relative, so clocks of different machines need not agree.
    """

    def __init__(self, limit: RateLimit) -> None:
        self._bucket = TokenBucket(limit, time.monotonic())

    def configure(self, limit: RateLimit) -> None:
        """Replace the limit (a new job with other numbers); the bucket starts full."""
        if limit != self._bucket.limit:
            self._bucket = TokenBucket(limit, time.monotonic())

    def reserve(self, requests: float, tokens: float) -> float:
        """Book a request; return the seconds the caller waits before sending it."""
        return self._bucket.reserve(requests, tokens, time.monotonic())

    def reserve_many(self, costs: list[tuple[float, float]]) -> list[float]:
        """Book several requests in order (a whole chunk: one call); their waits."""
        now = time.monotonic()
        return [self._bucket.reserve(r, t, now) for r, t in costs]

    def penalize(self, seconds: float) -> None:
        """Pause every caller for ``seconds`` (a 429's Retry-After)."""
        self._bucket.penalize(seconds, time.monotonic())


class SharedRateLimiter(RateLimiter):
    """A :class:`~maas_tune.providers.ratelimit.RateLimiter` backed by a :class:`BucketActor`.

    Picklable (it holds only the actor handle), so it travels to every Ray worker;
    get one from :func:`maas_tune.ray.shared_rate_limiter`. Each request costs one
    actor call (well under a millisecond on one machine; a network round trip
    between machines), made before the request is sent.
    """

    def __init__(self, actor: Any, limit: RateLimit) -> None:
        self._actor = actor
        self.limit = limit

    def __repr__(self) -> str:
        return f"SharedRateLimiter({self.limit!r})"

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        import ray

        wait = ray.get(self._actor.reserve.remote(requests, tokens))
        if wait > 0:
            time.sleep(wait)

    def reserve_many(self, costs: list[tuple[int, int]]) -> list[float]:
        """Book a whole chunk in one actor call; the seconds each request waits."""
        import ray

        return list(ray.get(self._actor.reserve_many.remote(list(costs))))

    def penalize(self, seconds: float) -> None:
        self._actor.penalize.remote(seconds)  # no need to wait: the next booking sees it


class ProviderFactory(Protocol):
    """What builds each worker's provider (:class:`maas_tune.ray.ProviderConfig`): the
    actors depend on this, not on the driver module that calls them."""

    def build(self, rate_limit: RateLimit | RateLimiter | None = None) -> Provider:
        """The provider, pacing its requests with ``rate_limit``."""
        ...


@dataclass(frozen=True)
class WorkerSetup:
    """What each actor of the pool needs to build its client (plain, picklable data).

    Attributes
    ----------
    task : Task
    provider : ProviderFactory
        A :class:`maas_tune.ray.ProviderConfig`; holds no credentials: the key is read from the worker's environment.
    cache_url : str
        The shared store: ``ScoreCache(store=cache_url)`` and the budget ledger.
    budget : str or None
        Name of the shared :class:`~maas_tune.storage.budget.QueryBudget` (its caps were
        stored by the driver); None sends without a cap.
    rate_limiter : RateLimiter or None
        Shared by all actors (a :class:`SharedRateLimiter`), or None.
    chunk_size : int
        Prompts per reservation / provider call / cache commit (see :class:`Client`).
    """

    task: Task
    provider: ProviderFactory
    cache_url: str
    budget: str | None
    rate_limiter: RateLimiter | None
    chunk_size: int


class Scorer:
    """The ``map_batches`` UDF: one provider, cache, budget and :class:`Client` per actor.

    Adds ``label_logprobs`` (shape (n, K), float32), ``cache_hit`` (n,),
    ``prompt_tokens`` (n,) and ``scored`` (n,) to each batch; reads ``text`` (and
    ``text_b`` for pair tasks).

    When the budget cannot pay for a whole batch, the batch is scored chunk by chunk
    (``chunk_size`` prompts): chunks the budget still covers, or that are cached, are
    scored; the others are not sent, and their rows get ``scored=False`` and NaN
    label log-probs. The job itself goes on, so one run reports every row it could
    not afford; rerun with a higher cap to pay for exactly those.
    """

    def __init__(self, setup: WorkerSetup) -> None:
        self.task = setup.task
        self.chunk_size = setup.chunk_size
        provider = setup.provider.build(rate_limit=setup.rate_limiter)
        cache = ScoreCache(store=setup.cache_url)
        # One store for both, so that answers and their spend commit in one transaction.
        budget = None if setup.budget is None else QueryBudget(setup.budget, store=cache.store)
        self.client = Client(
            provider, cache=cache, budget=budget, progress=False, chunk_size=setup.chunk_size
        )

    def __call__(self, batch: Batch) -> Batch:
        scores, scored = self._score(_examples(batch))
        return {**batch, **_score_columns(scores, scored, len(self.task.labels))}

    def _score(self, examples: list[Example]) -> tuple[Scores | None, np.ndarray]:
        """Scores of the rows the budget allows (in order) and the (n,) mask of those rows."""
        try:
            return self.client.score(self.task, examples), np.ones(len(examples), dtype=bool)
        except BudgetExceeded:
            pass
        parts: list[Scores] = []
        scored = np.zeros(len(examples), dtype=bool)
        for start in range(0, len(examples), self.chunk_size):
            try:
                parts.append(
                    self.client.score(self.task, examples[start : start + self.chunk_size])
                )
            except BudgetExceeded:
                continue
            scored[start : start + len(parts[-1])] = True
        _LOG.warning(
            "budget reached: %d of %d rows of this batch not scored",
            int((~scored).sum()),
            len(examples),
        )
        return (Scores.concat(parts) if parts else None), scored


class Predictor(Scorer):
    """The prediction UDF: :class:`Scorer` plus a fitted decoder loaded once per actor.

    Adds ``prediction`` (n,) class names (``""`` where not scored) and
    ``probabilities`` (n, K; NaN where not scored) to the score columns.
    """

    def __init__(self, setup: WorkerSetup, decoder_dir: str) -> None:
        from ..persistence import load_decoder

        super().__init__(setup)
        self.decoder, _ = load_decoder(decoder_dir)

    def __call__(self, batch: Batch) -> Batch:
        scores, scored = self._score(_examples(batch))
        k = len(self.task.labels)
        predicted = np.full(len(scored), "", dtype=object)
        probabilities = np.full((len(scored), k), np.nan, dtype=np.float32)  # (n, K)
        if scores is not None:
            predicted[scored] = np.asarray(self.decoder.predict(scores)).astype(str)
            probabilities[scored] = self.decoder.predict_proba(scores)
        return {
            **batch,
            **_score_columns(scores, scored, k),
            "prediction": predicted.astype(str),
            "probabilities": probabilities,
        }


def _examples(batch: Mapping[str, np.ndarray]) -> list[Example]:
    if "text" not in batch:
        raise DataError(
            f"the dataset has no 'text' column (columns: {sorted(batch)}); rename the column "
            "holding the input text to 'text' (and the second text of pair tasks to 'text_b')"
        )
    texts = batch["text"]
    pairs = batch.get("text_b")
    return [
        Example(text=str(t), label=None, text_b=None if pairs is None else str(pairs[i]))
        for i, t in enumerate(texts)
    ]


def _score_columns(scores: Scores | None, scored: np.ndarray, k: int) -> Batch:
    n = len(scored)
    label_logprobs = np.full((n, k), np.nan, dtype=np.float32)  # (n, K)
    cache_hit = np.zeros(n, dtype=bool)
    prompt_tokens = np.zeros(n, dtype=np.int64)
    if scores is not None:
        label_logprobs[scored] = scores.label_logprobs
        cache_hit[scored] = scores.cache_hit
        prompt_tokens[scored] = scores.prompt_tokens
    return {
        "label_logprobs": label_logprobs,
        "cache_hit": cache_hit,
        "prompt_tokens": prompt_tokens,
        "scored": scored,
    }
