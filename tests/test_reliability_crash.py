"""Crash and resume: kill -9 of the scorer, or of the server under a running client.

The scorer is a real ``Client`` scoring over HTTP against a loopback server that counts
what it receives. A hook that lives in this file (never in the product) makes the
scorer pause at a named point of its third chunk, where it is killed with SIGKILL:

``reserved``   after the chunk's budget reservation, before any request is sent;
``in_flight``  the chunk's requests reached the server, which holds its answers back;
``answered``   the answers arrived, inside the cache transaction, before the write;
``committed``  answers and spend committed together, before the next chunk.

Both cases run on SQLite and on PostgreSQL (the ``store_url`` fixture): a restarted
worker takes over the dead one's claims on the prompts it had in flight at once, since
the dead process ran on this host.

Then, for each point: the ledger never undercounts what the server received and
overcounts by at most the one chunk that was reserved; a restarted run sends nothing
that was already answered, and the prompts the server received twice in all (duplicate
queries) are at most the chunk in flight, the client's concurrency limit (``chunk_size``
prompts reserved and sent together). ``test_crash_resume.py`` kills at a random moment.

The server case: ``maas-tune serve``'s app (over a fake engine) is killed with SIGKILL
mid-run and restarted on the same port; the client rides it out on its retries, pays
each sample once, re-sends nothing it had cached, and the server scored at most
``max_concurrency`` prompts twice (the requests in flight at the kill).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from maas_tune.client import Client
from maas_tune.data import Example
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache, cache_key
from maas_tune.task import Task

from ._fake_engine import expected_logprobs
from ._fault_server import FaultServer, ok, stall
from ._figures import report
from ._servers import free_port, wait_until_up
from .storage.test_budget import SUBPROCESS_TIMEOUT_S, _python

TASK = Task("crash", "Review: {text} Sentiment:", {"pos": ["positive"], "neg": ["negative"]})
TEXTS = [f"film number {i}" for i in range(40)]
PROMPTS = [TASK.render(Example(text=t, label=None)) for t in TEXTS]
#: Prompts reserved, sent and committed together; the scorer sends them all at once.
CHUNK = 4
#: The scorer pauses in chunk number KILL_CHUNK (0-based): KILL_CHUNK chunks are done.
KILL_CHUNK = 2
MODEL = "fake-model"

_SCORER = """
import os, sys, time
from pathlib import Path
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.client import Client
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.task import Task

db, url, point, marker = sys.argv[1:5]
chunk, kill_chunk = int(sys.argv[5]), int(sys.argv[6])
texts = sys.argv[7:]
calls = {}

def pause_at(name, nth):
    # The hook: at the nth call of the wrapped step, say so and wait for SIGKILL.
    if point == name and calls.setdefault(name, 0) == nth:
        Path(marker).touch()
        time.sleep(600)
    calls[name] = calls.get(name, 0) + 1

score, put_many, fetch = (OpenAICompletionsProvider.ascore, ScoreCache.put_many,
                          Client._fetch_chunk)

async def paused_score(self, *args, **kwargs):
    pause_at("reserved", kill_chunk)
    return await score(self, *args, **kwargs)

def paused_put_many(self, *args, **kwargs):
    pause_at("answered", kill_chunk)
    return put_many(self, *args, **kwargs)

async def paused_fetch(self, *args, **kwargs):
    result = await fetch(self, *args, **kwargs)
    pause_at("committed", kill_chunk)
    return result

OpenAICompletionsProvider.ascore = paused_score
ScoreCache.put_many = paused_put_many
Client._fetch_chunk = paused_fetch

task = Task("crash", "Review: {text} Sentiment:", {"pos": ["positive"], "neg": ["negative"]})
store = Store(db)
provider = OpenAICompletionsProvider(url, "fake-model", api_key="sk-crash", strategy="extension",
                                     max_concurrency=chunk)
client = Client(provider, cache=ScoreCache(store), progress=False, chunk_size=chunk,
                chunks_in_flight=1,  # the kill points name one chunk: no overlap
                budget=QueryBudget("crash", max_queries=len(texts) + chunk, store=store))
client.score(task, texts)
print("finished without being killed")
"""


def _keys(provider: OpenAICompletionsProvider, prompts: list[str]) -> dict[str, str]:
    """Cache key of each prompt, as the client computes it."""
    ids = provider.label_token_ids(TASK.label_words)
    return {p: cache_key(provider.fingerprint(), p, ids) for p in prompts}


def _cached(store: Store, keys: dict[str, str]) -> set[str]:
    found = ScoreCache(store).get_many(list(keys.values()))
    return {prompt for prompt, key in keys.items() if key in found}


def _kill_when(
    proc: subprocess.Popen[str], marker: Path, server: FaultServer, received: int
) -> None:
    """SIGKILL ``proc`` once it paused at its marker (or the server holds ``received``)."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not (marker.exists() if received == 0 else server.received >= received):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the scorer did not reach its kill point: {proc.communicate()}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.parametrize("point", ["reserved", "in_flight", "answered", "committed"])
def test_kill_9_of_the_scorer_then_restart_resends_nothing_answered(
    point: str, tmp_path: Path, store_url: str
) -> None:
    db, marker = store_url, tmp_path / "paused"
    done = KILL_CHUNK + (point == "committed")  # chunks whose answers were committed
    with FaultServer() as server:
        if point == "in_flight":  # the third chunk's answers are held back past the kill
            server.script(*[ok()] * (KILL_CHUNK * CHUNK), *[stall(60)] * CHUNK)
        proc = _python(
            _SCORER,
            str(db),
            server.base_url,
            point,
            str(marker),
            str(CHUNK),
            str(KILL_CHUNK),
            *TEXTS,
        )
        wait_for = (KILL_CHUNK + 1) * CHUNK if point == "in_flight" else 0
        try:
            _kill_when(proc, marker, server, wait_for)
        finally:
            proc.kill()
        received_at_kill = server.received
        with (
            Store(db) as store,
            OpenAICompletionsProvider(
                server.base_url, MODEL, api_key="sk-crash", strategy="extension"
            ) as provider,
        ):
            keys = _keys(provider, PROMPTS)
            cached = _cached(store, keys)
            budget = QueryBudget("crash", store=store)
            at_kill = budget.status()  # the dead scorer's reservation is counted as spent
            client = Client(
                provider, cache=ScoreCache(store), budget=budget, progress=False, chunk_size=CHUNK
            )
            scores = client.score(TASK, TEXTS)
            final = budget.status()
        resent = [body["prompt"] for body in server.requests[received_at_kill:]]
        total = server.received
    # at the kill: what was committed, and a ledger that never undercounts
    assert len(cached) == done * CHUNK
    assert received_at_kill == (done + (point in ("in_flight", "answered"))) * CHUNK
    assert at_kill.reserved_queries == 0
    overcount = at_kill.spent_queries - received_at_kill
    assert 0 <= overcount <= CHUNK, (at_kill, received_at_kill)
    # after the restart: nothing answered is sent again, and duplicates stay within a chunk
    assert set(resent).isdisjoint(cached)
    assert sorted(resent) == sorted(set(PROMPTS) - cached)
    assert scores.n_cache_hits == len(cached) and len(ScoreCache(db)) == len(PROMPTS)
    duplicates = sum(
        n - 1 for n in collections.Counter(b["prompt"] for b in server.requests).values()
    )
    assert duplicates == total - len(PROMPTS) <= CHUNK
    assert final.reserved_queries == 0
    assert final.spent_queries - total == overcount  # the ledger: what was received, + overcount
    report(
        "duplicates_after_kill_9",
        duplicates,
        point=point,
        bound=CHUNK,
        ledger_overcount=overcount,
        backend=store_url.partition(":")[0],
    )


# -- the server killed under a running client ------------------------------------------------
SERVER_TEXTS = [f"review {i}: a film" for i in range(120)]
SERVER_CONCURRENCY = 4


def _start_server(port: int, log: Path) -> subprocess.Popen[str]:
    code = (
        "import sys; from tests._fake_engine import main; "
        f"sys.argv = ['fake', '{port}', '--log', {str(log)!r}, '--delay', '0.02']; main()"
    )
    proc = _python(code)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=SUBPROCESS_TIMEOUT_S)
    return proc


def _scored(log: Path) -> list[str]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith('"')]


def test_kill_9_of_the_server_under_a_running_client(tmp_path: Path, store_url: str) -> None:
    log, db, port = tmp_path / "scored.jsonl", store_url, free_port()
    log.touch()
    server = _start_server(port, log)
    outcome: dict[str, object] = {}
    provider = OpenAICompletionsProvider(
        f"http://127.0.0.1:{port}/v1",
        MODEL,
        api_key="sk-crash",
        strategy="extension",
        max_concurrency=SERVER_CONCURRENCY,
        timeout=10,
        max_retries=200,
        sleep=lambda delay: time.sleep(min(delay, 0.1)),  # ride out the restart quickly
    )
    store = Store(db)
    # Room for the requests in flight at the kill: read by the server, their answers lost,
    # so they may have been billed (charged), and sent again.
    budget = QueryBudget("serve", max_queries=len(SERVER_TEXTS) + SERVER_CONCURRENCY, store=store)
    client = Client(provider, cache=ScoreCache(store), budget=budget, progress=False, chunk_size=8)

    def run() -> None:
        try:
            outcome["scores"] = client.score(TASK, SERVER_TEXTS)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    scorer = threading.Thread(target=run)
    try:
        scorer.start()
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while len(_scored(log)) < len(SERVER_TEXTS) // 3:
            assert time.monotonic() < deadline and scorer.is_alive(), outcome
            time.sleep(0.005)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        scored_before = _scored(log)
        keys = _keys(provider, [TASK.render(Example(text=t)) for t in SERVER_TEXTS])
        cached_at_kill = _cached(store, keys)
        time.sleep(0.3)  # the client meets a dead port for a while
        server = _start_server(port, log)
        scorer.join(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert not scorer.is_alive() and "error" not in outcome, outcome
    scores = outcome["scores"]
    assert 0 < len(cached_at_kill) < len(SERVER_TEXTS), "the kill must land mid-run"
    expected = [expected_logprobs(p, provider.label_token_ids(TASK.label_words)) for p in keys]
    by_class = scores.label_logprobs  # one word per class: the word's log-prob
    np.testing.assert_allclose(by_class, np.array(expected), rtol=1e-6)
    scored = _scored(log)
    after_restart = scored[len(scored_before) :]
    duplicates = len(scored) - len(set(scored))
    status = budget.status()
    provider.close()
    store.close()
    assert set(after_restart).isdisjoint(cached_at_kill)  # nothing answered is sent again
    assert set(scored) == set(keys)
    assert duplicates <= SERVER_CONCURRENCY  # only what was in flight at the kill
    # Every answer once, plus each request whose answer the kill lost (a duplicate is one).
    assert len(SERVER_TEXTS) + duplicates <= status.spent_queries
    assert status.spent_queries <= len(SERVER_TEXTS) + SERVER_CONCURRENCY
    assert status.reserved_queries == 0
    report(
        "duplicates_after_server_kill_9",
        duplicates,
        bound=SERVER_CONCURRENCY,
        scored=len(scored),
        answers=len(SERVER_TEXTS),
        backend=store_url.partition(":")[0],
    )
