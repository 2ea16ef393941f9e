"""Scoring strategies of the OpenAI completions provider: one prompt's label log-probs over HTTP.

Each strategy is a :data:`~maas_tune.providers._script.Script`: it yields its ``/completions``
payloads and receives their answers (retries and error translation live in the driver) and parses the answers into a
:class:`~maas_tune.scores.ProviderAnswer`.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from ..errors import ProviderResponseError
from ..scores import ProviderAnswer
from ._answers import usage_tokens
from ._forcing import FORCE_BIAS, Label, Resolve, force_resolver, read_labels
from ._script import Script

__all__ = [
    "FORCE_BIAS",
    "STRATEGIES",
    "Label",
    "Resolver",
    "Script",
    "echo_one",
    "echoing",
    "first_choice",
    "forcing",
    "score_echo",
    "score_extension",
    "score_top_logprobs",
    "usage_tokens",
]

#: Names accepted for ``strategy`` (besides ``"auto"``), cheapest first.
STRATEGIES = ("extension", "top_logprobs", "echo")
#: What to do when a server reports forced log-probs after the bias.
_REMEDY = "use strategy='echo' with this server"


def first_choice(body: Mapping[str, Any], what: str, route: str = "/completions") -> dict[str, Any]:
    """The first choice of an OpenAI-style answer, or a ProviderResponseError naming ``route``."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderResponseError(
            f"the {what} answer has no 'choices' list; "
            f"check that the base URL points at an OpenAI-compatible {route} API"
        )
    return choices[0]


def _logprobs(choice: Mapping[str, Any], what: str) -> dict[str, Any]:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise ProviderResponseError(
            f"the {what} answer carries no 'logprobs'; this server does not return "
            "log-probabilities for completions — try strategy='extension' or another server"
        )
    return logprobs


# -- extension ------------------------------------------------------------------
def score_extension(
    model: str, prompt: str, labels: Sequence[Label], token_features: int = 0
) -> Script[ProviderAnswer]:
    """Exact label log-probs and hidden state from the maas-tune server extension (1 request),
    with the states of the prompt's last ``token_features`` tokens where that is > 0."""
    ids = [label.token_id for label in labels]
    ext_request: dict[str, Any] = {"label_token_ids": ids, "return_hidden": True}
    if token_features:
        ext_request["return_token_features"] = token_features
    body = yield {"model": model, "prompt": prompt, "max_tokens": 0, "maas_tune": ext_request}
    ext = first_choice(body, "extension").get("maas_tune")
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
    tokens = ext.get("prompt_tokens", usage_tokens(body))
    states = _decode_token_features(ext, token_features) if token_features else None
    return ProviderAnswer(
        values, _decode_hidden(ext.get("hidden")), int(tokens), queries=1, token_features=states
    )


def _decode_token_features(ext: Mapping[str, Any], asked: int) -> np.ndarray:
    """The (m, d) float16 token states of an extension answer that was asked for ``asked``."""
    value, shape = ext.get("token_features"), ext.get("token_features_shape")
    if value is None or not isinstance(shape, list) or len(shape) != 2:
        raise ProviderResponseError(
            "the server answered the 'maas_tune' extension without 'token_features' (a "
            "maas-tune serve older than token features?); upgrade the server's maas-tune"
        )
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderResponseError(
            f"the extension's 'token_features' is not valid base64: {exc}"
        ) from exc
    m, d = (int(x) for x in shape)
    if not 1 <= m <= asked or d < 1 or len(raw) != m * d * 2:
        raise ProviderResponseError(
            f"the extension's 'token_features' has {len(raw)} bytes and shape {shape}; expected "
            f"float16 (m, d) with 1 <= m <= {asked}"
        )
    return np.frombuffer(raw, dtype="<f2").astype(np.float16).reshape(m, d)  # (m, d)


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
#: Builds the reader of missing labels for one prompt: (first request's body, top-k).
Resolver = Callable[[dict[str, Any], Mapping[str, float]], "Resolve | None"]


def score_top_logprobs(
    model: str,
    prompt: str,
    labels: Sequence[Label],
    top_k: int,
    resolver: Resolver,
) -> Script[ProviderAnswer]:
    """Label log-probs from the first position's top-k, reading each missing word exactly.

    Costs ``1 + (labels missing from the top-k)`` requests: each missing word is read
    by what ``resolver`` gives (forced with ``logit_bias``, checked to be reported
    before the bias, or echoed).
    """
    base = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": top_k}
    body = yield base
    top = _first_top(_logprobs(first_choice(body, "top_logprobs"), "top_logprobs"))
    reading = yield from read_labels(labels, top, resolver(base, top))
    tokens = usage_tokens(body) + reading.prompt_tokens
    return ProviderAnswer(
        reading.values, None, tokens, queries=1 + reading.forced, floored=reading.floored
    )


def forcing(base: dict[str, Any], top: Mapping[str, float]) -> Resolve:
    """The resolver that forces each missing word with ``logit_bias`` +100 (needs its id)."""
    return force_resolver(partial(_forced, base), top, _REMEDY)


def echoing(base: dict[str, Any], top: Mapping[str, float]) -> Resolve:
    """The resolver that reads each missing word from an echo of the prompt plus the word."""
    model, prompt = str(base["model"]), str(base["prompt"])

    def resolve(label: Label) -> Script[tuple[float, int, int]]:
        value, tokens = yield from echo_one(model, prompt, label)
        return value, tokens, 1

    return resolve


def _first_top(logprobs: Mapping[str, Any]) -> dict[str, float]:
    top = logprobs.get("top_logprobs")
    first = top[0] if isinstance(top, list) and top else None
    if not isinstance(first, dict) or not first:
        raise ProviderResponseError(
            "the answer has no 'top_logprobs' for the first generated token; "
            "this server does not return top log-probs — use strategy='echo' or 'auto'"
        )
    return {str(k): float(v) for k, v in first.items()}


def _forced(base: dict[str, Any], label: Label) -> Script[tuple[str | None, float, int]]:
    """Generate ``label`` with a +100 bias: (generated token, its reported log-prob, tokens)."""
    body = yield ({**base, "logit_bias": {str(label.token_id): FORCE_BIAS}})
    logprobs = _logprobs(first_choice(body, "forced-token"), "forced-token")
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(values, list) or not values or not isinstance(values[0], (int, float)):
        raise ProviderResponseError("the forced-token answer has no 'token_logprobs'")
    token = str(tokens[0]) if isinstance(tokens, list) and tokens else None
    return token, float(values[0]), usage_tokens(body)


# -- echo -----------------------------------------------------------------------
def score_echo(model: str, prompt: str, labels: Sequence[Label]) -> Script[ProviderAnswer]:
    """Label log-probs read from the echoed prompt + word (one request per distinct word)."""
    found: dict[str, tuple[float, int]] = {}
    for label in labels:
        if label.text not in found:
            found[label.text] = yield from echo_one(model, prompt, label)
    values = np.asarray([found[label.text][0] for label in labels], dtype=np.float32)  # (t,)
    tokens = sum(used for _, used in found.values())
    return ProviderAnswer(values, None, tokens, queries=len(found))


def echo_one(model: str, prompt: str, label: Label) -> Script[tuple[float, int]]:
    """One label's log-prob after ``prompt``, echoed: (log-prob, prompt tokens)."""
    full = prompt + label.text
    body = yield ({"model": model, "prompt": full, "echo": True, "max_tokens": 1, "logprobs": 0})
    logprobs = _logprobs(first_choice(body, "echo"), "echo")
    return _echoed_word(logprobs, len(prompt), len(full), label.word), usage_tokens(body)


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
