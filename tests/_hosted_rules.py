"""What the strict hosted-API simulator (:mod:`tests._hosted_api`) knows of OpenAI's wire format.

The field whitelists of requests and answers (completions, chat, embeddings, models,
errors), the pruning that drops everything else, OpenAI-shaped error bodies, the deeply
nested JSON fault, and the arithmetic that turns log-probs reported before ``logit_bias``
into the ones a host reports after it (``logit_bias="post"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CHAT_REQUEST",
    "CHAT_RESPONSE",
    "COMPLETION_REQUEST",
    "COMPLETION_RESPONSE",
    "EMBEDDING_REQUEST",
    "EMBEDDING_RESPONSE",
    "ERROR_RESPONSE",
    "Schema",
    "deep_json",
    "error_body",
    "post_bias",
    "prune",
    "renormalise",
    "shown_tokens",
    "unknown_fields",
]

JSON = dict[str, Any]
#: A whitelist: field name -> the whitelist of its value (None: kept whole). A list value
#: is pruned element by element with the same whitelist.
Schema = Mapping[str, "Schema | None"]


def _leaves(*names: str) -> dict[str, None]:
    return dict.fromkeys(names)


_USAGE = _leaves(
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
#: ``POST /v1/completions`` request fields (OpenAI's legacy completions API).
COMPLETION_REQUEST: Schema = _leaves(
    "model",
    "prompt",
    "suffix",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "echo",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "logit_bias",
    "user",
    "seed",
)
#: ``POST /v1/completions`` answer fields.
COMPLETION_RESPONSE: Schema = {
    **_leaves("id", "object", "created", "model", "system_fingerprint"),
    "choices": {
        **_leaves("index", "text", "finish_reason"),
        # top_logprobs entries map token text to log-prob: kept whole.
        "logprobs": _leaves("tokens", "token_logprobs", "top_logprobs", "text_offset"),
    },
    "usage": _USAGE,
}
_MESSAGE = _leaves(
    "role", "content", "name", "refusal", "tool_calls", "tool_call_id", "function_call", "audio"
)
#: ``POST /v1/chat/completions`` request fields.
CHAT_REQUEST: Schema = {
    **_leaves(
        "model",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "service_tier",
        "store",
        "metadata",
        "modalities",
        "audio",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "prompt_cache_key",
        "safety_identifier",
    ),
    "messages": _MESSAGE,
}
_TOP = _leaves("token", "logprob", "bytes")
_TOKEN = {**_TOP, "top_logprobs": _TOP}
#: ``POST /v1/chat/completions`` answer fields.
CHAT_RESPONSE: Schema = {
    **_leaves("id", "object", "created", "model", "system_fingerprint", "service_tier"),
    "choices": {
        **_leaves("index", "finish_reason"),
        "message": _leaves(
            "role", "content", "refusal", "tool_calls", "function_call", "annotations", "audio"
        ),
        "logprobs": {"content": _TOKEN, "refusal": _TOKEN},
    },
    "usage": _USAGE,
}
#: ``POST /v1/embeddings`` request fields.
EMBEDDING_REQUEST: Schema = _leaves("model", "input", "encoding_format", "dimensions", "user")
#: ``POST /v1/embeddings`` answer fields.
EMBEDDING_RESPONSE: Schema = {
    **_leaves("object", "model"),
    "data": _leaves("object", "index", "embedding"),
    "usage": _leaves("prompt_tokens", "total_tokens"),
}
#: An error answer.
ERROR_RESPONSE: Schema = {"error": _leaves("message", "type", "param", "code")}


def prune(value: Any, schema: Schema | None) -> Any:
    """``value`` with every field outside ``schema`` removed (recursively; a copy)."""
    if schema is None:
        return value
    if isinstance(value, list):
        return [prune(item, schema) for item in value]
    if isinstance(value, dict):
        return {k: prune(v, schema[k]) for k, v in value.items() if k in schema}
    return value


def unknown_fields(body: JSON, schema: Schema) -> list[str]:
    """Top-level fields of a request that ``schema`` does not know, sorted."""
    return sorted(k for k in body if k not in schema)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSON:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def deep_json(depth: int) -> bytes:
    """A valid JSON document nested ``depth`` objects deep (past any recursion limit)."""
    return b'{"a":' * depth + b"0" + b"}" * depth


# -- logit_bias reported after the bias ---------------------------------------------------
def renormalise(known: Mapping[str, float], biases: Mapping[str, float]) -> dict[str, float]:
    """Log-probs after adding ``biases`` to the logits, for the tokens of ``known``.

    Parameters
    ----------
    known : mapping of token text to log-prob before the bias
        The tokens an answer shows at one position (the generated one and the top-k).
    biases : mapping of token text to bias
        The biased tokens among ``known``.

    Biased tokens not shown at the position are taken to have no probability mass
    (their pre-bias log-probs are unknown to the simulator).
    """
    mass = sum(math.exp(known[t]) for t in biases)
    parts = [known[t] + b for t, b in biases.items()]
    if mass < 1.0:
        parts.append(math.log1p(-mass))  # the unbiased rest of the vocabulary
    top = max(parts)
    log_z = top + math.log(sum(math.exp(p - top) for p in parts))
    return {t: lp + biases.get(t, 0.0) - log_z for t, lp in known.items()}


def _position(
    token: str,
    value: float,
    top: Mapping[str, float],
    ids: Mapping[str, int | None],
    bias: Mapping[int, float],
) -> tuple[float, JSON]:
    """One position after the bias: the generated token's value and the new top-k."""
    known = {**top, token: value}
    biases = {t: bias[i] for t in known if (i := ids.get(t)) is not None and i in bias}
    if not biases:
        return value, dict(top)
    after = renormalise(known, biases)
    ranked = sorted(after.items(), key=lambda kv: -kv[1])[: len(top)]
    return after[token], dict(ranked)


def _completion_positions(answer: JSON, prompts: list[str]) -> list[tuple[JSON, int]]:
    """(logprobs object, index) of each generated position with a log-prob (echo skipped)."""
    found = []
    for choice in answer.get("choices") or []:
        lp = choice.get("logprobs") or {}
        index = choice.get("index", 0)
        start = len(prompts[index]) if isinstance(index, int) and index < len(prompts) else 0
        for i, offset in enumerate(lp.get("text_offset") or []):
            if offset >= start and isinstance(lp["token_logprobs"][i], (int, float)):
                found.append((lp, i))
    return found


def _chat_positions(answer: JSON) -> list[JSON]:
    """The ``logprobs.content`` items of a chat answer's choices (none for completions)."""
    return [
        item
        for choice in answer.get("choices") or []
        if "message" in choice
        for item in (choice.get("logprobs") or {}).get("content") or []
    ]


def post_bias(
    answer: JSON, bias: Mapping[int, float], ids: Mapping[str, int | None], prompts: list[str]
) -> None:
    """Rewrite ``answer``'s generated positions in place as a host that reports after the bias.

    ``ids`` maps each token text the answer shows to its id (None: not one token); see
    :func:`shown_tokens`. ``prompts`` are a completions request's prompts (echoed
    positions keep their values); empty for a chat answer.
    """
    for lp, i in _completion_positions(answer, prompts):
        top = lp["top_logprobs"][i] or {}
        lp["token_logprobs"][i], new_top = _position(
            lp["tokens"][i], lp["token_logprobs"][i], top, ids, bias
        )
        if lp["top_logprobs"][i] is not None:
            lp["top_logprobs"][i] = new_top
    for item in _chat_positions(answer):
        top = {alt["token"]: alt["logprob"] for alt in item.get("top_logprobs") or []}
        item["logprob"], new_top = _position(item["token"], item["logprob"], top, ids, bias)
        item["top_logprobs"] = [
            {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in new_top.items()
        ]


def shown_tokens(answer: JSON) -> set[str]:
    """Every token text an answer shows with a log-prob (completions or chat)."""
    texts: set[str] = set()
    for choice in answer.get("choices") or []:
        lp = choice.get("logprobs") or {}
        texts.update(t for t in lp.get("tokens") or [] if isinstance(t, str))
        for top in lp.get("top_logprobs") or []:
            texts.update(top or {})
        for item in lp.get("content") or []:
            texts.add(item["token"])
            texts.update(alt["token"] for alt in item.get("top_logprobs") or [])
    return texts
