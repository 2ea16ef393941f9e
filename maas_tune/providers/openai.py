"""HTTP provider: label log-probs from an OpenAI-style legacy ``/completions`` API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import httpx

from .._constants import LABEL_WORD_PREFIX, MAX_RETRIES
from ..errors import ConfigurationError
from ..ratelimit import RateLimit, RateLimiter
from ..task import check_single_tokens
from ._answers import reading
from ._forcing import synthetic_token_id
from ._probe import ProbeResult, cached_probe, run_probe
from ._remote import RemoteProvider
from ._session import (
    API_KEY_ENV,
    CHARS_PER_TOKEN_ESTIMATE,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    check_api_options,
    check_count,
)
from ._strategies import (
    FORCE_BIAS,
    STRATEGIES,
    Label,
    Post,
    score_echo,
    score_extension,
    score_top_logprobs,
)
from .base import ProviderAnswer

__all__ = ["API_KEY_ENV", "CHARS_PER_TOKEN_ESTIMATE", "OpenAICompletionsProvider"]

#: Default (and hosted-API maximum) number of top log-probs asked for.
DEFAULT_TOP_LOGPROBS = 5


class OpenAICompletionsProvider(RemoteProvider):
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
    rate_limit : RateLimit, RateLimiter or None, default None
        Client-side requests/tokens-per-minute limit, waited for before each request
        (see :class:`~maas_tune.providers._session.APISession`); share one among
        processes with :func:`maas_tune.ray.shared_rate_limiter`.

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
        rate_limit: RateLimit | RateLimiter | None = None,
    ) -> None:
        _check_options(base_url, model, strategy, top_logprobs, max_concurrency, timeout)
        super().__init__(
            base_url, model, strategy, api_key=api_key, max_concurrency=max_concurrency,
            timeout=timeout, max_retries=max_retries, transport=transport, sleep=sleep,
            rate_limit=rate_limit,
        )
        self.top_logprobs = top_logprobs
        self._probe: ProbeResult | None = None

    # -- strategy -----------------------------------------------------------------
    @property
    def probe_result(self) -> ProbeResult:
        """What the capability probe found (runs it on first access, once per process;
        kept in the client's cache when one is attached, so it runs once per cache)."""
        with self._lock:
            if self._probe is None:
                key = f"probe|{self.base_url}|{self.model}|top_logprobs={self.top_logprobs}"
                what = f"the capability probe of {self.base_url}"
                self._probe = ProbeResult(**self._session.fact(key, what, self._run_probe))
            return self._probe

    def _run_probe(self) -> dict[str, Any]:
        post = partial(self._session.post, "completions")
        probe = partial(run_probe, post, self.model, self.top_logprobs)
        result, fresh = cached_probe((self.base_url, self.model), probe)
        self.probe_requests += result.requests if fresh else 0
        return asdict(result)

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
        what = f"the token ids of the label words {words}"
        kept = self._session.fact(key, what, partial(self._fetch_label_token_ids, words))
        result = [int(i) for i in kept]
        with self._lock:
            self._words.update(zip(result, words))
        return result

    def _fetch_label_token_ids(self, words: list[str]) -> list[int]:
        found = {w: self._session.tokenize(LABEL_WORD_PREFIX + w) for w in dict.fromkeys(words)}
        if all(ids is not None for ids in found.values()):
            prefix = len(LABEL_WORD_PREFIX)
            check_single_tokens(words, lambda text: [str(i) for i in found[text[prefix:]] or []])
            result = [int(found[w][0]) for w in words]  # type: ignore[index]
        else:  # no tokenizer: stable ids that cannot collide across tasks in the cache
            result = [synthetic_token_id(w) for w in words]
        return result

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        return self._session.count_tokens(prompts)

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
        scorer = {
            "extension": score_extension,
            "top_logprobs": partial(score_top_logprobs, top_k=self.top_logprobs),
            "echo": score_echo,
        }[strategy]

        def one(post: Post, prompt: str) -> ProviderAnswer:
            return reading(partial(scorer, post, self.model, labels=labels), strategy)(prompt)

        return self._session.map(one, prompts, "completions", model=self.model)

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


def _check_options(
    base_url: str, model: str, strategy: str, top_logprobs: int, concurrency: int, timeout: float
) -> None:
    check_api_options(base_url, model, concurrency, timeout)
    if strategy not in ("auto", *STRATEGIES):
        raise ConfigurationError(
            f"unknown strategy {strategy!r}; use one of {['auto', *STRATEGIES]}"
        )
    check_count("top_logprobs", top_logprobs)
