"""An evaluation run: draw k shots, score train and test through the client, fit and score methods."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .budget import QueryBudget
from .cache import ScoreCache
from .client import Client
from .data import Example, labels_to_indices, sample_k_shot
from .decoders import (
    BaseDecoder,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    ZeroShot,
)
from .errors import ConfigurationError
from .providers.base import Provider
from .scores import Scores
from .task import Task

__all__ = [
    "METHODS",
    "TEST_BUDGET_SUFFIX",
    "TEST_SUBSET_SEED",
    "EvalResult",
    "evaluate",
    "fit_method",
    "make_decoder",
    "needs_content_free",
    "subsample_test",
]

#: The test set is scored under its own budget, named ``<budget>`` + this suffix.
TEST_BUDGET_SUFFIX = ":test"
#: Seed of :func:`subsample_test` (fixed, so every run and seed sees the same subset).
TEST_SUBSET_SEED = 0

#: Method name → factory(shots, random_state).
METHODS: dict[str, Callable[[int, int], BaseDecoder]] = {
    "zero-shot": lambda shots, seed: ZeroShot(),
    "calibrated": lambda shots, seed: ContextualCalibration(),
    "lr": lambda shots, seed: ScoreLogisticRegression(random_state=seed),
    "linear-probe": lambda shots, seed: LinearProbe(random_state=seed),
    "dect": lambda shots, seed: DecT(random_state=seed),
    "dect-paper": lambda shots, seed: DecT.paper(shots=shots, random_state=seed),
}


@dataclass(frozen=True)
class EvalResult:
    """One method's result in an evaluation run (the fields of ``eval --json``)."""

    method: str
    dataset: str
    shots: int
    seed: int
    accuracy: float
    n_test: int
    queries_sent: int
    samples_sent: int
    cache_hits: int
    budget_name: str
    budget_limit: int | None
    budget_spent: int
    fit_seconds: float
    model: str
    provider: str
    strategy: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


def make_decoder(method: str, *, shots: int, random_state: int = 0) -> BaseDecoder:
    """A fresh, unfitted decoder for a method name in :data:`METHODS`."""
    try:
        factory = METHODS[method]
    except KeyError:
        raise ConfigurationError(
            f"unknown method {method!r}; choose one of: {', '.join(METHODS)}"
        ) from None
    return factory(shots, random_state)


def fit_method(
    decoder: BaseDecoder, train: Scores, y: np.ndarray, content_free: np.ndarray | None
) -> float:
    """Fit ``decoder`` (passing the content-free scores where it takes them); return seconds."""
    kwargs = {}
    if "content_free" in inspect.signature(decoder.fit).parameters:
        kwargs["content_free"] = content_free
    start = time.perf_counter()
    decoder.fit(train, y, **kwargs)
    return time.perf_counter() - start


def needs_content_free(methods: Sequence[str]) -> bool:
    """Whether any of ``methods`` uses the content-free query (contextual calibration)."""
    return any(make_decoder(m, shots=1).needs_content_free for m in methods)


def subsample_test(test: Sequence[Example], limit: int | None) -> list[Example]:
    """A seeded random subset of ``limit`` examples, in their original order (all if None)."""
    if limit is None or limit >= len(test):
        return list(test)
    idx = np.random.default_rng(TEST_SUBSET_SEED).choice(len(test), size=limit, replace=False)
    return [test[i] for i in sorted(idx)]


def evaluate(
    *,
    provider: Provider,
    task: Task,
    dataset: str,
    train_pool: Sequence[Example],
    test: Sequence[Example],
    methods: Sequence[str],
    shots: int,
    seed: int,
    cache: ScoreCache,
    budget: QueryBudget,
    test_budget: QueryBudget | None = None,
    offline: bool = False,
    progress: bool | None = None,
) -> list[EvalResult]:
    """Run ``methods`` on a k-shot draw of ``train_pool`` and score them on ``test``.

    Training queries (the k-shot examples and, where a method needs it, the one
    content-free query) go through ``budget``; the test set goes through
    ``test_budget`` (uncapped when None). Both use the same cache.
    """
    for m in methods:
        make_decoder(m, shots=shots)  # validate names before paying for anything
    shots_set = sample_k_shot(train_pool, shots, labels=task.labels, seed=seed)
    y_train = labels_to_indices(shots_set, task.labels)
    y_test = labels_to_indices(test, task.labels)
    train_client = Client(provider, cache=cache, budget=budget, offline=offline, progress=progress)
    test_client = Client(
        provider, cache=cache, budget=test_budget, offline=offline, progress=progress
    )
    train_scores = train_client.score(task, shots_set)
    content_free = train_client.content_free(task) if needs_content_free(methods) else None
    test_scores = test_client.score(task, test)
    sent = train_client.usage.queries_sent + test_client.usage.queries_sent
    hits = train_client.usage.cache_hits + test_client.usage.cache_hits
    samples = train_client.usage.samples_sent + test_client.usage.samples_sent
    status = budget.status()
    fingerprint = provider.fingerprint()
    results = []
    for method in methods:
        decoder = make_decoder(method, shots=shots, random_state=seed)
        seconds = fit_method(decoder, train_scores, y_train, content_free)
        accuracy = float(np.mean(decoder.predict(test_scores) == np.asarray(task.labels)[y_test]))
        results.append(
            EvalResult(
                method=method,
                dataset=dataset,
                shots=shots,
                seed=seed,
                accuracy=accuracy,
                n_test=len(test),
                queries_sent=sent,
                samples_sent=samples,
                cache_hits=hits,
                budget_name=status.name,
                budget_limit=status.max_queries,
                budget_spent=status.spent_queries,
                fit_seconds=seconds,
                model=str(fingerprint.get("model", "")),
                provider=str(fingerprint.get("provider", "")),
                strategy=str(fingerprint.get("strategy", "")),
            )
        )
    return results
