"""Capability probe: which scoring strategy an OpenAI-style completions server supports.

Also the per-process cache of probe results, shared with the chat provider's probe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ProviderResponseError, ProviderStatusError
from ._strategies import Post

__all__ = [
    "PROBE_PROMPT",
    "ProbeResult",
    "cached_probe",
    "clear_probe_cache",
    "run_probe",
    "try_request",
]

#: The tiny prompt every probe request sends.
PROBE_PROMPT = "The sky is"
# Statuses meaning "this server does not accept that request shape" rather than a failure.
_UNSUPPORTED = frozenset({400, 404, 405, 415, 422, 501})

_CACHE: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()
P = TypeVar("P")


@dataclass(frozen=True)
class ProbeResult:
    """What a server supports, and the strategy chosen for it.

    Attributes
    ----------
    extension : bool
        The reply carries the ``maas_tune`` extension (exact label log-probs).
    hidden : bool
        The extension also returns hidden states.
    top_logprobs : int
        How many top log-probs the first position returns (0: none).
    echo : bool
        ``echo`` with ``logprobs`` returns per-token log-probs and text offsets
        (only probed when the cheaper strategies are missing).
    strategy : str
        The chosen strategy: ``"extension"``, ``"top_logprobs"`` or ``"echo"``.
    reason : str
        Why it was chosen, for logs and reports.
    requests : int
        HTTP requests the probe sent.
    """

    extension: bool
    hidden: bool
    top_logprobs: int
    echo: bool
    strategy: str
    reason: str
    requests: int


def try_request(post: Post, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Send one probe request; None when the server rejects its shape."""
    try:
        return post(payload)
    except ProviderStatusError as exc:
        if exc.status in _UNSUPPORTED:
            return None
        raise


def _first_choice(body: dict[str, Any] | None) -> dict[str, Any]:
    choices = body.get("choices") if body else None
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, dict) else {}


def _top_count(choice: dict[str, Any]) -> int:
    logprobs = choice.get("logprobs")
    top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    first = top[0] if isinstance(top, list) and top else None
    return len(first) if isinstance(first, dict) else 0


def _extension_works(body: dict[str, Any] | None) -> bool:
    found = _first_choice(body).get("maas_tune")
    return isinstance(found, dict) and isinstance(found.get("label_logprobs"), list)


def _echo_works(choice: dict[str, Any]) -> bool:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return False
    offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
    return isinstance(offsets, list) and isinstance(values, list) and len(values) > 1


def run_probe(post: Post, model: str, top_k: int) -> ProbeResult:
    """Probe a server with at most three tiny requests and pick the cheapest exact strategy.

    The extension request has ``max_tokens=1`` (llama.cpp reads 0 as "fill the context")
    and doubles as the top_logprobs probe.

    Raises
    ------
    ProviderResponseError
        When no strategy works with this server.
    """
    sent = 0

    def send(payload: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal sent
        sent += 1
        return try_request(post, payload)

    base = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 0}
    ext = {"label_token_ids": [0], "return_hidden": True}
    body = send({**base, "logprobs": top_k, "maas_tune": ext})
    if _extension_works(body):
        hidden = _first_choice(body)["maas_tune"].get("hidden") is not None
        reason = "the server answers the maas_tune extension: exact, 1 request per prompt"
        k = _top_count(_first_choice(body))
        return ProbeResult(True, hidden, k, False, "extension", reason, sent)
    if body is None:  # the extension field itself was rejected (e.g. OpenAI's strict schema)
        body = send({**base, "logprobs": top_k})
    k = _top_count(_first_choice(body))
    if k > 0:
        reason = f"no extension; top_logprobs returns {k} entries: 1 + missing words per prompt"
        return ProbeResult(False, False, k, False, "top_logprobs", reason, sent)
    echoed = send({**base, "echo": True, "logprobs": 0})
    if _echo_works(_first_choice(echoed)):
        reason = "no extension and no top_logprobs; echo works: 1 request per label word"
        return ProbeResult(False, False, 0, True, "echo", reason, sent)
    raise ProviderResponseError(
        f"model {model!r} at this server returns neither the maas_tune extension, nor "
        "top_logprobs, nor echoed log-probs; label log-probs cannot be read from it — "
        "use a server that returns completion logprobs"
    )


def cached_probe(key: tuple[str, ...], probe: Callable[[], P]) -> tuple[P, bool]:
    """The probe result for ``key``, probing once per process.

    ``key`` names what was probed: (base_url, model) for the completions provider;
    other probes (the chat provider's) put their kind first so keys never collide.

    Returns
    -------
    result : P
        What ``probe`` returned (a :class:`ProbeResult` for the completions provider).
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
