"""An evaluation run: draw k shots, score train and test through the client, fit and score methods."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .client import Client, Usage
from .data import Example, labels_to_indices, sample_k_shot
from .decoders import BaseDecoder
from .errors import ConfigurationError
from .methods import PromptMethod, require_white_box
from .methods.base import fit_kwargs, usage_since
from .metrics import classification_metrics
from .providers.base import Provider
from .registry import AnyEstimator, make_decoder, needs_content_free
from .scores import Scores
from .storage.budget import BudgetStatus, QueryBudget
from .storage.cache import ScoreCache
from .task import Task

__all__ = [
    "TEST_BUDGET_SUFFIX",
    "TEST_SUBSET_SEED",
    "EvalResult",
    "cost_fields",
    "evaluate",
    "fit_method",
    "predict_method",
    "subsample_test",
]

#: The test set is scored under its own budget, named ``<budget>`` + this suffix.
TEST_BUDGET_SUFFIX = ":test"
#: Seed of :func:`subsample_test` (fixed, so every run and seed sees the same subset).
TEST_SUBSET_SEED = 0


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
    #: Requests of the provider's capability probe (part of ``queries_sent``).
    probe_queries: int = 0
    #: Requests charged without an answer kept (failed or interrupted samples, lost answers).
    queries_lost: int = 0
    #: Attempts retried, and answered 429 (rate limited), while scoring.
    retries: int = 0
    rate_limited: int = 0
    #: Share of label words (train and test) given the top-k bound instead of the model's
    #: value (only the chat API's ``top_logprobs`` strategy bounds words).
    floored_share: float = 0.0
    #: Unweighted mean F1 over the classes in the test set or the predictions.
    macro_f1: float | None = None
    #: Mean negative log-probability of the true class (nats, clipped), and the expected
    #: calibration error over 15 equal-width confidence bins (see :mod:`maas_tune.metrics`);
    #: None for a method without ``predict_proba``.
    log_loss: float | None = None
    ece: float | None = None
    #: Label → ``{"precision", "recall", "f1", "support"}`` on the test set.
    per_class: dict[str, dict[str, float]] | None = None
    #: Rows: true label, columns: predicted label, both in the order of ``labels``.
    confusion_matrix: list[list[int]] | None = None
    labels: list[str] | None = None
    #: Per confidence bin: ``count``, mean ``confidence``, ``accuracy`` (None where empty).
    reliability: dict[str, list[Any]] | None = None
    #: US dollars per million input and output tokens the costs are counted at: the
    #: training budget's price, else the test budget's (None: no price, no cost counted).
    price_input_per_million: float | None = None
    price_output_per_million: float | None = None
    #: Cost of this run's ``queries_sent`` and ``prompt_tokens_sent`` at that price, each
    #: query counted as one output token (see :mod:`maas_tune.pricing`), US dollars.
    cost_sent: float | None = None
    #: The training budget's cost cap and cost spent (all runs), US dollars.
    budget_cost_limit: float | None = None
    budget_cost_spent: float | None = None
    #: The test budget's name, cost cap and cost spent (all runs), US dollars.
    test_budget_name: str | None = None
    test_budget_cost_limit: float | None = None
    test_budget_cost_spent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


#: A run stops before the test set when more than this share of the training answers'
#: label words are top-k bounds rather than the model's values.
MAX_FLOORED_SHARE = 0.5


def floored_share(task: Task, *scores: Scores) -> float:
    """Share of ``task``'s label words, over ``scores``, given the top-k bound."""
    floored = sum(int(s.floored.sum()) for s in scores if s.floored is not None)
    words = sum(len(s) for s in scores if s.floored is not None) * len(task.label_words)
    return floored / words if words else 0.0


def check_floored(scores: Scores, task: Task) -> None:
    """Stop before paying for the test set when the training answers are mostly bounds.

    Raises
    ------
    ConfigurationError
        More than :data:`MAX_FLOORED_SHARE` of the training answers' label words were
        outside the API's top-k and got the top-k bound: such scores cannot tell the
        classes apart, and the test set would be paid for nothing.
    """
    if scores.floored is None or not len(scores):
        return
    if floored_share(task, scores) > MAX_FLOORED_SHARE:
        words = len(scores) * len(task.label_words)
        floored = int(scores.floored.sum())
        raise ConfigurationError(
            f"{floored} of the {words} label words of the training answers were outside the "
            "API's top-k and got the top-k bound, not the model's value, so the scores cannot "
            "tell the classes apart; stopped before scoring the test set. Pass --tokenizer "
            "(tiktoken:MODEL, a Hugging Face tokenizer directory, or 'embedded') with the "
            "default --strategy auto so missing words are forced exactly, or choose label "
            "words the model ranks in its top-k"
        )


def fit_method(
    est: AnyEstimator,
    *,
    client: Client,
    task: Task,
    shots: Sequence[Example],
    pool: Sequence[Example] = (),
    scores: Scores | None = None,
    content_free: np.ndarray | None = None,
) -> float:
    """Fit a decoder or a prompt method on the labelled ``shots``; return the fit's seconds.

    Parameters
    ----------
    est : BaseDecoder or PromptMethod
        Unfitted; fitted in place.
    client : Client
        What a prompt method fits through; what a decoder's missing inputs are scored with.
    task : Task
    shots : sequence of Example, n labelled examples
    pool : sequence of Example
        The training pool the shots were drawn from; a prompt method that mines unlabelled
        training texts (:meth:`BDPL.paper <maas_tune.methods.BDPL.paper>`) reads its texts.
    scores : Scores, optional
        A decoder's training scores, ``client.score(task, shots)`` when None.
    content_free : array, shape (K,), optional
        A decoder's content-free scores; queried through ``client`` when None and the
        decoder needs them (:attr:`~maas_tune.estimator.Estimator.needs_content_free`).

    Returns
    -------
    float
        Seconds ``fit`` took (for a prompt method, mostly its queries; for a decoder,
        without the scoring).
    """
    if isinstance(est, PromptMethod):
        start = time.perf_counter()
        est.fit(client, task, shots, **fit_kwargs(est, pool))
        return time.perf_counter() - start
    if content_free is None and est.needs_content_free:
        content_free = client.content_free(task)
    scores = client.score(task, shots) if scores is None else scores
    y = labels_to_indices(shots, task.labels)
    start = time.perf_counter()
    est.fit(scores, y, content_free=content_free)
    return time.perf_counter() - start


def predict_method(
    est: AnyEstimator,
    *,
    client: Client,
    task: Task,
    examples: Sequence[Example],
    scores: Scores | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions of a fitted decoder or prompt method, and its class probabilities.

    A decoder predicts from ``scores`` (``client.score(task, examples)`` when None), a
    prompt method through ``client``.

    Returns
    -------
    predictions : np.ndarray of str, shape (n,)
        Class names: the argmax of the probabilities (what ``predict`` returns, at the
        same queries).
    proba : np.ndarray, shape (n, K)
    """
    if isinstance(est, PromptMethod):
        proba = est.predict_proba(client, examples)  # (n, K)
        return est.classes_[proba.argmax(axis=1)], proba
    scores = client.score(task, examples) if scores is None else scores
    return est.predict(scores), est.predict_proba(scores)


def subsample_test(test: Sequence[Example], limit: int | None) -> list[Example]:
    """A seeded random subset of ``limit`` examples, in their original order (all if None).

    The subset is the first ``limit`` of one fixed permutation, so a smaller cap picks
    a subset of a larger one: methods run with different caps share their test inputs.
    """
    if limit is None or limit >= len(test):
        return list(test)
    idx = np.random.default_rng(TEST_SUBSET_SEED).permutation(len(test))[:limit]
    return [test[i] for i in sorted(idx)]


def _usage(a: Usage, b: Usage) -> Usage:
    """The sum of two usages."""
    return Usage(**{k: getattr(a, k) + getattr(b, k) for k in asdict(Usage())})


def _quality(
    predictions: np.ndarray, proba: np.ndarray | None, y_test: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy and the :func:`~maas_tune.metrics.classification_metrics` of one method."""
    index = {name: i for i, name in enumerate(labels)}
    y_pred = np.array([index[str(p)] for p in predictions], dtype=np.int64)  # (n_test,)
    out = classification_metrics(y_test, y_pred, proba, labels) if len(y_test) else {}
    return {"accuracy": float(np.mean(y_pred == y_test)), **out}


def cost_fields(usage: Usage, train: BudgetStatus, test: BudgetStatus | None) -> dict[str, Any]:
    """The cost fields of an :class:`EvalResult`: ``usage`` and both budgets in US dollars."""
    price = train.price or (test.price if test is not None else None)
    sent = None if price is None else price.query_cost(usage.queries_sent, usage.prompt_tokens_sent)
    return {
        "price_input_per_million": None if price is None else price.input_per_million,
        "price_output_per_million": None if price is None else price.output_per_million,
        "cost_sent": sent,
        "budget_cost_limit": train.max_cost,
        "budget_cost_spent": train.spent_cost,
        "test_budget_name": None if test is None else test.name,
        "test_budget_cost_limit": None if test is None else test.max_cost,
        "test_budget_cost_spent": None if test is None else test.spent_cost,
    }


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
    y_test = labels_to_indices(test, task.labels)
    train_client = Client(provider, cache=cache, budget=budget, offline=offline, progress=progress)
    test_client = Client(
        provider, cache=cache, budget=test_budget, offline=offline, progress=progress
    )
    decoders = {m: e for m, e in estimators.items() if isinstance(e, BaseDecoder)}
    floored = 0.0
    train_scores = test_scores = content_free = None
    if decoders:
        train_scores = train_client.score(task, shots_set)
        check_floored(train_scores, task)
        content_free = train_client.content_free(task) if needs_content_free(decoders) else None
        test_scores = test_client.score(task, test)
        floored = floored_share(task, train_scores, test_scores)
    shared = _usage(train_client.usage, test_client.usage)
    fingerprint = provider.fingerprint()
    results = []
    for method, est in estimators.items():
        before_train, before_test = copy.copy(train_client.usage), copy.copy(test_client.usage)
        seconds = fit_method(
            est, client=train_client, task=task, shots=shots_set, pool=train_pool,
            scores=train_scores, content_free=content_free,
        )  # fmt: skip
        predictions, proba = predict_method(
            est, client=test_client, task=task, examples=test, scores=test_scores
        )
        usage = shared if isinstance(est, BaseDecoder) else _usage(
            usage_since(train_client, before_train), usage_since(test_client, before_test)
        )  # fmt: skip
        status = budget.status()
        test_status = test_budget.status() if test_budget is not None else None
        results.append(
            EvalResult(
                method=method,
                dataset=dataset,
                shots=shots,
                seed=seed,
                n_test=len(test),
                budget_name=status.name,
                budget_limit=status.max_queries,
                budget_spent=status.spent_queries,
                fit_seconds=seconds,
                model=str(fingerprint.get("model", "")),
                provider=str(fingerprint.get("provider", "")),
                strategy=str(getattr(provider, "strategy", fingerprint.get("strategy", ""))),
                floored_share=floored,
                **asdict(usage),  # every Usage count is an EvalResult field of that name
                **_quality(predictions, proba, y_test, task.labels),
                **cost_fields(usage, status, test_status),
            )
        )
    return results
