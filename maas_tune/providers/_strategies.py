"""Scoring strategies of the OpenAI completions provider: one prompt's label log-probs over HTTP.

Each strategy builds its ``/completions`` payloads, sends them through ``post`` (retries and
error translation live in the caller) and parses the answers into a
:class:`~maas_tune.providers.base.ProviderAnswer`.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._constants import LABEL_WORD_PREFIX
from ..errors import ProviderResponseError
from .base import ProviderAnswer

__all__ = [
    "FORCE_BIAS",
    "Label",
    "Post",
    "STRATEGIES",
    "score_echo",
    "score_extension",
    "score_top_logprobs",
]

#: Sends one ``/completions`` request body and returns the decoded JSON object.
Post = Callable[[dict[str, Any]], dict[str, Any]]

#: logit_bias that makes a token the one generated (the API maximum).
FORCE_BIAS = 100
#: A forced token reported above ``min(top-k) + this`` (or above ``-this``) was biased.
_BIAS_TOLERANCE = 1e-3
#: Names accepted for ``strategy`` (besides ``"auto"``), cheapest first.
STRATEGIES = ("extension", "top_logprobs", "echo")


@dataclass(frozen=True)
class Label:
    """A label token as one strategy needs it.

    Attributes
    ----------
    token_id : int
        Vocabulary id; negative when synthetic (no tokenizer reachable).
    word : str
        The label word without prefix.
    """

    token_id: int
    word: str

    @property
    def text(self) -> str:
        """The word as it follows the prompt (prefix included)."""
        return LABEL_WORD_PREFIX + self.word


def _choice(body: Mapping[str, Any], what: str) -> dict[str, Any]:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderResponseError(
            f"the {what} answer has no 'choices' list; "
            "check that the base URL points at an OpenAI-compatible /completions API"
        )
    return choices[0]


def _usage_tokens(body: Mapping[str, Any]) -> int:
    usage = body.get("usage")
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return int(value) if isinstance(value, (int, float)) else 0


def _logprobs(choice: Mapping[str, Any], what: str) -> dict[str, Any]:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise ProviderResponseError(
            f"the {what} answer carries no 'logprobs'; this server does not return "
            "log-probabilities for completions — try strategy='extension' or another server"
        )
    return logprobs


# -- extension ------------------------------------------------------------------
def score_extension(post: Post, model: str, prompt: str, labels: Sequence[Label]) -> ProviderAnswer:
    """Exact label log-probs and hidden state from the maas-tune server extension (1 request)."""
    ids = [label.token_id for label in labels]
    body = post(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": 0,
            "maas_tune": {"label_token_ids": ids, "return_hidden": True},
        }
    )
    ext = _choice(body, "extension").get("maas_tune")
    if not isinstance(ext, dict) or not isinstance(ext.get("label_logprobs"), list):
        raise ProviderResponseError(
            "the server ignored the 'maas_tune' request extension (no 'maas_tune.label_logprobs' "
            "in the choice); use strategy='auto' or 'top_logprobs' with this server"
        )
    values = np.asarray(ext["label_logprobs"], dtype=np.float32)  # (t,)
    if values.shape != (len(ids),):
        raise ProviderResponseError(
            f"the extension returned {values.size} label logprobs for {len(ids)} label tokens"
        )
    tokens = ext.get("prompt_tokens", _usage_tokens(body))
    return ProviderAnswer(values, _decode_hidden(ext.get("hidden")), int(tokens), queries=1)


def _decode_hidden(value: object) -> np.ndarray | None:
    if value is None:
        return None
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderResponseError(f"the extension's 'hidden' is not valid base64: {exc}") from exc
    if len(raw) % 4:
        raise ProviderResponseError(
            f"the extension's 'hidden' has {len(raw)} bytes, not a whole number of float32 values"
        )
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)  # (d,)


# -- top_logprobs ---------------------------------------------------------------
def score_top_logprobs(
    post: Post, model: str, prompt: str, labels: Sequence[Label], top_k: int
) -> ProviderAnswer:
    """Label log-probs from the first position's top-k, forcing each missing word once.

    Costs ``1 + (labels missing from the top-k)`` requests; exact as long as the server
    reports log-probs before ``logit_bias`` is applied (checked).
    """
    base = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": top_k}
    body = post(base)
    top = _first_top(_logprobs(_choice(body, "top_logprobs"), "top_logprobs"))
    found = {label.text: top[label.text] for label in labels if label.text in top}
    queries, tokens = 1, _usage_tokens(body)
    floor = min(top.values())
    for label in labels:
        if label.text in found:
            continue
        found[label.text], used = _forced(post, base, label, floor)
        queries, tokens = queries + 1, tokens + used
    values = np.asarray([found[label.text] for label in labels], dtype=np.float32)  # (t,)
    return ProviderAnswer(values, None, tokens, queries=queries)


def _first_top(logprobs: Mapping[str, Any]) -> dict[str, float]:
    top = logprobs.get("top_logprobs")
    first = top[0] if isinstance(top, list) and top else None
    if not isinstance(first, dict) or not first:
        raise ProviderResponseError(
            "the answer has no 'top_logprobs' for the first generated token; "
            "this server does not return top log-probs — use strategy='echo' or 'auto'"
        )
    return {str(k): float(v) for k, v in first.items()}


def _forced(post: Post, base: dict[str, Any], label: Label, floor: float) -> tuple[float, int]:
    """Generate ``label`` with a +100 bias and read its (unbiased) reported log-prob.

    A word missing from the top-k cannot be more likely than the least likely word shown
    (``floor``), so a value above it proves the server reported the biased distribution.
    """
    if label.token_id < 0:
        raise ProviderResponseError(
            f"label word {label.word!r} is not in the top {base['logprobs']} log-probs and cannot "
            "be forced without its token id (no tokenizer endpoint was reachable); "
            "use strategy='echo' or a server with /extras/tokenize"
        )
    body = post({**base, "logit_bias": {str(label.token_id): FORCE_BIAS}})
    logprobs = _logprobs(_choice(body, "forced-token"), "forced-token")
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(values, list) or not values or not isinstance(values[0], (int, float)):
        raise ProviderResponseError("the forced-token answer has no 'token_logprobs'")
    if isinstance(tokens, list) and tokens and tokens[0] != label.text:
        raise ProviderResponseError(
            f"logit_bias did not force label word {label.word!r}: the server generated "
            f"{tokens[0]!r}; check that it supports logit_bias"
        )
    value = float(values[0])
    if value > -_BIAS_TOLERANCE or value > floor + _BIAS_TOLERANCE:
        raise ProviderResponseError(
            f"the server reported log-prob {value:.4g} for the forced label word {label.word!r}, "
            "which is not below the top-k it was missing from: it reports log-probs after "
            "logit_bias, so they are not the model's; use strategy='echo' with this server"
        )
    return value, _usage_tokens(body)


# -- echo -----------------------------------------------------------------------
def score_echo(post: Post, model: str, prompt: str, labels: Sequence[Label]) -> ProviderAnswer:
    """Label log-probs read from the echoed prompt + word (one request per label token)."""
    values, tokens = [], 0
    for label in labels:
        full = prompt + label.text
        body = post(
            {"model": model, "prompt": full, "echo": True, "max_tokens": 1, "logprobs": 0}
        )
        logprobs = _logprobs(_choice(body, "echo"), "echo")
        values.append(_echoed_word(logprobs, len(prompt), len(full), label.word))
        tokens += _usage_tokens(body)
    return ProviderAnswer(np.asarray(values, dtype=np.float32), None, tokens, queries=len(labels))


def _echoed_word(logprobs: Mapping[str, Any], start: int, end: int, word: str) -> float:
    """Sum of the echoed log-probs of the tokens in characters ``[start, end)``."""
    offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
    if not isinstance(offsets, list) or not isinstance(values, list) or len(offsets) != len(values):
        raise ProviderResponseError(
            "the echo answer lacks aligned 'text_offset' and 'token_logprobs'; "
            "this server does not support echo with logprobs — use another strategy"
        )
    picked = [i for i, offset in enumerate(offsets) if start <= int(offset) < end]
    if not picked or int(offsets[picked[0]]) != start:
        raise ProviderResponseError(
            f"label word {word!r} does not start a new token after the prompt in the echoed "
            "tokens (the prompt's last characters merge with it); end the prompt differently"
        )
    chosen = [values[i] for i in picked]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in chosen):
        raise ProviderResponseError(f"the echo answer has no log-prob for label word {word!r}")
    return float(sum(chosen))
