"""Capability probe of an OpenAI-style completions API, and the choice of an exact strategy.

The probe records what the API can do (:class:`ProbeResult`); :func:`choose` turns that,
and whether the label words' token ids are known, into a plan that is exact on this API,
or refuses before any sample is sent, saying what to pass. Capabilities are kept in the
client's cache; a choice never is, so a plan that stops working is simply re-decided.

Also the per-process cache of probe results, shared with the chat provider's probe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigurationError, ProviderStatusError
from ._forcing import FORCE_BIAS, Label, bias_problem
from ._script import Post

__all__ = [
    "BIAS_VERDICTS",
    "MAX_PROBE_REQUESTS",
    "PROBE_PROMPT",
    "PROBE_WORDS",
    "Plan",
    "ProbeResult",
    "cached_probe",
    "choose",
    "clear_probe_cache",
    "first_choice_of",
    "run_probe",
    "served_model",
    "try_request",
]

#: The tiny prompt every probe request sends.
PROBE_PROMPT = "The sky is"
#: Candidate words to force; the first single-token one outside the top-k is used.
PROBE_WORDS = ("zebra", "seven", "apple", "yes", "blue")
#: Most requests :func:`run_probe` sends (reserved from the budget before it runs).
MAX_PROBE_REQUESTS = 4
# Statuses meaning "this server does not accept that request shape" rather than a failure.
_UNSUPPORTED = frozenset({400, 404, 405, 415, 422, 501})
#: What the bias probe may find, and why each rules forcing in or out.
BIAS_VERDICTS = {
    "before": "log-probs are reported before logit_bias: forcing a missing word is exact",
    "after": "log-probs are reported after logit_bias: a forced word's value would be biased",
    "ignored": "logit_bias +100 did not change the generated token",
    "rejected": "the API rejects logit_bias",
    "untested": "no token id outside the top-k is known (no tokenizer for this model), "
    "so no logit_bias could be built",
}

_CACHE: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()
P = TypeVar("P")


@dataclass(frozen=True)
class ProbeResult:
    """What a completions API supports for one model.

    Attributes
    ----------
    extension : bool
        The reply carries the ``maas_tune`` extension (exact label log-probs).
    hidden : bool
        The extension also returns hidden states.
    top_logprobs : int
        How many top log-probs the first position returns (0: none).
    echo : bool
        ``echo`` with ``logprobs`` returns per-token log-probs and text offsets.
    bias : str
        One of :data:`BIAS_VERDICTS`.
    served_model : str or None
        The model id the API reports answering with (part of the cache identity).
    requests : int
        HTTP requests the probe sent.
    """

    extension: bool
    hidden: bool
    top_logprobs: int
    echo: bool
    bias: str
    served_model: str | None
    requests: int


@dataclass(frozen=True)
class Plan:
    """How samples are scored: ``strategy`` and, for ``top_logprobs``, how words missing
    from the top-k are read (``"force"`` or ``"echo"``); ``reason`` for reports."""

    strategy: str
    missing: str | None
    reason: str


def try_request(post: Post, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Send one probe request; None when the server rejects its shape."""
    try:
        return post(payload)
    except ProviderStatusError as exc:
        if exc.status in _UNSUPPORTED:
            return None
        raise


def first_choice_of(body: dict[str, Any] | None) -> dict[str, Any]:
    """``choices[0]`` of an answer, or an empty dict."""
    choices = body.get("choices") if body else None
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, dict) else {}


def served_model(body: dict[str, Any] | None) -> str | None:
    """The ``model`` an answer names, if any."""
    value = body.get("model") if body else None
    return value if isinstance(value, str) and value else None


def _top(choice: dict[str, Any]) -> dict[str, float]:
    logprobs = choice.get("logprobs")
    top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    first = top[0] if isinstance(top, list) and top else None
    if not isinstance(first, dict):
        return {}
    return {str(k): float(v) for k, v in first.items() if isinstance(v, (int, float))}


def _extension_works(body: dict[str, Any] | None) -> bool:
    found = first_choice_of(body).get("maas_tune")
    return isinstance(found, dict) and isinstance(found.get("label_logprobs"), list)


def _echo_works(choice: dict[str, Any]) -> bool:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return False
    offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
    return isinstance(offsets, list) and isinstance(values, list) and len(values) > 1


def run_probe(
    post: Post, model: str, top_k: int, label_for: Callable[[str], Label | None]
) -> ProbeResult:
    """Probe a completions API with at most :data:`MAX_PROBE_REQUESTS` tiny requests.

    1. the ``maas_tune`` extension with ``logprobs=top_k`` (which doubles as the
       top-k probe); a strict API that rejects the field gets 2. the same without it —
       whose failure is the user's to see (wrong model, wrong URL, bad key), so it is
       raised with the server's own message;
    3. ``logit_bias`` +100 on a word outside the top-k, where a token id is known
       (``label_for``): are log-probs reported before the bias?
    4. ``echo`` with log-probs.

    Raises
    ------
    ProviderStatusError
        The plain request failed: the server's message says why.
    """
    sent = 0

    def send(payload: dict[str, Any], *, optional: bool = True) -> dict[str, Any] | None:
        nonlocal sent
        sent += 1
        return try_request(post, payload) if optional else post(payload)

    base = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 0}
    ext = {"label_token_ids": [0], "return_hidden": True}
    body = send({**base, "logprobs": top_k, "maas_tune": ext})
    if _extension_works(body):
        hidden = first_choice_of(body)["maas_tune"].get("hidden") is not None
        k = len(_top(first_choice_of(body)))
        return ProbeResult(True, hidden, k, False, "untested", served_model(body), sent)
    if body is None:  # the extension field itself was rejected (e.g. OpenAI's strict schema)
        body = send({**base, "logprobs": top_k}, optional=False)
    top = _top(first_choice_of(body))
    bias = _bias_verdict(send, base, top, label_for) if top else "untested"
    echoed = send({**base, "echo": True, "logprobs": 0})
    echo = _echo_works(first_choice_of(echoed))
    return ProbeResult(False, False, len(top), echo, bias, served_model(body), sent)


def _bias_verdict(
    send: Callable[[dict[str, Any]], dict[str, Any] | None],
    base: dict[str, Any],
    top: dict[str, float],
    label_for: Callable[[str], Label | None],
) -> str:
    """One forced request where a token id outside the top-k is known; else ``"untested"``."""
    probe = next(
        (label for label in map(label_for, PROBE_WORDS) if label and label.text not in top), None
    )
    if probe is None:
        return "untested"
    body = send({**base, "logprobs": len(top), "logit_bias": {str(probe.token_id): FORCE_BIAS}})
    if body is None:
        return "rejected"
    logprobs = first_choice_of(body).get("logprobs")
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(values, list) or not values or not isinstance(values[0], (int, float)):
        return "ignored"
    token = str(tokens[0]) if isinstance(tokens, list) and tokens else None
    return bias_problem(probe, token, float(values[0]), min(top.values())) or "before"


def choose(caps: ProbeResult, ids_known: bool, model: str) -> Plan:
    """The cheapest exact plan on an API with ``caps``, or a refusal saying what to pass.

    Raises
    ------
    ConfigurationError
        No exact way to read label log-probs exists here (nothing was sent for samples).
    """
    if caps.extension:
        return Plan(
            "extension",
            None,
            "the server answers the maas_tune extension: exact "
            "label log-probs and the hidden state, 1 request per sample",
        )
    force = ids_known and caps.bias == "before"
    if caps.top_logprobs and (force or caps.echo):
        how = "forced with logit_bias" if force else "echoed"
        return Plan(
            "top_logprobs",
            "force" if force else "echo",
            f"top-{caps.top_logprobs} log-probs; a label word outside them is {how}: "
            "exact, 1 request per sample + 1 per missing word",
        )
    if caps.echo:
        return Plan(
            "echo", None, "no top log-probs; echo with log-probs: exact, 1 request per label word"
        )
    raise ConfigurationError(_refusal(caps, ids_known, model))


def _refusal(caps: ProbeResult, ids_known: bool, model: str) -> str:
    start = f"model {model!r} at this API cannot give exact label log-probs"
    if not caps.top_logprobs:
        return (
            f"{start}: it returns no top log-probs and does not echo prompts with "
            "log-probs; use a completions API that returns logprobs, or --api chat"
        )
    if not ids_known:
        return (
            f"{start} for label words outside its top {caps.top_logprobs}: it has no echo "
            "and no tokenizer endpoint, so a missing word cannot be forced; pass "
            "--tokenizer (tiktoken:MODEL, a Hugging Face tokenizer directory, or 'embedded'; "
            "Python: tokenizer=) so missing words can be forced with logit_bias"
        )
    return (
        f"{start} for label words outside its top {caps.top_logprobs}: it has no echo, and "
        f"{BIAS_VERDICTS[caps.bias]}; choose label words the model ranks in its top "
        f"{caps.top_logprobs}, or use an API that echoes prompts with log-probs"
    )


def cached_probe(key: tuple[str, ...], probe: Callable[[], P]) -> tuple[P, bool]:
    """The probe result for ``key``, probing once per process.

    ``key`` names what was probed: the completions provider's identity; other probes
    (the chat provider's) put their kind first so keys never collide.

    Returns
    -------
    result : P
    fresh : bool
        True when this call ran the probe (its requests are this caller's).
    """
    with _LOCK:  # held while probing, so concurrent providers probe a server once
        if key in _CACHE:
            return _CACHE[key], False
        result = probe()
        _CACHE[key] = result
        return result, True


def clear_probe_cache() -> None:
    """Forget every probe result (tests; a server that was upgraded in place)."""
    with _LOCK:
        _CACHE.clear()
