"""The ``/v1/completions`` handler: validation against the model, extension scoring, generation."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterable

import numpy as np

from .batching import ScoreBatcher
from .engine import Completion, Engine, GenerationParams, empty_completion, needs_forward
from .schemas import (
    MAX_TOP_LOGPROBS,
    APIError,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ExtensionResult,
    Logprobs,
    Usage,
)

__all__ = [
    "DEFAULT_MAX_GENERATED_TOKENS",
    "check_generated",
    "check_model",
    "check_top_logprobs",
    "create_completion",
    "encode_hidden",
    "token_bias",
]

#: Default of OpenAI's legacy completions when ``max_tokens`` is null.
DEFAULT_MAX_TOKENS = 16
#: Default of ``--max-generated-tokens``: most tokens one request may generate, all its
#: prompts together; chat's default answer length. Each token is a forward pass: 512
#: after a 3,584-token prompt took 10 minutes on 2 shared cores (benchmarks/server_memory.py).
DEFAULT_MAX_GENERATED_TOKENS = 256
#: Default of OpenAI's legacy completions when ``temperature`` is null.
DEFAULT_TEMPERATURE = 1.0


def check_model(engine: Engine, model: str | None) -> None:
    """Raise a 404 :class:`APIError` unless ``model`` is None or the served model."""
    if model is not None and model != engine.model_id:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {engine.model_id!r}",
            param="model",
            code="model_not_found",
        )


def encode_hidden(hidden: np.ndarray) -> str:
    """Base64 of the little-endian float32 bytes of a (d,) vector."""
    return base64.b64encode(np.ascontiguousarray(hidden, dtype="<f4").tobytes()).decode("ascii")


def encode_token_features(states: np.ndarray) -> tuple[str, list[int]]:
    """Base64 of the little-endian float16 bytes of (m, d) token states, and ``[m, d]``."""
    raw = np.ascontiguousarray(states, dtype="<f2").tobytes()
    return base64.b64encode(raw).decode("ascii"), [int(states.shape[0]), int(states.shape[1])]


def check_top_logprobs(value: int | None, cap: int, param: str) -> None:
    """Raise a 400 :class:`APIError` when more top log-probs are asked than the server allows."""
    if value is not None and value > cap:
        raise APIError(
            400,
            f"{param} must be at most {cap} on this server, got {value}; ask for {cap} or fewer",
            param=param,
        )


def check_generated(max_tokens: int, n_prompts: int, cap: int, param: str) -> None:
    """Raise a 400 :class:`APIError` when a request would generate more than ``cap`` tokens."""
    total = max_tokens * n_prompts
    if total > cap:
        asked = f"{param}={max_tokens}" + (
            f" for each of {n_prompts} prompts" if n_prompts > 1 else ""
        )
        raise APIError(
            400,
            f"{asked} asks for up to {total} generated tokens, more than this "
            f"server's limit of {cap} per request (--max-generated-tokens); ask for "
            "fewer tokens or split the request",
            param=param,
            code="max_tokens_exceeded",
        )


def _check_ids(engine: Engine, ids: Iterable[int], param: str) -> None:
    bad = [i for i in ids if i >= engine.vocab_size]
    if bad:
        raise APIError(
            400,
            f"token id {bad[0]} is outside the vocabulary (size {engine.vocab_size})",
            param=param,
        )


def token_bias(engine: Engine, logit_bias: dict[str, float] | None) -> dict[int, float]:
    """A request's ``logit_bias`` as token id → bias, checked against the vocabulary."""
    bias = {int(k): v for k, v in (logit_bias or {}).items()}
    _check_ids(engine, bias, "logit_bias")
    return bias


def _params(engine: Engine, req: CompletionRequest) -> GenerationParams:
    bias = token_bias(engine, req.logit_bias)
    if req.maas_tune:
        _check_ids(engine, req.maas_tune.label_token_ids, "maas_tune.label_token_ids")
    return GenerationParams(
        max_tokens=DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens,
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        logprobs=req.logprobs,
        echo=req.echo,
        logit_bias=bias,
        stop=req.stops,
        seed=req.seed,
    )


async def _extension(
    batcher: ScoreBatcher, req: CompletionRequest, prompts: list[str], lengths: list[int]
) -> list[ExtensionResult | None]:
    if req.maas_tune is None:
        return [None] * len(prompts)
    n_last = req.maas_tune.return_token_features
    answers = await batcher.submit(prompts, req.maas_tune.label_token_ids, lengths, n_last)
    want_hidden = req.maas_tune.return_hidden
    results: list[ExtensionResult | None] = []
    for a in answers:
        tokens, shape = (None, None)
        if n_last and a.token_features is not None:
            tokens, shape = encode_token_features(a.token_features)
        results.append(
            ExtensionResult(
                label_logprobs=[float(x) for x in a.logprobs],
                hidden=encode_hidden(a.hidden) if want_hidden and a.hidden is not None else None,
                prompt_tokens=a.prompt_tokens,
                token_features=tokens,
                token_features_shape=shape,
            )
        )
    return results


def _choice(
    index: int, done: Completion, ext: ExtensionResult | None, with_lp: bool
) -> CompletionChoice:
    logprobs = None
    if with_lp:
        logprobs = Logprobs(
            tokens=done.tokens,
            token_logprobs=done.token_logprobs,
            top_logprobs=done.top_logprobs,
            text_offset=done.text_offset,
        )
    return CompletionChoice(
        index=index,
        text=done.text,
        logprobs=logprobs,
        finish_reason=done.finish_reason,  # type: ignore[arg-type]
        maas_tune=ext,
    )


async def create_completion(
    engine: Engine,
    batcher: ScoreBatcher,
    req: CompletionRequest,
    max_top_logprobs: int = MAX_TOP_LOGPROBS,
    max_generated_tokens: int = DEFAULT_MAX_GENERATED_TOKENS,
) -> CompletionResponse:
    """Answer one completions request (every prompt is checked before any work starts).

    ``logprobs`` above ``max_top_logprobs`` (the server's hosted-style cap) is a 400, as
    is ``max_tokens`` times the prompts above ``max_generated_tokens``.
    """
    check_model(engine, req.model)
    check_top_logprobs(req.logprobs, max_top_logprobs, "logprobs")
    params = _params(engine, req)
    prompts = req.prompts
    # Tokenizing megabytes takes seconds: off the event loop, so /health still answers.
    lengths = await asyncio.to_thread(engine.checked_lengths, prompts, params.max_tokens)
    check_generated(params.max_tokens, len(prompts), max_generated_tokens, "max_tokens")
    choices, prompt_tokens, completion_tokens = [], 0, 0
    forward = needs_forward(params)
    with batcher.admitting(len(prompts) if forward else 0):  # a flood gets 429, as for scoring
        extensions = await _extension(batcher, req, prompts, lengths)
        for index, (prompt, ext, n_tokens) in enumerate(zip(prompts, extensions, lengths)):
            if forward:
                done = await batcher.generate(engine.complete, prompt, params)
            else:  # e.g. an extension request with max_tokens=0: no thread hop, no re-tokenizing
                done = empty_completion(prompt, n_tokens, params)
            prompt_tokens += done.prompt_tokens
            completion_tokens += done.completion_tokens
            choices.append(_choice(index, done, ext, req.logprobs is not None))
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=engine.model_id,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )
