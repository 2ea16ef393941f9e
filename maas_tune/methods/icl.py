"""In-context learning: solved training examples placed before each test input."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..client import Client, Usage
from ..data import Example
from ..errors import ConfigurationError
from ..estimator import check_at_least_one
from ..task import Task
from ._prompts import (
    fit_demonstrations,
    join_prompt,
    prefixed_task,
    render_demonstration,
    select_demonstrations,
)
from .base import PromptMethod, class_log_probs

__all__ = ["InContextLearning", "TruncationReport", "TruncationWarning"]

#: Default context budget per prompt, in prompt tokens (demonstrations are dropped beyond it).
ICL_MAX_PROMPT_TOKENS = 2048
#: Default text between two demonstrations and before the test input.
ICL_SEPARATOR = "\n\n"


class TruncationWarning(UserWarning):
    """Demonstrations were dropped, or a test input alone exceeds the context budget."""


@dataclass(frozen=True)
class TruncationReport:
    """What the context budget did to the prompts of one ``predict`` call.

    Attributes
    ----------
    prompts : int
        Prompts built.
    truncated : int
        Prompts that kept fewer than all demonstrations.
    demonstrations_dropped : int
        Demonstrations dropped, summed over the prompts.
    over_limit : int
        Test inputs that exceed the budget even without demonstrations; they are sent
        whole (never cut), and the provider may refuse them.
    """

    prompts: int
    truncated: int
    demonstrations_dropped: int
    over_limit: int


class InContextLearning(PromptMethod):
    """In-context learning (Brown et al., 2020): ``k`` solved examples per class, then the input.

    Each demonstration is the task's template filled with a training example, followed
    by the first label word of its class; demonstrations are joined by ``separator``
    and the test input, rendered by the same template, comes last. The model's label
    scores after the test input are the prediction (no calibration).

    **Demonstrations and order.** ``fit`` draws, with ``numpy.random.default_rng(random_state)``,
    ``demos_per_class`` examples of each class (in class order; a class with fewer
    examples gives all it has) and then one random permutation of all of them: that
    permutation is the prompt order, the same for every test input, and is kept in
    ``demonstrations_``.

    **Truncation.** A prompt may hold at most ``max_prompt_tokens`` tokens (as the
    provider counts them). When it would hold more, whole demonstrations are dropped
    from the front (the farthest from the test input) until it fits; the test input is
    never cut. Each ``predict`` records what it dropped in ``truncation_`` and warns
    (:class:`TruncationWarning`) when anything was dropped or a test input alone is
    over the limit (that prompt is sent whole, with no demonstrations).

    **Cost.** ``fit`` sends nothing. ``predict`` sends one query per test input, whose
    prompt holds every kept demonstration: about ``K * demos_per_class`` times a
    demonstration's tokens plus the input's, per query (``Client.usage.prompt_tokens_sent``
    counts them exactly). Answers are cached per full prompt.

    Parameters
    ----------
    demos_per_class : int, default 4
    max_prompt_tokens : int or None, default 2048
        Context budget per prompt; None never drops a demonstration.
    separator : str, default "\\n\\n"
    random_state : int or None
        Seed of the choice and order of the demonstrations.

    Attributes
    ----------
    task_ : Task
    classes_ : np.ndarray of str, shape (K,)
    demonstrations_ : list of dict
        ``{"text", "text_b", "label"}`` in prompt order.
    truncation_ : TruncationReport
        Set by each ``predict`` / ``predict_proba`` call.
    fit_usage_ : Usage
        Queries ``fit`` sent (none).
    """

    _meta_attrs: ClassVar[tuple[str, ...]] = ("demonstrations_",)

    def __init__(
        self,
        *,
        demos_per_class: int = 4,
        max_prompt_tokens: int | None = ICL_MAX_PROMPT_TOKENS,
        separator: str = ICL_SEPARATOR,
        random_state: int | None = None,
    ) -> None:
        self.demos_per_class = demos_per_class
        self.max_prompt_tokens = max_prompt_tokens
        self.separator = separator
        self.random_state = random_state

    def fit(
        self,
        client: Client,
        task: Task,
        examples: Sequence[Example],
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
        corpus: Sequence[str] | None = None,
    ) -> InContextLearning:
        """Choose and order the demonstrations (no query is sent); returns ``self``.

        ``content_free`` and ``corpus`` are ignored (the keywords of every prompt method).
        """
        check_at_least_one(self, ("demos_per_class",))
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ConfigurationError(
                f"max_prompt_tokens must be >= 1 or None, got {self.max_prompt_tokens}"
            )
        target = self._start_fit(task, examples, y)
        rng = np.random.default_rng(self.random_state)
        order = select_demonstrations(target, len(task.labels), self.demos_per_class, rng)
        self.demonstrations_ = [
            {
                "text": examples[i].text,
                "text_b": examples[i].text_b,
                "label": str(self.classes_[target[i]]),
            }
            for i in order.tolist()
        ]
        self.fit_usage_ = Usage()
        return self

    def demonstration_blocks(self) -> list[str]:
        """The rendered demonstrations, in prompt order."""
        self._check_fitted()
        return [
            render_demonstration(
                self.task_, Example(d["text"], d["label"], d["text_b"]), d["label"]
            )
            for d in self.demonstrations_
        ]

    def build_prompts(
        self, client: Client, examples: Sequence[Example]
    ) -> tuple[list[str], np.ndarray]:
        """The exact prompts ``predict`` sends, and the demonstrations each keeps, shape (n,)."""
        blocks = self.demonstration_blocks()
        tests = [self.task_.render(e) for e in examples]
        keep = fit_demonstrations(
            blocks, tests, self.separator, client.provider.count_tokens, self.max_prompt_tokens
        )
        prompts = [join_prompt(blocks, int(j), self.separator, t) for j, t in zip(keep, tests)]
        self._report(keep, len(blocks), client, tests)
        return prompts, keep

    def _log_probs(self, client: Client, examples: Sequence[Example]) -> torch.Tensor:
        blocks = self.demonstration_blocks()
        _, keep = self.build_prompts(client, examples)
        out = np.zeros((len(examples), len(self.classes_)), dtype=np.float32)  # (n, K)
        for j in np.unique(keep).tolist():
            rows = np.flatnonzero(keep == j)
            prefix = join_prompt(blocks, j, self.separator, "") if j else ""
            scores = client.score(
                prefixed_task(self.task_, prefix), [examples[i] for i in rows.tolist()]
            )
            out[rows] = scores.label_logprobs
        return class_log_probs(out)

    def _report(self, keep: np.ndarray, m: int, client: Client, tests: list[str]) -> None:
        over = 0
        if self.max_prompt_tokens is not None and (keep == 0).any():
            zero = np.flatnonzero(keep == 0)
            sizes = client.provider.count_tokens([tests[i] for i in zero])
            over = int(sum(s > self.max_prompt_tokens for s in sizes))
        report = TruncationReport(
            prompts=len(keep),
            truncated=int((keep < m).sum()),
            demonstrations_dropped=int((m - keep).sum()),
            over_limit=over,
        )
        self.truncation_ = report
        if report.truncated or report.over_limit:
            warnings.warn(
                f"in-context learning: {report.truncated} of {report.prompts} prompts exceeded "
                f"max_prompt_tokens={self.max_prompt_tokens}; {report.demonstrations_dropped} "
                f"demonstrations were dropped (farthest first) and {report.over_limit} test "
                "inputs are over the limit on their own (sent whole); raise max_prompt_tokens "
                "or lower demos_per_class",
                TruncationWarning,
                stacklevel=3,
            )

    def _check_state(self) -> None:
        labels = set(self.task_.labels)
        for d in self.demonstrations_:
            if not isinstance(d, dict) or not isinstance(d.get("text"), str):
                raise TypeError("each demonstration needs a string 'text'")
            if d.get("label") not in labels:
                raise ValueError(f"demonstration label {d.get('label')!r} is not a task label")
