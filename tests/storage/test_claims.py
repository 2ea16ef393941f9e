"""Claims on prompts in flight: workers sharing a store send each prompt exactly once.

Every test runs on SQLite and on PostgreSQL (the ``store_url`` fixture).
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from maas_tune.client import Client
from maas_tune.data import Example
from maas_tune.errors import ConfigurationError, ProviderError
from maas_tune.scores import ProviderAnswer
from maas_tune.storage import Store
from maas_tune.storage import claims as claims_module
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache, cache_key
from maas_tune.storage.claims import Claims
from maas_tune.task import Task

from .._concurrency import run_at_once
from ..fakes import FakeProvider
from .test_budget import SUBPROCESS_TIMEOUT_S, _python

TASK = Task("claims", "Review: {text}\nSentiment:", {"neg": ["bad"], "pos": ["good"]})
#: Seconds each provider call takes: long enough for the other worker to meet the claims.
SLOW_CALL_S = 0.15
#: A ghost's lease: no stall of a busy machine outlasts it, so it runs out only when a test
#: moves the claims' clock past it.
LEASE_S = 60.0


class SlowProvider(FakeProvider):
    """The fake provider, taking ``SLOW_CALL_S`` per call (as a hosted API would)."""

    def score(self, prompts: Sequence[str], labels: Sequence[str]) -> list[ProviderAnswer]:
        time.sleep(SLOW_CALL_S)
        return super().score(prompts, labels)


class _Clock:
    """The claims' wall clock, moved on by the test. A real lease of 50 ms ran out between
    two statements on a busy machine (an fsync of the first claim took longer)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    moved = _Clock()
    monkeypatch.setattr(claims_module, "time", moved)
    return moved


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as opened:
        yield opened


def _claims_left(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0])


def _keys(provider: FakeProvider, texts: Sequence[str]) -> list[str]:
    ids = provider.label_token_ids(TASK.label_words)
    return [cache_key(provider.fingerprint(), TASK.render(Example(text=t)), ids) for t in texts]


def test_a_key_is_held_by_one_owner_until_released(store: Store) -> None:
    first, second = Claims(store), Claims(store)
    assert first.acquire(["k1", "k2"]) == {"k1", "k2"}
    assert second.acquire(["k2", "k3"]) == {"k3"}
    assert first.acquire(["k1", "k2"]) == {"k1", "k2"}  # renewing its own claims
    first.release(["k2"])
    assert second.acquire(["k2"]) == {"k2"}
    assert {k: h[0] for k, h in first.holders(["k1", "k2", "k3"]).items()} == {
        "k1": first.owner,
        "k2": second.owner,
        "k3": second.owner,
    }
    with pytest.raises(ConfigurationError, match="lease_s"):
        Claims(store, lease_s=0)


def test_an_expired_claim_is_taken_over(
    store: Store, caplog: pytest.LogCaptureFixture, clock: _Clock
) -> None:
    ghost = Claims(store, lease_s=LEASE_S, owner="ghost-worker")
    assert ghost.acquire(["k"]) == {"k"}
    assert Claims(store).acquire(["k"]) == set()  # still within its lease
    clock.advance(2 * LEASE_S)
    with caplog.at_level(logging.WARNING, logger="maas_tune.storage.claims"):
        assert Claims(store).acquire(["k"]) == {"k"}
    assert "taken over from ghost-worker" in caplog.text


def test_two_workers_send_each_prompt_exactly_once(store_url: str) -> None:
    texts = [f"film {i}" for i in range(24)]
    jobs = {"a": texts[:16], "b": texts[8:]}  # 8 prompts both workers ask for
    provider = SlowProvider()  # shared, so that it counts what both workers send
    QueryBudget("shared", max_queries=100, store=store_url).close()
    results: dict[str, np.ndarray] = {}

    def worker(name: str, go: Callable[[], object]) -> None:
        with Store(store_url) as own:  # each worker opens the store itself
            client = Client(
                provider,
                cache=ScoreCache(own),
                progress=False,
                chunk_size=4,
                budget=QueryBudget("shared", store=own),
            )
            go()
            results[name] = client.score(TASK, jobs[name]).label_logprobs

    errors = run_at_once([functools.partial(worker, name) for name in jobs])
    assert errors == [] and set(results) == set(jobs)
    sent = collections.Counter(provider.sent)
    assert sorted(sent) == sorted(TASK.render(Example(text=t)) for t in texts)
    assert set(sent.values()) == {1}  # the 8 shared prompts too
    np.testing.assert_array_equal(results["a"][8:], results["b"][:8])
    with Store(store_url) as check:
        status = QueryBudget("shared", store=check).status()
        assert (status.spent_queries, status.reserved_queries) == (len(texts), 0)
        assert _claims_left(check) == 0


_CLAIM_AND_EXIT = """
import sys
from maas_tune.storage.claims import Claims
from maas_tune.storage import Store
print(sorted(Claims(Store(sys.argv[1])).acquire(["k1", "k2"])))
"""


def test_claims_of_an_exited_process_on_this_host_are_taken_over_at_once(store: Store) -> None:
    proc = _python(_CLAIM_AND_EXIT, store.url)
    out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0 and out.strip() == "['k1', 'k2']", err
    assert Claims(store).acquire(["k1", "k2"]) == {"k1", "k2"}  # no wait for the lease


def test_prompts_of_a_worker_that_died_are_sent_after_its_lease(
    store: Store, clock: _Clock
) -> None:
    provider = FakeProvider()
    texts = [f"review {i}" for i in range(6)]
    ghost = Claims(store, lease_s=LEASE_S, owner="crashed-worker")  # claimed, never sent
    assert ghost.acquire(_keys(provider, texts[:3])) == set(_keys(provider, texts[:3]))
    client = Client(provider, cache=ScoreCache(store), progress=False, chunk_size=2)
    waited: list[float] = []
    client._sleep = lambda s: (waited.append(s), clock.advance(s))  # type: ignore[method-assign]
    began = clock.time()
    scores = client.score(TASK, texts)
    assert clock.time() - began >= LEASE_S * 0.9 and waited  # it waited for the lease
    assert collections.Counter(provider.sent) == collections.Counter(
        TASK.render(Example(text=t)) for t in texts
    )  # each once, the ghost's ones too
    assert scores.n_queries_sent == len(texts) and _claims_left(store) == 0


def test_a_failed_send_drops_its_claims(store: Store) -> None:
    client = Client(FakeProvider(fail_after=0), cache=ScoreCache(store), progress=False)
    with pytest.raises(ProviderError):
        client.score(TASK, ["a", "b"])
    assert _claims_left(store) == 0
    scores = Client(FakeProvider(), cache=ScoreCache(store), progress=False).score(TASK, ["a"])
    assert scores.n_queries_sent == 1  # nobody waits for the failed worker's lease
