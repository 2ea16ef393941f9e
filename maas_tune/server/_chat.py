"""The ``/v1/chat/completions`` route: messages → the model's chat template (or a plain one) →
one completion, answered in OpenAI's chat shape with per-token logprobs.

Like ``/v1/completions``, reported log-probabilities are computed before ``logit_bias``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ._completions import (
    DEFAULT_MAX_GENERATED_TOKENS,
    check_generated,
    check_model,
    check_top_logprobs,
    token_bias,
)
from .batching import ScoreBatcher
from .chat_schemas import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatResponseMessage,
    ChatTokenLogprob,
    TopLogprob,
)
from .engine import Completion, Engine, GenerationParams
from .schemas import APIError, Usage

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ._slot import ModelSlot

__all__ = ["DEFAULT_CHAT_MAX_TOKENS", "create_chat_completion", "install_chat_route", "render_chat"]

#: Answer length when a request gives neither ``max_tokens`` nor ``max_completion_tokens``.
DEFAULT_CHAT_MAX_TOKENS = 256
#: Default of OpenAI's chat completions when ``temperature`` is null.
DEFAULT_TEMPERATURE = 1.0
#: Roles as chat templates know them.
_TEMPLATE_ROLE = {"developer": "system"}


def plain_template(messages: list[ChatMessage]) -> str:
    """The prompt of a model without a chat template.

    The messages' texts separated by blank lines, then a newline where the answer
    starts, so that the answer's first token carries no leading space (as after a real
    chat template's assistant header).
    """
    return "\n\n".join(m.text for m in messages) + "\n"


def render_chat(engine: Engine, messages: list[ChatMessage]) -> str:
    """The prompt text for ``messages``: the tokenizer's chat template where it has one.

    The template's leading BOS is dropped, because prompts are encoded with BOS added.

    Raises
    ------
    APIError
        400 when the template refuses the conversation (e.g. roles out of order).
    """
    tokenizer = engine.provider.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        return plain_template(messages)
    turns = [{"role": _TEMPLATE_ROLE.get(m.role, m.role), "content": m.text} for m in messages]
    try:
        text = str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    except Exception as exc:  # jinja2.TemplateError and whatever a template raises
        raise APIError(
            400, f"the model's chat template refuses these messages: {exc}", param="messages"
        ) from exc
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def _params(
    engine: Engine, req: ChatCompletionRequest, prompt_tokens: int, max_generated: int
) -> GenerationParams:
    room = engine.context_length - prompt_tokens
    limit = req.token_limit or max(1, min(DEFAULT_CHAT_MAX_TOKENS, room, max_generated))
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    engine.check_context(prompt_tokens, limit)
    check_generated(limit, 1, max_generated, param)
    return GenerationParams(
        max_tokens=limit,
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        logit_bias=token_bias(engine, req.logit_bias),
        stop=req.stops,
        seed=req.seed,
    )


def _top(alternatives: dict[str, float] | None) -> list[TopLogprob]:
    ranked = sorted((alternatives or {}).items(), key=lambda kv: -kv[1])
    return [TopLogprob(token=t, logprob=v, bytes=list(t.encode("utf-8"))) for t, v in ranked]


def _logprobs(done: Completion) -> ChatLogprobs:
    content = [
        ChatTokenLogprob(
            token=token,
            logprob=float(value if value is not None else 0.0),
            bytes=list(token.encode("utf-8")),
            top_logprobs=_top(top),
        )
        for token, value, top in zip(done.tokens, done.token_logprobs, done.top_logprobs)
    ]
    return ChatLogprobs(content=content)


def _render(engine: Engine, req: ChatCompletionRequest) -> tuple[str, int]:
    prompt = render_chat(engine, req.messages)
    return prompt, len(engine.encode_prompt(prompt))


async def create_chat_completion(
    engine: Engine,
    batcher: ScoreBatcher,
    req: ChatCompletionRequest,
    max_top_logprobs: int,
    max_generated_tokens: int = DEFAULT_MAX_GENERATED_TOKENS,
) -> ChatCompletionResponse:
    """Answer one chat request; ``top_logprobs`` above ``max_top_logprobs`` is a 400, as is
    a token limit above ``max_generated_tokens``."""
    check_model(engine, req.model)
    check_top_logprobs(req.top_logprobs, max_top_logprobs, "top_logprobs")
    # Templating and tokenizing a long conversation is CPU work: off the event loop.
    prompt, prompt_tokens = await asyncio.to_thread(_render, engine, req)
    params = _params(engine, req, prompt_tokens, max_generated_tokens)
    with batcher.admitting(1):  # waits for the model like queued prompts: same bound
        done = await batcher.generate(engine.complete, prompt, params)
    choice = ChatChoice(
        index=0,
        message=ChatResponseMessage(content=done.text),
        logprobs=_logprobs(done) if req.logprobs else None,
        finish_reason=done.finish_reason,  # type: ignore[arg-type]
    )
    return ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=engine.model_id,
        choices=[choice],
        system_fingerprint=f"maas-tune-{__version__}",
        usage=Usage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            total_tokens=done.prompt_tokens + done.completion_tokens,
        ),
    )


def install_chat_route(app: FastAPI, slot: ModelSlot, batcher: ScoreBatcher) -> None:
    """Add ``POST /v1/chat/completions``; the caps are read from ``app.state``
    (``max_top_logprobs``, ``max_generated_tokens``)."""

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> dict[str, Any]:
        state = app.state
        done = await create_chat_completion(
            slot.engine, batcher, req, state.max_top_logprobs, state.max_generated_tokens
        )
        return done.to_json()
