"""The estimator contract of every decoder: scikit-learn-style parameters, labels and checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigurationError
from ..estimator import Estimator
from ..scores import Scores
from ._math import normalize_scores

__all__ = [
    "BaseDecoder",
    "check_scores",
    "check_shapes",
    "check_width",
    "content_free_tensor",
    "hidden_states",
    "label_scores",
    "torch_threads",
]


class BaseDecoder(Estimator):
    """Base class of the decoders: hyper-parameters, label handling, fitted check, scoring.

    Subclasses store their keyword hyper-parameters in ``__init__`` (and nothing
    else), learn in ``fit`` (setting attributes that end in ``_`` and returning
    ``self``) and implement :meth:`_decision_function`. ``classes_`` is always the
    array of class names, in the column order of ``Scores.label_logprobs``.

    Saving goes through :meth:`_state_tensors` and :meth:`_restore`, which
    :mod:`maas_tune.persistence` calls; a subclass lists its learned tensors in
    ``_tensor_attrs`` and its learned JSON-able values in ``_meta_attrs``.
    """

    _fit_call: ClassVar[str] = "fit(X, y)"
    #: Whether ``fit`` needs labels ``y`` (scikit-learn's ``target_tags.required``).
    _requires_y: ClassVar[bool] = True
    #: What scikit-learn < 1.6 reads instead of :meth:`__sklearn_tags__`.
    _estimator_type: ClassVar[str] = "classifier"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags: a classifier (stratified folds, accuracy).

        Only scikit-learn calls this, so scikit-learn is imported here and stays an
        optional dependency.
        """
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=self._requires_y),
            classifier_tags=ClassifierTags(),
            input_tags=InputTags(two_d_array=False),  # X is Scores, not a matrix
        )

    # ------------------------------------------------------------------ labels and checks
    def _set_classes(self, X: Scores) -> None:
        check_scores(X, type(self).__name__)
        self.classes_ = np.array(X.labels)

    def _encode_y(self, X: Scores, y: Sequence[Any] | np.ndarray | None) -> torch.Tensor:
        """Class indices, shape (n,), int64, from label names or integer indices."""
        check_scores(X, type(self).__name__)
        if y is None:
            raise ConfigurationError(
                f"{type(self).__name__}.fit needs the labels: call fit(X, y) with one label "
                "name or class index per example"
            )
        arr = np.asarray(y)
        if arr.ndim != 1 or arr.shape[0] != len(X):
            raise ConfigurationError(
                f"y must be 1-D with one label per example ({len(X)}), got shape {arr.shape}"
            )
        k = len(X.labels)
        if arr.dtype.kind in "iu":
            if arr.size and (arr.min() < 0 or arr.max() >= k):
                raise ConfigurationError(
                    f"integer labels must lie in [0, {k}); got {arr.min()}..{arr.max()}"
                )
            return torch.as_tensor(arr.astype(np.int64))
        lookup = {name: i for i, name in enumerate(X.labels)}
        unknown = sorted({str(v) for v in arr.tolist()} - set(lookup))
        if unknown:
            raise ConfigurationError(
                f"unknown labels {unknown[:5]}; expected names from {list(X.labels)} "
                "or integer class indices"
            )
        return torch.as_tensor([lookup[str(v)] for v in arr.tolist()], dtype=torch.int64)

    def _check_X(self, X: Scores) -> None:
        """Raise unless fitted and ``X`` has this decoder's classes."""
        check_scores(X, type(self).__name__)
        self._check_fitted()
        if tuple(X.labels) != tuple(self.classes_.tolist()):
            raise ConfigurationError(
                f"X has labels {list(X.labels)} but the decoder was fitted on "
                f"{self.classes_.tolist()}; score X with the same task"
            )

    # ------------------------------------------------------------------ prediction
    def fit(
        self,
        X: Scores,
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
    ) -> BaseDecoder:
        """Learn from scored examples; returns ``self``.

        Parameters
        ----------
        X : Scores, n examples
        y : array-like of str or int, shape (n,), optional
        content_free : array-like, shape (K,), optional
            Label log-probabilities of the content-free input; used where
            :attr:`needs_content_free` is True, ignored otherwise.
        """
        raise NotImplementedError

    def _decision_function(self, X: Scores) -> torch.Tensor:
        """Class logits, shape (n, K); only called on a fitted decoder."""
        raise NotImplementedError

    def decision_function(self, X: Scores) -> np.ndarray:
        """Unnormalised class scores, shape (n, K), float32."""
        self._check_X(X)
        with torch.no_grad(), torch_threads(getattr(self, "n_threads", None)):
            return self._decision_function(X).numpy()

    def predict_proba(self, X: Scores) -> np.ndarray:
        """Class probabilities, shape (n, K), rows summing to 1."""
        self._check_X(X)
        with torch.no_grad(), torch_threads(getattr(self, "n_threads", None)):
            return torch.softmax(self._decision_function(X).double(), dim=-1).numpy()

    def predict(self, X: Scores) -> np.ndarray:
        """Predicted class names, shape (n,)."""
        self._check_X(X)
        with torch.no_grad(), torch_threads(getattr(self, "n_threads", None)):
            index = self._decision_function(X).argmax(dim=-1).numpy()
        return self.classes_[index]

    def score(self, X: Scores, y: Sequence[Any] | np.ndarray) -> float:
        """Accuracy of :meth:`predict` against ``y`` (names or integer indices)."""
        self._check_X(X)
        truth = self._encode_y(X, y).numpy()
        return float(np.mean(self.classes_[truth] == self.predict(X)))

    # ------------------------------------------------------------------ persistence hooks
    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Set the learned state from saved tensors and metadata.

        Parameters
        ----------
        tensors : dict of str to Tensor
            Exactly the names of ``_tensor_attrs``.
        meta : dict
            ``classes`` (list of str) and the names of ``_meta_attrs``.

        Raises
        ------
        ValueError
            If a tensor or value is missing or inconsistent with the classes.
        """
        self._check_tensor_names(tensors)
        classes = self._saved_classes(meta)
        self._set_learned(tensors, meta)
        self.classes_ = np.array(classes)
        self._check_state(len(classes))

    @staticmethod
    def _saved_classes(meta: dict[str, Any]) -> list[str]:
        """The ``classes`` of saved metadata; ``ValueError`` unless a non-empty list of str."""
        classes = meta.get("classes")
        if (
            not isinstance(classes, list)
            or not classes
            or not all(isinstance(c, str) for c in classes)
        ):
            raise ValueError("'classes' must be a non-empty list of str")
        return classes

    def _check_state(self, k: int) -> None:
        """Raise ``ValueError`` if the learned tensors do not fit ``k`` classes."""


def check_scores(X: object, decoder: str) -> None:
    """Raise a ConfigurationError unless ``X`` is :class:`Scores`.

    A bare array would lose the class names, and predictions named ``"0"``, ``"1"``
    would silently never equal integer labels; so the conversion stays explicit.
    """
    if not isinstance(X, Scores):
        raise ConfigurationError(
            f"{decoder} takes X as Scores, got {type(X).__name__}: pass client.score(task, "
            "examples), or Scores.from_arrays(label_logprobs, hidden, labels=...) for arrays"
        )


def content_free_tensor(content_free: Any, k: int) -> torch.Tensor:
    """Validated content-free log-probabilities, renormalised over the K classes, shape (K,)."""
    if content_free is None:
        raise ConfigurationError(
            "content_free is required: pass the (K,) label log-probabilities of the "
            "content-free input 'N/A' scored through the same template"
        )
    arr = np.asarray(content_free, dtype=np.float32)
    if arr.shape != (k,) or not np.all(np.isfinite(arr)):
        raise ConfigurationError(
            f"content_free must be {k} finite label log-probabilities, got shape {arr.shape}"
        )
    return normalize_scores(torch.as_tensor(arr))  # (K,)


def label_scores(X: Scores) -> torch.Tensor:
    """Label log-probabilities renormalised over the K classes, shape (n, K)."""
    return normalize_scores(torch.as_tensor(X.label_logprobs, dtype=torch.float32))


def hidden_states(X: Scores) -> torch.Tensor:
    """Hidden states, shape (n, d), float32; a ConfigurationError if there are none."""
    if X.hidden is None:
        raise ConfigurationError(
            "these scores carry no hidden states (the provider returns none); "
            "use a scores-only decoder such as ScoreLogisticRegression or DecT"
        )
    return torch.as_tensor(X.hidden, dtype=torch.float32)


def check_width(
    feats: torch.Tensor, width: int, decoder: str, what: str = "hidden states"
) -> torch.Tensor:
    """``feats`` (n, ..., d), after checking that d is the width the decoder was fitted on.

    Raises
    ------
    ConfigurationError
        The features (``what``: hidden states, token states) come from another model
        (another hidden size): without this check, torch fails deep inside the decoder
        with a shape mismatch.
    """
    if feats.shape[-1] != width:
        raise ConfigurationError(
            f"X has features of width {feats.shape[-1]} but this {decoder} was fitted on width "
            f"{width} ({what} of another model?); score X with the provider and task "
            "the decoder was fitted with"
        )
    return feats


def check_shapes(
    expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, Any], prefix: str = ""
) -> None:
    """Raise ValueError if a tensor of ``tensors`` (e.g. ``vars(decoder)``) has an unexpected
    shape; ``prefix`` is put before its name in the message."""
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != tuple(shape):
            raise ValueError(f"{prefix}{name} has shape {got}, expected {tuple(shape)}")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous count after.

    Few-shot problems are too small to gain from threads, and on a machine whose
    cores other processes keep busy, OpenMP threads waiting for each other turned
    a 0.15 s DecT fit into 8 s. ``None`` leaves torch's setting alone. The setting
    is process-wide while the block runs: do not fit from several threads at once.
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
