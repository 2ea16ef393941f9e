"""Chat-completions scoring: label log-probs from the first answer token's ``top_logprobs``.

One request asks for a single answer token (``max_tokens=1``, ``temperature=0``) with
its top-k alternatives; a label word missing from them is either forced with one more
request (``logit_bias`` +100 on its token, strategy ``force``) or given the top-k bound
(strategy ``top_logprobs``). Each scorer is a script of its requests (:mod:`maas_tune.providers._script`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from ..errors import ProviderResponseError
from ..scores import ProviderAnswer
from ._answers import usage_tokens
from ._forcing import FORCE_BIAS, Label, LabelReading, force_resolver, read_labels
from ._script import Script
from ._strategies import first_choice

__all__ = [
    "CHAT_ROUTE",
    "CHAT_STRATEGIES",
    "chat_request",
    "first_token",
    "score_chat",
    "top_of",
]

#: Path of the chat-completions API below the API root.
CHAT_ROUTE = "chat/completions"
#: Names accepted for ``strategy`` (besides ``"auto"``).
CHAT_STRATEGIES = ("force", "top_logprobs")
# What to do when forcing is not exact with this server.
_REMEDY = "use strategy='top_logprobs' (missing words then get the top-k bound)"


def chat_request(model: str, messages: list[dict[str, str]], top_k: int) -> dict[str, Any]:
    """The request body asking for one greedy answer token with its top-k log-probs."""
    return {
        "model": model,
        "messages": messages,
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": top_k,
    }


def first_token(body: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``choices[0].logprobs.content[0]``: the first answer token with its log-probs."""
    logprobs = first_choice(body, what, route="/chat/completions").get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        raise ProviderResponseError(
            f"the {what} answer carries no 'logprobs.content'; this chat API does not return "
            "log-probabilities of generated tokens — use a model or server that supports "
            "logprobs=true"
        )
    return content[0]


def top_of(token: Mapping[str, Any]) -> dict[str, float]:
    """Token text → log-prob of a token's ``top_logprobs`` (the likelier of equal texts)."""
    entries = token.get("top_logprobs")
    top: dict[str, float] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("token"), str):
            text, value = entry["token"], float(entry["logprob"])
            top[text] = max(value, top.get(text, value))
    if not top:
        raise ProviderResponseError(
            "the answer has no 'top_logprobs' for the first answer token; ask with "
            "top_logprobs >= 1 and use a model or server that returns them"
        )
    return top


def score_chat(
    request: dict[str, Any], labels: Sequence[Label], *, force: bool
) -> Script[tuple[ProviderAnswer, LabelReading]]:
    """One prompt's label log-probs: 1 request, plus one per forced label when ``force``.

    Returns
    -------
    answer : ProviderAnswer
        ``logprobs`` of shape (t,), no hidden state, ``queries`` = 1 + forced labels,
        ``prompt_tokens`` summed over the requests.
    reading : LabelReading
        How many labels were forced or bounded.
    """
    body = yield request
    top = top_of(first_token(body, "top_logprobs"))
    resolve = force_resolver(partial(_forced, request), top, _REMEDY) if force else None
    reading = yield from read_labels(labels, top, resolve)
    tokens = usage_tokens(body) + reading.prompt_tokens
    answer = ProviderAnswer(
        reading.values, None, tokens, queries=1 + reading.forced, floored=reading.floored
    )
    return answer, reading


def _forced(request: dict[str, Any], label: Label) -> Script[tuple[str | None, float, int]]:
    """Generate ``label`` with a +100 bias: (generated token, its reported log-prob, tokens)."""
    body = yield ({**request, "logit_bias": {str(label.token_id): FORCE_BIAS}})
    token = first_token(body, "forced-token")
    value = token.get("logprob")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProviderResponseError("the forced-token answer has no 'logprob' for its token")
    text = token.get("token")
    return (text if isinstance(text, str) else None), float(value), usage_tokens(body)
