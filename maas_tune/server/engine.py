"""Model operations behind the HTTP server: label scoring, echo logprobs, generation, tokenizing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._constants import DEFAULT_MODEL_NAME
from ..providers.local import ContextLengthExceeded, TransformersProvider
from ..scores import ProviderAnswer
from ._fair_lock import FairLock

__all__ = [
    "Completion",
    "ContextLengthExceeded",
    "Engine",
    "GenerationParams",
    "empty_completion",
    "needs_forward",
]

#: Default of ``--max-context-tokens``: most tokens (prompt + generated) one request may
#: hold. Memory and time grow with it (see benchmarks/server_memory.py).
DEFAULT_MAX_CONTEXT_TOKENS = 4096
#: Prompt positions sent through the LM head at once for echoed log-probs: (64, V)
#: float32 logits are 64 MiB for Gemma's 262,144 tokens, not (L, V) at once.
ECHO_CHUNK_POSITIONS = 64


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
    max_context_tokens : int, default 4096
        Most tokens (prompt + generated) one request may hold, at most the model's
        context; a longer request is refused (``ContextLengthExceeded``) before any work.
        None: the model's context.

    Notes
    -----
    Methods are blocking (torch); the HTTP layer runs them with ``asyncio.to_thread``.
    The lock serialises forward passes because ``provider.score_with_tokens`` captures the hidden
    state with a forward hook that a concurrent pass would also trigger. It is granted
    first come, first served, and generation takes it once per token, so a scoring pass
    waits for one decoding step, not for a whole generation.
    """

    def __init__(
        self,
        provider: TransformersProvider,
        model_id: str = DEFAULT_MODEL_NAME,
        max_context_tokens: int | None = DEFAULT_MAX_CONTEXT_TOKENS,
    ) -> None:
        import torch

        self.provider = provider
        self.model_id = model_id
        self._torch = torch
        self._device = getattr(provider, "device", "cpu")  # where the model's inputs go
        self._lock = FairLock()
        config = provider.model.config.get_text_config()
        self.model_context = int(config.max_position_embeddings)
        self.context_length = min(self.model_context, max_context_tokens or self.model_context)
        self._softcap = getattr(config, "final_logit_softcapping", None)
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
        if prompt_tokens + max_tokens <= self.context_length:
            return
        model = getattr(self, "model_context", self.context_length)
        limit = (
            f"the model's context of {self.context_length} tokens"
            if model <= self.context_length
            else f"this server's limit of {self.context_length} tokens per request "
            f"(--max-context-tokens; the model's context is {model})"
        )
        raise ContextLengthExceeded(
            f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds "
            f"{limit}; shorten the prompt"
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
    def score(
        self, prompts: Sequence[str], token_ids: Sequence[int], token_features: int = 0
    ) -> list[ProviderAnswer]:
        """``provider.score_with_tokens`` under the engine lock (log-softmax over the full vocabulary),
        with the states of each prompt's last ``token_features`` tokens (0: none)."""
        with self._lock:
            return self.provider.score_with_tokens(prompts, token_ids, token_features)

    # -- completion -------------------------------------------------------------
    def complete(self, prompt: str, params: GenerationParams) -> Completion:
        """Echo and/or generate up to ``params.max_tokens`` tokens after ``prompt``.

        The prompt is one forward pass; each chunk of echoed log-probs and each
        generated token takes the lock on its own, so scoring passes run between them.
        """
        ids = self.encode_prompt(prompt)
        self.check_context(len(ids), params.max_tokens)
        result = empty_completion(prompt, len(ids), params)
        if not needs_forward(params):
            return result
        torch = self._torch
        with torch.inference_mode():
            with self._lock:
                out = self.provider.model.model(
                    input_ids=torch.tensor([ids], device=self._device), use_cache=True
                )
                hidden = out.last_hidden_state[0]  # (L, d)
                logits = self._logits(hidden[-1:])[0]  # (V,)
            cache = out.past_key_values
            del out
            if params.echo and params.logprobs is not None:
                self._echo_logprobs(ids, hidden, params.logprobs, result)
            del hidden  # only the KV cache is needed from here on
            if params.max_tokens > 0:
                self._generate(prompt, logits, cache, params, result)
        return result

    def _logits(self, hidden: Any) -> Any:
        """(n, V) float32 logits of (n, d) last-layer hidden states (the model's LM head)."""
        logits = self.provider.model.get_output_embeddings()(hidden).float()  # (n, V)
        if self._softcap is not None:  # as the model's own forward does
            logits = self._torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _echo_logprobs(self, ids: list[int], hidden: Any, k: int, result: Completion) -> None:
        """Log-prob and top ``k`` of each prompt token, ``ECHO_CHUNK_POSITIONS`` rows at a time:
        (L, V) logits are never held at once (6 GB for 6,000 tokens of Gemma 3)."""
        torch = self._torch
        start = 1 if ids and ids[0] == self._bos else 0
        offset = 0
        for lo in range(start, len(ids), ECHO_CHUNK_POSITIONS):
            hi = min(lo + ECHO_CHUNK_POSITIONS, len(ids))
            # rows[j] predicts ids[max(lo, 1) + j]; the first token has no prediction
            rows = hidden[max(lo - 1, 0) : hi - 1]  # (c, d)
            with self._lock:  # a chunk per turn: the LM head is most of an echo's time
                lp = torch.log_softmax(self._logits(rows), dim=-1) if len(rows) else None  # (c, V)
            for pos in range(lo, hi):
                text = self.token_text(ids[pos])
                row = pos - max(lo, 1)  # position of the row predicting ids[pos]
                # lp is None only when there are no rows: then pos is the first position
                first = pos == start
                result.tokens.append(text)
                result.token_logprobs.append(
                    None if first or lp is None else float(lp[row, ids[pos]])
                )
                result.top_logprobs.append(None if first or lp is None else self._top(lp[row], k))
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
        # drawn on the CPU (the generator's device): a seed gives the same text on any device
        return int(self._torch.multinomial(probs.cpu(), 1, generator=gen))

    def _bias_vector(self, logit_bias: Mapping[int, float]) -> Any:
        if not logit_bias:
            return None
        bias = self._torch.zeros(self.vocab_size, device=self._device)
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
                with self._lock:  # one token per turn: waiting scoring passes go in between
                    out = self.provider.model(
                        input_ids=torch.tensor([[token]], device=self._device),
                        past_key_values=cache,
                        use_cache=True,
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
    return Completion(
        text=prompt if params.echo else "",
        finish_reason="length",
        prompt_tokens=prompt_tokens,
        completion_tokens=0,
    )


def _find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1
