"""Linear baselines: logistic regression on the label scores; a linear probe on hidden states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigurationError
from ..estimator import check_positive
from ..scores import Scores
from ._math import fit_logistic_regression, fit_standardizer
from ._select import choose_value
from .base import (
    BaseDecoder,
    check_shapes,
    check_width,
    content_free_tensor,
    hidden_states,
    label_scores,
    torch_threads,
)

__all__ = ["LinearProbe", "ScoreLogisticRegression"]


#: Candidates for ``alpha`` when it is None (cross-validated on the shots, as DecT's ``lam``).
SCORE_LR_ALPHA_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
PROBE_ALPHA_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


def _fit_head(
    est: ScoreLogisticRegression | LinearProbe,
    X: Scores,
    target: torch.Tensor,
    feats: torch.Tensor,
    **fit_kwargs: Any,
) -> tuple[float, list[float], torch.Tensor, torch.Tensor]:
    """Fit ``est``'s logistic regression on ``feats`` (n, p), float64.

    Returns
    -------
    alpha, cv_loss : float, list of float
        ``est.alpha``, or the candidate of ``est.alpha_grid`` that cross-validates best
        (each fold fitted with ``fit_kwargs``), and the CV losses behind it.
    coef, intercept : Tensor, shape (p, K) and (K,), float32
    """
    for value in (est.alpha, *est.alpha_grid, est.alpha_fallback):
        if value is not None:
            check_positive("alpha (and each alpha_grid value, alpha_fallback)", value)
    with torch_threads(est.n_threads):
        alpha, cv_loss = choose_value(
            est, "alpha", est.alpha_grid, est.alpha_fallback, X, target, **fit_kwargs
        )
        coef, intercept = fit_logistic_regression(
            feats, target, len(X.labels), alpha=alpha, max_iter=est.max_iter
        )
    return alpha, cv_loss, coef.float(), intercept.float()


class ScoreLogisticRegression(BaseDecoder):
    """Multinomial logistic regression on the K label scores.

    Features are the label log-probabilities renormalised over the K classes and,
    when ``fit`` is given the content-free scores, calibrated as in
    :class:`ContextualCalibration` (``log p - log p_cf``). A (K, K) weight and a
    bias are learnt by L-BFGS; the fit is deterministic.

    Parameters
    ----------
    alpha : float or None
        L2 strength on the weight (the loss is mean cross-entropy + alpha/2 ||W||^2);
        None chooses it from ``alpha_grid`` by cross-validation on the training rows,
        the procedure DecT chooses ``lam`` by (:mod:`~maas_tune.decoders._select`).
    alpha_grid : sequence of float
        Candidates for ``alpha`` when it is None.
    alpha_fallback : float
        ``alpha`` when cross-validation is impossible (a class has a single row).
    n_folds : int
        Cross-validation folds, capped by the smallest class count.
    max_iter : int
        L-BFGS iterations.
    random_state : int or None
        Seed of the cross-validation folds (the fit itself is deterministic).
    n_threads : int or None
        Torch intra-op threads while fitting and predicting (see
        :func:`~maas_tune.decoders.base.torch_threads`); None keeps torch's setting.

    Attributes
    ----------
    classes_ : np.ndarray of str, shape (K,)
    alpha_ : float
        The L2 strength used (given, chosen or the fallback); not saved with the decoder.
    cv_loss_ : list of float
        Cross-validation loss per ``alpha_grid`` entry ([] without CV); not saved.
    offset_ : torch.Tensor, shape (K,)
        Subtracted from the renormalised log-probabilities (the calibration; zeros without one).
    coef_ : torch.Tensor, shape (K, K)
    intercept_ : torch.Tensor, shape (K,)
    """

    _tensor_attrs: ClassVar[tuple[str, ...]] = ("offset_", "coef_", "intercept_")

    def __init__(
        self,
        *,
        alpha: float | None = 0.1,
        alpha_grid: Sequence[float] = SCORE_LR_ALPHA_GRID,
        alpha_fallback: float = 0.1,
        n_folds: int = 4,
        max_iter: int = 100,
        random_state: int | None = None,
        n_threads: int | None = 1,
    ) -> None:
        self.alpha = alpha
        self.alpha_grid = alpha_grid
        self.alpha_fallback = alpha_fallback
        self.n_folds = n_folds
        self.max_iter = max_iter
        self.random_state = random_state
        self.n_threads = n_threads

    @property
    def needs_content_free(self) -> bool:
        """True: the features are calibrated with the content-free scores when given."""
        return True

    def fit(
        self,
        X: Scores,
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
    ) -> ScoreLogisticRegression:
        """Fit on scored examples; returns ``self``.

        Parameters
        ----------
        X : Scores, n examples
        y : array-like of str or int, shape (n,)
        content_free : array-like, shape (K,), optional
            Label log-probabilities of the content-free input; calibrates the features.
        """
        target = self._encode_y(X, y)
        k = len(X.labels)
        offset = torch.zeros(k) if content_free is None else content_free_tensor(content_free, k)
        feats = (label_scores(X) - offset).double()  # (n, K)
        fitted = _fit_head(self, X, target, feats, content_free=content_free)
        self.alpha_, self.cv_loss_, self.coef_, self.intercept_ = fitted
        self.offset_ = offset
        self._set_classes(X)
        return self

    def _decision_function(self, X: Scores) -> torch.Tensor:
        return (label_scores(X) - self.offset_) @ self.coef_ + self.intercept_  # (n, K)

    def _check_state(self, k: int) -> None:
        check_shapes({"offset_": (k,), "coef_": (k, k), "intercept_": (k,)}, vars(self))


class LinearProbe(BaseDecoder):
    """Multinomial logistic regression on the standardised hidden states (L2, L-BFGS).

    Parameters
    ----------
    alpha : float or None
        L2 strength on the weight (the loss is mean cross-entropy + alpha/2 ||W||^2);
        None chooses it from ``alpha_grid`` by cross-validation on the training rows,
        the procedure DecT chooses ``lam`` by (:mod:`~maas_tune.decoders._select`).
    alpha_grid : sequence of float
        Candidates for ``alpha`` when it is None.
    alpha_fallback : float
        ``alpha`` when cross-validation is impossible (a class has a single row).
    n_folds : int
        Cross-validation folds, capped by the smallest class count.
    scale_prior : float
        Pseudo-rows of the pooled variance mixed into each feature's variance when
        standardising (:func:`~maas_tune.decoders._math.fit_standardizer`).
    max_iter : int
        L-BFGS iterations.
    random_state : int or None
        Seed of the cross-validation folds (the fit itself is deterministic).
    n_threads : int or None
        Torch intra-op threads while fitting and predicting (see
        :func:`~maas_tune.decoders.base.torch_threads`); None keeps torch's setting.

    Attributes
    ----------
    classes_ : np.ndarray of str, shape (K,)
    alpha_, cv_loss_ : float, list of float
        As for :class:`ScoreLogisticRegression`; not saved with the decoder.
    mean_, scale_ : torch.Tensor, shape (d,)
        Standardisation of the hidden states, from the training rows (each feature's
        deviation shrunk towards the pooled one by ``scale_prior`` pseudo-rows).
    coef_ : torch.Tensor, shape (d, K)
    intercept_ : torch.Tensor, shape (K,)
    """

    _tensor_attrs: ClassVar[tuple[str, ...]] = ("mean_", "scale_", "coef_", "intercept_")

    def __init__(
        self,
        *,
        alpha: float | None = 1.0,
        alpha_grid: Sequence[float] = PROBE_ALPHA_GRID,
        alpha_fallback: float = 1.0,
        n_folds: int = 4,
        scale_prior: float = 4.0,
        max_iter: int = 100,
        random_state: int | None = None,
        n_threads: int | None = 1,
    ) -> None:
        self.alpha = alpha
        self.alpha_grid = alpha_grid
        self.alpha_fallback = alpha_fallback
        self.n_folds = n_folds
        self.scale_prior = scale_prior
        self.max_iter = max_iter
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(
        self,
        X: Scores,
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
    ) -> LinearProbe:
        """Fit on scored examples with hidden states (``content_free`` is ignored); returns ``self``.

        Raises
        ------
        ConfigurationError
            If ``X.hidden`` is None (the provider returned no hidden states).
        """
        if self.scale_prior < 0:
            raise ConfigurationError(f"scale_prior must be >= 0, got {self.scale_prior!r}")
        target = self._encode_y(X, y)
        h = hidden_states(X)  # (n, d)
        mean, scale = fit_standardizer(h, prior_rows=self.scale_prior)
        feats = ((h - mean) / scale).double()  # (n, d)
        self.alpha_, self.cv_loss_, self.coef_, self.intercept_ = _fit_head(self, X, target, feats)
        self.mean_, self.scale_ = mean, scale
        self._set_classes(X)
        return self

    def _decision_function(self, X: Scores) -> torch.Tensor:
        h = check_width(hidden_states(X), self.mean_.shape[0], type(self).__name__)  # (n, d)
        h = (h - self.mean_) / self.scale_
        return h @ self.coef_ + self.intercept_  # (n, K)

    def _check_state(self, k: int) -> None:
        d = self.coef_.shape[0]
        check_shapes(
            {"mean_": (d,), "scale_": (d,), "coef_": (d, k), "intercept_": (k,)}, vars(self)
        )
