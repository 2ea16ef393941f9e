"""An evaluation run: draw k shots, score train and test through the client, fit and score methods."""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .budget import QueryBudget
from .cache import ScoreCache
from .client import Client, Usage
from .data import Example, labels_to_indices, sample_k_shot
from .decoders import (
    BaseDecoder,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    YTuning,
    ZeroShot,
)
from .errors import ConfigurationError
from .methods import BDPL, InContextLearning, PromptMethod, PromptTuning, require_white_box
from .methods.base import usage_since
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
    "fit_prompt_method",
    "make_decoder",
    "needs_content_free",
    "subsample_test",
]

#: The test set is scored under its own budget, named ``<budget>`` + this suffix.
TEST_BUDGET_SUFFIX = ":test"
#: Seed of :func:`subsample_test` (fixed, so every run and seed sees the same subset).
TEST_SUBSET_SEED = 0

#: Method name → factory(shots, random_state): a decoder (fitted on cached scores) or a
#: prompt method (fitted and predicting through the client; see :mod:`maas_tune.methods`).
METHODS: dict[str, Callable[[int, int], BaseDecoder | PromptMethod]] = {
    "zero-shot": lambda shots, seed: ZeroShot(),
    "calibrated": lambda shots, seed: ContextualCalibration(),
    "lr": lambda shots, seed: ScoreLogisticRegression(random_state=seed),
    "linear-probe": lambda shots, seed: LinearProbe(random_state=seed),
    "dect": lambda shots, seed: DecT(random_state=seed),
    "dect-logprobs": lambda shots, seed: DecT(use_hidden=False, random_state=seed),
    "dect-paper": lambda shots, seed: DecT.paper(shots=shots, random_state=seed),
    "ytuning": lambda shots, seed: YTuning(random_state=seed),
    "icl": lambda shots, seed: InContextLearning(random_state=seed),
    "bdpl": lambda shots, seed: BDPL(random_state=seed),
    "prompt-tuning": lambda shots, seed: PromptTuning(random_state=seed),
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
    prompt_tokens_sent: int = 0
    #: Prompt tokens of the answers the cache served (what they cost when first sent).
    prompt_tokens_cached: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


def make_decoder(method: str, *, shots: int, random_state: int = 0) -> BaseDecoder | PromptMethod:
    """A fresh, unfitted decoder or prompt method for a method name in :data:`METHODS`."""
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
    """A seeded random subset of ``limit`` examples, in their original order (all if None).

    The subset is the first ``limit`` of one fixed permutation, so a smaller cap picks
    a subset of a larger one: methods run with different caps share their test inputs.
    """
    if limit is None or limit >= len(test):
        return list(test)
    idx = np.random.default_rng(TEST_SUBSET_SEED).permutation(len(test))[:limit]
    return [test[i] for i in sorted(idx)]


def fit_prompt_method(
    method: PromptMethod,
    *,
    train_client: Client,
    test_client: Client,
    task: Task,
    train: Sequence[Example],
    test: Sequence[Example],
) -> tuple[np.ndarray, float, Usage]:
    """Fit a prompt method through ``train_client`` and predict ``test`` through ``test_client``.

    Returns
    -------
    predictions : np.ndarray of str, shape (n_test,)
    seconds : float
        Fit time (for black-box methods, mostly the queries).
    usage : Usage
        What the fit and the predictions sent, together.
    """
    before_train, before_test = copy.copy(train_client.usage), copy.copy(test_client.usage)
    start = time.perf_counter()
    method.fit(train_client, task, train)
    seconds = time.perf_counter() - start
    predictions = method.predict(test_client, test)
    fit_usage = usage_since(train_client, before_train)
    test_usage = usage_since(test_client, before_test)
    total = Usage(**{k: getattr(fit_usage, k) + getattr(test_usage, k) for k in asdict(fit_usage)})
    return predictions, seconds, total


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
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[EvalResult]:
    """Run ``methods`` on a k-shot draw of ``train_pool`` and score them on ``test``.

    Training queries (the k-shot examples and, where a method needs it, the one
    content-free query) go through ``budget``; the test set goes through
    ``test_budget`` (uncapped when None). Both use the same cache. Decoders share one
    scoring of the train and test sets (their ``queries_sent`` is that scoring's); a
    prompt method (ICL, BDPL, prompt tuning) fits through the training budget and
    predicts through the test budget, and reports its own queries and prompt tokens.
    ``params`` maps a method name to hyper-parameters set on its estimator
    (``set_params``), e.g. ``{"bdpl": {"epochs": 4}}``.
    """
    estimators = {m: make_decoder(m, shots=shots, random_state=seed) for m in methods}
    for m, overrides in (params or {}).items():
        if m in estimators:
            estimators[m].set_params(**overrides)
    for est in estimators.values():  # validate before paying for anything
        if isinstance(est, PromptMethod) and est.white_box:
            require_white_box(provider)
        if "progress" in est.get_params():
            est.set_params(progress=progress)
    shots_set = sample_k_shot(train_pool, shots, labels=task.labels, seed=seed)
    y_train = labels_to_indices(shots_set, task.labels)
    y_test = labels_to_indices(test, task.labels)
    train_client = Client(provider, cache=cache, budget=budget, offline=offline, progress=progress)
    test_client = Client(
        provider, cache=cache, budget=test_budget, offline=offline, progress=progress
    )
    decoders = {m: e for m, e in estimators.items() if isinstance(e, BaseDecoder)}
    if decoders:
        train_scores = train_client.score(task, shots_set)
        content_free = train_client.content_free(task) if needs_content_free(decoders) else None
        test_scores = test_client.score(task, test)
    shared = Usage(
        **{
            k: getattr(train_client.usage, k) + getattr(test_client.usage, k)
            for k in asdict(Usage())
        }
    )
    fingerprint = provider.fingerprint()
    truth = np.asarray(task.labels)[y_test]
    results = []
    for method, est in estimators.items():
        if isinstance(est, PromptMethod):
            predictions, seconds, usage = fit_prompt_method(
                est,
                train_client=train_client,
                test_client=test_client,
                task=task,
                train=shots_set,
                test=test,
            )
        else:
            seconds = fit_method(est, train_scores, y_train, content_free)
            predictions, usage = est.predict(test_scores), shared
        status = budget.status()
        results.append(
            EvalResult(
                method=method,
                dataset=dataset,
                shots=shots,
                seed=seed,
                accuracy=float(np.mean(predictions == truth)),
                n_test=len(test),
                queries_sent=usage.queries_sent,
                samples_sent=usage.samples_sent,
                cache_hits=usage.cache_hits,
                budget_name=status.name,
                budget_limit=status.max_queries,
                budget_spent=status.spent_queries,
                fit_seconds=seconds,
                model=str(fingerprint.get("model", "")),
                provider=str(fingerprint.get("provider", "")),
                strategy=str(fingerprint.get("strategy", "")),
                prompt_tokens_sent=usage.prompt_tokens_sent,
                prompt_tokens_cached=usage.prompt_tokens_cached,
            )
        )
    return results
