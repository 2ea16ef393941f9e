"""Linear baselines: logistic regression on the label scores; a linear probe on hidden states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigurationError
from ..scores import Scores
from ._math import fit_logistic_regression, fit_standardizer
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


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")


class ScoreLogisticRegression(BaseDecoder):
    """Multinomial logistic regression on the K label scores.

    Features are the label log-probabilities renormalised over the K classes and,
    when ``fit`` is given the content-free scores, calibrated as in
    :class:`ContextualCalibration` (``log p - log p_cf``). A (K, K) weight and a
    bias are learnt by L-BFGS; the fit is deterministic.

    Parameters
    ----------
    alpha : float
        L2 strength on the weight (the loss is mean cross-entropy + alpha/2 ||W||^2).
    max_iter : int
        L-BFGS iterations.
    random_state : int or None
        Unused (the fit is deterministic); kept so every decoder takes it.
    n_threads : int or None
        Torch intra-op threads while fitting and predicting (see
        :func:`~maas_tune.decoders.base.torch_threads`); None keeps torch's setting.

    Attributes
    ----------
    classes_ : np.ndarray of str, shape (K,)
    offset_ : torch.Tensor, shape (K,)
        Subtracted from the renormalised log-probabilities (the calibration; zeros without one).
    coef_ : torch.Tensor, shape (K, K)
    intercept_ : torch.Tensor, shape (K,)
    """

    _tensor_attrs: ClassVar[tuple[str, ...]] = ("offset_", "coef_", "intercept_")

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        max_iter: int = 100,
        random_state: int | None = None,
        n_threads: int | None = 1,
    ) -> None:
        self.alpha = alpha
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
        _check_positive("alpha", self.alpha)
        target = self._encode_y(X, y)
        k = len(X.labels)
        offset = torch.zeros(k) if content_free is None else content_free_tensor(content_free, k)
        feats = (label_scores(X) - offset).double()  # (n, K)
        with torch_threads(self.n_threads):
            coef, intercept = fit_logistic_regression(
                feats, target, k, alpha=self.alpha, max_iter=self.max_iter
            )
        self.offset_ = offset
        self.coef_, self.intercept_ = coef.float(), intercept.float()
        self._set_classes(X)
        return self

    def _decision_function(self, X: Scores) -> torch.Tensor:
        return (label_scores(X) - self.offset_) @ self.coef_ + self.intercept_  # (n, K)

    def _check_state(self, k: int) -> None:
        check_shapes({"offset_": (k,), "coef_": (k, k), "intercept_": (k,)}, self)


class LinearProbe(BaseDecoder):
    """Multinomial logistic regression on the standardised hidden states (L2, L-BFGS).

    Parameters
    ----------
    alpha : float
        L2 strength on the weight (the loss is mean cross-entropy + alpha/2 ||W||^2).
    max_iter : int
        L-BFGS iterations.
    random_state : int or None
        Unused (the fit is deterministic); kept so every decoder takes it.
    n_threads : int or None
        Torch intra-op threads while fitting and predicting (see
        :func:`~maas_tune.decoders.base.torch_threads`); None keeps torch's setting.

    Attributes
    ----------
    classes_ : np.ndarray of str, shape (K,)
    mean_, scale_ : torch.Tensor, shape (d,)
        Standardisation of the hidden states, from the training rows.
    coef_ : torch.Tensor, shape (d, K)
    intercept_ : torch.Tensor, shape (K,)
    """

    _tensor_attrs: ClassVar[tuple[str, ...]] = ("mean_", "scale_", "coef_", "intercept_")

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        max_iter: int = 100,
        random_state: int | None = None,
        n_threads: int | None = 1,
    ) -> None:
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(self, X: Scores, y: Sequence[Any] | np.ndarray | None = None) -> LinearProbe:
        """Fit on scored examples with hidden states; returns ``self``.

        Raises
        ------
        ConfigurationError
            If ``X.hidden`` is None (the provider returned no hidden states).
        """
        _check_positive("alpha", self.alpha)
        target = self._encode_y(X, y)
        h = hidden_states(X)  # (n, d)
        mean, scale = fit_standardizer(h)
        feats = ((h - mean) / scale).double()  # (n, d)
        with torch_threads(self.n_threads):
            coef, intercept = fit_logistic_regression(
                feats, target, len(X.labels), alpha=self.alpha, max_iter=self.max_iter
            )
        self.mean_, self.scale_ = mean, scale
        self.coef_, self.intercept_ = coef.float(), intercept.float()
        self._set_classes(X)
        return self

    def _decision_function(self, X: Scores) -> torch.Tensor:
        h = check_width(hidden_states(X), self.mean_.shape[0], type(self).__name__)  # (n, d)
        h = (h - self.mean_) / self.scale_
        return h @ self.coef_ + self.intercept_  # (n, K)

    def _check_state(self, k: int) -> None:
        d = self.coef_.shape[0]
        check_shapes({"mean_": (d,), "scale_": (d,), "coef_": (d, k), "intercept_": (k,)}, self)
