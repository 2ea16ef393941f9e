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
from ..estimator import check_at_least_one, check_positive, torch_seed
from ..task import Task
from ._policy import mode, policy_gradient, project_simplex, sample_prompts
from ._prompts import prefixed_task
from ._split import Split, Tried, split_examples
from ._vocab import prompt_vocabulary
from .base import (
    PromptMethod,
    batches,
    class_log_probs,
    joined_text,
    quiet,
    step_bar,
    usage_since,
)

__all__ = ["BDPL"]

log = logging.getLogger(__name__)

#: Gradient-norm clip of the reference implementation.
BDPL_GRAD_CLIP = 3.0
#: Where the candidate vocabulary comes from: the shots, or the unlabelled training texts.
VOCABULARIES = ("shots", "corpus")


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

    **Best prompt and budget.** With ``dev_fraction > 0`` (the paper's protocol), that
    share of each class's examples is held out as a dev split, training uses the rest,
    and the prompt kept is the epoch-end prompt with the highest dev accuracy (ties: the
    lower dev loss, then the earlier epoch). With ``dev_fraction = 0`` (the default),
    it is the one with the lowest loss over all training examples among those scored on
    all of them (the epoch-end prompts, and the drawn prompts when a batch is the whole
    training set); before any such score, the drawn prompt with the lowest batch loss.
    When the client's budget refuses a query (:class:`~maas_tune.errors.BudgetExceeded`),
    training stops there and that best prompt so far is kept (``stopped_by_budget_``).

    **Vocabulary.** ``vocabulary="shots"`` (the default) mines the n-grams from the
    labelled examples' texts; ``"corpus"`` from the texts passed as ``fit(...,
    corpus=...)``: the task's unlabelled training text, as the paper does
    (:func:`~maas_tune.methods.base.fit_kwargs` passes a training pool's texts).

    **Cost.** Every query goes through the client (cached, budgeted). With ``n``
    training examples (after the dev split) and ``d`` dev examples, a fit sends at most
    ``epochs * (sample_size * n + d)`` queries, ``d = n`` without a dev split (SST-2,
    16 shots, defaults: 8 * (4 * 32 + 32) = 1280; :meth:`paper`: 10 * (20 * 16 + 16) =
    3360); a prompt drawn again for the same examples is a cache hit. Each prompt is
    ``prompt_length`` n-grams longer than the template's. ``predict`` sends one query
    per input.

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
    vocabulary : {"shots", "corpus"}, default "shots"
        Where the candidate n-grams come from (see above).
    max_n, min_count : int, default 3, 2
        Longest n-gram, and fewest co-occurrences of a merged word pair (see
        :func:`~maas_tune.methods._vocab.candidate_vocabulary`).
    dev_fraction : float, default 0.0
        Share of each class's examples held out to choose the prompt (0: none).
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
        Its loss on the split it was chosen on (dev with ``dev_fraction > 0``, else
        training); None when the budget allowed no query: the prompt is then the mode
        of the initial, uniform distributions.
    history_ : list of dict
        Per step: epoch, mean and min loss of the drawn prompts; per epoch, the mode's
        loss (``mode_loss``, or ``dev_loss`` and ``dev_accuracy``).
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
        vocabulary: str = "shots",
        max_n: int = 3,
        min_count: int = 2,
        dev_fraction: float = 0.0,
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
        self.vocabulary = vocabulary
        self.max_n = max_n
        self.min_count = min_count
        self.dev_fraction = dev_fraction
        self.random_state = random_state
        self.progress = progress

    @classmethod
    def paper(cls, *, random_state: int | None = None, progress: bool | None = None) -> BDPL:
        """BDPL with the published settings (Diao et al., TMLR 2023, arXiv 2201.08531).

        The reference code's GPT-3 run (``run.sh`` of shizhediao/Black-Box-Prompt-Learning:
        ``--k_shot 16 --prompt_learning_rate 2e-4 --sample_size 20 --prompt_length 20
        --prompt_search_space 50 --num_train_epochs 10``, batch size 4), since a causal
        model read through its label log-probabilities is the GPT-3 case; its RoBERTa run
        uses ``--prompt_learning_rate 1e-4 --sample_size 20 --prompt_length 10
        --prompt_search_space 200``, batch 128, and the script's default 30 epochs. So:
        I = 20 prompts per step, 20 positions over 50 candidates, Adam at lr 2e-4, 10
        epochs of batches of 4. The vocabulary is mined from the task's unlabelled
        training text (``vocabulary="corpus"``) with ``pmi_ngram.py``'s settings
        (``--ngram 5 --min_count 5 --min_pmi 1``; its counts must exceed 5, hence
        ``min_count=6`` here). The reference holds out a k-shot dev set of the same size
        as the training shots and keeps the prompt of the best dev epoch; here half of
        each class's shots is the dev split (``dev_fraction=0.5``), so the prompt is
        learned from the other half.
        """
        return cls(
            prompt_length=20,
            n_candidates=50,
            sample_size=20,
            batch_size=4,
            epochs=10,
            learning_rate=2e-4,
            vocabulary="corpus",
            max_n=5,
            min_count=6,
            dev_fraction=0.5,
            random_state=random_state,
            progress=progress,
        )

    @property
    def uses_corpus(self) -> bool:
        """Whether ``fit`` needs the unlabelled training texts (``corpus``)."""
        return bool(self.vocabulary == "corpus")

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
        content_free: np.ndarray | Sequence[float] | None = None,
        corpus: Sequence[str] | None = None,
    ) -> BDPL:
        """Learn the prompt, querying through ``client``; returns ``self``.

        Parameters
        ----------
        corpus : sequence of str, optional
            Unlabelled texts to build the candidate vocabulary from (required with
            ``vocabulary="corpus"``); default, with ``vocabulary="shots"``, the examples'
            texts.
        """
        self._check_params()
        target = self._start_fit(task, examples, y)
        self.candidates_ = self._vocabulary(examples, corpus)
        train, dev = split_examples(examples, target, self.dev_fraction, self.random_state)
        before = copy.copy(client.usage)
        self.stopped_by_budget_ = False
        self.history_: list[dict[str, Any]] = []
        shape = (self.prompt_length, len(self.candidates_))
        probs = torch.full(shape, 1 / len(self.candidates_)).requires_grad_(True)  # (L, N)
        tried = Tried()
        with quiet(client):
            try:
                self._train(client, train, dev, probs, tried)
            except BudgetExceeded as exc:
                self.stopped_by_budget_ = True
                log.warning("BDPL stopped: %s; keeping the best prompt so far", exc)
        self.probs_ = probs.detach().clone()
        best = tried.best() or (True, None, tuple(mode(self.probs_).tolist()))
        self.best_loss_ = best[1]
        self.prompt_indices_ = torch.tensor(best[2], dtype=torch.int64)
        self.fit_usage_ = usage_since(client, before)
        return self

    def _vocabulary(self, examples: Sequence[Example], corpus: Sequence[str] | None) -> list[str]:
        texts = corpus
        if texts is None and self.vocabulary == "shots":
            texts = [joined_text(e) for e in examples]
        return prompt_vocabulary(
            texts, self.n_candidates, max_n=self.max_n, min_count=self.min_count
        )

    def _train(
        self,
        client: Client,
        train: Split,
        dev: Split | None,
        param: torch.Tensor,
        tried: Tried,
    ) -> None:
        """The optimisation loop: updates ``param`` in place, appends every scored prompt to
        ``tried`` (so both hold the progress made when the budget interrupts it)."""
        examples, target = train
        n = len(examples)
        generator = torch.Generator().manual_seed(torch_seed(self.random_state))
        rng = np.random.default_rng(self.random_state)
        optimizer = torch.optim.Adam([param], lr=self.learning_rate)
        with step_bar("BDPL", self.epochs, n, self.batch_size, self.progress) as bar:
            for epoch in range(self.epochs):
                for rows in batches(rng.permutation(n), self.batch_size):
                    samples = sample_prompts(param.detach(), self.sample_size, generator)  # (I, L)
                    losses = []
                    for prompt in samples:
                        loss = self._loss(client, prompt, [examples[i] for i in rows], target[rows])
                        losses.append(loss)
                        tried.train.append((len(rows) < n, loss, tuple(prompt.tolist())))
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
                self._end_epoch(client, epoch, mode(param.detach()), train, dev, tried)

    def _end_epoch(
        self,
        client: Client,
        epoch: int,
        prompt: torch.Tensor,
        train: Split,
        dev: Split | None,
        tried: Tried,
    ) -> None:
        """Score the epoch's mode on all training examples, or on the dev split."""
        if dev is None:
            loss = self._loss(client, prompt, *train)
            tried.train.append((False, loss, tuple(prompt.tolist())))
            self.history_.append({"epoch": epoch, "mode_loss": loss})
            return
        loss, accuracy = self._scored(client, prompt, *dev)
        tried.dev.append((-accuracy, loss, tuple(prompt.tolist())))
        self.history_.append({"epoch": epoch, "dev_loss": loss, "dev_accuracy": accuracy})

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
        return self._scored(client, prompt, examples, target)[0]

    def _scored(
        self,
        client: Client,
        prompt: torch.Tensor,
        examples: Sequence[Example],
        target: torch.Tensor,
    ) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the class scores with ``prompt`` before each example."""
        scores = client.score(self._task(prompt), examples)
        log_probs = class_log_probs(scores.label_logprobs)  # (n, K)
        accuracy = float((log_probs.argmax(dim=-1) == target).float().mean())
        return float(F.cross_entropy(log_probs, target)), accuracy

    def _text(self, prompt: torch.Tensor) -> str:
        return " ".join(self.candidates_[i] for i in prompt.tolist())

    def _task(self, prompt: torch.Tensor) -> Task:
        return prefixed_task(self.task_, self._text(prompt) + self.separator)

    def _log_probs(self, client: Client, examples: Sequence[Example]) -> torch.Tensor:
        scores = client.score(self._task(self.prompt_indices_), examples)
        return class_log_probs(scores.label_logprobs)

    def _check_params(self) -> None:
        check_at_least_one(self, ("prompt_length", "n_candidates", "batch_size", "epochs"))
        if self.sample_size < 2:
            raise ConfigurationError(
                f"sample_size must be >= 2 (the variance-reduced gradient compares samples), "
                f"got {self.sample_size}"
            )
        check_positive("learning_rate", self.learning_rate)
        if self.vocabulary not in VOCABULARIES:
            raise ConfigurationError(
                f"vocabulary must be one of {', '.join(VOCABULARIES)}, got {self.vocabulary!r}"
            )
        if self.max_n < 1 or self.min_count < 1:
            raise ConfigurationError(
                f"max_n and min_count must be >= 1, got {self.max_n} and {self.min_count}"
            )
        if not 0 <= self.dev_fraction < 1:
            raise ConfigurationError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")

    def _check_state(self) -> None:
        length, n = self.probs_.shape
        if self.prompt_indices_.shape != (length,) or len(self.candidates_) != n:
            raise ValueError(
                f"probs_ {tuple(self.probs_.shape)}, prompt_indices_ "
                f"{tuple(self.prompt_indices_.shape)} and {len(self.candidates_)} candidates disagree"
            )
        if int(self.prompt_indices_.min()) < 0 or int(self.prompt_indices_.max()) >= n:
            raise ValueError("prompt_indices_ lie outside the candidate vocabulary")
