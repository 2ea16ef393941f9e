"""The async path (issue 18): AsyncClient, overlapping chunks, cancellation, chunk booking
on the rate limiter, and the CLI's --rate-limit. The fault and budget guarantees are
pinned for both clients in test_provider_faults.py (parametrized over sync and async)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from maas_tune.client import AsyncClient, Client
from maas_tune.data import Example
from maas_tune.errors import ConfigurationError
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.providers.ratelimit import RateLimit, parse_rate
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.task import Task

from ._det_server import completion
from ._fault_server import next_token_logprobs

TASK = Task("async", "Review: {text} Sentiment:", {"pos": ["positive"], "neg": ["negative"]})
#: Long enough for any busy machine; a test that waits this long has failed.
GUARD_S = 30.0


def _prompt(text: str) -> str:
    return TASK.render(Example(text=text, label=None))


class Api:
    """A MockTransport handler: completions (top_logprobs), no tokenizer, and a hook that
    may hold a request back (it runs on a worker thread)."""

    def __init__(self, hold: Callable[[str], None] = lambda prompt: None) -> None:
        self.hold = hold
        self.received: list[str] = []
        self.answered: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/extras/tokenize"):
            return httpx.Response(404, json={"error": {"message": "no tokenizer"}})
        body = json.loads(request.content)
        with self.lock:
            self.received.append(body["prompt"])
        self.hold(body["prompt"])
        with self.lock:
            self.answered.append(body["prompt"])
        return httpx.Response(200, json=completion(body, extension=False))


def _provider(api: Api, **options: object) -> OpenAICompletionsProvider:
    return OpenAICompletionsProvider(
        "http://api.test/v1",
        "det",
        api_key="sk-async",
        strategy="top_logprobs",
        transport=httpx.MockTransport(api),
        sleep=lambda s: None,
        **options,
    )


def _expected(texts: list[str]) -> np.ndarray:
    rows = [next_token_logprobs(_prompt(t)) for t in texts]
    return np.array([[r[" positive"], r[" negative"]] for r in rows])


def test_async_client_scores_like_the_sync_one_and_pays_each_prompt_once(tmp_path: Path):
    texts = [f"film {i}" for i in range(40)] + ["film 0"]  # a repeat: one request
    api = Api()
    db = tmp_path / "s.sqlite"
    budget = QueryBudget("a", max_queries=1000, store=db)
    client = AsyncClient(
        _provider(api, max_concurrency=8),
        cache=ScoreCache(db),
        budget=budget,
        progress=False,
        chunk_size=4,
    )
    scores = asyncio.run(client.score(TASK, texts))
    np.testing.assert_allclose(scores.label_logprobs, _expected(texts), rtol=1e-6)
    assert sorted(api.received) == sorted({_prompt(t) for t in texts})
    assert budget.status().spent_queries == 40 and budget.status().reserved_queries == 0
    again = Client(_provider(api), cache=ScoreCache(db), budget=budget, progress=False)
    assert again.score(TASK, texts).n_cache_hits == len(texts)  # the sync client: all cached
    assert len(api.received) == 40


def test_chunks_overlap_so_a_slow_request_holds_up_only_itself(tmp_path: Path):
    """The first prompt's request is answered only once the next chunk's are: with one
    chunk at a time (before issue 18) it waits out the guard instead."""
    texts = [f"film {i}" for i in range(6)]
    later = {_prompt(t) for t in texts[2:4]}  # the second chunk
    released = threading.Event()

    def hold(prompt: str) -> None:
        if prompt == _prompt(texts[0]):
            released.wait(GUARD_S)
        elif later <= set(api.answered) | {prompt}:
            released.set()

    api = Api(hold)
    client = Client(
        _provider(api, max_concurrency=4),
        cache=ScoreCache(tmp_path / "s.sqlite"),
        progress=False,
        chunk_size=2,
    )
    scores = client.score(TASK, texts)
    np.testing.assert_allclose(scores.label_logprobs, _expected(texts), rtol=1e-6)
    assert released.is_set()
    assert api.answered.index(_prompt(texts[0])) > max(api.answered.index(p) for p in later)


def test_cancelling_async_score_charges_the_requests_in_flight_and_sends_nothing_after(
    tmp_path: Path,
):
    gate, started = threading.Event(), threading.Semaphore(0)

    def hold(prompt: str) -> None:
        started.release()
        gate.wait(GUARD_S)  # never answered before the cancellation

    api = Api(hold)
    db = tmp_path / "s.sqlite"
    budget = QueryBudget("c", max_queries=1000, store=db)
    client = AsyncClient(
        _provider(api, max_concurrency=4),
        cache=ScoreCache(db),
        budget=budget,
        progress=False,
        chunk_size=4,
    )

    async def run() -> None:
        task = asyncio.ensure_future(client.score(TASK, [f"film {i}" for i in range(12)]))
        for _ in range(4):  # all four request slots are in flight
            assert await asyncio.to_thread(started.acquire, True, GUARD_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
        sent = len(api.received)
    finally:
        gate.set()
    status = budget.status()
    assert sent == 4
    assert (status.spent_queries, status.reserved_queries) == (4, 0)  # in flight: spent
    assert len(ScoreCache(db)) == 0
    threading.Event().wait(0.3)
    assert len(api.received) == sent  # nothing sent or retried after the cancellation


class SpyLimiter:
    """A rate limiter that never waits and records how it was asked."""

    def __init__(self) -> None:
        self.booked: list[int] = []
        self.acquired = 0

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        self.acquired += requests

    def reserve_many(self, costs: list[tuple[int, int]]) -> list[float]:
        self.booked.append(len(costs))
        return [0.0] * len(costs)

    def penalize(self, seconds: float) -> None:
        pass


def test_the_rate_limiter_books_each_chunk_in_one_call(tmp_path: Path):
    limiter = SpyLimiter()
    client = Client(
        _provider(Api(), rate_limit=limiter),
        cache=ScoreCache(tmp_path / "s.sqlite"),
        progress=False,
        chunk_size=16,
    )
    client.score(TASK, [f"film {i}" for i in range(40)])
    assert sorted(limiter.booked) == [8, 16, 16] and limiter.acquired == 0


def test_requests_in_flight_follow_the_rate_limit_unless_capped():
    assert _provider(Api()).max_concurrency == 4
    assert _provider(Api(), rate_limit=RateLimit(requests_per_minute=3000)).max_concurrency == 256
    assert (
        _provider(
            Api(), rate_limit=RateLimit(requests_per_minute=3000), max_concurrency=9
        ).max_concurrency
        == 9
    )


@pytest.mark.parametrize(
    ("text", "per_minute"), [("3000/min", 3000), ("50/s", 3000), ("2.5/sec", 150), (" 60 / m", 60)]
)
def test_a_rate_limit_is_read_per_second_or_minute(text: str, per_minute: float):
    assert parse_rate(text).requests_per_minute == pytest.approx(per_minute)


@pytest.mark.parametrize("text", ["3000", "0/s", "-5/min", "fast/s", "10/hour", "nan/s"])
def test_a_bad_rate_limit_is_one_clear_error(text: str):
    with pytest.raises(ConfigurationError, match="e.g. 3000/min or 50/s"):
        parse_rate(text)


def test_the_cli_passes_rate_limit_and_max_concurrency_to_the_provider():
    from maas_tune.cli import build_parser
    from maas_tune.cli import commands as _cli_commands

    args = build_parser().parse_args(
        [
            "eval",
            "--dataset",
            "sst2",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--rate-limit",
            "50/s",
            "--max-concurrency",
            "7",
        ]
    )
    provider = _cli_commands._provider(args)
    assert provider.max_concurrency == 7
    assert provider._session.rate_limiter.limit.requests_per_minute == 3000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--base-url", "http://x/v1", "--rate-limit", "9"])


def test_the_sync_client_works_inside_a_running_event_loop(tmp_path: Path):
    """A notebook runs a loop already: the blocking API runs its own on a helper thread."""
    api, texts = Api(), ["film 1", "film 2"]
    client = Client(_provider(api), cache=ScoreCache(tmp_path / "s.sqlite"), progress=False)

    async def in_a_notebook() -> np.ndarray:
        return client.score(TASK, texts).label_logprobs

    np.testing.assert_allclose(asyncio.run(in_a_notebook()), _expected(texts), rtol=1e-6)
    assert len(api.received) == 2


def test_a_cancelled_chunk_commits_in_one_transaction_not_one_per_answered_request(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Ctrl-C must end at once: a cancelled chunk kept each answered request body for a
    rerun in a transaction of its own (one fsync each, on the event loop) and dropped its
    claims again after the commit had dropped them; 9 transactions for this chunk of 8,
    more than a minute for a few hundred on a loaded disk. Now: the commit and one batch
    of kept bodies."""
    from maas_tune.storage.sqlite import SQLiteStore

    texts = [f"film {i}" for i in range(8)]
    gate, answered = threading.Event(), threading.Semaphore(0)

    def hold(prompt: str) -> None:
        if prompt == _prompt(texts[-1]):
            gate.wait(GUARD_S)  # the one request still in flight at the cancellation
        else:
            answered.release()

    api = Api(hold)
    db = tmp_path / "s.sqlite"
    budget = QueryBudget("t", max_queries=1000, store=db)
    client = AsyncClient(
        _provider(api, max_concurrency=8),
        cache=ScoreCache(db),
        budget=budget,
        progress=False,
        chunk_size=8,
    )
    writes: list[str] = []
    real = SQLiteStore.transaction
    observe, arrived = client._observer, threading.Semaphore(0)

    def observer(bar):  # type: ignore[no-untyped-def]
        event = observe(bar)

        def seen(kind: str) -> None:
            event(kind)
            if kind == "answered":  # the answer is the client's: the chunk will keep it
                arrived.release()

        return seen

    client._observer = observer  # type: ignore[method-assign]

    def counted(self):  # type: ignore[no-untyped-def]
        writes.append("w")
        return real(self)

    async def run() -> None:
        task = asyncio.ensure_future(client.score(TASK, texts))
        for _ in range(7):
            assert await asyncio.to_thread(answered.acquire, True, GUARD_S)
        while len(api.received) < 8:
            await asyncio.sleep(0.01)
        for _ in range(7):  # the seven answers reach the client (a fixed 0.2 s was too short)
            assert await asyncio.to_thread(arrived.acquire, True, GUARD_S)
        monkeypatch.setattr(SQLiteStore, "transaction", counted)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        gate.set()  # the held request's worker thread ends (asyncio.run waits for it)

    try:
        asyncio.run(run())
    finally:
        gate.set()
    assert len(writes) <= 2, writes  # the commit; the kept bodies
    assert len(ScoreCache(db)) == 7  # what was answered is cached
    assert budget.status().spent_queries == 8  # and the request in flight is charged
