"""One selection procedure for every trainable decoder; DecT's votes; 1-shot standardisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maas_tune.decoders import DecT, LinearProbe, ScoreLogisticRegression, YTuning, _math
from maas_tune.decoders._select import CV_TEMPERATURES, select_by_cv
from maas_tune.decoders.base import label_scores
from maas_tune.errors import ConfigurationError
from maas_tune.scores import Scores

from .test_decoders import CONTENT_FREE, make_scores


def _manual_dect_logp(model: DecT, X: Scores, temps: torch.Tensor) -> np.ndarray:
    """DecT's vote recomputed from its fitted tensors, members at ``temps`` (E,)."""
    scores = label_scores(X) - model.score_offset_
    h = (
        torch.as_tensor(X.hidden, dtype=torch.float32) - model.feature_mean_
    ) / model.feature_scale_
    z = _math.project(h, model.projection_.permute(1, 0, 2))
    logits = _math.dect_logits(z, model.prototypes_, model.radii_, scores, model.member_lams_)
    logp = torch.log_softmax(logits * temps.view(1, -1, 1), -1)
    vote = torch.einsum("nek,e->nk", logp, model.member_weights_)
    return torch.softmax(vote, -1).numpy()


def test_dect_members_vote_at_the_temperature_their_weight_was_measured_at() -> None:
    X, y = make_scores(n_per_class=12, seed=3)
    model = DecT(random_state=0, lam_grid=(0.1, 1.0, 10.0), proto_dim=8).fit(X, y)
    temps = model.member_temps_
    assert temps.shape == model.member_weights_.shape
    assert all(min(abs(float(t) - c) for c in CV_TEMPERATURES) < 1e-5 for t in temps)
    for lam in set(model.member_lams_.tolist()):  # one temperature per grid point
        assert len(set(temps[model.member_lams_ == lam].tolist())) == 1
    # the bounded distance term is under-confident: scored (and now voting) above T = 1
    assert (temps > 1).any()
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, _manual_dect_logp(model, X, temps), atol=1e-5)
    at_one = _manual_dect_logp(model, X, torch.ones_like(temps))
    assert not np.allclose(proba, at_one, atol=1e-4)  # the temperature is not decoration


def test_dect_vote_at_temperature_one_weights_by_the_loss_at_temperature_one() -> None:
    X, y = make_scores(n_per_class=12, seed=3)
    params = {"random_state": 0, "lam_grid": (0.1, 1.0, 10.0), "proto_dim": 8}
    model = DecT(vote_temperature="one", **params).fit(X, y)
    assert torch.equal(model.member_temps_, torch.ones_like(model.member_temps_))
    # cv_loss_ is the loss at each grid point's best temperature, so it no longer sets
    # the weights: those come from the loss at the temperature the members vote at
    scaled = _math.pseudo_bma_weights(torch.tensor(model.cv_loss_), len(y))
    lams = model.member_lams_
    per_grid = torch.stack([model.member_weights_[lams == lam].sum() for lam in (0.1, 1.0, 10.0)])
    assert not torch.allclose(per_grid, scaled, atol=1e-3)
    with pytest.raises(ConfigurationError, match="vote_temperature"):
        DecT(vote_temperature="two").fit(X, y)


@pytest.mark.parametrize(
    ("make", "name", "fit_kwargs"),
    [
        (lambda **kw: LinearProbe(**kw), "alpha", {}),
        (lambda **kw: ScoreLogisticRegression(**kw), "alpha", {"content_free": CONTENT_FREE}),
        (
            lambda **kw: YTuning(epochs=5, d_model=8, n_heads=2, **kw),
            "weight_decay",
            {},
        ),
    ],
    ids=["probe", "lr", "ytuning"],
)
def test_every_trainable_decoder_selects_by_the_shared_cv(make, name, fit_kwargs) -> None:
    X, y = make_scores(n_per_class=8, seed=1)
    model = make(random_state=0, **{name: None}).fit(X, y, **fit_kwargs)
    grid = model.get_params()[f"{name}_grid"]
    chosen = getattr(model, f"{name}_")
    assert len(model.cv_loss_) == len(grid)
    assert chosen == grid[int(np.argmin(model.cv_loss_))]
    # the same as the shared helper, called directly with the same folds
    direct = select_by_cv(
        lambda v: make(random_state=0, **{name: v}),
        grid,
        X,
        torch.as_tensor(y),
        n_folds=4,
        seed=0,
        fit_kwargs=fit_kwargs,
    )
    assert direct is not None and direct[1] == pytest.approx(model.cv_loss_)
    # a given value is used as is, without cross-validation
    fixed = make(random_state=0, **{name: grid[0]}).fit(X, y, **fit_kwargs)
    assert getattr(fixed, f"{name}_") == grid[0] and fixed.cv_loss_ == []


def test_one_shot_selection_falls_back() -> None:
    X, y = make_scores(n_per_class=1, seed=1)
    probe = LinearProbe(alpha=None, alpha_fallback=0.5).fit(X, y)
    assert probe.alpha_ == 0.5 and probe.cv_loss_ == []
    with pytest.raises(ConfigurationError, match="alpha"):
        LinearProbe(alpha=None, alpha_grid=(0.1, -1.0)).fit(*make_scores(n_per_class=4))


def test_standardizer_with_two_rows_is_not_all_plus_minus_one() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, generator=g) * torch.linspace(0.01, 5.0, 50)  # (2, 50)
    mean, scale = _math.fit_standardizer(x)
    assert torch.allclose(((x - mean) / scale).abs(), torch.ones(2, 50))  # the ill-conditioning
    mean, scale = _math.fit_standardizer(x, prior_rows=4.0)
    z = (x - mean) / scale
    # columns that barely differ between the two rows now stay small
    spread = (x[0] - x[1]).abs()
    assert torch.argsort(z[0].abs()).tolist() == torch.argsort(spread).tolist()
    assert z[:, :5].abs().max() < 0.2 and z.abs().max() < 3**0.5  # bounded by sqrt(1 + 4 / 2)
    # and with many rows the prior fades: close to each column's own deviation
    many = torch.randn(4000, 3, generator=g) * torch.tensor([0.5, 1.0, 2.0])
    _, own = _math.fit_standardizer(many)
    _, shrunk = _math.fit_standardizer(many, prior_rows=4.0)
    torch.testing.assert_close(shrunk, own, rtol=0.01, atol=0.0)


def test_one_shot_decoders_use_the_conditioned_standardisation() -> None:
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 64)) * np.linspace(0.01, 5.0, 64)  # one shot of each of 2 classes
    X = Scores.from_arrays(np.log([[0.7, 0.3], [0.4, 0.6]]), h, ("neg", "pos"))
    for model in (DecT(random_state=0).fit(X, [0, 1]), LinearProbe().fit(X, [0, 1])):
        mean = getattr(model, "feature_mean_", getattr(model, "mean_", None))
        scale = getattr(model, "feature_scale_", getattr(model, "scale_", None))
        z = (torch.as_tensor(X.hidden) - mean) / scale
        assert model.get_params()["scale_prior"] > 0
        assert not torch.allclose(z.abs(), torch.ones_like(z), atol=1e-3)
