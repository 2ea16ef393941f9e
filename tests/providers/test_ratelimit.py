"""Rate limits: the token-bucket math, the local limiter, the HTTP session's use of it, and the
limiter shared by Ray workers (against the deterministic loopback server)."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maas_tune import ConfigurationError, Task
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.providers.ratelimit import (
    CHARS_PER_TOKEN,
    LocalRateLimiter,
    RateLimit,
    RateLimiter,
    TokenBucket,
    as_limiter,
    estimate_request_tokens,
)
from tests._det_server import DetServer
from tests._fault_server import FaultServer, status
from tests._ray_cluster import local_ray_cluster

TASK = Task(
    "sent", "Review: {text} Sentiment:", {"positive": ["positive"], "negative": ["negative"]}
)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster, shared by the modules that need one."""
    yield from local_ray_cluster()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class RecordingLimiter:
    """A limiter that lets everything through and remembers what it was asked."""

    def __init__(self) -> None:
        self.acquired: list[tuple[int, int]] = []
        self.penalties: list[float] = []

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        self.acquired.append((requests, tokens))

    def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


def _max_in_window(times: list[float], window: float) -> int:
    """Most events inside any closed interval of length ``window``."""
    times, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# -- configuration ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), True, "600"])
def test_rate_limit_refuses_non_positive_rates(bad):
    with pytest.raises(ConfigurationError, match="requests_per_minute must be a positive number"):
        RateLimit(requests_per_minute=bad)


def test_rate_limit_none_means_unlimited_and_gets_no_limiter():
    assert RateLimit().unlimited
    assert as_limiter(RateLimit()) is None
    assert isinstance(as_limiter(RateLimit(requests_per_minute=60)), LocalRateLimiter)
    with pytest.raises(ConfigurationError, match="rate_limit must be a RateLimit"):
        as_limiter(600)  # type: ignore[arg-type]


# -- bucket math --------------------------------------------------------------------------
def test_bucket_allows_a_burst_then_paces_requests_at_the_rate():
    bucket = TokenBucket(RateLimit(requests_per_minute=600), now=0.0)  # 10/s, burst 10
    waits = [bucket.reserve(1, 0, now=0.0) for _ in range(13)]
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.1, 0.2, 0.3])
    assert bucket.reserve(1, 0, now=10.0) == 0.0  # refilled (to the capacity, no more)


def test_bucket_waits_for_the_slower_of_requests_and_tokens():
    bucket = TokenBucket(RateLimit(requests_per_minute=6000, tokens_per_minute=600), now=0.0)
    assert bucket.reserve(1, 10, now=0.0) == 0.0  # the 10-token burst
    assert bucket.reserve(1, 5, now=0.0) == pytest.approx(0.5)  # 5 tokens at 10 tokens/s


def test_a_request_larger_than_the_burst_waits_instead_of_blocking_for_ever():
    bucket = TokenBucket(RateLimit(tokens_per_minute=60), now=0.0)  # 1 token/s, capacity 1
    assert bucket.reserve(1, 5, now=0.0) == pytest.approx(4.0)
    assert bucket.reserve(1, 1, now=0.0) == pytest.approx(5.0)  # behind the debt


def test_penalize_pauses_everyone_then_restarts_from_empty():
    bucket = TokenBucket(RateLimit(requests_per_minute=600), now=0.0)
    bucket.penalize(2.0, now=0.0)
    assert bucket.reserve(1, 0, now=0.5) == pytest.approx(1.5 + 0.1)
    bucket.penalize(0.5, now=0.5)  # a shorter pause than the one running changes nothing
    assert bucket.reserve(1, 0, now=0.5) == pytest.approx(1.5 + 0.2)


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.floats(min_value=30, max_value=6000),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=80),
)
def test_granted_requests_never_exceed_burst_plus_rate_times_window(rpm, gaps):
    limit = RateLimit(requests_per_minute=rpm)
    bucket, now, granted = TokenBucket(limit, now=0.0), 0.0, []
    for gap in gaps:
        now += gap
        granted.append(now + bucket.reserve(1, 0, now=now))
    rate, capacity = rpm / 60, rpm / 60 * limit.burst_seconds
    for window in (0.1, 1.0, 5.0):
        assert _max_in_window(granted, window) <= math.floor(capacity + rate * window + 1e-6) + 1


def test_the_shared_bucket_actor_books_and_pauses_like_the_bucket():
    from maas_tune.ray.actors import BucketActor  # a plain class: Ray wraps it

    actor = BucketActor(RateLimit(requests_per_minute=60))  # 1/s, burst 1
    assert actor.reserve(1, 0) == 0.0
    assert actor.reserve(1, 0) == pytest.approx(1.0, abs=0.05)
    actor.penalize(5.0)
    assert actor.reserve(1, 0) >= 5.0
    actor.configure(RateLimit(requests_per_minute=6000))  # a new limit starts full
    assert actor.reserve(1, 0) == 0.0


# -- local limiter ------------------------------------------------------------------------
def test_local_limiter_sleeps_for_the_booked_wait():
    clock = FakeClock()
    limiter = LocalRateLimiter(
        RateLimit(requests_per_minute=60, burst_seconds=2), clock=clock, sleep=clock.sleep
    )
    for _ in range(4):
        limiter.acquire()
    assert clock.now == pytest.approx(2.0)  # 2 in the burst, then 1/s
    assert isinstance(limiter, RateLimiter)


def test_local_limiter_is_shared_safely_by_threads():
    clock, lock, slept = FakeClock(), threading.Lock(), []

    def sleep(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    limiter = LocalRateLimiter(RateLimit(requests_per_minute=60), clock=clock, sleep=sleep)
    threads = [threading.Thread(target=limiter.acquire) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(slept) == pytest.approx([float(i) for i in range(1, 20)])  # each its own turn


# -- token estimate -----------------------------------------------------------------------
def test_token_estimate_counts_prompt_messages_input_and_max_tokens():
    assert (
        estimate_request_tokens({"prompt": "x" * 30, "max_tokens": 1}) == 30 // CHARS_PER_TOKEN + 2
    )
    chat = {
        "messages": [
            {"role": "user", "content": "a" * 9},
            {"role": "user", "content": [{"type": "text", "text": "b" * 3}]},
        ]
    }
    assert estimate_request_tokens(chat) == 12 // CHARS_PER_TOKEN + 1
    assert estimate_request_tokens({"input": ["abc", "def"]}) == 3


# -- the HTTP session ---------------------------------------------------------------------
def test_provider_acquires_before_each_scoring_request_but_not_for_the_tokenizer():
    limiter = RecordingLimiter()
    with DetServer(tokenizer=True) as server:
        provider = OpenAICompletionsProvider(server.base_url, "det", rate_limit=limiter)
        provider.score(
            ["Review: good Sentiment:", "Review: bad Sentiment:"], ["positive", "negative"]
        )
        assert len(limiter.acquired) == server.received  # probe + 2 samples; tokenize is free
    assert all(requests == 1 and tokens > 0 for requests, tokens in limiter.acquired)


def test_a_429_pauses_the_limiter_for_the_retry_after_delay():
    limiter, slept = RecordingLimiter(), []
    with FaultServer() as server:
        server.script(status(429, headers={"Retry-After": "0.25"}))
        provider = OpenAICompletionsProvider(
            server.base_url, "m", strategy="top_logprobs", rate_limit=limiter, sleep=slept.append
        )
        provider._session.post("completions", {"model": "m", "prompt": "hi", "logprobs": 5})
    assert limiter.penalties == [0.25]
    assert len(limiter.acquired) == 2  # the retry waits its turn too
    assert slept == [0.25]


def test_local_rate_limit_caps_the_rate_the_server_sees():
    with DetServer(tokenizer=False) as server:
        provider = OpenAICompletionsProvider(  # the label words are always in its top-5
            server.base_url,
            "det",
            strategy="top_logprobs",
            max_concurrency=8,
            rate_limit=RateLimit(requests_per_minute=1200),  # 20/s, burst 20
        )
        provider.score(
            [f"Review: text {i} Sentiment:" for i in range(50)], ["positive", "negative"]
        )
        arrivals = list(server.arrivals)
    assert _max_in_window(arrivals, 1.0) <= 20 + 20 + 2  # burst + 1 s of rate, 2 of jitter
    assert max(arrivals) - min(arrivals) >= (51 - 20) / 20 * 0.9


# -- the limiter shared by Ray workers ----------------------------------------------------
@pytest.mark.slow
def test_shared_limiter_caps_the_rate_of_two_ray_workers(ray_cluster, tmp_path):
    from maas_tune.ray import BudgetSpec, ProviderConfig, score

    rows = [{"text": f"shared limiter sample {i}"} for i in range(120)]
    with DetServer(latency=0.002, tokenizer=False) as server:
        scored = score(
            ray_cluster.data.from_items(rows),
            TASK,
            ProviderConfig(server.base_url, "det", strategy="top_logprobs"),
            str(tmp_path / "store.sqlite"),
            BudgetSpec("rate"),
            num_workers=2,
            batch_size=30,
            rate_limit=RateLimit(requests_per_minute=1200),  # 20/s, burst 20
        ).take_all()
        arrivals = list(server.arrivals)
        assert server.duplicates() == 0
    assert len(scored) == 120 and all(r["scored"] for r in scored)
    # 2 workers x 4 requests in flight could send ~100/s here; the shared bucket holds 20/s.
    assert _max_in_window(arrivals, 1.0) <= 20 + 20 + 3
    assert _max_in_window(arrivals, 3.0) <= 20 + 60 + 3
    assert max(arrivals) - min(arrivals) >= (len(arrivals) - 20) / 20 * 0.9
