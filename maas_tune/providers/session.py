"""One OpenAI-style API as the HTTP providers use it: auth, pooling, retries, tokenizer, facts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from .._constants import MAX_RETRY_AFTER_S
from ..errors import (
    ConfigurationError,
    OfflineCacheMiss,
    ProviderConnectionError,
    ProviderError,
    ProviderResponseError,
    ProviderStatusError,
)
from ._aio import LoopThread, ThreadedTransport, arequest_json
from ._answers import check_model, usage_tokens
from ._batch import Batch, Cancelled, Events, bound_tokens
from ._retry import RetryPolicy
from ._script import Post, Script, adrive
from ._wire import DirectSender, WireTransport, wire_applies
from .base import FactStore
from .extras import BASE_URL_ENV, resolve_base_url
from .http import TOTAL_TIMEOUT_FACTOR, public_url
from .ratelimit import (
    DEFAULT_PENALTY_S,
    RateLimiter,
    as_limiter,
    book,
    estimate_request_tokens,
)
from .secrets import check_api_key

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .spec import HTTPOptions

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "CHARS_PER_TOKEN_ESTIMATE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT_S",
    "RATE_LIMITED_CONCURRENCY",
    "APISession",
    "Post",
    "check_api_options",
    "check_count",
    "concurrency_for",
    "resolve_base_url",
]

#: Environment variables read for the API key, first match wins.
API_KEY_ENV = ("MAAS_TUNE_API_KEY", "OPENAI_API_KEY")
#: Default per-request timeout in seconds (connect, read, write and pool alike).
DEFAULT_TIMEOUT_S = 30.0
#: Default number of requests in flight at once, without a rate limit.
DEFAULT_CONCURRENCY = 4
#: Default cap on the requests in flight with a rate limit: the limiter paces them, so
#: ``rate x latency`` are in flight (400/s at 200 ms: 80), up to this many.
RATE_LIMITED_CONCURRENCY = 256
#: Characters per token assumed when no tokenizer is reachable (an upper-ish estimate).
CHARS_PER_TOKEN_ESTIMATE = 3
#: Connections per httpx pool (a session holds ceil(max_concurrency / this) pools).
POOL_CONNECTIONS = 4
# Statuses meaning "no tokenizer endpoint here".
_NO_TOKENIZER = frozenset({400, 404, 405, 422, 501})


T = TypeVar("T")
R = TypeVar("R")


# An API root that ends in a version (/v1, /v1beta, /openai/v1): the routes live below it.
_VERSIONED = re.compile(r"/v\d+[a-z0-9]*$")
#: Facts holding answered request bodies of samples that failed, by request key.
_ANSWERED_FACT = "answered-request|"


def _request_key(path: str, payload: dict[str, Any]) -> str:
    """A content hash of one request (route and body)."""
    text = json.dumps([path, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _payload_bound(payload: dict[str, Any]) -> int:
    """A bound on the prompt tokens of a request body (its texts' UTF-8 bytes + specials)."""
    texts = [payload.get("prompt"), payload.get("input")]
    texts += [m.get("content") for m in payload.get("messages") or () if isinstance(m, dict)]
    return sum(bound_tokens(t) for t in texts if isinstance(t, str))


def check_count(name: str, value: object) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")


def concurrency_for(max_concurrency: int | None, rate_limit: object) -> int:
    """The requests-in-flight cap: ``max_concurrency`` when given; else
    :data:`RATE_LIMITED_CONCURRENCY` under a rate limit (the limiter sets the pace, the
    latency the number in flight), :data:`DEFAULT_CONCURRENCY` without one."""
    if max_concurrency is not None:
        return max_concurrency
    unlimited = rate_limit is None or getattr(rate_limit, "unlimited", False) is True
    return DEFAULT_CONCURRENCY if unlimited else RATE_LIMITED_CONCURRENCY


def check_api_options(base_url: str, model: str, max_concurrency: int, timeout: float) -> None:
    """Check the options every HTTP provider takes; each error says what to pass instead."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"base_url must be an http:// or https:// URL, got {base_url!r}; "
            "e.g. 'http://127.0.0.1:8000/v1'"
        )
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
    check_count("max_concurrency", max_concurrency)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")


class APISession:
    """An authenticated, retrying JSON client of one API root, its tokenizer, and facts about it.

    Facts (a probe result, label token ids) are what a provider learns from the server
    before scoring; kept in a :class:`~maas_tune.providers.base.FactStore` (the client's
    cache) once one is attached, they cost no request in later runs.

    Parameters
    ----------
    base_url : str
        API root including the version, e.g. ``"http://127.0.0.1:8000/v1"``; the
        tokenizer is looked for at ``{base_url minus /v1}/extras/tokenize``.
    api_key : str or None
        Sent as ``Authorization: Bearer``; None reads :data:`API_KEY_ENV`.
    http : HTTPOptions
        Timeout (per request, seconds), retries (see
        :class:`~maas_tune.providers._retry.RetryPolicy`), ``max_concurrency`` (pooled
        connections and requests in flight; resolved, not None), headers and query
        (checked), and the client-side rate limit: each scoring request (each retry too)
        first waits for its turn, counting 1 request and the tokens
        :func:`~maas_tune.providers.ratelimit.estimate_request_tokens` estimates from its body
        (prompt characters / 3 + 1, plus ``max_tokens``). A :class:`RateLimit` gets a
        limiter of this process; pass a shared one (:func:`maas_tune.ray.shared_rate_limiter`)
        to share the limit among processes. A 429 makes the limiter pause all its
        users for the Retry-After delay (1 s when the server gives none).
        Tokenizer requests are not limited. None: no limit.
    transport : httpx.BaseTransport, optional
        Replaces the network (tests inject ``httpx.MockTransport``).
    sleep : callable
        Called with each retry delay in seconds.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        http: HTTPOptions,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        max_concurrency = int(concurrency_for(http.max_concurrency, http.rate_limit))
        timeout, rate_limit = http.timeout, http.rate_limit
        root = base_url.rstrip("/")  # may carry credentials (user:pass@): never shown
        self.max_concurrency = max_concurrency
        self.rate_limiter = as_limiter(rate_limit)
        self._retry = RetryPolicy(max_retries=http.max_retries, sleep=sleep)
        # The default sleep is replaced by a wait that Ctrl-C (cancellation) cuts short.
        self._injected_sleep = None if sleep is time.sleep else sleep
        self._shown_url = public_url(base_url)
        self._key_source: str | None = "api_key=" if api_key is not None else None
        if api_key is None:
            self._key_source = next((f"${n}" for n in API_KEY_ENV if os.environ.get(n)), None)
            api_key = os.environ[self._key_source[1:]] if self._key_source else None
        api_key = check_api_key(api_key, self._key_source or "api_key=")
        if api_key is None:
            self._key_source = None
        self._tokenize_url = f"{root.removesuffix('/v1')}/extras/tokenize"
        self._tokenizer: bool | None = None  # None: not tried yet
        self._special_prefix: list[int] | None = None  # what tokenize adds to any text (BOS)
        self._facts: FactStore | None = None
        self._offline = False
        self._memo: dict[str, dict[str, Any]] = {}  # answered bodies of failed batches
        self._memo_lock = threading.Lock()
        headers = httpx.Headers({"Authorization": f"Bearer {api_key}"} if api_key else {})
        for name, value in http.headers:  # openai-python: these win
            headers[name] = value
        self._headers = headers
        self._params = http.query
        self._root, self._timeout = root + "/", timeout
        self._transport = transport
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._runner = LoopThread()  # runs the async core for blocking callers
        self._ssl: Any = None  # one SSL context for every pool
        self._paused_until = 0.0  # after a 429: nothing of this process is sent before
        self.closed = False

    # -- the async core -------------------------------------------------------------
    def _state(self) -> _LoopState:
        """The connection pool and in-flight gate of the running event loop."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            transport: Any = self._transport
            sync = transport is not None and not isinstance(transport, httpx.AsyncBaseTransport)
            if sync or isinstance(transport, httpx.MockTransport):  # a sync handler: off-loop
                transport = ThreadedTransport(transport)
            if self._ssl is None:  # made once: it costs tens of milliseconds
                self._ssl = httpx.create_ssl_context()
            if transport is None and wire_applies():  # the lean transport: one pool
                size = self.max_concurrency
                transport = WireTransport(size, self._ssl, deadline_factor=TOTAL_TIMEOUT_FACTOR)
            else:  # httpcore's pool costs O(connections x waiting requests) per event:
                # shard it into pools of POOL_CONNECTIONS, each request to the least busy
                size = min(self.max_concurrency, POOL_CONNECTIONS)
            options = {
                "base_url": self._root,
                "headers": self._headers,
                "params": self._params,
                "verify": self._ssl,
                "timeout": httpx.Timeout(self._timeout),
                "transport": transport,
                "limits": httpx.Limits(max_connections=size, max_keepalive_connections=size),
            }
            state = _LoopState(options, size, [], [], asyncio.Semaphore(self.max_concurrency))
            self._states[loop] = state
        return state

    async def apost(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        limited: bool = True,
        batch: Batch | None = None,
        booked: float | None = None,
        recall: bool = True,
    ) -> dict[str, Any]:
        """POST ``payload`` to ``path`` (relative to the API root, or absolute), with retries.

        Each attempt waits for the rate limiter first unless ``limited`` is False (the
        first one until ``booked``, a :func:`time.monotonic` time, when its turn was
        booked already), and is counted in ``batch`` (answered, unknown outcome,
        retried, rate-limited); a cancelled batch sends and retries nothing more.
        ``recall=False``: the kept answers were loaded already (:meth:`_load_answered`).
        """
        batch = batch if batch is not None else Batch()
        key = _request_key(path, payload)
        kept = self._answered(key, recall)
        if kept is not None:  # paid for by a sample that failed later: never paid twice
            return kept
        limiter = self.rate_limiter if limited else None
        tokens, bound = estimate_request_tokens(payload), _payload_bound(payload)
        turn = [booked]

        async def attempt() -> dict[str, Any]:
            batch.check()
            await self._turn(limiter, tokens, turn.pop() if turn else None)
            batch.check()
            with batch.sending(bound):
                body = await self._attempt(path, payload, batch, limiter, bound)
            batch.keep(key, body)
            return body

        async def sleep(seconds: float) -> None:
            batch.record("retry")
            if self._injected_sleep is not None:
                self._injected_sleep(seconds)
            elif seconds > 0 and math.isfinite(seconds):
                await asyncio.sleep(seconds)
            batch.check()

        return await self._retry.acall(attempt, sleep=sleep, allowed=batch.can_send)

    async def _turn(self, limiter: RateLimiter | None, tokens: int, booked: float | None) -> None:
        """Wait for this attempt's turn: its booking (or a fresh one), and any 429 pause."""
        if limiter is not None and booked is None:
            waits = book(limiter, [(1, tokens)])
            if waits is None:  # a limiter that can only block: off the loop
                await asyncio.to_thread(limiter.acquire, 1, tokens)
                booked = time.monotonic()
            else:
                booked = time.monotonic() + waits[0]
        start = max(booked or 0.0, self._paused_until)
        while (wait := start - time.monotonic()) > 0:
            await asyncio.sleep(wait)
            start = max(start, self._paused_until)

    async def _attempt(
        self,
        path: str,
        payload: dict[str, Any],
        batch: Batch,
        limiter: RateLimiter | None,
        bound: int,
    ) -> dict[str, Any]:
        state = self._state()
        pool = state.pick()
        try:
            body = await arequest_json(state.senders[pool], "POST", path, json=payload)
        except ProviderStatusError as exc:
            if exc.status == 429:
                batch.record("rate_limited")
                if limiter is not None:  # the server's limit is tighter than ours: all pause
                    wait = exc.retry_after if exc.retry_after is not None else DEFAULT_PENALTY_S
                    wait = min(wait, MAX_RETRY_AFTER_S)
                    limiter.penalize(wait)
                    self._paused_until = max(self._paused_until, time.monotonic() + wait)
            self._explain(exc)
            raise
        except ProviderError as exc:
            if exc.request_sent:  # a 2xx with an unreadable body, or sent and lost: billed
                answered = isinstance(exc, ProviderResponseError)
                batch.record("answered" if answered else "unknown", bound)
            raise
        finally:
            state.load[pool] -= 1
        try:
            tokens = usage_tokens(body)
        except ProviderResponseError as exc:
            batch.record("answered", bound)  # answered (billed), usage unreadable: the bound
            exc.request_sent = True
            raise
        batch.record("answered", tokens)
        return body

    def _explain(self, exc: ProviderStatusError) -> None:
        """Add what to do to a 404 (no version in the URL) or a 401 (no key sent)."""
        if exc.status == 404 and not _VERSIONED.search(self._shown_url):
            hint = (
                f"the base URL {self._shown_url} does not end in a version such as "
                f"/v1: OpenAI-compatible APIs live under {self._shown_url}/v1"
            )
            exc.args = (f"{exc.args[0]} ({hint})",)
        if exc.status == 401 and self._key_source is None:
            hint = f"no API key was sent: set {' or '.join(API_KEY_ENV)}, or pass api_key="
            exc.args = (f"{exc.args[0]} ({hint})",)

    async def amap(
        self,
        one: Callable[[T], Script[R]],
        items: Sequence[T],
        path: str,
        *,
        model: str,
        events: Events | None = None,
        max_requests: int | None = None,
        batch: Batch | None = None,
        results: dict[int, R] | None = None,
    ) -> list[R]:
        """``one(item)`` (a script of requests) for each item, up to ``max_concurrency``
        requests in flight on this event loop (all chunks together), in order.

        Each request goes to ``path``; a reply that names a model other than ``model``
        is refused (:func:`~maas_tune.providers._answers.check_model`). The first
        request of every item is booked with the rate limiter in one call. The first
        failure stops items from starting; items started finish (they were paid for).
        An exception leaving this method (cancellation too: the requests in flight are
        then counted as spent) carries ``outcome``
        (:class:`~maas_tune.providers._batch.BatchOutcome`). ``events``, ``max_requests``
        and ``batch`` as in :meth:`map`; ``results`` collects the items answered.
        """
        if not items:
            return []
        batch = batch if batch is not None else Batch(events, max_requests)
        results = results if results is not None else {}
        try:
            await _run_scripts(self, one, items, path, model, batch, results)
        except BaseException as exc:
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                batch.cancel()  # in flight now: counted as spent, nothing more is sent
            exc.outcome = batch.outcome(results)  # type: ignore[attr-defined]
            self._keep_answered(batch)  # their samples failed: keep what was paid for
            if isinstance(exc, ProviderError):
                exc.request_sent = exc.request_sent or batch.answered > 0
            raise
        return [results[i] for i in range(len(items))]

    async def aclose(self) -> None:
        """Close the running event loop's connection pools (the next request opens new ones)."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        for client in state.clients if state is not None else ():
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- the blocking API: the async core on a private event loop --------------------
    def post(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        limited: bool = True,
        batch: Batch | None = None,
    ) -> dict[str, Any]:
        """:meth:`apost`, blocking (the probe and the tokenizer use it)."""
        batch = batch if batch is not None else Batch()
        return self._runner.run(
            self.apost(path, payload, limited=limited, batch=batch), batch.cancel
        )

    def map(
        self,
        one: Callable[[T], Script[R]],
        items: Sequence[T],
        path: str,
        *,
        model: str,
        events: Events | None = None,
        max_requests: int | None = None,
        batch: Batch | None = None,
    ) -> list[R]:
        """:meth:`amap`, blocking; a KeyboardInterrupt while waiting cancels the batch (the
        requests in flight count as spent) and carries ``outcome`` too."""
        if not items:
            return []
        batch = batch if batch is not None else Batch(events, max_requests)
        results: dict[int, R] = {}
        try:
            return self._runner.run(
                self.amap(one, items, path, model=model, batch=batch, results=results), batch.cancel
            )
        except BaseException as exc:
            if getattr(exc, "outcome", None) is None:  # interrupted here, not in the loop
                exc.outcome = batch.outcome(results)  # type: ignore[attr-defined]
                self._keep_answered(batch)
            raise

    def attach_facts(self, facts: FactStore, *, offline: bool = False) -> None:
        """Keep facts in ``facts``; with ``offline=True`` never send a request to learn one."""
        self._facts, self._offline = facts, offline

    def fact(self, key: str, what: str, learn: Callable[[], Any]) -> Any:
        """The JSON fact kept under ``key``, else ``learn()`` it (sending requests) and keep it.

        Raises
        ------
        OfflineCacheMiss
            In offline mode when the fact is not kept; ``what`` names it in the message.
        """
        kept = self._facts.recall(key) if self._facts is not None else None
        if kept is not None:
            return kept
        self.require_online(what)
        value = learn()
        if self._facts is not None:
            self._facts.remember(key, value)
        return value

    def _answered(self, key: str, recall: bool = True) -> dict[str, Any] | None:
        """An answered request body kept from a batch that failed (this process, or the
        fact store: an earlier run's)."""
        with self._memo_lock:
            body = self._memo.get(key)
        if body is None and recall:
            body = self.recall(_ANSWERED_FACT + key)
        return body if isinstance(body, dict) else None

    def _load_answered(self) -> bool:
        """Load every kept answered body at once (one query per chunk, not per request);
        False where the fact store cannot list them (then each request asks)."""
        many = getattr(self._facts, "recall_prefixed", None)
        if self._facts is None:
            return True
        if not callable(many):
            return False
        found = {
            k[len(_ANSWERED_FACT) :]: v
            for k, v in many(_ANSWERED_FACT).items()
            if isinstance(v, dict)
        }
        with self._memo_lock:
            self._memo.update(found)
        return True

    def _keep_answered(self, batch: Batch) -> None:
        """Keep the answered bodies of a failed batch, so a rerun sends none of them again."""
        bodies = batch.kept()
        with self._memo_lock:
            self._memo.update(bodies)
        if not bodies or self._facts is None:
            return
        facts = {_ANSWERED_FACT + key: body for key, body in bodies.items()}
        many = getattr(self._facts, "remember_many", None)
        try:  # one transaction: a cancellation must not wait for one commit per body
            if callable(many):
                many(facts)
            else:
                for key, body in facts.items():
                    self._facts.remember(key, body)
        except Exception as exc:  # noqa: BLE001 - the in-process memo still holds them
            log.warning("could not keep %d answered requests for a rerun: %s", len(facts), exc)

    def recall(self, key: str) -> Any | None:
        """The fact kept under ``key``, or None (no request)."""
        return self._facts.recall(key) if self._facts is not None else None

    def remember(self, key: str, value: Any) -> None:
        """Keep (or replace) the fact under ``key``, when a fact store is attached."""
        if self._facts is not None:
            self._facts.remember(key, value)

    def require_online(self, what: str) -> None:
        """Raise :class:`OfflineCacheMiss` naming ``what`` when requests are not allowed."""
        if self._offline:
            raise OfflineCacheMiss(what=what)

    def tokenize(self, text: str) -> list[int] | None:
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

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text plus BOS through the server's tokenizer; without one, a
        bound no tokenizer can exceed (:func:`~maas_tune.providers._batch.bound_tokens`:
        UTF-8 bytes plus special tokens), so a prompt-token cap is never passed."""
        if texts and self.tokenize(texts[0]) is not None:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                # +1: the tokenizer endpoint omits the BOS token that requests add.
                return [len(ids or []) + 1 for ids in pool.map(self.tokenize, texts)]
        return [bound_tokens(t) for t in texts]

    @property
    def has_tokenizer(self) -> bool:
        """Whether the server's tokenizer endpoint answers (asks it once)."""
        if self._tokenizer is None:
            self.tokenize("")
        return bool(self._tokenizer)

    def close(self) -> None:
        """Close the pooled connections (those of the private loop; others with their loop)."""
        self.closed = True
        loop = self._runner.loop
        state = self._states.get(loop) if loop is not None else None
        if state is not None:
            for client in state.clients:
                with contextlib.suppress(Exception):
                    self._runner.run(client.aclose())
        self._runner.stop()

    def _tokenize_raw(self, text: str) -> list[int] | None:
        if self._tokenizer is False:
            return None
        try:
            body = self.post(self._tokenize_url, {"input": text}, limited=False)
        except ProviderStatusError as exc:
            if exc.status not in _NO_TOKENIZER:
                raise
            body = {}
        except ProviderConnectionError as exc:  # name the URL the user gave, not ours
            shown = f"POST {public_url(self._tokenize_url)}"
            raise type(exc)(str(exc).replace(shown, f"the API at {self._shown_url}")) from exc
        except ProviderResponseError:  # e.g. an HTML page: not a tokenizer
            body = {}
        tokens = body.get("tokens")
        ok = isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)
        self._tokenizer = ok
        return [int(t) for t in tokens] if ok else None  # type: ignore[union-attr]


@dataclass
class _LoopState:
    """What one event loop's requests share: the connection pool and the in-flight gate."""

    options: dict[str, Any]  # of each client
    size: int  # connections per client
    clients: list[httpx.AsyncClient]
    load: list[int]  # requests in flight on each client
    gate: asyncio.Semaphore
    senders: list[httpx.AsyncClient | DirectSender] = field(default_factory=list)  # per client

    def pick(self) -> int:
        """The least busy pool (a new one when all are full), counted busier by one."""
        pool = self.load.index(min(self.load)) if self.load else -1
        if pool < 0 or self.load[pool] >= self.size:
            client = httpx.AsyncClient(**self.options)
            wire = self.options["transport"]
            self.clients.append(client)
            self.senders.append(
                DirectSender(client, wire) if isinstance(wire, WireTransport) else client
            )
            self.load.append(0)
            pool = len(self.clients) - 1
        self.load[pool] += 1
        return pool


async def _run_scripts(
    session: APISession,
    one: Callable[[T], Script[R]],
    items: Sequence[T],
    path: str,
    model: str,
    batch: Batch,
    results: dict[int, R],
) -> None:
    """Drive every item's script; each first request's turn is booked in one call."""
    scripts = [one(item) for item in items]
    firsts: dict[int, dict[str, Any]] = {}
    for index, script in enumerate(scripts):
        try:
            firsts[index] = next(script)
        except StopIteration as stop:  # needs no request
            results[index] = stop.value
    limiter = session.rate_limiter
    waits = (
        book(limiter, [(1, estimate_request_tokens(p)) for p in firsts.values()])
        if (limiter is not None and firsts)
        else None
    )
    now = time.monotonic()
    turns = dict(zip(firsts, (now + w for w in waits))) if waits is not None else {}
    gate, failed = session._state().gate, asyncio.Event()
    loaded = session._load_answered()

    async def run(index: int) -> None:
        last: list[str] = []  # the key of the request this item sent last

        async def post(payload: dict[str, Any]) -> dict[str, Any]:
            body = await session.apost(
                path, payload, batch=batch, booked=turns.pop(index, None), recall=not loaded
            )
            last[:] = [_request_key(path, payload)]
            check_model(body, model)  # never cache another model's answer under this one
            return body

        await session._turn(None, 0, turns.get(index))  # its booked turn, before the gate
        async with gate:
            if failed.is_set() or batch.cancelled:
                return
            try:
                results[index] = await adrive(scripts[index], post, firsts[index])
            except BaseException as exc:
                failed.set()
                if isinstance(exc, ProviderResponseError) and last:
                    batch.discard(last[0])  # the last answer is unusable: never reuse it
                raise
        batch.item_done()

    await _gather([run(i) for i in firsts])


async def _gather(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Await every coroutine; then raise the first real error (a cancellation of the
    caller cancels them all)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done = await asyncio.gather(*tasks, return_exceptions=True)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    errors = [r for r in done if isinstance(r, BaseException)]
    if errors:
        cancels = (Cancelled, asyncio.CancelledError)
        raise next((e for e in errors if not isinstance(e, cancels)), errors[0])
