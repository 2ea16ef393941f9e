"""The decoders' estimator contract and behaviour on small synthetic problems."""

from __future__ import annotations

import numpy as np
import pytest

from maas_tune.decoders import (
    BaseDecoder,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    ZeroShot,
)
from maas_tune.errors import ConfigurationError, NotFittedError
from maas_tune.scores import Scores

LABELS = ("neg", "neu", "pos")
CONTENT_FREE = np.log(np.array([0.5, 0.2, 0.3], dtype=np.float32))


def make_scores(
    n_per_class: int = 8, seed: int = 0, hidden: bool = True, d: int = 16
) -> tuple[Scores, np.ndarray]:
    """A 3-class problem: hidden states separable, label scores informative but biased."""
    rng = np.random.default_rng(seed)
    k = len(LABELS)
    y = np.repeat(np.arange(k), n_per_class)
    centres = np.random.default_rng(123).normal(size=(k, d)) * 3.0
    h = centres[y] + rng.normal(size=(len(y), d))
    logits = 2.0 * np.eye(k)[y] + rng.normal(size=(len(y), k)) + np.array([1.5, 0.0, -1.0])
    lp = (
        logits - np.log(np.exp(logits).sum(1, keepdims=True)) - 3.0
    )  # log-probs over a larger vocabulary
    tokens = h[:, None, :] if hidden else None  # one token's state (Y-Tuning's keys)
    return Scores.from_arrays(lp, h if hidden else None, LABELS, token_features=tokens), y


def fit(decoder: BaseDecoder, X: Scores, y: np.ndarray) -> BaseDecoder:
    if isinstance(decoder, ContextualCalibration):
        return decoder.fit(X, content_free=CONTENT_FREE)
    if isinstance(decoder, ScoreLogisticRegression) or (
        isinstance(decoder, DecT) and decoder.calibration == "content_free"
    ):
        return decoder.fit(X, y, content_free=CONTENT_FREE)
    return decoder.fit(X, y)


DECODERS = [
    ZeroShot(),
    ContextualCalibration(),
    ScoreLogisticRegression(random_state=0),
    LinearProbe(random_state=0),
    DecT(random_state=0),
    DecT.paper(8, random_state=0),
]
IDS = ["zero-shot", "calibrated", "lr", "probe", "dect", "dect-paper"]


@pytest.fixture(scope="module")
def data() -> tuple[Scores, np.ndarray]:
    return make_scores()


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_get_set_params_round_trip(decoder: BaseDecoder) -> None:
    params = decoder.get_params()
    clone = type(decoder)(**params)
    assert clone.get_params() == params
    assert clone.set_params(**params) is clone
    assert repr(clone) == repr(decoder)
    with pytest.raises(ConfigurationError, match="no parameter"):
        clone.set_params(not_a_parameter=1)


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_fit_returns_self_and_predicts(
    decoder: BaseDecoder, data: tuple[Scores, np.ndarray]
) -> None:
    X, y = data
    model = type(decoder)(**decoder.get_params())
    assert fit(model, X, y) is model
    assert list(model.classes_) == list(LABELS)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(1), 1.0)
    pred = model.predict(X)
    assert pred.shape == (len(X),) and set(pred) <= set(LABELS)
    assert np.array_equal(pred, model.classes_[proba.argmax(1)])
    assert 0.0 <= model.score(X, y) <= 1.0


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_unfitted_decoder_raises_not_fitted(
    decoder: BaseDecoder, data: tuple[Scores, np.ndarray]
) -> None:
    X, y = data
    model = type(decoder)(**decoder.get_params())
    for call in (model.predict, model.predict_proba, model.decision_function):
        with pytest.raises(NotFittedError, match="fit"):
            call(X)
    with pytest.raises(NotFittedError):
        model.score(X, y)


@pytest.mark.parametrize("decoder", DECODERS[2:], ids=IDS[2:])
def test_deterministic_under_random_state_and_y_as_names_or_ints(
    decoder: BaseDecoder, data: tuple[Scores, np.ndarray]
) -> None:
    X, y = data
    a = fit(type(decoder)(**decoder.get_params()), X, y)
    b = fit(type(decoder)(**decoder.get_params()), X, np.asarray(LABELS)[y])
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))


def test_learning_decoders_fit_the_synthetic_problem(data: tuple[Scores, np.ndarray]) -> None:
    X, y = data
    test, y_test = make_scores(20, seed=1)
    assert LinearProbe(random_state=0).fit(X, y).score(test, y_test) >= 0.95
    assert DecT(random_state=0).fit(X, y).score(test, y_test) >= 0.95
    assert ScoreLogisticRegression().fit(X, y).score(test, y_test) > ZeroShot().fit(X).score(
        test, y_test
    )


def test_bad_labels_are_rejected(data: tuple[Scores, np.ndarray]) -> None:
    X, y = data
    with pytest.raises(ConfigurationError, match="unknown labels"):
        LinearProbe().fit(X, np.where(y == 0, "nope", "pos"))
    with pytest.raises(ConfigurationError, match=r"\[0, 3\)"):
        LinearProbe().fit(X, y + 1)
    with pytest.raises(ConfigurationError, match="one label per example"):
        LinearProbe().fit(X, y[:-1])


def test_predicting_on_other_labels_is_rejected(data: tuple[Scores, np.ndarray]) -> None:
    X, y = data
    model = LinearProbe().fit(X, y)
    other = Scores.from_arrays(X.label_logprobs, X.hidden, ("a", "b", "c"))
    with pytest.raises(ConfigurationError, match="fitted on"):
        model.predict(other)


def test_zero_shot_is_the_argmax_of_the_label_scores() -> None:
    X = Scores.from_arrays(np.log([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]), labels=LABELS)
    model = ZeroShot().fit(X)
    assert list(model.predict(X)) == ["neu", "neg"]
    assert np.allclose(model.predict_proba(X), [[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])


def test_contextual_calibration_by_hand() -> None:
    # p over the 3 classes (after renormalising from the vocabulary): (0.2, 0.3, 0.5);
    # p_cf = (0.5, 0.25, 0.25). Calibrated: p / p_cf = (0.4, 1.2, 2.0) -> /3.6
    lp = np.log(np.array([[0.02, 0.03, 0.05]]))
    cf = np.log(np.array([0.1, 0.05, 0.05]))
    model = ContextualCalibration().fit(Scores.from_arrays(lp, labels=LABELS), content_free=cf)
    X = Scores.from_arrays(lp, labels=LABELS)
    assert np.allclose(model.predict_proba(X), [[0.4 / 3.6, 1.2 / 3.6, 2.0 / 3.6]], atol=1e-6)
    assert np.allclose(model.decision_function(X), np.log([[0.4, 1.2, 2.0]]), atol=1e-5)
    # the calibration can flip a decision: "pos" is the most likely word, but less so than usual
    lp2 = np.log(np.array([[0.45, 0.2, 0.35]]))
    model2 = ContextualCalibration().fit(
        Scores.from_arrays(lp2, labels=LABELS), content_free=np.log([0.6, 0.1, 0.3])
    )
    assert model2.predict(Scores.from_arrays(lp2, labels=LABELS))[0] == "neu"


def test_content_free_is_validated() -> None:
    X, _ = make_scores(2)
    with pytest.raises(ConfigurationError, match="content_free is required"):
        ContextualCalibration().fit(X)
    with pytest.raises(ConfigurationError, match="3 finite"):
        ContextualCalibration().fit(X, content_free=[0.0, 1.0])
    with pytest.raises(ConfigurationError, match="content_free is required"):
        DecT.paper(2).fit(X, np.repeat(np.arange(3), 2))


def test_dect_selects_lam_from_the_grid_and_keeps_the_fold_models(
    data: tuple[Scores, np.ndarray],
) -> None:
    X, y = data
    model = DecT(
        random_state=0, lam_grid=(0.1, 1.0, 10.0), n_folds=4, proto_dim=8, lam_selection="best"
    ).fit(X, y)
    assert model.lam_ in (0.1, 1.0, 10.0) and len(model.cv_loss_) == 3
    assert model.projection_.shape == (4, 16, 8) and model.radii_.shape == (4, 3)
    refit = DecT(random_state=0, lam_grid=(0.1, 1.0, 10.0), refit=True, proto_dim=8).fit(X, y)
    assert refit.lam_ == model.lam_ and refit.projection_.shape == (1, 16, 8)


def test_dect_fixed_lam_and_single_shot_fallback() -> None:
    X, y = make_scores(1)
    model = DecT(random_state=0, lam_fallback=2.5).fit(X, y)
    assert model.lam_ == 2.5 and model.cv_loss_ == [] and model.projection_.shape[0] == 1
    fixed = DecT(lam=0.5, random_state=0).fit(*make_scores(4))
    assert fixed.lam_ == 0.5 and fixed.cv_loss_ == []


def test_dect_paper_settings() -> None:
    params = DecT.paper(16, random_state=3).get_params()
    assert params["lam"] == 1 / 16 and params["proto_dim"] == 128 and params["epochs"] == 30
    assert params["lr"] == 0.01 and params["calibration"] == "content_free"
    assert not params["standardize"] and params["random_state"] == 3
    with pytest.raises(ConfigurationError):
        DecT.paper(0)


def test_dect_scores_only_mode() -> None:
    X, y = make_scores(8, hidden=False)
    test, y_test = make_scores(20, seed=1, hidden=False)
    model = DecT(random_state=0).fit(X, y)
    assert model.uses_hidden_ is False and model.projection_.shape[1] == 3
    assert (
        model.score(test, y_test) >= ScoreLogisticRegression().fit(X, y).score(test, y_test) - 0.1
    )
    # hidden states offered at prediction time are ignored by a scores-only decoder ...
    with_hidden, _ = make_scores(20, seed=1)
    assert np.array_equal(model.predict(with_hidden), model.predict(test))
    # ... but a decoder fitted on hidden states needs them
    with pytest.raises(ConfigurationError, match="hidden"):
        DecT(random_state=0).fit(*make_scores(8)).predict(test)
    with pytest.raises(ConfigurationError, match="hidden"):
        LinearProbe().fit(X, y)


@pytest.mark.parametrize(
    "params",
    [
        {"calibration": "bogus"},
        {"radius_init": "x"},
        {"cv_metric": "auc"},
        {"lr": 0.0},
        {"epochs": 0},
        {"lam_grid": ()},
    ],
)
def test_dect_rejects_bad_parameters(
    params: dict[str, object], data: tuple[Scores, np.ndarray]
) -> None:
    with pytest.raises(ConfigurationError):
        DecT(**params).fit(*data)


def test_linear_alpha_must_be_positive(data: tuple[Scores, np.ndarray]) -> None:
    with pytest.raises(ConfigurationError, match="alpha"):
        ScoreLogisticRegression(alpha=0.0).fit(*data)


def test_needs_content_free_follows_the_hyper_parameters() -> None:
    assert not ZeroShot().needs_content_free and not LinearProbe().needs_content_free
    assert ContextualCalibration().needs_content_free
    assert ScoreLogisticRegression().needs_content_free
    assert not DecT().needs_content_free and DecT.paper(16).needs_content_free
    assert DecT(calibration="content_free").needs_content_free


def test_dect_weighted_selection_averages_grid_points_by_heldout_likelihood(
    data: tuple[Scores, np.ndarray],
) -> None:
    X, y = data
    grid = (0.1, 1.0, 10.0)
    model = DecT(random_state=0, lam_grid=grid, proto_dim=8).fit(X, y)
    weights = model.member_weights_.numpy()
    assert weights.sum() == pytest.approx(1.0, abs=1e-6) and (weights > 0).all()
    assert model.projection_.shape[0] == len(weights) <= 3 * 4
    member_lams = model.member_lams_.numpy()
    assert all(np.isclose(member_lams, lam).any() for lam in set(member_lams.tolist()))
    # the weight of each grid point is its share of the held-out likelihood
    n = len(y)
    expected = np.exp(-n * (np.array(model.cv_loss_) - min(model.cv_loss_)))
    expected /= expected.sum()
    for lam, w in zip(grid, expected):
        assert weights[np.isclose(member_lams, lam)].sum() == pytest.approx(w, abs=1e-3)
    # with one grid point, "weighted" and "best" are the same decoder
    one = {"random_state": 0, "lam_grid": (1.0,), "proto_dim": 8}
    a = DecT(**one).fit(X, y).predict_proba(X)
    b = DecT(lam_selection="best", **one).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_dect_rejects_unknown_lam_selection(data: tuple[Scores, np.ndarray]) -> None:
    X, y = data
    with pytest.raises(ConfigurationError, match="lam_selection"):
        DecT(lam_selection="vote").fit(X, y)
