"""HTTP provider: label log-probs from an OpenAI-style ``/chat/completions`` API with logprobs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import httpx

from .._constants import DEFAULT_TOP_LOGPROBS, MAX_RETRIES
from ..errors import ConfigurationError
from ..scores import ProviderAnswer
from ._answers import reading
from ._chat_probe import MAX_CHAT_PROBE_REQUESTS, ChatProbeResult, choose_chat, run_chat_probe
from ._chat_strategies import CHAT_ROUTE, CHAT_STRATEGIES, chat_request, score_chat
from ._forcing import Label, LabelReading
from ._probe import Plan, cached_probe
from ._script import Script
from .chat_format import ChatFormat
from .options import DEFAULT_TIMEOUT_S, HTTPOptions, check_count
from .ratelimit import RateLimit, RateLimiter
from .remote import RemoteProvider, Tokenizer

__all__ = ["CHAT_LABEL_PREFIX", "OpenAIChatProvider", "Tokenizer"]

log = logging.getLogger(__name__)

#: Default text before a label word in the answer: chat answers start without a space.
CHAT_LABEL_PREFIX = ""
#: Tokens a chat template adds per message, and to prime the reply (OpenAI's accounting).
TOKENS_PER_MESSAGE, REPLY_PRIMING_TOKENS = 4, 3


class OpenAIChatProvider(RemoteProvider):
    """Score label words as the first token of a chat model's answer, via its top log-probs.

    Parameters
    ----------
    base_url : str or None
        None reads ``$MAAS_TUNE_BASE_URL``, else ``$OPENAI_BASE_URL`` (as openai-python
        does). API root including the version, e.g. ``"https://api.openai.com/v1"``; requests go
        to ``{base_url}/chat/completions``.
    model : str
        Model name sent with every request.
    api_key : str, optional
        Sent as ``Authorization: Bearer``; defaults to ``$MAAS_TUNE_API_KEY`` or
        ``$OPENAI_API_KEY``. Never appears in the fingerprint, repr, logs or errors.
    strategy : {"auto", "force", "top_logprobs"}, default "auto"
        How label words missing from the top-k are scored; see Notes.
    top_logprobs : int, default 5
        Alternatives asked for at the first answer token (hosted APIs allow 5 to 20).
    chat_format : ChatFormat, optional
        System message and instruction around the task's rendered prompt.
    label_prefix : str, default ""
        Text before each label word in the answer, as the API reports the token. Chat
        answers start without a space, so the default suits OpenAI, Gemma and Llama 3
        templates; models whose answers start with a space token use ``" "``.
    tokenizer : callable, optional
        ``text -> token ids`` of the served model (no special tokens), used for the
        ``logit_bias`` of the ``force`` strategy; by default the server's
        ``/extras/tokenize`` (maas-tune serve, llama.cpp) is asked.
    max_concurrency, timeout, max_retries, transport, sleep, rate_limit
    default_headers, default_query
        As for :class:`~maas_tune.providers.openai.OpenAICompletionsProvider` (same
        retry policy, error mapping and key redaction).

    Notes
    -----
    Every request asks for one greedy answer token (``max_tokens=1``, ``temperature=0``,
    ``logprobs=true``, ``top_logprobs=k``); label words are matched by their text among
    the first token's top-k. Strategies, with their cost in requests per sample:

    ``force`` — 1 request, plus 1 per label word missing from the top-k; exact. The
        missing word is generated with ``logit_bias`` +100 on its token and read with
        the log-prob the API reports, which is the model's own where logprobs are
        computed before the bias (OpenAI since 2024, maas-tune serve, llama.cpp);
        anything else is detected and refused. Needs the label words' token ids.
    ``top_logprobs`` — 1 request; a missing word gets the top-k bound
        ``min(min(top-k), log(1 - sum(p in top-k)))``, the largest log-prob it could
        have — not the model's value — and is counted in :attr:`floored_words` and in
        each answer's ``floored``. Only on request: it is not exact.
    ``auto`` — ``force`` where it is exact: the label words' token ids are known (the
        server's tokenizer endpoint, or ``tokenizer=``) and a probe (1-2 tiny requests,
        once per cache, charged to the client's budget) finds ``logit_bias`` leaves the
        reported log-probs unchanged. Otherwise it refuses before any sample is sent,
        saying what to pass (``tokenizer=``, or ``strategy="top_logprobs"``).

    No hidden states: decoders such as DecT run in scores-only mode.
    """

    returns_hidden = False

    def __init__(
        self,
        base_url: str | None,
        model: str,
        *,
        api_key: str | None = None,
        strategy: str = "auto",
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        chat_format: ChatFormat | None = None,
        label_prefix: str = CHAT_LABEL_PREFIX,
        tokenizer: Tokenizer | None = None,
        max_concurrency: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rate_limit: RateLimit | RateLimiter | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, str] | None = None,
    ) -> None:
        base_url, http = HTTPOptions.for_api(
            base_url, model, timeout, max_retries, rate_limit, max_concurrency,
            default_headers, default_query,
        )  # fmt: skip
        check_count("top_logprobs", top_logprobs)
        _check_chat_options(strategy, chat_format, label_prefix, tokenizer)
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
        self.chat_format = chat_format or ChatFormat()
        self.label_prefix = label_prefix
        #: Label words recovered with a forced request / given the top-k bound (this process).
        self.forced_words = self.floored_words = 0
        self._probe: ChatProbeResult | None = None

    max_probe_requests = MAX_CHAT_PROBE_REQUESTS
    route = CHAT_ROUTE

    # -- strategy -----------------------------------------------------------------
    def _load_probe(self) -> ChatProbeResult:
        """What the probe found (sent at most once per cache: kept in the client's cache)."""
        with self._lock:
            if self._probe is None:
                what = f"the chat capability probe of {self.base_url}"
                kept = self._session.fact(self._probe_key(), what, self._run_probe)
                self._probe = ChatProbeResult(**kept)
            return self._probe

    def _choose_plan(self) -> Plan:
        # Under "auto", refuses when label words outside the top-k cannot be read exactly.
        if self._requested != "auto":
            return Plan(
                self._requested, "force" if self._requested == "force" else None, "requested"
            )
        ids_known = self._ids_known()
        return choose_chat(self._load_probe() if ids_known else None, ids_known, self.model)

    def setup_requests(self) -> int:
        return super().setup_requests() if self._ids_known() else 0

    # -- contract -----------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        strategy = self.strategy
        reading_ = "exact" if strategy == "force" else f"top-{self.top_logprobs} bound"
        return self._identity_fingerprint(
            "openai-chat",
            reading_,
            format=self.chat_format.fingerprint(),
            label_prefix=self.label_prefix,
        )

    def label_token_ids(self, words: Sequence[str]) -> list[int]:
        result = self._label_token_ids(words, self.label_prefix)
        if self._requested == "force" and any(i < 0 for i in result):
            raise ConfigurationError(
                f"strategy='force' needs each label word's token id for logit_bias, but no "
                f"tokenizer is known for model {self.model!r} ({self.base_url} has no "
                "/extras/tokenize): pass --tokenizer (tiktoken:MODEL, a Hugging Face tokenizer "
                "directory, or 'embedded'; Python: tokenizer=), or use strategy='top_logprobs'"
            )
        return result

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Each prompt's tokens as sent: its messages, listing the label words that
        :meth:`label_token_ids` was last asked for."""
        return self._count_messages(prompts, self._choices)

    def max_queries_per_prompt(self, n_labels: int) -> int:
        return 1 + n_labels if self.strategy == "force" else 1

    def max_prompt_tokens(self, prompts: Sequence[str], labels: Sequence[str]) -> int:
        # The messages list the words given, not those last looked up (another task's).
        per_prompt = self.max_queries_per_prompt(len(labels))
        return sum(self._count_messages(prompts, labels)) * per_prompt

    def _count_messages(self, prompts: Sequence[str], labels: Sequence[str]) -> list[int]:
        texts = [
            "\n\n".join(m["content"] for m in self.chat_format.messages(p, labels)) for p in prompts
        ]
        messages = 2 if self.chat_format.system else 1
        return [
            c + messages * TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS for c in self._count(texts)
        ]

    def _scoring(
        self, prompts: list[str], words: Sequence[str]
    ) -> tuple[Callable[[str], Script[ProviderAnswer]], Callable[[list[ProviderAnswer]], None]]:
        strategy = self.select_strategy().strategy
        labels = self._labels(words)

        def one(prompt: str) -> Script[ProviderAnswer]:
            scorer = partial(self._score_one, labels, strategy == "force")
            answer, got = yield from reading(scorer, strategy, route="/chat/completions")(prompt)
            with self._lock:
                self.forced_words += got.forced
                self.floored_words += got.floored
            return answer

        return one, lambda answers: None

    # -- internals ----------------------------------------------------------------
    def _identity(self) -> tuple[str, ...]:
        """What a fact about this API depends on (never a credential)."""
        return (
            *super()._identity(),
            f"top_logprobs={self.top_logprobs}",
            f"prefix={self.label_prefix!r}",
        )

    def _probe_key(self) -> str:
        return "|".join(("chat-probe2", *self._identity()))

    def _run_probe(self) -> dict[str, Any]:
        post = partial(self._session.post, CHAT_ROUTE, batch=self._probe_batch())
        probe = partial(run_chat_probe, post, self.model, self.top_logprobs, self._label_for)
        result, fresh = cached_probe(("chat", self._probe_key()), probe)
        self.probe_requests += result.requests if fresh else 0
        return asdict(result)

    def _label_for(self, word: str) -> Label | None:
        ids = self._token_ids(self.label_prefix + word)
        return Label(ids[0], word, self.label_prefix) if ids and len(ids) == 1 else None

    def _labels(self, words: Sequence[str]) -> list[Label]:
        """The label words with their token ids (learnt once; ``force`` needs real ones)."""
        ids = self.label_token_ids(words)
        return [Label(i, w, self.label_prefix) for i, w in zip(ids, words)]

    def _score_one(
        self, labels: list[Label], force: bool, prompt: str
    ) -> Script[tuple[ProviderAnswer, LabelReading]]:
        messages = self.chat_format.messages(prompt, [label.word for label in labels])
        request = chat_request(self.model, messages, self.top_logprobs)
        return (yield from score_chat(request, labels, force=force))


def _check_chat_options(
    strategy: str, chat_format: object, label_prefix: object, tokenizer: object
) -> None:
    if strategy not in ("auto", *CHAT_STRATEGIES):
        raise ConfigurationError(
            f"unknown strategy {strategy!r} for the chat provider; use one of "
            f"{['auto', *CHAT_STRATEGIES]}"
        )
    if chat_format is not None and not isinstance(chat_format, ChatFormat):
        raise ConfigurationError(f"chat_format must be a ChatFormat, got {chat_format!r}")
    if not isinstance(label_prefix, str):
        raise ConfigurationError(f"label_prefix must be a string, got {label_prefix!r}")
    if tokenizer is not None and not callable(tokenizer):
        raise ConfigurationError(
            f"tokenizer must map a text to its token ids, e.g. tiktoken's encode; got {tokenizer!r}"
        )
