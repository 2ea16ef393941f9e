"""Model operations behind the HTTP server: label scoring, echo logprobs, generation, tokenizing."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._constants import DEFAULT_MODEL_NAME
from ..errors import ConfigurationError
from ..providers.base import ProviderAnswer
from ..providers.local import TransformersProvider

__all__ = [
    "Completion",
    "ContextLengthExceeded",
    "Engine",
    "GenerationParams",
    "empty_completion",
    "needs_forward",
]


class ContextLengthExceeded(ConfigurationError):
    """The prompt plus the tokens to generate do not fit in the model's context."""


@dataclass(frozen=True)
class GenerationParams:
    """What one completion asks for (already validated by the HTTP layer).

    ``logit_bias`` maps token id to an additive bias; it changes only which token
    is chosen, never the reported log-probabilities.
    """

    max_tokens: int
    temperature: float = 0.0
    logprobs: int | None = None
    echo: bool = False
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    """One choice's text, finish reason, usage and (optional) per-token log-probabilities.

    The four ``logprobs`` lists are parallel; they are empty when no logprobs were asked.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)


class Engine:
    """Serve one :class:`TransformersProvider`: every forward pass holds one lock.

    Parameters
    ----------
    provider : TransformersProvider
        A loaded local provider; it must return hidden states (``return_hidden=True``,
        the default) for the embeddings endpoint and the ``return_hidden`` extension.
    model_id : str, default "gemma-3-270m"
        The name the server answers to (``model`` in requests and responses).

    Notes
    -----
    Methods are blocking (torch); the HTTP layer runs them with ``asyncio.to_thread``.
    The lock serialises forward passes because ``provider.score`` captures the hidden
    state with a forward hook that a concurrent pass would also trigger.
    """

    def __init__(self, provider: TransformersProvider, model_id: str = DEFAULT_MODEL_NAME) -> None:
        import torch

        self.provider = provider
        self.model_id = model_id
        self._torch = torch
        self._lock = threading.Lock()
        config = provider.model.config.get_text_config()
        self.context_length = int(config.max_position_embeddings)
        self.vocab_size = int(provider.model.get_output_embeddings().weight.shape[0])
        self.returns_hidden = bool(provider.returns_hidden)
        tok = provider.tokenizer
        eos = provider.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._eos = {int(i) for i in [*eos_ids, tok.eos_token_id] if i is not None}
        self._bos = tok.bos_token_id

    # -- tokens -----------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens (no BOS)."""
        return list(self.provider.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids the model sees for a prompt (BOS included, as ``provider.score`` does)."""
        return list(self.provider.tokenizer(text)["input_ids"])

    def token_text(self, token_id: int) -> str:
        """Decoded text of one token, e.g. ``" positive"``."""
        return str(self.provider.tokenizer.decode([token_id]))

    def check_context(self, prompt_tokens: int, max_tokens: int = 0) -> None:
        """Raise :class:`ContextLengthExceeded` if the request cannot fit the context."""
        if prompt_tokens + max_tokens > self.context_length:
            raise ContextLengthExceeded(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds "
                f"the model's context of {self.context_length} tokens; shorten the prompt"
            )

    def checked_lengths(self, prompts: Sequence[str], max_tokens: int = 0) -> list[int]:
        """Prompt tokens of each prompt (BOS included), after checking each fits the context."""
        lengths = [len(self.encode_prompt(p)) for p in prompts]
        for n in lengths:
            self.check_context(n, max_tokens)
        return lengths

    @property
    def max_pass_size(self) -> int:
        """Most prompts the provider scores in one forward pass."""
        return int(self.provider.batch_size)

    @property
    def max_pass_tokens(self) -> int | None:
        """Most prompt tokens the provider packs into one pass (None: it pads instead)."""
        return self.provider.pack_tokens

    # -- scoring ----------------------------------------------------------------
    def score(self, prompts: Sequence[str], token_ids: Sequence[int]) -> list[ProviderAnswer]:
        """``provider.score`` under the engine lock (log-softmax over the full vocabulary)."""
        with self._lock:
            return self.provider.score(prompts, token_ids)

    # -- completion -------------------------------------------------------------
    def complete(self, prompt: str, params: GenerationParams) -> Completion:
        """Echo and/or generate up to ``params.max_tokens`` tokens after ``prompt``."""
        ids = self.encode_prompt(prompt)
        self.check_context(len(ids), params.max_tokens)
        want_echo_lp = params.echo and params.logprobs is not None
        result = empty_completion(prompt, len(ids), params)
        if not needs_forward(params):
            return result
        torch = self._torch
        with self._lock, torch.inference_mode():
            # logits_to_keep=0 keeps every position (needed only for echo logprobs).
            out = self.provider.model(input_ids=torch.tensor([ids]), use_cache=True,
                                      logits_to_keep=0 if want_echo_lp else 1)
            logits = out.logits[0].float()  # (L or 1, V)
            if want_echo_lp:
                self._echo_logprobs(ids, logits, params.logprobs or 0, result)
            if params.max_tokens > 0:
                self._generate(prompt, logits[-1], out.past_key_values, params, result)
        return result

    def _echo_logprobs(self, ids: list[int], logits: Any, k: int, result: Completion) -> None:
        torch = self._torch
        lp = torch.log_softmax(logits[:-1], dim=-1)  # (L - 1, V): row i predicts ids[i + 1]
        start = 1 if ids and ids[0] == self._bos else 0
        offset = 0
        for pos in range(start, len(ids)):
            text = self.token_text(ids[pos])
            first = pos == start
            result.tokens.append(text)
            result.token_logprobs.append(None if first else float(lp[pos - 1, ids[pos]]))
            result.top_logprobs.append(None if first else self._top(lp[pos - 1], k))
            result.text_offset.append(offset)
            offset += len(text)

    def _top(self, lp: Any, k: int) -> dict[str, float]:
        if k <= 0:
            return {}
        values, indices = self._torch.topk(lp, k)
        return {self.token_text(int(i)): float(v) for v, i in zip(values, indices)}

    def _choose(self, logits: Any, params: GenerationParams, bias: Any, gen: Any) -> int:
        biased = logits if bias is None else logits + bias
        if params.temperature <= 0:
            return int(biased.argmax())
        probs = self._torch.softmax(biased / params.temperature, dim=-1)
        return int(self._torch.multinomial(probs, 1, generator=gen))

    def _bias_vector(self, logit_bias: Mapping[int, float]) -> Any:
        if not logit_bias:
            return None
        bias = self._torch.zeros(self.vocab_size)
        for token_id, value in logit_bias.items():
            bias[int(token_id)] = float(value)
        return bias

    def _generate(
        self, prompt: str, logits: Any, cache: Any, params: GenerationParams, result: Completion
    ) -> None:
        torch = self._torch
        bias = self._bias_vector(params.logit_bias)
        gen = torch.Generator()
        if params.seed is None:
            gen.seed()  # a fresh random seed, as OpenAI does without one
        else:
            gen.manual_seed(params.seed)
        steps: list[tuple[int, float, dict[str, float] | None]] = []
        for step in range(params.max_tokens):
            lp = torch.log_softmax(logits, dim=-1)  # (V,): reported before the bias
            token = self._choose(logits, params, bias, gen)
            result.completion_tokens += 1
            if token in self._eos:
                result.finish_reason = "stop"
                break
            top = self._top(lp, params.logprobs) if params.logprobs is not None else None
            steps.append((token, float(lp[token]), top))
            if params.stop and _find_stop(self._decode([t for t, _, _ in steps]), params.stop) >= 0:
                result.finish_reason = "stop"
                break
            if step + 1 < params.max_tokens:
                out = self.provider.model(
                    input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True
                )
                cache, logits = out.past_key_values, out.logits[0, -1].float()
        self._finish_text(prompt, steps, params, result)

    def _decode(self, ids: list[int]) -> str:
        return str(self.provider.tokenizer.decode(ids, skip_special_tokens=True))

    def _finish_text(
        self,
        prompt: str,
        steps: list[tuple[int, float, dict[str, float] | None]],
        params: GenerationParams,
        result: Completion,
    ) -> None:
        text = self._decode([t for t, _, _ in steps])
        cut = _find_stop(text, params.stop) if params.stop else -1
        if cut >= 0:
            text = text[:cut]
        result.text += text
        if params.logprobs is None:
            return
        offset, end = len(prompt), len(prompt) + len(text)
        for token, logprob, top in steps:
            if offset >= end and cut >= 0:
                break  # this token lies wholly inside the stop string
            piece = self.token_text(token)
            result.tokens.append(piece)
            result.token_logprobs.append(logprob)
            result.top_logprobs.append(top)
            result.text_offset.append(offset)
            offset += len(piece)


def needs_forward(params: GenerationParams) -> bool:
    """Whether a completion needs the model: tokens to generate, or echoed log-probs."""
    return params.max_tokens > 0 or (params.echo and params.logprobs is not None)


def empty_completion(prompt: str, prompt_tokens: int, params: GenerationParams) -> Completion:
    """A completion with nothing generated (the prompt itself when echoing)."""
    return Completion(text=prompt if params.echo else "", finish_reason="length",
                      prompt_tokens=prompt_tokens, completion_tokens=0)


def _find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1
