"""HTTP provider: label log-probs from an OpenAI-style legacy ``/completions`` API."""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from typing import Any

import httpx

from .._constants import LABEL_WORD_PREFIX, MAX_RETRIES
from ..errors import (
    ConfigurationError,
    OfflineCacheMiss,
    ProviderError,
    ProviderResponseError,
    ProviderStatusError,
)
from ..task import check_single_tokens
from ._answers import check_model, reading
from ._http import request_json
from ._probe import ProbeResult, cached_probe, run_probe
from ._retry import RetryPolicy
from ._strategies import (
    FORCE_BIAS,
    STRATEGIES,
    Label,
    score_echo,
    score_extension,
    score_top_logprobs,
)
from .base import FactStore, Provider, ProviderAnswer

__all__ = ["OpenAICompletionsProvider"]

#: Environment variables read for the API key, first match wins.
API_KEY_ENV = ("MAAS_TUNE_API_KEY", "OPENAI_API_KEY")
#: Default per-request timeout in seconds (connect, read, write and pool alike).
DEFAULT_TIMEOUT_S = 30.0
#: Default number of requests in flight at once.
DEFAULT_CONCURRENCY = 4
#: Default (and hosted-API maximum) number of top log-probs asked for.
DEFAULT_TOP_LOGPROBS = 5
#: Characters per token assumed when no tokenizer is reachable (an upper-ish estimate).
CHARS_PER_TOKEN_ESTIMATE = 3
# Statuses meaning "no tokenizer endpoint here".
_NO_TOKENIZER = frozenset({400, 404, 405, 422, 501})


class OpenAICompletionsProvider(Provider):
    """Score label tokens through an OpenAI-compatible legacy completions API.

    Parameters
    ----------
    base_url : str
        API root including the version, e.g. ``"http://127.0.0.1:8000/v1"``; requests go
        to ``{base_url}/completions`` and ``{base_url minus /v1}/extras/tokenize``.
    model : str
        Model name sent with every request.
    api_key : str, optional
        Sent as ``Authorization: Bearer``; defaults to ``$MAAS_TUNE_API_KEY`` or
        ``$OPENAI_API_KEY``. Never appears in the fingerprint, repr, logs or errors.
    strategy : {"auto", "extension", "top_logprobs", "echo"}, default "auto"
        How label log-probs are read; see Notes.
    top_logprobs : int, default 5
        Top log-probs asked for by the ``top_logprobs`` strategy (hosted APIs allow 5).
    max_concurrency : int, default 4
        Requests in flight at once (threads and pooled connections).
    timeout : float, default 30.0
        Per-request timeout in seconds.
    max_retries : int, default 4
        Retries of a failed request (connect errors, timeouts, 408/409/429/5xx);
        ``Retry-After`` is honoured.
    transport : httpx.BaseTransport, optional
        Replaces the network (tests inject ``httpx.MockTransport``).
    sleep : callable, default time.sleep
        Called with each retry delay in seconds.

    Notes
    -----
    Strategies, with their cost in requests per sample (``t`` label tokens):

    ``extension`` — 1 request; exact full-vocabulary log-probs and the hidden state,
        through the ``maas_tune`` request extension of ``maas-tune serve``.
    ``top_logprobs`` — 1 request, plus 1 per label word missing from the first
        position's top-k (at most ``1 + t``); exact. A missing word is generated
        with ``logit_bias`` +100 and its log-prob read as reported, which is the
        model's own only where the server reports log-probs before the bias (OpenAI,
        llama.cpp); a server that reports the biased value is detected and refused.
        Label words are matched by their text (``" " + word``).
    ``echo`` — ``t`` requests: the prompt plus each word is echoed with log-probs and
        the word's token log-probs are summed; exact.
    ``auto`` — probes the server once per (base_url, model) per process (at most 3
        tiny requests, counted in :attr:`probe_requests`, never charged to a budget)
        and picks the cheapest of the above that works; see :attr:`probe_result`.

    Without a tokenizer endpoint, :meth:`label_token_ids` returns synthetic negative
    ids (a hash of the word) and :meth:`count_tokens` estimates ``len(prompt) // 3 + 1``;
    then only ``top_logprobs`` (for words inside the top-k) and ``echo`` can score.
    An answer's ``prompt_tokens`` sums ``usage.prompt_tokens`` over its requests (billed).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        strategy: str = "auto",
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_options(base_url, model, strategy, top_logprobs, max_concurrency, timeout)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.top_logprobs = top_logprobs
        self.max_concurrency = max_concurrency
        self.probe_requests = 0
        self._requested = strategy
        self._probe: ProbeResult | None = None
        self._words: dict[int, str] = {}
        self._tokenizer: bool | None = None  # None: not tried yet
        self._lock = threading.Lock()
        self._retry = RetryPolicy(max_retries=max_retries, sleep=sleep)
        if api_key is None:
            api_key = next((os.environ[n] for n in API_KEY_ENV if os.environ.get(n)), None)
        self._tokenize_url = f"{self.base_url.removesuffix('/v1')}/extras/tokenize"
        self._special_prefix: list[int] | None = None  # what tokenize adds to any text (BOS)
        self._facts: FactStore | None = None
        self._offline = False
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            transport=transport,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAICompletionsProvider(base_url={self.base_url!r}, model={self.model!r}, "
            f"strategy={self._requested!r})"
        )

    # -- strategy -----------------------------------------------------------------
    @property
    def strategy(self) -> str:
        """The strategy in use; under ``"auto"`` the first access probes the server."""
        if self._requested != "auto":
            return self._requested
        return self.probe_result.strategy

    @property
    def probe_result(self) -> ProbeResult:
        """What the capability probe found (runs it on first access, once per process;
        kept in the client's cache when one is attached, so it runs once per cache)."""
        with self._lock:
            if self._probe is None:
                key = f"probe|{self.base_url}|{self.model}|top_logprobs={self.top_logprobs}"
                kept = self._facts.recall(key) if self._facts is not None else None
                if kept is not None:
                    self._probe = ProbeResult(**kept)
                    return self._probe
                self._online(f"the capability probe of {self.base_url}")
                post = partial(self._post, "completions")
                probe = partial(run_probe, post, self.model, self.top_logprobs)
                self._probe, fresh = cached_probe((self.base_url, self.model), probe)
                self.probe_requests += self._probe.requests if fresh else 0
                if self._facts is not None:
                    self._facts.remember(key, asdict(self._probe))
            return self._probe

    def attach_facts(self, facts: FactStore, *, offline: bool = False) -> None:
        """Keep the probe result and label token ids in ``facts`` (the client's cache);
        with ``offline=True`` send nothing and raise :class:`OfflineCacheMiss` instead."""
        self._facts, self._offline = facts, offline

    def _online(self, what: str) -> None:
        if self._offline:
            raise OfflineCacheMiss(what=what)

    @property
    def returns_hidden(self) -> bool:  # type: ignore[override]
        """Whether answers carry hidden states (only the extension strategy)."""
        return self.strategy == "extension"

    # -- contract -----------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        url = httpx.URL(self.base_url)
        strategy = self.strategy
        options: dict[str, Any] = {}
        if strategy == "extension":
            options = {"hidden": "last-layer@prediction"}
        elif strategy == "top_logprobs":
            options = {"top_logprobs": self.top_logprobs, "force_bias": FORCE_BIAS}
        return {
            "provider": "openai-completions",
            "base_url": f"{url.host}{url.path}",
            "model": self.model,
            "strategy": strategy,
            "options": options,
        }

    def label_token_ids(self, words: Sequence[str]) -> list[int]:
        words = list(words)
        key = f"label_token_ids|{self.base_url}|{self.model}|{json.dumps(words)}"
        kept = self._facts.recall(key) if self._facts is not None else None
        if kept is None:
            self._online(f"the token ids of the label words {words}")
            kept = self._fetch_label_token_ids(words)
            if self._facts is not None:
                self._facts.remember(key, kept)
        result = [int(i) for i in kept]
        with self._lock:
            self._words.update(zip(result, words))
        return result

    def _fetch_label_token_ids(self, words: list[str]) -> list[int]:
        found = {w: self._tokenize(LABEL_WORD_PREFIX + w) for w in dict.fromkeys(words)}
        if all(ids is not None for ids in found.values()):
            prefix = len(LABEL_WORD_PREFIX)
            check_single_tokens(words, lambda text: [str(i) for i in found[text[prefix:]] or []])
            result = [int(found[w][0]) for w in words]  # type: ignore[index]
        else:  # no tokenizer: stable ids that cannot collide across tasks in the cache
            result = [-1 - (zlib.crc32(w.encode("utf-8")) & 0x7FFFFFFF) for w in words]
        return result

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        if prompts and self._tokenize(prompts[0]) is not None:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                # +1: the tokenizer endpoint omits the BOS token that completions add.
                return [len(ids or []) + 1 for ids in pool.map(self._tokenize, prompts)]
        return [len(p) // CHARS_PER_TOKEN_ESTIMATE + 1 for p in prompts]

    def max_queries_per_prompt(self, n_tokens: int) -> int:
        strategy = self.strategy
        if strategy == "top_logprobs":
            return 1 + n_tokens
        if strategy == "echo":
            return max(1, n_tokens)
        return 1

    def score(self, prompts: Sequence[str], token_ids: Sequence[int]) -> list[ProviderAnswer]:
        prompts = list(prompts)
        if not prompts:
            return []
        strategy = self.strategy
        labels = self._labels(token_ids, strategy)
        succeeded = [0]  # requests answered in this call: they were paid for

        def post(payload: dict[str, Any]) -> dict[str, Any]:
            body = self._post("completions", payload)
            succeeded[0] += 1
            check_model(body, self.model)  # never cache another model's answer under this one
            return body

        scorers = {
            "extension": partial(score_extension, post, self.model),
            "top_logprobs": partial(score_top_logprobs, post, self.model, top_k=self.top_logprobs),
            "echo": partial(score_echo, post, self.model),
        }
        one = reading(partial(scorers[strategy], labels=labels), strategy)
        try:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
                return list(pool.map(one, prompts))
        except ProviderError as exc:
            exc.request_sent = exc.request_sent or succeeded[0] > 0
            raise

    def close(self) -> None:
        self._client.close()

    # -- internals ----------------------------------------------------------------
    def _labels(self, token_ids: Sequence[int], strategy: str) -> list[Label]:
        ids = [int(i) for i in token_ids]
        if strategy == "extension" and any(i < 0 for i in ids):
            raise ConfigurationError(
                f"token ids {ids} include synthetic ids (no tokenizer endpoint was reachable); "
                "the extension strategy needs real ids from the server's /extras/tokenize"
            )
        unknown = [i for i in ids if i not in self._words]
        if unknown and strategy != "extension":
            raise ConfigurationError(
                f"token ids {unknown} were not returned by this provider's label_token_ids; "
                f"the {strategy} strategy matches words by text — call label_token_ids first"
            )
        return [Label(i, self._words.get(i, "")) for i in ids]

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._retry.call(lambda: request_json(self._client, "POST", path, json=payload)[0])

    def _tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text`` (no BOS), or None when the server has no tokenizer.

        Some servers (llama.cpp) always prepend BOS: what they return for the empty
        string is learnt once and stripped from every answer.
        """
        if self._special_prefix is None and self._tokenizer is not False:
            raw = self._tokenize_raw("")
            self._special_prefix = raw or []
        tokens = self._tokenize_raw(text)
        prefix = self._special_prefix or []
        if tokens is not None and prefix and tokens[: len(prefix)] == prefix:
            tokens = tokens[len(prefix) :]
        return tokens

    def _tokenize_raw(self, text: str) -> list[int] | None:
        if self._tokenizer is False:
            return None
        try:
            body = self._post(self._tokenize_url, {"input": text})
        except ProviderStatusError as exc:
            if exc.status not in _NO_TOKENIZER:
                raise
            body = {}
        except ProviderResponseError:  # e.g. an HTML page: not a tokenizer
            body = {}
        tokens = body.get("tokens")
        ok = isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)
        self._tokenizer = ok
        return [int(t) for t in tokens] if ok else None  # type: ignore[union-attr]


def _check_options(
    base_url: str, model: str, strategy: str, top_logprobs: int, concurrency: int, timeout: float
) -> None:
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"base_url must be an http:// or https:// URL, got {base_url!r}; "
            "e.g. 'http://127.0.0.1:8000/v1'"
        )
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
    if strategy not in ("auto", *STRATEGIES):
        raise ConfigurationError(
            f"unknown strategy {strategy!r}; use one of {['auto', *STRATEGIES]}"
        )
    for name, value in (("top_logprobs", top_logprobs), ("max_concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
