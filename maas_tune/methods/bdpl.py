"""BDPL: a discrete prompt learned from the black-box label scores by policy gradient."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..client import Client
from ..data import Example
from ..errors import BudgetExceeded, ConfigurationError
from ..task import Task
from ._policy import mode, policy_gradient, project_simplex, sample_prompts
from ._prompts import prefixed_task
from ._vocab import candidate_vocabulary
from .base import PromptMethod, class_log_probs, quiet, usage_since

__all__ = ["BDPL"]

log = logging.getLogger(__name__)

#: Gradient-norm clip of the reference implementation.
BDPL_GRAD_CLIP = 3.0


class BDPL(PromptMethod):
    """Black-box Discrete Prompt Learning (Diao et al., TMLR 2023, arXiv 2201.08531).

    A prompt of ``prompt_length`` n-grams is put before every input (then ``separator``,
    then the task's template). Each position ``i`` holds a categorical distribution
    ``p_i`` over ``n_candidates`` n-grams of the training texts (the most frequent after
    PMI merging, as in the paper). Each step draws ``sample_size`` prompts, scores a batch
    of training examples with each through the client (the black-box loss is the
    cross-entropy of the class scores), estimates the gradient of the expected loss with
    the variance-reduced policy gradient, takes an Adam step on ``p`` and projects each
    ``p_i`` back onto the simplex. After every epoch the most likely prompt (each
    position's argmax) is scored on all training examples.

    **Best prompt and budget.** The prompt kept is the one with the lowest loss over
    all training examples among those scored on all of them (the epoch-end prompts, and
    the drawn prompts when a batch is the whole training set); before any such score,
    the drawn prompt with the lowest batch loss. When the client's budget refuses a
    query (:class:`~maas_tune.errors.BudgetExceeded`), training stops there and that best
    prompt so far is kept (``stopped_by_budget_`` is True).

    **Cost.** Every query goes through the client (cached, budgeted). With ``n``
    training examples, a fit sends at most ``epochs * (sample_size * n + n)`` queries
    (SST-2, 16 shots, defaults: 8 * (4 * 32 + 32) = 1280); a prompt drawn again for the
    same examples is a cache hit. Each prompt is ``prompt_length`` n-grams longer than
    the template's. ``predict`` sends one query per input.

    Parameters
    ----------
    prompt_length : int, default 5
        Prompt positions (n-grams).
    n_candidates : int, default 50
        Size of the candidate vocabulary (the paper's "prompt search space").
    sample_size : int, default 4
        Prompts drawn per step (>= 2, for the variance-reduced estimate).
    batch_size : int, default 16
    epochs : int, default 8
    learning_rate : float, default 0.02
        Adam step on the probabilities (they start uniform at ``1 / n_candidates``).
    separator : str, default "\\n"
        Between the prompt and the rendered template.
    random_state : int or None
        Seed of the draws and of the batch order: a rerun asks the same queries (free
        from the cache).
    progress : bool or None
        Progress bar over the steps; None shows it on terminals.

    Attributes
    ----------
    task_ : Task
    classes_ : np.ndarray of str, shape (K,)
    candidates_ : list of str, length N
    probs_ : torch.Tensor, shape (L, N)
        The final distributions.
    prompt_indices_ : torch.Tensor, shape (L,), int64
        The kept prompt; ``prompt_`` is its text.
    best_loss_ : float or None
        Its training loss (None when the budget allowed no query: the prompt is then
        the mode of the initial, uniform distributions).
    history_ : list of dict
        Per step: epoch, mean and min loss of the drawn prompts; per epoch, the mode's loss.
    stopped_by_budget_ : bool
    fit_usage_ : Usage
        What ``fit`` sent (``queries_sent``, ``prompt_tokens_sent``, ``cache_hits``).
    """

    _tensor_attrs: ClassVar[tuple[str, ...]] = ("probs_", "prompt_indices_")
    _meta_attrs: ClassVar[tuple[str, ...]] = (
        "candidates_",
        "best_loss_",
        "history_",
        "stopped_by_budget_",
    )

    def __init__(
        self,
        *,
        prompt_length: int = 5,
        n_candidates: int = 50,
        sample_size: int = 4,
        batch_size: int = 16,
        epochs: int = 8,
        learning_rate: float = 0.02,
        separator: str = "\n",
        random_state: int | None = None,
        progress: bool | None = None,
    ) -> None:
        self.prompt_length = prompt_length
        self.n_candidates = n_candidates
        self.sample_size = sample_size
        self.batch_size = batch_size
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.separator = separator
        self.random_state = random_state
        self.progress = progress

    @property
    def prompt_(self) -> str:
        """The learned prompt as text."""
        self._check_fitted()
        return self._text(self.prompt_indices_)

    def fit(
        self,
        client: Client,
        task: Task,
        examples: Sequence[Example],
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        corpus: Sequence[str] | None = None,
    ) -> BDPL:
        """Learn the prompt, querying through ``client``; returns ``self``.

        Parameters
        ----------
        corpus : sequence of str, optional
            Texts to build the candidate vocabulary from; default the examples' texts.
        """
        self._check_params()
        target = torch.as_tensor(self._start_fit(task, examples, y))
        texts = corpus if corpus is not None else [_joined(e) for e in examples]
        self.candidates_ = candidate_vocabulary(texts, self.n_candidates)
        if len(self.candidates_) < 2:
            raise ConfigurationError(
                f"the texts give {len(self.candidates_)} candidate n-gram(s); BDPL needs at "
                "least 2: pass more examples or a corpus"
            )
        before = copy.copy(client.usage)
        self.stopped_by_budget_ = False
        self.history_: list[dict[str, Any]] = []
        shape = (self.prompt_length, len(self.candidates_))
        probs = torch.full(shape, 1 / len(self.candidates_)).requires_grad_(True)  # (L, N)
        tried: list[tuple[bool, Any, tuple[int, ...]]] = []  # (partial, loss, prompt)
        with quiet(client):
            try:
                self._train(client, examples, target, probs, tried)
            except BudgetExceeded as exc:
                self.stopped_by_budget_ = True
                log.warning("BDPL stopped: %s; keeping the best prompt so far", exc)
        self.probs_ = probs.detach().clone()
        best = min(tried) if tried else (True, None, tuple(mode(self.probs_).tolist()))
        self.best_loss_ = best[1]
        self.prompt_indices_ = torch.tensor(best[2], dtype=torch.int64)
        self.fit_usage_ = usage_since(client, before)
        return self

    def _train(
        self,
        client: Client,
        examples: Sequence[Example],
        target: torch.Tensor,
        param: torch.Tensor,
        tried: list[tuple[bool, Any, tuple[int, ...]]],
    ) -> None:
        """The optimisation loop: updates ``param`` in place, appends every scored prompt to
        ``tried`` (so both hold the progress made when the budget interrupts it)."""
        from tqdm.auto import tqdm

        n = len(examples)
        generator = torch.Generator().manual_seed(_seed(self.random_state))
        rng = np.random.default_rng(self.random_state)
        optimizer = torch.optim.Adam([param], lr=self.learning_rate)
        steps = self.epochs * -(-n // self.batch_size)
        disable = None if self.progress is None else not self.progress
        with tqdm(total=steps, desc="BDPL", unit="step", disable=disable) as bar:
            for epoch in range(self.epochs):
                order = rng.permutation(n)
                for start in range(0, n, self.batch_size):
                    rows = order[start : start + self.batch_size]
                    samples = sample_prompts(param.detach(), self.sample_size, generator)  # (I, L)
                    losses = []
                    for prompt in samples:
                        loss = self._loss(client, prompt, [examples[i] for i in rows], target[rows])
                        losses.append(loss)
                        tried.append((len(rows) < n, loss, tuple(prompt.tolist())))
                    self._step(param, optimizer, samples, torch.tensor(losses))
                    self.history_.append(
                        {
                            "epoch": epoch,
                            "mean_loss": float(np.mean(losses)),
                            "min_loss": min(losses),
                        }
                    )
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(losses):.3f}")
                best = mode(param.detach())
                loss = self._loss(client, best, examples, target)
                tried.append((False, loss, tuple(best.tolist())))
                self.history_.append({"epoch": epoch, "mode_loss": loss})

    def _step(
        self,
        param: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        samples: torch.Tensor,
        losses: torch.Tensor,
    ) -> None:
        optimizer.zero_grad(set_to_none=True)
        param.grad = policy_gradient(param.detach(), samples, losses)
        torch.nn.utils.clip_grad_norm_([param], BDPL_GRAD_CLIP)
        optimizer.step()
        with torch.no_grad():
            param.copy_(project_simplex(param))

    def _loss(
        self,
        client: Client,
        prompt: torch.Tensor,
        examples: Sequence[Example],
        target: torch.Tensor,
    ) -> float:
        """Mean cross-entropy of the class scores with ``prompt`` before each example."""
        scores = client.score(self._task(prompt), examples)
        return float(F.cross_entropy(class_log_probs(scores.label_logprobs), target))

    def _text(self, prompt: torch.Tensor) -> str:
        return " ".join(self.candidates_[i] for i in prompt.tolist())

    def _task(self, prompt: torch.Tensor) -> Task:
        return prefixed_task(self.task_, self._text(prompt) + self.separator)

    def _log_probs(self, client: Client, examples: Sequence[Example]) -> torch.Tensor:
        scores = client.score(self._task(self.prompt_indices_), examples)
        return class_log_probs(scores.label_logprobs)

    def _check_params(self) -> None:
        for name in ("prompt_length", "n_candidates", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_size < 2:
            raise ConfigurationError(
                f"sample_size must be >= 2 (the variance-reduced gradient compares samples), "
                f"got {self.sample_size}"
            )
        if not self.learning_rate > 0:
            raise ConfigurationError(f"learning_rate must be > 0, got {self.learning_rate}")

    def _check_state(self) -> None:
        length, n = self.probs_.shape
        if self.prompt_indices_.shape != (length,) or len(self.candidates_) != n:
            raise ValueError(
                f"probs_ {tuple(self.probs_.shape)}, prompt_indices_ "
                f"{tuple(self.prompt_indices_.shape)} and {len(self.candidates_)} candidates disagree"
            )
        if int(self.prompt_indices_.min()) < 0 or int(self.prompt_indices_.max()) >= n:
            raise ValueError("prompt_indices_ lie outside the candidate vocabulary")


def _joined(example: Example) -> str:
    return example.text if example.text_b is None else f"{example.text} {example.text_b}"


def _seed(random_state: int | None) -> int:
    if random_state is None:
        return int(np.random.default_rng().integers(2**63 - 1))
    return int(random_state)
