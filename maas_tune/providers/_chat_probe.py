"""Chat capability probe: top_logprobs, and whether ``logit_bias`` moves the reported log-probs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ._chat_strategies import chat_request, first_token, top_of
from ._forcing import FORCE_BIAS, Label, bias_problem
from ._probe import BIAS_VERDICTS, PROBE_WORDS, Plan, served_model, try_request
from ._script import Post

__all__ = [
    "BIAS_VERDICTS",
    "MAX_CHAT_PROBE_REQUESTS",
    "PROBE_MESSAGES",
    "PROBE_WORDS",
    "ChatProbeResult",
    "choose_chat",
    "run_chat_probe",
]

#: The tiny conversation every probe request sends.
PROBE_MESSAGES = [{"role": "user", "content": "Name a colour."}]
#: Most requests :func:`run_chat_probe` sends.
MAX_CHAT_PROBE_REQUESTS = 2


@dataclass(frozen=True)
class ChatProbeResult:
    """What a chat API supports for one model.

    Attributes
    ----------
    top_logprobs : int
        Entries returned in the first answer token's ``top_logprobs``.
    bias : str
        One of :data:`BIAS_VERDICTS`: ``"before"`` means a word forced with
        ``logit_bias`` is reported with the model's own (unbiased) log-prob.
    served_model : str or None
        The model id the API reports answering with.
    requests : int
        HTTP requests the probe sent (1 or 2).
    """

    top_logprobs: int
    bias: str
    served_model: str | None
    requests: int


def run_chat_probe(
    post: Post, model: str, top_k: int, label_for: Callable[[str], Label | None]
) -> ChatProbeResult:
    """Probe with one tiny request, and a second with ``logit_bias`` where a token id is known.

    Parameters
    ----------
    post : Post
        Sends a chat-completions body.
    model : str
    top_k : int
        ``top_logprobs`` asked for.
    label_for : callable
        A word's :class:`Label` (its single token id and the text the API reports for
        it), or None when the token id is unknown.

    Raises
    ------
    ProviderStatusError
        The plain request failed (wrong model, URL or key; ``top_logprobs`` above the
        API's cap): the server's own message says why.
    ProviderResponseError
        The API returns no top log-probs for generated tokens (nothing to score with).
    """
    base = chat_request(model, PROBE_MESSAGES, top_k)
    body = post(base)
    top = top_of(first_token(body, "probe"))
    probe = next(
        (label for label in map(label_for, PROBE_WORDS) if label and label.text not in top), None
    )
    verdict, sent = ("untested", 1) if probe is None else (_bias_verdict(post, base, probe, top), 2)
    return ChatProbeResult(len(top), verdict, served_model(body), sent)


def choose_chat(caps: ChatProbeResult | None, ids_known: bool, model: str) -> Plan:
    """``force`` where it is exact on this API, else a refusal that says what to pass.

    ``caps`` is None when no probe is needed to refuse (no token ids: nothing to force).

    Raises
    ------
    ConfigurationError
        Label words outside the top-k could not be read exactly.
    """
    fallback = (
        "or pass --strategy top_logprobs (Python: strategy='top_logprobs') to accept "
        "the top-k bound for missing words, which is not the model's value"
    )
    if not ids_known:
        raise ConfigurationError(
            f"label words outside the chat API's top-k cannot be scored exactly for model "
            f"{model!r}: forcing them needs their token ids and no tokenizer is known; pass "
            "--tokenizer (tiktoken:MODEL for OpenAI models, a Hugging Face tokenizer directory, "
            f"or 'embedded'; Python: tokenizer=), {fallback}"
        )
    assert caps is not None
    if caps.bias != "before":
        raise ConfigurationError(
            f"label words outside the top {caps.top_logprobs} cannot be scored exactly with "
            f"model {model!r} at this chat API: {BIAS_VERDICTS[caps.bias]}; {fallback}"
        )
    return Plan(
        "force",
        "force",
        f"{caps.top_logprobs} top logprobs; {BIAS_VERDICTS['before']} "
        "(1 request + 1 per label word missing from the top-k)",
    )


def _bias_verdict(post: Post, base: dict[str, Any], probe: Label, top: dict[str, float]) -> str:
    """One forced request: one of :data:`BIAS_VERDICTS` (never ``"untested"``)."""
    body = try_request(post, {**base, "logit_bias": {str(probe.token_id): FORCE_BIAS}})
    if body is None:
        return "rejected"
    token = first_token(body, "bias probe")
    value = token.get("logprob")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "ignored"
    text = token.get("token") if isinstance(token.get("token"), str) else None
    return bias_problem(probe, text, float(value), min(top.values())) or "before"
