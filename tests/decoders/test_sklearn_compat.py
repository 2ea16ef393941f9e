"""scikit-learn conventions, checked with the real scikit-learn: clone, splitters, search.

No model is needed: the decoders are fitted on :meth:`Scores.from_arrays` of a small,
separable three-class problem.
(scikit-learn is in the ``dev`` extra, so this module runs in CI.)
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import _safe_indexing, check_consistent_length

from maas_tune import (
    ConfigurationError,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    Scores,
    YTuning,
    ZeroShot,
)
from maas_tune.decoders.base import BaseDecoder

LABELS = ("negative", "neutral", "positive")

#: One fast configuration of every decoder in maas_tune.decoders.
DECODERS: list[BaseDecoder] = [
    DecT(lam=1.0, epochs=10, random_state=0),
    ScoreLogisticRegression(random_state=0),
    LinearProbe(random_state=0),
    YTuning(d_model=8, n_heads=2, epochs=150, learning_rate=1e-2, random_state=0),
    ZeroShot(),
    ContextualCalibration(),
]


def _problem(n: int = 48, d: int = 6, seed: int = 0) -> tuple[Scores, np.ndarray]:
    """Scores whose label scores and hidden states both point to the true class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(LABELS)
    logits = 2.0 * np.eye(len(LABELS))[y] + rng.normal(0.0, 0.7, (n, len(LABELS)))
    logprobs = logits - np.log(np.exp(logits).sum(1, keepdims=True)) - 1.0
    hidden = np.concatenate([np.eye(len(LABELS))[y], np.zeros((n, d - 3))], 1)
    hidden += rng.normal(0.0, 0.3, (n, d))
    tokens = np.stack([hidden, rng.normal(0.0, 0.3, (n, d))], 1)  # (n, 2, d): Y-Tuning's keys
    return (
        Scores.from_arrays(logprobs, hidden, labels=LABELS, token_features=tokens),
        np.array(LABELS)[y],
    )


# ---------------------------------------------------------------- Scores as a sample set
def test_scores_index_like_rows():
    X, _ = _problem(n=6)
    assert X.shape == (6, 3) and len(X) == 6
    rows = X[np.array([4, 1])]
    np.testing.assert_array_equal(rows.label_logprobs, X.label_logprobs[[4, 1]])
    np.testing.assert_array_equal(rows.hidden, X.hidden[[4, 1]])
    assert rows.labels == X.labels
    assert len(X[1:4]) == 3 and len(X[[]]) == 0
    mask = np.array([True, False] * 3)
    np.testing.assert_array_equal(X[mask].label_logprobs, X.label_logprobs[mask])
    assert len(X[[2], ...]) == 1  # how scikit-learn's _safe_indexing asks


def test_scores_refuse_a_lone_integer_or_columns():
    X, _ = _problem(n=4)
    with pytest.raises(TypeError, match=r"scores\[\[2\]\]"):
        X[2]
    with pytest.raises(TypeError, match="rows only"):
        X[:, 0]
    with pytest.raises(TypeError, match="row numbers"):
        X[np.array([0.5, 1.0])]


def test_sklearn_indexing_utilities_accept_scores():
    X, y = _problem(n=9)
    check_consistent_length(X, y)
    part = _safe_indexing(X, np.array([0, 3, 8]))
    assert isinstance(part, Scores) and len(part) == 3
    with pytest.raises(ValueError, match="inconsistent"):
        check_consistent_length(X, y[:5])


# ---------------------------------------------------------------- the estimator contract
@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: type(d).__name__)
def test_clone_round_trips_every_decoder(decoder):
    copy = clone(decoder)
    assert copy is not decoder and type(copy) is type(decoder)
    assert copy.get_params() == decoder.get_params()
    assert repr(copy) == repr(decoder)
    assert is_classifier(decoder)
    params = decoder.get_params()
    if params:
        name = min(params)
        again = clone(decoder).set_params(**{name: params[name]})
        assert again.get_params() == params


@pytest.mark.parametrize(
    "decoder",
    [d for d in DECODERS if not isinstance(d, ContextualCalibration)],
    ids=lambda d: type(d).__name__,
)
def test_cross_val_score_on_every_decoder(decoder):
    X, y = _problem()
    scores = cross_val_score(decoder, X, y, cv=3)
    assert scores.shape == (3,)
    assert np.all(scores > 0.6), scores  # a separable problem: well above chance (1/3)


def test_cross_val_score_passes_content_free_to_fit():
    X, y = _problem()
    content_free = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    scores = cross_val_score(
        ContextualCalibration(), X, y, cv=3, params={"content_free": content_free}
    )
    assert np.all((scores >= 0) & (scores <= 1)) and scores.shape == (3,)


def test_cross_val_predict_uses_stratified_folds_and_accuracy():
    X, y = _problem()
    predicted = cross_val_predict(DecT(lam=1.0, epochs=10, random_state=0), X, y, cv=3)
    assert set(predicted) <= set(LABELS)
    assert np.mean(predicted == y) > 0.6
    balanced = cross_val_score(ZeroShot(), X, y, cv=StratifiedKFold(3), scoring="accuracy")
    assert balanced.shape == (3,)


def test_grid_search_over_dect_lam():
    X, y = _problem()
    search = GridSearchCV(
        DecT(epochs=10, random_state=0), {"lam": [0.5, 8.0]}, cv=3, refit=True
    ).fit(X, y)
    assert search.best_params_["lam"] in (0.5, 8.0)
    assert isinstance(search.best_estimator_, DecT)
    assert search.best_estimator_.lam == search.best_params_["lam"]
    assert search.predict(X[:5]).shape == (5,)
    assert list(search.classes_) == list(LABELS)


def test_grid_search_over_linear_probe_alpha_in_a_pipeline():
    X, y = _problem()
    # A Pipeline step may transform Scores, e.g. to hidden states only.
    pipe = make_pipeline(
        FunctionTransformer(lambda s: Scores.from_arrays(s.label_logprobs, s.hidden, s.labels)),
        LinearProbe(random_state=0),
    )
    search = GridSearchCV(pipe, {"linearprobe__alpha": [0.01, 10.0]}, cv=3).fit(X, y)
    assert search.best_params_["linearprobe__alpha"] in (0.01, 10.0)
    assert search.score(X, y) > 0.6


# ---------------------------------------------------------------- clear errors
def test_a_bare_array_is_refused_with_the_way_to_convert_it():
    X, y = _problem(n=6)
    with pytest.raises(ConfigurationError, match=r"Scores.from_arrays"):
        DecT().fit(X.label_logprobs, y)
    fitted = ZeroShot().fit(X)
    with pytest.raises(ConfigurationError, match="takes X as Scores, got ndarray"):
        fitted.predict(X.label_logprobs)


@pytest.mark.parametrize(
    "decoder",
    [d for d in DECODERS if not isinstance(d, (ZeroShot, ContextualCalibration))],
    ids=lambda d: type(d).__name__,
)
def test_fit_without_labels_says_they_are_needed(decoder):
    X, _ = _problem(n=6)
    with pytest.raises(ConfigurationError, match=r"needs the labels: call fit\(X, y\)"):
        clone(decoder).fit(X)


def test_the_docs_scikit_learn_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "concepts.md").read_text("utf-8")
    section = text[text.index("## Decoders") : text.index("## Metrics")]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/concepts.md", "exec"), namespace)  # noqa: S102 - the example is the test
    assert namespace["search"].best_params_["alpha"] in (0.01, 0.1, 1.0)
