"""Choosing a hyper-parameter by cross-validation on the shots: one procedure for every decoder.

DecT chooses ``lam``, the linear probe and the score logistic regression their L2
strength, Y-Tuning its weight decay, all the same way: stratified folds of the
training rows (at most ``n_folds``, capped by the smallest class count; none when a
class has a single row), each candidate trained on the other folds, and the
candidate with the lowest held-out log-loss at its best temperature wins
(:func:`scaled_cv_loss`). DecT trains its folds as one batched problem; the others
go through :func:`select_by_cv`, which fits one estimator per (candidate, fold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..estimator import torch_seed
from ..scores import Scores
from . import _math

__all__ = ["CV_TEMPERATURES", "choose_value", "n_cv_folds", "scaled_cv_loss", "select_by_cv"]

#: Temperatures tried on held-out logits: each candidate is scored at its best one.
CV_TEMPERATURES: tuple[float, ...] = tuple(2.0 ** (i / 2) for i in range(-4, 9))  # 0.25 .. 16


def n_cv_folds(target: torch.Tensor, k: int, n_folds: int) -> int:
    """Folds usable on ``target`` (n,): ``n_folds`` capped by the smallest class count."""
    return min(n_folds, int(torch.bincount(target, minlength=k).min()))


def scaled_cv_loss(nll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean held-out loss of each candidate at its best temperature, and that temperature.

    Parameters
    ----------
    nll : Tensor, shape (n, G, T)
        Each row's loss when held out, per candidate and temperature.

    Returns
    -------
    cv_loss : Tensor, shape (G,)
    best_t : Tensor, shape (G,), int64
        Index of each candidate's temperature. Scoring each candidate at its best
        temperature ranks without penalising a scale a model cannot reach.
    """
    n, g, _ = nll.shape
    best_t = nll.sum(0).argmin(dim=1)  # (G,)
    rows = nll.gather(2, best_t.view(1, g, 1).expand(n, g, 1)).squeeze(2)  # (n, G)
    return rows.mean(0), best_t


def select_by_cv(
    make: Callable[[float], Any],
    grid: Sequence[float],
    X: Scores,
    target: torch.Tensor,
    *,
    n_folds: int,
    seed: int,
    fit_kwargs: dict[str, object] | None = None,
) -> tuple[int, list[float]] | None:
    """Index of the best candidate of ``grid`` and each candidate's CV loss.

    Parameters
    ----------
    make : callable
        ``make(value)`` returns an unfitted decoder with the candidate value set.
    grid : sequence of float
        Candidate values.
    X : Scores, n rows
    target : Tensor, shape (n,), int64
        Class index of each row.
    n_folds : int
        Folds wanted (capped by the smallest class count).
    seed : int
        Seed of the fold assignment.
    fit_kwargs : dict, optional
        Passed to every ``fit`` (e.g. ``content_free``).

    Returns
    -------
    (best, cv_loss) or None
        None when cross-validation is impossible (a class has one row).
    """
    k = len(X.labels)
    folds = n_cv_folds(target, k, n_folds)
    if folds < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    fold = _math.stratified_folds(target, folds, generator)  # (n,)
    logits = torch.zeros(target.shape[0], len(grid), k)  # (n, G, K), each row held out once
    for g, value in enumerate(grid):
        for f in range(folds):
            train, held = (fold != f).nonzero().squeeze(1), (fold == f).nonzero().squeeze(1)
            decoder = make(float(value))
            decoder.fit(X.subset(train.numpy()), target[train].numpy(), **(fit_kwargs or {}))
            logits[held, g] = decoder._decision_function(X.subset(held.numpy())).float()
    temps = torch.tensor(CV_TEMPERATURES)  # (T,)
    nll = _math.heldout_nll(logits, target, torch.ones(target.shape[0], len(grid)), temps)
    cv_loss, _ = scaled_cv_loss(nll)  # (G,)
    return int(torch.argmin(cv_loss)), cv_loss.tolist()


def choose_value(
    est: Any,
    name: str,
    grid: Sequence[float],
    fallback: float,
    X: Scores,
    target: torch.Tensor,
    **fit_kwargs: Any,
) -> tuple[float, list[float]]:
    """The hyper-parameter ``name`` of ``est`` to train with, and the CV losses behind it.

    ``getattr(est, name)`` when it is not None (no CV, losses ``[]``); else the
    candidate of ``grid`` that :func:`select_by_cv` prefers, each candidate a copy of
    ``est`` (``get_params``) with the value set, folds seeded by ``est.random_state``
    and capped by ``est.n_folds``; ``fallback`` when a class has a single row.
    """
    given = getattr(est, name)
    if given is not None:
        return float(given), []
    params = est.get_params()
    seed = params.get("random_state")
    chosen = select_by_cv(
        lambda value: type(est)(**{**params, name: value}),
        grid,
        X,
        target,
        n_folds=int(params["n_folds"]),
        seed=torch_seed(seed),
        fit_kwargs=fit_kwargs,
    )
    if chosen is None:
        return float(fallback), []
    return float(grid[chosen[0]]), chosen[1]
