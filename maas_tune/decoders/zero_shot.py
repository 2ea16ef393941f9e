"""Decoders that learn nothing from labels: the model's own argmax and contextual calibration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..scores import Scores
from .base import BaseDecoder, check_shapes, content_free_tensor, label_scores

__all__ = ["ContextualCalibration", "ZeroShot"]


class ZeroShot(BaseDecoder):
    """Predict the class whose label words the model finds most likely.

    ``fit`` only records the classes; ``predict_proba`` is the model's
    distribution renormalised over the K label words.
    """

    _requires_y = False

    def __init__(self) -> None:
        pass

    def fit(
        self,
        X: Scores,
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
    ) -> ZeroShot:
        """Record the classes of ``X`` (``y`` and ``content_free`` are ignored); returns ``self``."""
        self._set_classes(X)
        return self

    def _decision_function(self, X: Scores) -> torch.Tensor:
        return label_scores(X)  # (n, K)


class ContextualCalibration(BaseDecoder):
    """Contextual calibration (Zhao et al., ICML 2021).

    The model's class distribution ``p`` (renormalised over the K label words) is
    divided by the distribution ``p_cf`` it gives to a content-free input (``"N/A"``
    through the same template), i.e. ``W = diag(p_cf)^-1, b = 0``; the calibrated
    score is ``log p - log p_cf``. Labels are not used.

    Attributes
    ----------
    classes_ : np.ndarray of str, shape (K,)
    content_free_ : torch.Tensor, shape (K,)
        ``log p_cf`` renormalised over the K classes.
    """

    _tensor_attrs: ClassVar[tuple[str, ...]] = ("content_free_",)
    _requires_y = False

    def __init__(self) -> None:
        pass

    @property
    def needs_content_free(self) -> bool:
        """Always True: the calibration is the content-free scores."""
        return True

    def fit(
        self,
        X: Scores,
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
    ) -> ContextualCalibration:
        """Store the content-free scores; returns ``self``.

        Parameters
        ----------
        X : Scores
            Only its labels are used.
        y : ignored
        content_free : array-like, shape (K,)
            Label log-probabilities of the content-free input (from
            ``Client.content_free_scores`` or equivalent).

        Raises
        ------
        ConfigurationError
            If ``content_free`` is missing or has the wrong shape.
        """
        self._set_classes(X)
        self.content_free_ = content_free_tensor(content_free, len(X.labels))
        return self

    def _decision_function(self, X: Scores) -> torch.Tensor:
        return label_scores(X) - self.content_free_  # (n, K)

    def _check_state(self, k: int) -> None:
        check_shapes({"content_free_": (k,)}, vars(self))
