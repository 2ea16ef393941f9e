"""The pure torch math of the decoders, on small synthetic problems."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maas_tune.decoders import _math
from maas_tune.decoders.base import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny problems: threads only add waiting, a lot of it on a busy machine
    with torch_threads(1):
        yield


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(
    n_per_class: int, k: int, d: int, spread: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random class centres: (n, d) features, (n,) labels."""
    g = _gen(seed)
    centres = torch.randn(k, d, generator=g) * spread  # (k, d)
    y = torch.arange(k).repeat_interleave(n_per_class)  # (n,)
    x = centres[y] + torch.randn(len(y), d, generator=g)  # (n, d)
    return x, y


def test_normalize_scores_renormalises_over_classes() -> None:
    lp = torch.log(torch.tensor([[0.1, 0.3], [0.02, 0.02]]))
    out = _math.normalize_scores(lp)
    assert torch.allclose(out.exp(), torch.tensor([[0.25, 0.75], [0.5, 0.5]]))


def test_fit_standardizer_gives_zero_mean_unit_scale_and_keeps_constant_columns() -> None:
    x = torch.randn(50, 4, generator=_gen())
    x[:, 2] = 3.0
    mean, scale = _math.fit_standardizer(x)
    z = (x - mean) / scale
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z[:, [0, 1, 3]].std(0, unbiased=False), torch.ones(3), atol=1e-5)
    assert scale[2] == 1.0 and torch.all(z[:, 2] == 0)


def test_init_shapes_and_bounds() -> None:
    w = _math.init_projection(640, 64, _gen())
    p = _math.init_prototypes(4, 64, _gen())
    assert w.shape == (640, 64) and w.abs().max() <= 1 / math.sqrt(640)
    assert p.shape == (4, 64) and p.abs().max() <= math.sqrt(6 / 68)
    assert torch.equal(w, _math.init_projection(640, 64, _gen()))  # seeded


def test_project_and_distances_shapes_and_values() -> None:
    h = torch.randn(5, 8, generator=_gen(1))
    weight = torch.randn(8, 3, 6, generator=_gen(2))  # (d, B, m)
    z = _math.project(h, weight)
    assert z.shape == (5, 3, 6)
    assert torch.allclose(z.norm(dim=-1), torch.ones(5, 3), atol=1e-6)
    assert torch.allclose(_math.project(h, weight, normalize=False)[:, 1], h @ weight[:, 1])
    protos = torch.randn(4, 6, generator=_gen(3))
    dist = _math.prototype_distances(z, protos)
    assert dist.shape == (5, 3, 4)
    for b in range(3):
        assert torch.allclose(dist[:, b], torch.cdist(z[:, b], protos), atol=1e-5)


def test_dect_logits_formula() -> None:
    z = F.normalize(torch.randn(5, 2, 6, generator=_gen(1)), dim=-1)
    protos = torch.randn(3, 6, generator=_gen(2))
    radii = torch.rand(2, 3, generator=_gen(3))
    scores = torch.randn(5, 3, generator=_gen(4))
    lam = torch.tensor([0.5, 2.0])
    out = _math.dect_logits(z, protos, radii, scores, lam)
    assert out.shape == (5, 2, 3)
    for b in range(2):
        expected = -(torch.cdist(z[:, b], protos) - radii[b]) + lam[b] * scores
        assert torch.allclose(out[:, b], expected, atol=1e-5)


def test_radius_init_is_the_mean_distance_to_the_class_centre() -> None:
    u = torch.randn(6, 2, 3, generator=_gen())  # (n, B, m)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    weights = torch.ones(6, 2)
    weights[0, 1] = 0.0  # model 1 does not see row 0
    r = _math.class_mean_distance(u, y, weights, 2)
    assert r.shape == (2, 2)
    for b, rows in ((0, [0, 1, 2]), (1, [1, 2])):
        pts = u[rows, b]
        assert torch.allclose(r[b, 0], (pts - pts.mean(0)).norm(dim=-1).mean(), atol=1e-6)
    pts = u[3:, 0]
    assert torch.allclose(r[0, 1], (pts - pts.mean(0)).norm(dim=-1).mean(), atol=1e-6)


def test_batched_cross_entropy_matches_torch_on_each_subset() -> None:
    logits = torch.randn(6, 2, 3, generator=_gen())
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    weights = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.float32)
    out = _math.batched_cross_entropy(logits, y, weights)
    assert torch.allclose(out[0], F.cross_entropy(logits[:, 0], y))
    keep = weights[:, 1].bool()
    assert torch.allclose(out[1], F.cross_entropy(logits[keep, 1], y[keep]))


def test_heldout_nll_at_temperature_one_is_the_cross_entropy() -> None:
    logits = torch.randn(6, 2, 3, generator=_gen())
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    heldout = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.float32)
    loss = _math.heldout_nll(logits, y, heldout, torch.tensor([1.0, 2.0])).sum(0)
    assert loss.shape == (2, 2)
    rows = heldout[:, 0].bool()
    assert torch.allclose(loss[0, 0], F.cross_entropy(logits[rows, 0], y[rows], reduction="sum"))
    assert torch.allclose(
        loss[0, 1], F.cross_entropy(2 * logits[rows, 0], y[rows], reduction="sum")
    )


def test_gradients_are_finite_and_reach_projection_and_radii() -> None:
    h, y = _blobs(4, 3, 10, 2.0)
    weight = _math.init_projection(10, 5, _gen()).unsqueeze(1).requires_grad_(True)  # (d, 1, m)
    radii = torch.ones(1, 3, requires_grad=True)
    protos = _math.init_prototypes(3, 5, _gen(1))
    scores = torch.zeros(len(y), 3)
    logits = _math.dect_logits(_math.project(h, weight), protos, radii, scores, torch.ones(1))
    _math.batched_cross_entropy(logits, y, torch.ones(len(y), 1)).sum().backward()
    for grad in (weight.grad, radii.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def _setup(
    h: torch.Tensor, y: torch.Tensor, k: int, b: int, m: int = 16
) -> dict[str, torch.Tensor]:
    weight0 = _math.init_projection(h.shape[1], m, _gen()).unsqueeze(1).expand(-1, b, -1)
    weights = torch.ones(len(y), b)
    radii0 = _math.class_mean_distance(_math.project(h, weight0, normalize=False), y, weights, k)
    return {
        "weights": weights,
        "weight0": weight0,
        "radii0": radii0,
        "prototypes": _math.init_prototypes(k, m, _gen(1)),
    }


def test_separable_problem_reaches_high_accuracy() -> None:
    h, y = _blobs(30, 4, 20, 3.0)
    s = _setup(h, y, 4, 1)
    scores = torch.zeros(len(y), 4)
    lam = torch.zeros(1)
    weight, radii = _math.train_dect(
        h,
        scores,
        y,
        s["weights"],
        lam,
        s["weight0"],
        s["prototypes"],
        s["radii0"],
        epochs=60,
        lr=0.05,
    )
    logits = _math.dect_logits(_math.project(h, weight), s["prototypes"], radii, scores, lam)
    assert (logits[:, 0].argmax(-1) == y).float().mean() >= 0.95


def test_batched_training_equals_separate_runs() -> None:
    h, y = _blobs(5, 3, 12, 1.0)
    scores = torch.randn(len(y), 3, generator=_gen(5))
    s = _setup(h, y, 3, 2)
    weights = s["weights"].clone()
    weights[:4, 1] = 0.0  # the second model trains on a subset
    lam = torch.tensor([0.25, 2.0])
    kw = {"epochs": 15, "lr": 0.01, "weight_decay": 1e-3}
    w_all, r_all = _math.train_dect(
        h, scores, y, weights, lam, s["weight0"], s["prototypes"], s["radii0"], **kw
    )
    for b in range(2):
        w_b, r_b = _math.train_dect(
            h,
            scores,
            y,
            weights[:, b : b + 1],
            lam[b : b + 1],
            s["weight0"][:, b : b + 1],
            s["prototypes"],
            s["radii0"][b : b + 1],
            **kw,
        )
        assert torch.allclose(w_all[:, b], w_b[:, 0], atol=1e-5)
        assert torch.allclose(r_all[b], r_b[0], atol=1e-5)


@pytest.mark.parametrize("counts", [(8, 8, 8), (5, 7, 9)])
def test_stratified_folds_balance_each_class(counts: tuple[int, ...]) -> None:
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    fold = _math.stratified_folds(y, 4, _gen())
    assert fold.shape == y.shape and set(fold.tolist()) <= {0, 1, 2, 3}
    for cls in range(len(counts)):
        sizes = torch.bincount(fold[y == cls], minlength=4)
        assert sizes.max() - sizes.min() <= 1
    assert torch.equal(fold, _math.stratified_folds(y, 4, _gen()))


def test_logistic_regression_fits_a_separable_problem_deterministically() -> None:
    x, y = _blobs(20, 3, 5, 3.0)
    w1, b1 = _math.fit_logistic_regression(x.double(), y, 3, alpha=1e-2, max_iter=100)
    w2, b2 = _math.fit_logistic_regression(x.double(), y, 3, alpha=1e-2, max_iter=100)
    assert w1.shape == (5, 3) and b1.shape == (3,)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert ((x.double() @ w1 + b1).argmax(-1) == y).float().mean() >= 0.95
