"""One OpenAI-style API as the HTTP providers use it: auth, pooling, retries, tokenizer, facts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx

from .._constants import MAX_RETRY_AFTER_S
from ..errors import (
    ProviderError,
    ProviderResponseError,
    ProviderStatusError,
)
from ._aio import LoopThread, arequest_json
from ._answers import usage_tokens
from ._batch import Batch, Events
from ._facts import FactAccess
from ._fanout import LoopState, payload_bound, request_key, run_scripts
from ._retry import RetryPolicy
from ._script import Script
from ._tokenizer import TokenizerAccess
from .http import public_url
from .options import API_KEY_ENV, HTTPOptions, concurrency_for
from .ratelimit import (
    DEFAULT_PENALTY_S,
    RateLimiter,
    as_limiter,
    book,
    estimate_request_tokens,
)
from .secrets import check_api_key

log = logging.getLogger(__name__)


__all__ = ["CHARS_PER_TOKEN_ESTIMATE", "APISession"]

#: Characters per token assumed when no tokenizer is reachable (an upper-ish estimate).
CHARS_PER_TOKEN_ESTIMATE = 3


T = TypeVar("T")
R = TypeVar("R")


# An API root that ends in a version (/v1, /v1beta, /openai/v1): the routes live below it.
_VERSIONED = re.compile(r"/v\d+[a-z0-9]*$")


class APISession(FactAccess, TokenizerAccess):
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
        self._tokenizer = None
        self._special_prefix = None
        self._init_facts()
        headers = httpx.Headers({"Authorization": f"Bearer {api_key}"} if api_key else {})
        for name, value in http.headers:  # openai-python: these win
            headers[name] = value
        self._headers = headers
        self._params = http.query
        self._root, self._timeout = root + "/", timeout
        self._transport = transport
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._runner = LoopThread()  # runs the async core for blocking callers
        self._ssl: Any = None  # one SSL context for every pool
        self._paused_until = 0.0  # after a 429: nothing of this process is sent before
        self.closed = False

    # -- the async core -------------------------------------------------------------
    def _state(self) -> LoopState:
        """The connection pool and in-flight gate of the running event loop."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            if self._ssl is None:  # made once: it costs tens of milliseconds
                self._ssl = httpx.create_ssl_context()
            options = {
                "base_url": self._root,
                "headers": self._headers,
                "params": self._params,
                "verify": self._ssl,
                "timeout": httpx.Timeout(self._timeout),
            }
            state = LoopState.open(options, self._transport, self.max_concurrency)
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
        key = request_key(path, payload)
        kept = self._answered(key, recall)
        if kept is not None:  # paid for by a sample that failed later: never paid twice
            return kept
        limiter = self.rate_limiter if limited else None
        tokens, bound = estimate_request_tokens(payload), payload_bound(payload)
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
            recall = not self._load_answered()

            def send(payload: dict[str, Any], *, booked: float | None) -> Awaitable[dict[str, Any]]:
                return self.apost(path, payload, batch=batch, booked=booked, recall=recall)

            await run_scripts(
                [one(item) for item in items],
                send=send,
                wait_turn=lambda booked: self._turn(None, 0, booked),
                gate=self._state().gate,
                limiter=self.rate_limiter,
                path=path,
                model=model,
                batch=batch,
                results=results,
            )
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
