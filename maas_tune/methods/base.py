"""The estimator contract of methods that need the provider at fit or predict time."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..client import Client, Usage
from ..data import Example
from ..errors import ConfigurationError
from ..estimator import Estimator
from ..task import Task

__all__ = [
    "PromptMethod",
    "batches",
    "class_log_probs",
    "fit_kwargs",
    "joined_text",
    "quiet",
    "step_bar",
    "usage_since",
]


def usage_since(client: Client, before: Usage) -> Usage:
    """What ``client`` did since ``before`` (a copy of its :class:`~maas_tune.client.Usage`)."""
    now = client.usage
    return Usage(
        **{f.name: getattr(now, f.name) - getattr(before, f.name) for f in dataclasses.fields(now)}
    )


def class_log_probs(label_logprobs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Label log-probabilities renormalised over the K classes, shape (n, K), float32."""
    if isinstance(label_logprobs, torch.Tensor):
        lp = label_logprobs.float()  # keeps the autograd graph (prompt tuning)
    else:
        lp = torch.as_tensor(np.asarray(label_logprobs), dtype=torch.float32)  # (n, K)
    return torch.log_softmax(lp, dim=-1)


class PromptMethod(Estimator):
    """Base of the methods that query the model while they learn or predict.

    The decoders (:mod:`maas_tune.decoders`) learn from :class:`~maas_tune.scores.Scores`
    scored once through the task's template. These methods change the prompt itself
    (demonstrations, a learned discrete prompt, a soft prompt), so they take the
    :class:`~maas_tune.client.Client` (and the :class:`~maas_tune.task.Task` at fit
    time) and query through it: every black-box query is cached and budgeted.

    The conventions are scikit-learn's, as for decoders: ``__init__`` only stores
    keyword hyper-parameters; ``fit(client, task, examples, y=None, *, content_free=None,
    corpus=None)`` returns ``self`` and sets attributes ending in ``_`` (``task_``,
    ``classes_``, ``fit_usage_``);
    ``predict(client, examples)`` checks it is fitted. ``y`` defaults to the
    examples' own labels.

    Saving goes through :meth:`_state_tensors`, :meth:`_state_meta` and
    :meth:`_restore`, which :mod:`maas_tune.persistence` calls.
    """

    #: Needs the model's weights (runs only with an in-process provider).
    white_box: ClassVar[bool] = False
    _fit_call: ClassVar[str] = "fit(client, task, examples)"

    @property
    def uses_corpus(self) -> bool:
        """Whether ``fit`` takes the task's unlabelled training texts as ``corpus``."""
        return False

    # ------------------------------------------------------------------ fit helpers
    def _start_fit(
        self, task: Task, examples: Sequence[Example], y: Sequence[Any] | np.ndarray | None
    ) -> np.ndarray:
        """Record task and classes; return the class index of each example, shape (n,)."""
        if not examples:
            raise ConfigurationError(f"{type(self).__name__}.fit needs at least one example")
        labels = list(task.labels)
        raw = [e.label for e in examples] if y is None else list(np.asarray(y).tolist())
        if len(raw) != len(examples):
            raise ConfigurationError(f"y has {len(raw)} labels for {len(examples)} examples")
        index = {name: i for i, name in enumerate(labels)}
        out = np.empty(len(raw), dtype=np.int64)
        for i, value in enumerate(raw):
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                if not 0 <= int(value) < len(labels):
                    raise ConfigurationError(f"label index {value} is outside [0, {len(labels)})")
                out[i] = int(value)
            elif value in index:
                out[i] = index[value]
            else:
                raise ConfigurationError(
                    f"example {i} has label {value!r}; expected one of {labels} "
                    "(pass labelled examples or y)"
                )
        self.task_ = task
        self.classes_ = np.array(labels)
        return out

    # ------------------------------------------------------------------ prediction
    def fit(
        self,
        client: Client,
        task: Task,
        examples: Sequence[Example],
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
        corpus: Sequence[str] | None = None,
    ) -> PromptMethod:
        """Learn from labelled examples, querying through ``client``; returns ``self``.

        Parameters
        ----------
        client : Client
        task : Task
        examples : sequence of Example, n examples
        y : array-like of str or int, shape (n,), optional
            Default: the examples' own labels.
        content_free : array-like, shape (K,), optional
            The contract's keyword of every estimator; no prompt method uses it.
        corpus : sequence of str, optional
            Unlabelled training texts, for a method that mines them (:attr:`uses_corpus`).
        """
        raise NotImplementedError

    def _log_probs(self, client: Client, examples: Sequence[Example]) -> torch.Tensor:
        """Class log-probabilities, shape (n, K); only called on a fitted method."""
        raise NotImplementedError

    def predict_proba(self, client: Client, examples: Sequence[Example]) -> np.ndarray:
        """Class probabilities, shape (n, K), rows summing to 1."""
        self._check_fitted()
        return torch.softmax(self._log_probs(client, examples).double(), dim=-1).numpy()

    def predict(self, client: Client, examples: Sequence[Example]) -> np.ndarray:
        """Predicted class names, shape (n,)."""
        self._check_fitted()
        return self.classes_[self._log_probs(client, examples).argmax(dim=-1).numpy()]

    def score(self, client: Client, examples: Sequence[Example]) -> float:
        """Accuracy of :meth:`predict` against the examples' labels."""
        truth = np.array([e.label for e in examples])
        return float(np.mean(self.predict(client, examples) == truth))

    # ------------------------------------------------------------------ persistence hooks
    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Set the learned state from saved tensors and JSON values (``meta["task"]`` a Task).

        Raises
        ------
        ValueError
            If a tensor or value is missing or inconsistent.
        """
        self._check_tensor_names(tensors)
        self._set_learned(tensors, meta)
        self.task_ = meta["task"]
        self.classes_ = np.array(self.task_.labels)
        self._check_state()

    def _check_state(self) -> None:
        """Raise ``ValueError`` if the restored state is inconsistent."""


def fit_kwargs(method: PromptMethod, pool: Sequence[Example]) -> dict[str, Any]:
    """Keyword arguments of ``method.fit`` beyond the shots, taken from the training ``pool``.

    A method that mines the unlabelled training texts (``uses_corpus``, e.g.
    :meth:`BDPL.paper <maas_tune.methods.BDPL.paper>`) gets the pool's texts, labels
    dropped, as ``corpus``; other methods get nothing.
    """
    if not method.uses_corpus:
        return {}
    return {"corpus": [joined_text(e) for e in pool]}


def joined_text(example: Example) -> str:
    """The example's text, and its second text (of a pair) after a space."""
    return example.text if example.text_b is None else f"{example.text} {example.text_b}"


def step_bar(desc: str, epochs: int, n: int, batch_size: int, progress: bool | None) -> Any:
    """A tqdm bar over the ``epochs * ceil(n / batch_size)`` steps of a training loop.

    ``progress`` None shows it on terminals only; use it as a context manager.
    """
    from tqdm.auto import tqdm

    steps = epochs * -(-n // batch_size)
    disable = None if progress is None else not progress
    return tqdm(total=steps, desc=desc, unit="step", disable=disable)


def batches(order: Sequence[int] | np.ndarray | torch.Tensor, size: int) -> Iterator[Any]:
    """Consecutive slices of ``order`` (an epoch's row order), ``size`` rows each but the last."""
    for start in range(0, len(order), size):
        yield order[start : start + size]


@contextlib.contextmanager
def quiet(client: Client) -> Iterator[None]:
    """Hide the client's per-call progress bars while a method's own loop shows one."""
    previous = client.progress
    client.progress = False
    try:
        yield
    finally:
        client.progress = previous
