"""HTTP provider: label log-probs from an OpenAI-style legacy ``/completions`` API."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import httpx

from .._constants import DEFAULT_TOP_LOGPROBS, LABEL_WORD_PREFIX, MAX_RETRIES
from ..errors import ConfigurationError
from ..scores import ProviderAnswer
from ._answers import reading
from ._batch import bound_tokens
from ._forcing import BiasError, Resolve
from ._probe import MAX_PROBE_REQUESTS, Plan, ProbeResult, cached_probe, choose, run_probe
from ._strategies import (
    STRATEGIES,
    Label,
    Resolver,
    Script,
    echoing,
    forcing,
    score_echo,
    score_extension,
    score_top_logprobs,
)
from .base import check_token_features
from .options import API_KEY_ENV, DEFAULT_TIMEOUT_S, HTTPOptions, check_count
from .ratelimit import RateLimit, RateLimiter
from .remote import RemoteProvider, Tokenizer
from .session import CHARS_PER_TOKEN_ESTIMATE

__all__ = ["API_KEY_ENV", "CHARS_PER_TOKEN_ESTIMATE", "OpenAICompletionsProvider"]

log = logging.getLogger(__name__)
#: Samples scored with top-k before their observed miss rate may switch ``auto`` to echo.
MIN_SAMPLES_TO_ADAPT = 8


class OpenAICompletionsProvider(RemoteProvider):
    """Score label tokens through an OpenAI-compatible legacy completions API.

    Parameters
    ----------
    base_url : str or None
        None reads ``$MAAS_TUNE_BASE_URL``, else ``$OPENAI_BASE_URL`` (as openai-python
        does). API root including the version, e.g. ``"http://127.0.0.1:8000/v1"``; requests go
        to ``{base_url}/completions`` and ``{base_url minus /v1}/extras/tokenize``.
    model : str
        Model name sent with every request.
    api_key : str, optional
        Sent as ``Authorization: Bearer``; defaults to ``$MAAS_TUNE_API_KEY`` or
        ``$OPENAI_API_KEY``. Surrounding whitespace is removed; a key holding a line
        break is refused. Never appears in the fingerprint, repr, logs or errors.
    strategy : {"auto", "extension", "top_logprobs", "echo"}, default "auto"
        How label log-probs are read; see Notes.
    top_logprobs : int, default 5
        Top log-probs asked for by the ``top_logprobs`` strategy (hosted APIs allow 5).
    tokenizer : callable, optional
        ``text -> token ids`` of the served model (no special tokens), e.g. from
        :func:`maas_tune.providers.load_tokenizer`; gives the label words' ids (for
        ``logit_bias``) and exact token counts where the API has no tokenizer endpoint.
    max_concurrency : int or None, default None
        Requests in flight at most (all chunks together). None: 4, or 256 with a
        ``rate_limit`` (the limiter paces requests, so ``rate x latency`` are in flight).
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
        (see :class:`~maas_tune.providers.session.APISession`); share one among
        processes with :func:`maas_tune.ray.shared_rate_limiter`.
    default_headers : Mapping[str, str], optional
        Headers sent with every request (openai-python's ``default_headers``): Azure's
        ``api-key``, OpenRouter's ``HTTP-Referer``, ``OpenAI-Organization``. Values of
        credential-like names are masked in logs; not part of the cache identity.
    default_query : Mapping[str, str], optional
        Query parameters added to every request (openai-python's ``default_query``),
        e.g. Azure's ``{"api-version": "2024-10-21"}``; not part of the cache identity.
    token_features : int or None, default None
        Under the ``extension`` strategy, also return the last-layer states of each
        prompt's last ``token_features`` tokens (what Y-Tuning attends over; still 1
        request per sample). Other strategies cannot: their answers carry none.

    Notes
    -----
    Strategies, with their cost in requests per sample (``t`` label words); each is exact:

    ``extension`` — 1 request; full-vocabulary log-probs and the hidden state, through
        the ``maas_tune`` request extension of ``maas-tune serve``.
    ``top_logprobs`` — 1 request, plus 1 per label word missing from the first
        position's top-k (at most ``1 + t``). A missing word is forced with
        ``logit_bias`` +100 where its token id is known and the API reports log-probs
        before the bias (checked on every forced answer), else read by ``echo``.
    ``echo`` — ``t`` requests: the prompt plus each word is echoed with log-probs and
        the word's token log-probs are summed.
    ``auto`` — probes the API (at most 4 tiny requests, once per cache; charged to the
        client's budget and counted in :attr:`probe_requests`), then uses the cheapest
        exact plan (:attr:`plan`) or refuses before any sample is sent, saying what to
        pass. Between ``top_logprobs`` and ``echo`` it goes by the miss rate it observes:
        when label words are mostly outside the top-k, echo is cheaper. A plan that stops
        working (a forced value reported after the bias) is re-decided, never kept.

    The cache identity (:meth:`fingerprint`) is the full origin (scheme, host, port,
    path), the model asked for and the one the API reports serving, and whether the
    answers carry hidden states (and token states) — not the strategy: every strategy is exact, so answers
    cached by one serve another. An answer's ``prompt_tokens`` sums ``usage.prompt_tokens``
    over its requests (billed).
    """

    def __init__(
        self,
        base_url: str | None,
        model: str,
        *,
        api_key: str | None = None,
        strategy: str = "auto",
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        tokenizer: Tokenizer | None = None,
        max_concurrency: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rate_limit: RateLimit | RateLimiter | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, str] | None = None,
        token_features: int | None = None,
    ) -> None:
        check_token_features(token_features)
        base_url, http = HTTPOptions.for_api(
            base_url, model, timeout, max_retries, rate_limit, max_concurrency,
            default_headers, default_query,
        )  # fmt: skip
        _check_options(strategy, top_logprobs)
        super().__init__(
            base_url,
            model,
            strategy,
            api_key=api_key,
            http=http,
            transport=transport,
            sleep=sleep,
            tokenizer=tokenizer,
        )
        self.top_logprobs = top_logprobs
        self.token_features = token_features
        self._probe: ProbeResult | None = None
        self._misses: dict[tuple[str, ...], list[int]] = {}  # words -> [samples, missing]
        self._stats_lock = threading.Lock()

    max_probe_requests = MAX_PROBE_REQUESTS
    route = "completions"

    # -- strategy -----------------------------------------------------------------
    def _load_probe(self) -> ProbeResult:
        """What the capability probe found (sent at most once per cache: kept in the
        client's cache when one is attached)."""
        with self._lock:
            if self._probe is None:
                what = f"the capability probe of {self.base_url}"
                kept = self._session.fact(self._probe_key(), what, self._run_probe)
                self._probe = ProbeResult(**kept)
            return self._probe

    def _probe_key(self) -> str:
        return "|".join(("probe2", *self._identity(), f"top_logprobs={self.top_logprobs}"))

    def _run_probe(self) -> dict[str, Any]:
        post = partial(self._session.post, self.route, batch=self._probe_batch())
        probe = partial(run_probe, post, self.model, self.top_logprobs, self._label_for)
        result, fresh = cached_probe(("completions", self._probe_key()), probe)
        self.probe_requests += result.requests if fresh else 0
        return dataclasses.asdict(result)

    def _label_for(self, word: str) -> Label | None:
        ids = self._token_ids(LABEL_WORD_PREFIX + word)
        return Label(ids[0], word) if ids and len(ids) == 1 else None

    def _choose_plan(self) -> Plan:
        if self._requested != "auto":
            missing = "force" if self._requested == "top_logprobs" else None
            return Plan(self._requested, missing, "requested")
        return choose(self._load_probe(), self._ids_known(), self.model)

    @property
    def returns_hidden(self) -> bool:  # type: ignore[override]
        """Whether answers carry hidden states (only the extension strategy)."""
        return self.strategy == "extension"

    # -- contract -----------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        reading = "exact"
        if self.strategy == "extension":
            tokens = f"+tokens@last-{self.token_features}" if self.token_features else ""
            reading = "exact+hidden" + tokens
        return self._identity_fingerprint("openai-completions", reading)

    def label_token_ids(self, words: Sequence[str]) -> list[int]:
        return self._label_token_ids(words, LABEL_WORD_PREFIX)

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        return self._count(prompts)

    def max_prompt_tokens(self, prompts: Sequence[str], labels: Sequence[str]) -> int:
        # An echo request holds the prompt and a label word: bound the word too.
        word = max((bound_tokens(LABEL_WORD_PREFIX + w) for w in labels), default=0)
        per_prompt = self.max_queries_per_prompt(len(labels))
        return sum(n * per_prompt + word * (per_prompt - 1) for n in self._count(prompts))

    def max_queries_per_prompt(self, n_labels: int) -> int:
        strategy = self.strategy
        if strategy == "top_logprobs":
            return 1 + n_labels
        if strategy == "echo":
            return max(1, n_labels)
        return 1

    def _scoring(
        self, prompts: list[str], words: Sequence[str]
    ) -> tuple[Callable[[str], Script[ProviderAnswer]], Callable[[list[ProviderAnswer]], None]]:
        plan = self.select_strategy()
        labels = self._labels(words, plan.strategy)
        strategy = self._adapted(plan, labels)
        scorers: dict[str, Callable[..., Script[ProviderAnswer]]] = {
            "extension": partial(score_extension, token_features=self.token_features or 0),
            "top_logprobs": partial(
                score_top_logprobs, top_k=self.top_logprobs, resolver=self._resolver(plan)
            ),
            "echo": score_echo,
        }
        scorer = scorers[strategy]

        def one(prompt: str) -> Script[ProviderAnswer]:
            return (
                yield from reading(partial(scorer, self.model, labels=labels), strategy)(prompt)
            )

        def after(answers: list[ProviderAnswer]) -> None:
            if strategy == "top_logprobs":
                self._observe(labels, answers)

        return one, after

    # -- internals ----------------------------------------------------------------
    def _resolver(self, plan: Plan) -> Resolver:
        """How words missing from the top-k are read; forcing falls back to echo (and
        is given up) when the API turns out to report biased values."""
        if plan.missing == "echo":
            return echoing
        caps = self._probe

        def make(base: dict[str, Any], top: Any) -> Resolve:
            force = forcing(base, top)
            if caps is None or not caps.echo:
                return force
            echo = echoing(base, top)

            def resolve(label: Label) -> Script[tuple[float, int, int]]:
                try:
                    return (yield from force(label))
                except BiasError as exc:
                    self._give_up_forcing(exc)
                    value, tokens, sent = yield from echo(label)
                    return value, tokens + exc.prompt_tokens, sent + 1

            return resolve

        return make

    def _give_up_forcing(self, exc: BiasError) -> None:
        with self._lock:
            if self._probe is None or self._probe.bias == exc.problem:
                return
            self._probe = dataclasses.replace(self._probe, bias=exc.problem)
            self._session.remember(self._probe_key(), dataclasses.asdict(self._probe))
        log.warning(
            "%s: forcing stopped being exact (%s); missing words are echoed from now on",
            self.base_url,
            exc,
        )

    def _adapted(self, plan: Plan, labels: list[Label]) -> str:
        """``echo`` instead of ``top_logprobs`` once the observed misses make it cheaper."""
        caps = self._probe
        if (
            plan.strategy != "top_logprobs"
            or self._requested != "auto"
            or not caps
            or not caps.echo
        ):
            return plan.strategy
        words = tuple(dict.fromkeys(label.text for label in labels))
        with self._stats_lock:
            seen, missing = self._misses.get(words) or self._recall_misses(words)
        if seen >= MIN_SAMPLES_TO_ADAPT and 1 + missing / seen > len(words):
            return "echo"
        return "top_logprobs"

    def _observe(self, labels: list[Label], answers: list[ProviderAnswer]) -> None:
        words = tuple(dict.fromkeys(label.text for label in labels))
        with self._stats_lock:
            seen, missing = self._misses.get(words) or self._recall_misses(words)
            stats = [seen + len(answers), missing + sum(a.queries - 1 for a in answers)]
            self._misses[words] = stats
        self._session.remember(self._misses_key(words), stats)

    def _misses_key(self, words: tuple[str, ...]) -> str:
        return "|".join(("misses", *self._identity(), repr(words)))

    def _recall_misses(self, words: tuple[str, ...]) -> list[int]:
        kept = self._session.recall(self._misses_key(words))
        if isinstance(kept, list) and len(kept) == 2 and all(isinstance(v, int) for v in kept):
            return list(kept)
        return [0, 0]

    def _labels(self, words: Sequence[str], strategy: str) -> list[Label]:
        """The label words with their token ids (learnt once, checked single tokens)."""
        ids = self.label_token_ids(words)
        if strategy == "extension" and any(i < 0 for i in ids):
            raise ConfigurationError(
                f"the label words {list(words)} have no real token ids (no tokenizer endpoint "
                "was reachable); the extension strategy needs the ids from the server's "
                "/extras/tokenize"
            )
        return [Label(i, w) for i, w in zip(ids, words)]


def _check_options(strategy: str, top_logprobs: int) -> None:
    if strategy not in ("auto", *STRATEGIES):
        raise ConfigurationError(
            f"unknown strategy {strategy!r}; use one of {['auto', *STRATEGIES]}"
        )
    check_count("top_logprobs", top_logprobs)
