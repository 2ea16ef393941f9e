"""Chat capability probe: top_logprobs, and whether ``logit_bias`` moves the reported log-probs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ProviderResponseError
from ._chat_strategies import chat_request, first_token, top_of
from ._forcing import FORCE_BIAS, Label, bias_problem
from ._probe import try_request
from ._session import Post

__all__ = ["BIAS_VERDICTS", "PROBE_MESSAGES", "PROBE_WORDS", "ChatProbeResult", "run_chat_probe"]

#: The tiny conversation every probe request sends.
PROBE_MESSAGES = [{"role": "user", "content": "Name a colour."}]
#: Candidate words to force; the first single-token one outside the top-k is used.
PROBE_WORDS = ("zebra", "seven", "apple", "yes", "blue")
#: What the bias probe may find, and why each rules forcing in or out.
BIAS_VERDICTS = {
    "before": "logprobs are reported before logit_bias: forcing a missing word is exact",
    "after": "logprobs are reported after logit_bias: a forced word's value would be biased",
    "ignored": "logit_bias +100 did not change the generated token",
    "rejected": "the API rejects logit_bias",
    "untested": "no token id outside the top-k is known (no tokenizer for this model), "
    "so no logit_bias could be built",
}


@dataclass(frozen=True)
class ChatProbeResult:
    """What a chat API supports for one model, and the strategy chosen for it.

    Attributes
    ----------
    top_logprobs : int
        Entries returned in the first answer token's ``top_logprobs``.
    bias : str
        One of :data:`BIAS_VERDICTS`: ``"before"`` means a word forced with
        ``logit_bias`` is reported with the model's own (unbiased) log-prob.
    strategy : str
        ``"force"`` where ``bias == "before"``, else ``"top_logprobs"``.
    reason : str
        Why, for logs and reports.
    requests : int
        HTTP requests the probe sent (1 or 2).
    """

    top_logprobs: int
    bias: str
    strategy: str
    reason: str
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
    ProviderResponseError
        When the API returns no top log-probs for generated tokens (nothing to score with).
    """
    base = chat_request(model, PROBE_MESSAGES, top_k)
    body = try_request(post, base)
    if body is None:
        raise ProviderResponseError(
            f"the chat API rejects logprobs/top_logprobs={top_k} for model {model!r}; label "
            "log-probs cannot be read from it — lower top_logprobs (hosted APIs allow 5 to 20) "
            "or use a model that supports logprobs"
        )
    top = top_of(first_token(body, "probe"))
    probe = next(
        (label for label in map(label_for, PROBE_WORDS) if label and label.text not in top), None
    )
    verdict, sent = ("untested", 1) if probe is None else (_bias_verdict(post, base, probe, top), 2)
    strategy = "force" if verdict == "before" else "top_logprobs"
    cost = "1 request + 1 per label word missing from the top-k" if strategy == "force" else (
        "1 request; label words missing from the top-k get the top-k bound"
    )
    reason = f"{len(top)} top logprobs; {BIAS_VERDICTS[verdict]} ({cost})"
    return ChatProbeResult(len(top), verdict, strategy, reason, sent)


def _bias_verdict(
    post: Post, base: dict[str, Any], probe: Label, top: dict[str, float]
) -> str:
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
