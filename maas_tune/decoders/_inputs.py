"""Turning :class:`~maas_tune.scores.Scores` into the tensors a decoder trains on."""

from __future__ import annotations

import torch

from ..errors import ConfigurationError
from ..scores import Scores
from . import _math
from .base import hidden_states

__all__ = ["features", "standardizer"]


def features(
    X: Scores, scores: torch.Tensor, need_hidden: bool | None = None
) -> tuple[torch.Tensor, bool]:
    """Hidden states, or the calibrated scores in scores-only mode; and whether they are hidden."""
    if need_hidden is None:
        need_hidden = X.hidden is not None
    if not need_hidden:
        return scores, False
    if X.hidden is None:
        raise ConfigurationError(
            "this DecT was fitted on hidden states but X has none; score X with the same provider"
        )
    return hidden_states(X), True


def standardizer(
    feats: torch.Tensor, standardize: bool, prior_rows: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale of ``feats`` (n, p) (see :func:`_math.fit_standardizer`), or 0 and 1."""
    if standardize:
        return _math.fit_standardizer(feats, prior_rows=prior_rows)
    return torch.zeros(feats.shape[1]), torch.ones(feats.shape[1])
