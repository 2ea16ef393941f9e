"""Pure torch math of the decoders: score calibration, standardisation and batched DecT training.

Nothing here knows about estimators, label names or files. Batched functions carry a
leading model axis ``B`` so that many small DecT models (cross-validation folds ×
hyper-parameter grid points) train as one tensor problem; Adam is element-wise, so
training ``B`` models together gives exactly what ``B`` separate runs would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "batched_cross_entropy",
    "class_mean_distance",
    "dect_logits",
    "descend",
    "fit_logistic_regression",
    "fit_standardizer",
    "heldout_nll",
    "init_projection",
    "init_prototypes",
    "normalize_scores",
    "project",
    "prototype_distances",
    "stratified_folds",
    "train_dect",
    "true_class_nll",
]


def normalize_scores(log_probs: torch.Tensor) -> torch.Tensor:
    """Renormalise label log-probabilities over the K classes.

    Parameters
    ----------
    log_probs : Tensor, shape (..., K)
        Log-probabilities normalised over the full vocabulary (or any per-row offset).

    Returns
    -------
    Tensor, shape (..., K)
        ``log_probs - logsumexp(log_probs)``: log of p renormalised over the K classes.
    """
    return log_probs - torch.logsumexp(log_probs, dim=-1, keepdim=True)


def fit_standardizer(
    x: torch.Tensor, eps: float = 1e-6, prior_rows: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means and standard deviations of ``x``, shrunk towards the pooled deviation.

    With few rows a column's own deviation is noise: with two rows every standardised
    coordinate is +-1, whatever the column holds. ``prior_rows`` adds that many
    pseudo-rows of the pooled variance (the median over columns: a hidden state's few
    huge coordinates would dominate a mean) to each column's, so
    ``scale_j^2 = (n * var_j + prior_rows * median(var)) / (n + prior_rows)``; the
    effect fades as n grows.

    Parameters
    ----------
    x : Tensor, shape (n, d)
    eps : float
        Scales at or below it become 1 (constant columns).
    prior_rows : float
        Strength of the pooled variance, in rows; 0 gives each column's own deviation.

    Returns
    -------
    mean, scale : Tensor, shape (d,) each
        Use as ``(x - mean) / scale``.
    """
    n = x.shape[0]
    mean = x.mean(dim=0)  # (d,)
    if n < 2:
        return mean, torch.ones_like(mean)
    scale = shrunk_variance(x.var(dim=0, unbiased=False), n, prior_rows).sqrt()  # (d,)
    scale = torch.where(scale > eps, scale, torch.ones_like(scale))
    return mean, scale


def shrunk_variance(var: torch.Tensor, n: float, prior_rows: float) -> torch.Tensor:
    """Each column's variance ``var`` (d,) from ``n`` rows, shrunk towards the median
    variance by ``prior_rows`` pseudo-rows: ``(n * var_j + prior_rows * median(var)) /
    (n + prior_rows)``, shape (d,)."""
    return (n * var + prior_rows * var.median()) / (n + prior_rows)


def init_projection(
    d: int, m: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Initial projection weight, shape (d, m), as ``torch.nn.Linear(d, m)`` would draw it.

    ``Linear`` uses Kaiming-uniform with ``a = sqrt(5)``, i.e. ``U(-1/sqrt(d), 1/sqrt(d))``.
    """
    bound = 1.0 / math.sqrt(d)
    return (torch.rand(d, m, generator=generator, dtype=dtype) * 2.0 - 1.0) * bound  # (d, m)


def init_prototypes(
    k: int, m: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed class prototypes, shape (k, m), Xavier-uniform as in the DecT reference code."""
    bound = math.sqrt(6.0 / (k + m))
    return (torch.rand(k, m, generator=generator, dtype=dtype) * 2.0 - 1.0) * bound  # (k, m)


def project(h: torch.Tensor, weight: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Project features with one weight per model, then L2-normalise.

    Parameters
    ----------
    h : Tensor, shape (n, d)
    weight : Tensor, shape (d, B, m)
        The B models' projections side by side, so that all of them are one
        (n, d) @ (d, B*m) matrix product.
    normalize : bool
        Whether to L2-normalise each projected row (DecT does).

    Returns
    -------
    Tensor, shape (n, B, m)
    """
    d, b, m = weight.shape
    z = (h @ weight.reshape(d, b * m)).view(-1, b, m)  # (n, B, m)
    return F.normalize(z, p=2.0, dim=-1) if normalize else z


def prototype_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every projected row to every prototype.

    Parameters
    ----------
    z : Tensor, shape (n, B, m)
    prototypes : Tensor, shape (K, m)

    Returns
    -------
    Tensor, shape (n, B, K)
    """
    sq = (
        z.pow(2).sum(-1, keepdim=True) - 2.0 * z @ prototypes.T + prototypes.pow(2).sum(-1)
    )  # (n, B, K)
    # clamping before the sqrt keeps the gradient finite when a row sits on a prototype
    return sq.clamp_min(1e-12).sqrt()


def dect_logits(
    z: torch.Tensor,
    prototypes: torch.Tensor,
    radii: torch.Tensor,
    scores: torch.Tensor,
    lam: torch.Tensor,
) -> torch.Tensor:
    """DecT class logits ``-(||z - P_k|| - r_k) + lambda * s_k``.

    Parameters
    ----------
    z : Tensor, shape (n, B, m)
        Normalised projected features.
    prototypes : Tensor, shape (K, m)
    radii : Tensor, shape (B, K)
    scores : Tensor, shape (n, K)
        Model label scores (calibrated log-probabilities).
    lam : Tensor, shape (B,)
        Weight of the model scores, one per model.

    Returns
    -------
    Tensor, shape (n, B, K)
    """
    dist = prototype_distances(z, prototypes)  # (n, B, K)
    return radii - dist + lam.view(1, -1, 1) * scores.unsqueeze(1)  # (n, B, K)


def class_mean_distance(
    u: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, k: int
) -> torch.Tensor:
    """Mean distance of each class's rows to their class centre, per model.

    Parameters
    ----------
    u : Tensor, shape (n, B, m)
        Projected rows.
    y : Tensor, shape (n,), int64
        Class index of each row.
    weights : Tensor, shape (n, B)
        1 for the rows a model trains on, 0 for the rows it must not see.
    k : int
        Number of classes.

    Returns
    -------
    Tensor, shape (B, k)
        0 for a class a model has no row of.
    """
    onehot = F.one_hot(y, k).to(u.dtype)  # (n, k)
    member = weights.unsqueeze(-1) * onehot.unsqueeze(1)  # (n, B, k)
    count = member.sum(dim=0).clamp_min(1.0)  # (B, k)
    centre = torch.einsum("nbk,nbm->bkm", member, u) / count.unsqueeze(-1)  # (B, k, m)
    dist = (u.unsqueeze(2) - centre).norm(dim=-1)  # (n, B, k)
    return (member * dist).sum(dim=0) / count  # (B, k)


def batched_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted mean cross-entropy of each model.

    Parameters
    ----------
    logits : Tensor, shape (n, B, K)
    y : Tensor, shape (n,), int64
    weights : Tensor, shape (n, B)

    Returns
    -------
    Tensor, shape (B,)
    """
    nll = true_class_nll(logits, y)  # (n, B)
    return (weights * nll).sum(dim=0) / weights.sum(dim=0).clamp_min(1.0)  # (B,)


def train_dect(
    h: torch.Tensor,
    scores: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    lam: torch.Tensor,
    weight0: torch.Tensor,
    prototypes: torch.Tensor,
    radii0: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train B DecT models at once with full-batch Adam on their weighted cross-entropy.

    Parameters
    ----------
    h : Tensor, shape (n, d)
    scores : Tensor, shape (n, K)
    y : Tensor, shape (n,), int64
    weights : Tensor, shape (n, B)
        Which rows each model trains on (cross-validation folds).
    lam : Tensor, shape (B,)
    weight0 : Tensor, shape (d, B, m)
        Initial projections.
    prototypes : Tensor, shape (K, m)
        Fixed.
    radii0 : Tensor, shape (B, K)
        Initial radii.
    epochs : int
    lr : float
    weight_decay : float
        Adam's L2 penalty on the projection only (the radii are biases).

    Returns
    -------
    weight : Tensor, shape (d, B, m)
    radii : Tensor, shape (B, K)
    """
    weight = weight0.clone().requires_grad_(True)
    radii = radii0.clone().requires_grad_(True)
    groups: list[dict[str, Any]] = [
        {"params": [weight], "weight_decay": weight_decay},
        {"params": [radii]},
    ]
    optimizer = torch.optim.Adam(groups, lr=lr)

    def loss() -> torch.Tensor:
        logits = dect_logits(project(h, weight), prototypes, radii, scores, lam)  # (n, B, K)
        # summing independent per-model losses gives each model exactly its own gradient
        return batched_cross_entropy(logits, y, weights).sum()

    descend(optimizer, loss, epochs)
    return weight.detach(), radii.detach()


def descend(optimizer: torch.optim.Optimizer, loss: Callable[[], torch.Tensor], steps: int) -> None:
    """Take ``steps`` full-batch steps of ``optimizer`` on ``loss()``, recomputed each step."""
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()


def heldout_nll(
    logits: torch.Tensor, y: torch.Tensor, heldout: torch.Tensor, temperatures: torch.Tensor
) -> torch.Tensor:
    """Held-out negative log-likelihood of every row, model and temperature.

    Parameters
    ----------
    logits : Tensor, shape (n, B, K)
    y : Tensor, shape (n,), int64
    heldout : Tensor, shape (n, B)
        1 for the rows a model was *not* trained on.
    temperatures : Tensor, shape (T,)
        Factors the logits are multiplied by.

    Returns
    -------
    Tensor, shape (n, B, T)
        0 where ``heldout`` is 0.
    """
    scaled = logits.unsqueeze(-2) * temperatures.view(-1, 1)  # (n, B, T, K)
    return heldout.unsqueeze(-1) * true_class_nll(scaled, y)  # (n, B, T)


def true_class_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-log_softmax(logits)`` at each row's class: logits (n, ..., K), y (n,) -> (n, ...)."""
    logp = torch.log_softmax(logits, dim=-1)  # (n, ..., K)
    index = y.view(-1, *[1] * (logp.dim() - 1)).expand(*logp.shape[:-1], 1)  # (n, ..., 1)
    return -logp.gather(-1, index).squeeze(-1)  # (n, ...)


def stratified_folds(y: torch.Tensor, n_folds: int, generator: torch.Generator) -> torch.Tensor:
    """Assign each row to one of ``n_folds`` folds, balanced within every class.

    Parameters
    ----------
    y : Tensor, shape (n,), int64
    n_folds : int
    generator : torch.Generator

    Returns
    -------
    Tensor, shape (n,), int64
        Fold index of each row.
    """
    fold = torch.empty_like(y)
    offset = 0
    for cls in torch.unique(y):
        idx = torch.nonzero(y == cls).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        # rotating the start keeps fold sizes even when class counts are not multiples
        fold[idx] = (torch.arange(idx.numel()) + offset) % n_folds
        offset += idx.numel()
    return fold


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, k: int, *, alpha: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS (deterministic, from zeros).

    Minimises ``mean cross-entropy + alpha / 2 * ||W||^2`` (the bias is not penalised).

    Parameters
    ----------
    x : Tensor, shape (n, p)
    y : Tensor, shape (n,), int64
    k : int
        Number of classes (columns of the weight).
    alpha : float
        L2 strength.
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    weight : Tensor, shape (p, k)
    bias : Tensor, shape (k,)
        In the dtype of ``x``.
    """
    weight = torch.zeros(x.shape[1], k, dtype=x.dtype, requires_grad=True)  # (p, k)
    bias = torch.zeros(k, dtype=x.dtype, requires_grad=True)  # (k,)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * alpha * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def pseudo_bma_weights(cv_loss: torch.Tensor, n: int) -> torch.Tensor:
    """Pseudo-BMA model weights from mean held-out losses (Yao et al. 2018).

    Parameters
    ----------
    cv_loss : Tensor, shape (G,)
        Mean held-out negative log-likelihood per candidate model.
    n : int
        Number of held-out rows the means are over.

    Returns
    -------
    Tensor, shape (G,)
        ``exp(-n * cv_loss_g)`` normalised: each model's held-out likelihood share.
    """
    return torch.softmax(-float(n) * cv_loss, dim=0)  # (G,)
