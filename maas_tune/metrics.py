"""Classification metrics beyond accuracy: macro-F1, per-class scores, log-loss and calibration.

Every function takes class *indices* (``0 .. n_classes - 1``, the column order of
``predict_proba``) and is a few lines of numpy. They are our own rather than
scikit-learn's on purpose: maas-tune does not depend on scikit-learn at run time (a
core dependency of ~40 MB, with scipy and joblib, for six formulas), and
scikit-learn has no expected calibration error at all. ``tests/test_metrics.py``
checks each function against scikit-learn's own (``accuracy_score``, ``f1_score``,
``precision_recall_fscore_support``, ``confusion_matrix``, ``log_loss``,
``calibration.calibration_curve``) on random and edge-case inputs.

Conventions (scikit-learn's, so numbers agree with what users compute there):

- A ratio with a zero denominator (precision of a class never predicted, recall of a
  class absent from ``y_true``) is 0, as ``zero_division=0``.
- :func:`macro_f1` averages over the classes that occur in ``y_true`` or ``y_pred``
  (``f1_score(average="macro")`` without ``labels``): a class that a small test set
  lacks and no prediction names carries no evidence either way.
- :func:`log_loss` uses the natural log and clips probabilities to
  ``[eps, 1 - eps]`` with ``eps`` the float64 machine epsilon, so a confident wrong
  answer costs at most ``-log(eps)`` ≈ 36.0 instead of infinity.
- :func:`expected_calibration_error` bins the *confidence* (the largest class
  probability) into :data:`ECE_BINS` = 15 equal-width bins over [0, 1], right-closed
  (``(lo, hi]``, the first bin ``[0, 1/15]``), as Guo et al. (2017) and
  ``calibration_curve(strategy="uniform")`` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ECE_BINS",
    "PerClass",
    "ReliabilityBins",
    "accuracy",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "log_loss",
    "macro_f1",
    "per_class",
    "reliability_bins",
]

#: Equal-width confidence bins of :func:`expected_calibration_error` (Guo et al. 2017).
ECE_BINS = 15


class PerClass(NamedTuple):
    """Per-class scores, each of shape (K,), in class-index order."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # int64: examples of the class in y_true


class ReliabilityBins(NamedTuple):
    """Confidence bins of a reliability diagram.

    ``confidence`` and ``accuracy`` are NaN in an empty bin.
    """

    edges: np.ndarray  # (B + 1,) from 0 to 1
    counts: np.ndarray  # (B,) int64
    confidence: np.ndarray  # (B,) mean largest probability in the bin
    accuracy: np.ndarray  # (B,) share of the bin's predictions that are right


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` as arrays, after checking they are 1-D, non-empty, one length."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty 1-D arrays of one length, got shapes "
            f"{t.shape} and {p.shape}"
        )
    return t, p


def _labels(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """Validate two index vectors of one length; return them as int64, shape (n,)."""
    t, p = _pair(y_true, y_pred)
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= n_classes:
            raise ValueError(f"{name} must hold class indices in [0, {n_classes}); got {a[:5]}")
    return t.astype(np.int64), p.astype(np.int64)


def _proba(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels (n,) and probabilities (n, K); return them as int64 and float64."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != np.shape(y_true)[0]:
        raise ValueError(
            f"proba must have shape (n, n_classes) with n = len(y_true) = "
            f"{np.shape(y_true)[0]}, got {p.shape}"
        )
    t, _ = _labels(y_true, y_true, p.shape[1])
    return t, p


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of predictions equal to the truth.

    Parameters
    ----------
    y_true, y_pred : np.ndarray of int, shape (n,)
        Class indices.
    """
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Parameters
    ----------
    y_true, y_pred : np.ndarray of int, shape (n,)
        Class indices in ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    np.ndarray of int64, shape (n_classes, n_classes)
        Row ``i``, column ``j``: examples of class ``i`` predicted as ``j``.
    """
    t, p = _labels(y_true, y_pred, n_classes)
    flat = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)  # (K * K,)
    return flat.reshape(n_classes, n_classes)


def per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> PerClass:
    """Precision, recall, F1 and support of every class.

    Parameters
    ----------
    y_true, y_pred : np.ndarray of int, shape (n,)
        Class indices in ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    PerClass
        Arrays of shape (n_classes,); a zero denominator gives 0.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)  # (K, K)
    tp = np.diag(cm).astype(np.float64)  # (K,)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)  # (K,), (K,)
    f1 = _ratio(2 * tp, predicted + support)  # 2TP / (2TP + FP + FN)
    return PerClass(_ratio(tp, predicted), _ratio(tp, support), f1, support.astype(np.int64))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in ``y_true`` or ``y_pred``.

    Parameters
    ----------
    y_true, y_pred : np.ndarray of int, shape (n,)
        Class indices in ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    float
        Equal to ``sklearn.metrics.f1_score(y_true, y_pred, average="macro",
        zero_division=0)``. A rare class weighs as much as a frequent one.
    """
    scores = per_class(y_true, y_pred, n_classes)
    seen = (scores.support > 0) | (np.bincount(np.asarray(y_pred), minlength=n_classes) > 0)
    return float(np.mean(scores.f1[seen]))


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative natural log of the probability given to the true class.

    Parameters
    ----------
    y_true : np.ndarray of int, shape (n,)
        Class indices.
    proba : np.ndarray of float, shape (n, K)
        Class probabilities (rows summing to 1), clipped to ``[eps, 1 - eps]``
        with ``eps`` the float64 machine epsilon.

    Returns
    -------
    float
        Cross-entropy in nats: 0 for certain right answers, ``log(K)`` for uniform ones.
    """
    t, p = _proba(y_true, proba)
    eps = np.finfo(np.float64).eps
    right = np.clip(p[np.arange(len(t)), t], eps, 1 - eps)  # (n,)
    return float(-np.mean(np.log(right)))


def reliability_bins(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS
) -> ReliabilityBins:
    """Bin predictions by confidence (largest probability) into equal-width bins.

    Parameters
    ----------
    y_true : np.ndarray of int, shape (n,)
        Class indices.
    proba : np.ndarray of float, shape (n, K)
        Class probabilities; the prediction is the argmax.
    n_bins : int
        Bins over [0, 1], right-closed: ``(lo, hi]``, the first ``[0, hi]``.

    Returns
    -------
    ReliabilityBins
        Per bin: count, mean confidence and accuracy (NaN where empty).
    """
    t, p = _proba(y_true, proba)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = p.max(axis=1)  # (n,)
    correct = (p.argmax(axis=1) == t).astype(np.float64)  # (n,)
    edges = np.linspace(0.0, 1.0, n_bins + 1)  # (B + 1,)
    which = np.searchsorted(edges[1:-1], confidence)  # (n,) bin of each prediction
    count = np.bincount(which, minlength=n_bins)  # (B,)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)  # (B,)
    right_sum = np.bincount(which, weights=correct, minlength=n_bins)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ReliabilityBins(edges, count.astype(np.int64), conf_sum / count, right_sum / count)


def expected_calibration_error(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error: mean |accuracy - confidence| over confidence bins.

    Parameters
    ----------
    y_true : np.ndarray of int, shape (n,)
        Class indices.
    proba : np.ndarray of float, shape (n, K)
        Class probabilities.
    n_bins : int
        Equal-width bins over the largest probability (default :data:`ECE_BINS`).

    Returns
    -------
    float
        ``sum_b (n_b / n) * |acc_b - conf_b|``: 0 when each bin's accuracy equals its
        mean confidence, up to 1.
    """
    bins = reliability_bins(y_true, proba, n_bins)
    full = bins.counts > 0  # (B,)
    gap = np.abs(bins.accuracy[full] - bins.confidence[full])  # (B_full,)
    return float(np.sum(bins.counts[full] * gap) / bins.counts.sum())


def _finite(values: np.ndarray, digits: int) -> list[float | None]:
    """Rounded floats for JSON, None for NaN (an empty bin)."""
    return [None if np.isnan(v) else round(float(v), digits) for v in values]


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, labels: Sequence[str]
) -> dict[str, Any]:
    """Every metric of this module as JSON-ready values keyed by label name.

    Parameters
    ----------
    y_true, y_pred : np.ndarray of int, shape (n,)
        Class indices into ``labels``.
    proba : np.ndarray of float, shape (n, K), or None
        Class probabilities; None (a method without them) gives None for
        ``log_loss``, ``ece`` and ``reliability``.
    labels : sequence of str, length K
        Class names, in index order.

    Returns
    -------
    dict
        ``macro_f1``, ``per_class`` (label → precision, recall, f1, support),
        ``confusion_matrix`` (rows: true label, columns: predicted, both in the order
        of ``labels``), ``labels``, ``log_loss``, ``ece`` and ``reliability`` (per bin of
        :data:`ECE_BINS`: count, mean confidence, accuracy; None where empty).
    """
    k = len(labels)
    scores = per_class(y_true, y_pred, k)
    out: dict[str, Any] = {
        "macro_f1": macro_f1(y_true, y_pred, k),
        "per_class": {
            str(name): {
                "precision": float(scores.precision[i]),
                "recall": float(scores.recall[i]),
                "f1": float(scores.f1[i]),
                "support": int(scores.support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, k).tolist(),
        "labels": [str(name) for name in labels],
        "log_loss": None,
        "ece": None,
        "reliability": None,
    }
    if proba is not None:
        bins = reliability_bins(y_true, proba)
        out["log_loss"] = log_loss(y_true, proba)
        out["ece"] = expected_calibration_error(y_true, proba)
        out["reliability"] = {"count": bins.counts.tolist(),
                              "confidence": _finite(bins.confidence, 6),
                              "accuracy": _finite(bins.accuracy, 6)}  # fmt: skip
    return out
