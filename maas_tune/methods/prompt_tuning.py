"""Prompt tuning: a soft prompt trained by backpropagation through the local model (white-box)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..client import Client
from ..data import Example
from ..errors import ConfigurationError
from ..estimator import check_at_least_one, torch_seed
from ..providers.base import Provider
from ..task import Task
from ._soft_prompt import class_scores, embed_with_prompt, frozen, initial_prompt
from .base import PromptMethod, batches, class_log_probs, step_bar, usage_since

__all__ = ["PromptTuning", "require_white_box"]

#: Prompts per forward pass when predicting.
PREDICT_BATCH_SIZE = 16
#: The optimizers of the soft prompt.
OPTIMIZERS = ("adam", "adafactor")


def require_white_box(provider: Provider) -> tuple[Any, Any]:
    """The provider's in-process model and tokenizer, or a ConfigurationError saying why not."""
    model = getattr(provider, "model", None)
    tokenizer = getattr(provider, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ConfigurationError(
            f"prompt tuning needs the model's weights (white-box), but {type(provider).__name__} "
            "only answers queries; use the in-process TransformersProvider (no --base-url)"
        )
    return model, tokenizer


class PromptTuning(PromptMethod):
    """Prompt tuning (Lester et al., EMNLP 2021): ``n_tokens`` trained input embeddings.

    A soft prompt of ``n_tokens`` vectors is inserted after the BOS token, before the
    rendered template; it is trained by backpropagation through the frozen model to
    minimise the cross-entropy of the class scores (the label words' log-probabilities,
    as the client reads them), with Adam or Adafactor. It starts from Lester et al.'s class-label
    initialisation (see :func:`~maas_tune.methods._soft_prompt.initial_prompt`).

    **White-box.** This needs the weights: it runs only with the in-process
    :class:`~maas_tune.providers.local.TransformersProvider` (``client.provider.model``),
    and is the upper reference for the black-box methods, not one of them.

    **Cost.** No query is sent or budgeted, and nothing is cached (a soft prompt has no
    text to key the cache with). ``fit`` runs ``epochs * n`` forward and backward passes
    through the model; ``predict`` one forward pass per input.

    Parameters
    ----------
    n_tokens : int, default 8
    epochs : int, default 5
    batch_size : int, default 8
    learning_rate : float, default 0.03
        Adam step (Gemma's scaled input embeddings have a root-mean-square of about 1;
        on SST-2, 4 shots, 0.03 lowered the training loss fastest of 0.003, 0.01, 0.03).
        With Adafactor, the largest relative step (``torch.optim.Adafactor``'s ``lr``).
    optimizer : {"adam", "adafactor"}, default "adam"
    weight_decay : float, default 0.0
        Decoupled weight decay (Adafactor only).
    random_state : int or None
        Seed of the initialisation and the batch order.
    progress : bool or None
        Progress bar over the steps; None shows it on terminals.

    Attributes
    ----------
    task_ : Task
    classes_ : np.ndarray of str, shape (K,)
    soft_prompt_ : torch.Tensor, shape (n_tokens, d)
    loss_history_ : list of float
        Mean training loss of each epoch.
    model_fingerprint_ : dict
        The provider fingerprint at fit time; ``predict`` refuses another model.
    """

    white_box: ClassVar[bool] = True
    _tensor_attrs: ClassVar[tuple[str, ...]] = ("soft_prompt_",)
    _meta_attrs: ClassVar[tuple[str, ...]] = ("loss_history_", "model_fingerprint_")

    def __init__(
        self,
        *,
        n_tokens: int = 8,
        epochs: int = 5,
        batch_size: int = 8,
        learning_rate: float = 0.03,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        random_state: int | None = None,
        progress: bool | None = None,
    ) -> None:
        self.n_tokens = n_tokens
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.progress = progress

    @classmethod
    def paper(
        cls, *, random_state: int | None = None, progress: bool | None = None
    ) -> PromptTuning:
        """Prompt tuning with the published settings, scaled to a CPU (arXiv 2104.08691).

        Lester et al. (2021) train prompts with Adafactor for 30,000 steps at a constant
        learning rate of 0.3 and batch size 32 (their section 3; the steps and batch size
        are set per run in the reference code, not in its configs). The reference
        configuration (google-research/prompt-tuning) has, in
        ``configs/runs/prompt_finetune.gin``, ``factors = "constant"``,
        ``base_learning_rate = 0.3``, and in ``configs/models/t5_1_1_prompt.gin``
        ``PROMPT_LENGTH = 100`` and Adafactor ``decay_rate = 0.8``,
        ``multiply_by_parameter_scale = False``, ``weight_decay_rate = 0.00001``. Their
        class-label initialisation was the best (kept here), and their prompt-length
        ablation (Figure 3) shows 20 tokens close to 100 for the larger models.

        Here: 20 tokens, ``torch.optim.Adafactor`` at lr 0.3 (``beta2_decay=-0.8``,
        weight decay 1e-5), batches of 32, 30 epochs: on 16 shots per class that is 30
        to 90 steps, not 30,000, which is what two CPU cores allow (docs/methods.md has
        the table). ``torch.optim.Adafactor`` always scales the step by the prompt's
        root-mean-square (about 1 for Gemma's scaled embeddings) and caps it at
        ``1 / sqrt(step)``, so the step is ``min(0.3, 1/sqrt(t))``, not a constant 0.3.
        """
        return cls(
            n_tokens=20,
            epochs=30,
            batch_size=32,
            learning_rate=0.3,
            optimizer="adafactor",
            weight_decay=1e-5,
            random_state=random_state,
            progress=progress,
        )

    def fit(
        self,
        client: Client,
        task: Task,
        examples: Sequence[Example],
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
        corpus: Sequence[str] | None = None,
    ) -> PromptTuning:
        """Train the soft prompt on the labelled examples; returns ``self``.

        ``content_free`` and ``corpus`` are ignored (the keywords of every prompt method).
        """
        self._check_params()
        model, tokenizer = require_white_box(client.provider)
        target = torch.as_tensor(self._start_fit(task, examples, y))
        before = copy.copy(client.usage)
        prompts = [task.render(e) for e in examples]
        generator = torch.Generator().manual_seed(torch_seed(self.random_state, drawn=True))
        text_ids = _text_token_ids(tokenizer, prompts)
        label_ids = client.provider.label_token_ids(task.label_words)
        soft = initial_prompt(model, label_ids, text_ids, self.n_tokens, generator)
        soft.requires_grad_(True)
        self.loss_history_: list[float] = []
        with frozen(model):
            self._train(client, model, tokenizer, prompts, target, soft, generator)
        self.soft_prompt_ = soft.detach().clone()
        self.model_fingerprint_ = client.provider.fingerprint()
        self.fit_usage_ = usage_since(client, before)
        return self

    def _train(
        self,
        client: Client,
        model: Any,
        tokenizer: Any,
        prompts: list[str],
        target: torch.Tensor,
        soft: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        optimizer = self._optimizer(soft)
        n = len(prompts)
        with step_bar("prompt tuning", self.epochs, n, self.batch_size, self.progress) as bar:
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=generator)
                total = 0.0
                for rows in batches(order, self.batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    scores = self._scores(
                        client, model, tokenizer, [prompts[i] for i in rows], soft
                    )
                    loss = F.cross_entropy(class_log_probs(scores), target[rows])
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(rows)
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                self.loss_history_.append(total / n)

    def _optimizer(self, soft: torch.Tensor) -> torch.optim.Optimizer:
        if self.optimizer == "adafactor":
            return torch.optim.Adafactor(
                [soft], lr=self.learning_rate, beta2_decay=-0.8, weight_decay=self.weight_decay
            )
        return torch.optim.Adam([soft], lr=self.learning_rate)

    def _check_params(self) -> None:
        check_at_least_one(self, ("n_tokens", "epochs", "batch_size"))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigurationError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ConfigurationError(
                f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate} "
                f"and {self.weight_decay}"
            )
        if self.weight_decay and self.optimizer != "adafactor":
            raise ConfigurationError("weight_decay applies to optimizer='adafactor' only")

    def _scores(
        self, client: Client, model: Any, tokenizer: Any, prompts: list[str], soft: torch.Tensor
    ) -> torch.Tensor:
        """Class log-probabilities (full vocabulary) with ``soft`` before each prompt, (b, K)."""
        task = self.task_
        token_ids = torch.as_tensor(client.provider.label_token_ids(task.label_words))
        embeds, mask, positions = embed_with_prompt(model, tokenizer, prompts, soft)
        word_class = torch.as_tensor(task.word_class)
        return class_scores(model, embeds, mask, positions, token_ids, word_class, len(task.labels))

    def _log_probs(self, client: Client, examples: Sequence[Example]) -> torch.Tensor:
        model, tokenizer = require_white_box(client.provider)
        if client.provider.fingerprint() != self.model_fingerprint_:
            raise ConfigurationError(
                "this soft prompt was trained with another model or provider setting "
                f"({self.model_fingerprint_.get('model')!r}); a soft prompt only fits the "
                "weights it was trained on: predict with that model"
            )
        prompts = [self.task_.render(e) for e in examples]
        out = []
        with torch.no_grad():
            for start in range(0, len(prompts), PREDICT_BATCH_SIZE):
                batch = prompts[start : start + PREDICT_BATCH_SIZE]
                out.append(self._scores(client, model, tokenizer, batch, self.soft_prompt_))
        k = len(self.classes_)
        return class_log_probs(torch.cat(out) if out else torch.zeros(0, k))

    def _check_state(self) -> None:
        if self.soft_prompt_.ndim != 2 or self.soft_prompt_.shape[0] != self.n_tokens:
            raise ValueError(
                f"soft_prompt_ has shape {tuple(self.soft_prompt_.shape)}, "
                f"expected ({self.n_tokens}, d)"
            )
        if not isinstance(self.model_fingerprint_, dict):
            raise TypeError("model_fingerprint_ must be a dict")


def _text_token_ids(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Token ids of the prompts without special tokens, shape (t,)."""
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    ids = [i for row in rows for i in row]
    return torch.as_tensor(ids or [tokenizer.eos_token_id], dtype=torch.int64)
