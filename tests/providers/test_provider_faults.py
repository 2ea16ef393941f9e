"""Provider faults end to end: a misbehaving loopback server, the real Client, cache and ledger.

Every fault ends in a bounded retry that succeeds or in one clear error naming the cause;
afterwards the cache holds every good answer that arrived (also those of a chunk that
failed) and the budget ledger holds what docs/http.md promises: exactly the requests that
were answered (2xx: billed, even with a body we refuse), plus those whose answer was lost
after sending (a timeout or broken connection: they may have been billed); error statuses
(429, 5xx) are not billed.
docs/reliability.md tabulates the outcomes.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import math
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from maas_tune.client import AsyncClient, Client
from maas_tune.data import Example
from maas_tune.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderResponseError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from maas_tune.providers._answers import same_model
from maas_tune.providers._retry import INITIAL_RETRY_DELAY_S, MAX_RETRY_AFTER_S
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.scores import Scores
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.task import Task

from .._fault_server import (
    Action,
    FaultServer,
    drop_field,
    malformed,
    next_token_logprobs,
    ok,
    reset,
    set_field,
    slow_body,
    stall,
    stall_mid_body,
    status,
    top_without,
    truncated,
)

TASK = Task("faults", "Review: {text} Sentiment:", {"pos": ["positive"], "neg": ["negative"]})
TEXTS = ["a great film", "a dull plot"]
MODEL = "fake-model"
#: Retries allowed in these tests: a persistent fault costs MAX_RETRIES + 1 requests.
MAX_RETRIES = 2
#: Client read timeout for the transport faults (roomy for a busy machine), and a stall past it.
TIMEOUT_S = 1.0
STALL_S = 2.0
EXT = "choices.0.maas_tune"
NAN_HIDDEN = base64.b64encode(struct.pack("<4f", *[math.nan] * 4)).decode()


@dataclass
class Rig:
    """One provider wired through the real Client to a real cache and ledger in tmp_path."""

    server: FaultServer
    client: Client | AsyncClient
    cache: ScoreCache
    budget: QueryBudget
    slept: list[float]

    def score(self, texts: list[str] = TEXTS[:1]) -> Scores:
        if isinstance(self.client, AsyncClient):  # the async API, awaited on a fresh loop
            return asyncio.run(self.client.score(TASK, texts))
        return self.client.score(TASK, texts)

    def spent(self) -> int:
        """Queries the ledger holds as spent; no reservation may be left open."""
        state = self.budget.status()
        assert state.reserved_queries == 0, "a failed chunk left its reservation open"
        return state.spent_queries


RigFactory = Callable[..., Rig]


@pytest.fixture()
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running
    assert running.pending == 0, "the test did not use its whole fault script"


@pytest.fixture(params=["sync", "async"])
def make_rig(server: FaultServer, tmp_path, request) -> Iterator[RigFactory]:
    """Rigs with the blocking :class:`Client` or the :class:`AsyncClient` (same guarantees)."""
    kind = Client if request.param == "sync" else AsyncClient
    opened: list[tuple[OpenAICompletionsProvider, ScoreCache, QueryBudget]] = []

    def make(
        strategy: str = "extension", *, timeout: float = 10.0, real_sleep: bool = False
    ) -> Rig:
        slept: list[float] = []
        provider = OpenAICompletionsProvider(
            server.base_url,
            MODEL,
            api_key="sk-test-faults",
            strategy=strategy,
            max_concurrency=1,
            timeout=timeout,
            max_retries=MAX_RETRIES,
            sleep=time.sleep if real_sleep else slept.append,
        )
        db = tmp_path / "store.sqlite"
        cache, budget = ScoreCache(db), QueryBudget("faults", max_queries=1000, store=db)
        opened.append((provider, cache, budget))
        return Rig(
            server, kind(provider, cache=cache, budget=budget, progress=False), cache, budget, slept
        )

    yield make
    for provider, cache, budget in opened:
        provider.close()
        cache.close()
        budget.close()


def expected(text: str) -> list[float]:
    """The fake model's true (pos, neg) log-probs after ``text``'s prompt."""
    true = next_token_logprobs(TASK.render(Example(text=text, label=None)))
    return [true[" positive"], true[" negative"]]


def assert_good(scores: Scores, texts: list[str] = TEXTS[:1]) -> None:
    np.testing.assert_allclose(scores.label_logprobs, [expected(t) for t in texts], rtol=1e-6)


def assert_rerun_is_free(rig: Rig, texts: list[str] = TEXTS[:1]) -> None:
    received, spent = rig.server.received, rig.spent()
    scores = rig.score(texts)
    assert scores.n_cache_hits == len(texts)
    assert_good(scores, texts)
    assert (rig.server.received, rig.spent()) == (received, spent)


def assert_recovers(rig: Rig, cost: int) -> None:
    """After the fault clears, a rerun fetches the sample once more, pays ``cost`` and caches it."""
    received, spent = rig.server.received, rig.spent()
    scores = rig.score()
    assert_good(scores)
    assert not scores.cache_hit.any()
    assert rig.server.received == received + cost and rig.spent() == spent + cost
    assert len(rig.cache) == 1
    assert_rerun_is_free(rig)


# -- a well-behaved server: the baseline every fault is measured against -----------------------
@pytest.mark.parametrize("strategy", ["extension", "top_logprobs"])
def test_a_well_behaved_server_costs_one_query_per_sample(make_rig: RigFactory, strategy: str):
    rig = make_rig(strategy)
    assert_good(rig.score(TEXTS), TEXTS)
    assert rig.server.received == rig.server.completed == rig.spent() == 2
    assert len(rig.cache) == 2 and rig.slept == []
    assert_rerun_is_free(rig, TEXTS)


# -- rate limits and server errors ----------------------------------------------------------
def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        pytest.param(lambda: {"Retry-After": "2"}, 2.0, 2.0, id="seconds"),
        # An HTTP date has whole seconds: 3 s ahead is a wait in (2, 3], less the time taken.
        pytest.param(lambda: {"Retry-After": _http_date(3)}, 1.0, 3.0, id="http-date"),
        pytest.param(lambda: {"retry-after-ms": "150"}, 0.15, 0.15, id="milliseconds"),
        pytest.param(
            lambda: {"Retry-After": "3600"}, MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S, id="capped"
        ),
        pytest.param(dict, 0.75 * INITIAL_RETRY_DELAY_S, INITIAL_RETRY_DELAY_S, id="absent"),
    ],
)
def test_429_is_retried_after_the_delay_the_server_asks_for(
    make_rig: RigFactory, headers: Callable[[], dict[str, str]], low: float, high: float
):
    rig = make_rig()
    rig.server.script(status(429, headers=headers()))
    assert_good(rig.score())
    assert len(rig.slept) == 1 and low <= rig.slept[0] <= high
    assert (rig.server.received, rig.server.completed) == (2, 1)
    assert rig.spent() == 1 and len(rig.cache) == 1  # the retry is not an extra query
    assert_rerun_is_free(rig)


def test_retry_after_is_really_waited_for(make_rig: RigFactory):
    rig = make_rig(real_sleep=True)
    rig.server.script(status(429, headers={"Retry-After": "1"}))
    assert_good(rig.score())
    first, second = rig.server.arrivals
    assert second - first >= 0.95
    assert rig.spent() == 1


def test_persistent_429_ends_in_one_error_and_releases_the_reservation(make_rig: RigFactory):
    rig = make_rig()
    rig.server.script(*[status(429, headers={"Retry-After": "1"})] * (MAX_RETRIES + 1))
    with pytest.raises(ProviderStatusError, match="HTTP 429.*rate limit") as info:
        rig.score()
    assert info.value.status == 429 and info.value.request_sent is False
    assert str(info.value).endswith(f"(gave up after {MAX_RETRIES + 1} attempts)")
    assert rig.server.received == MAX_RETRIES + 1 and rig.slept == [1.0] * MAX_RETRIES
    assert rig.spent() == 0 and len(rig.cache) == 0  # refused requests are not billed
    assert_recovers(rig, cost=1)


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_transient_5xx_is_retried_then_succeeds(make_rig: RigFactory, code: int):
    rig = make_rig()
    rig.server.script(status(code), status(code, headers={"Retry-After": "1"}))
    assert_good(rig.score())
    assert len(rig.slept) == 2 and rig.slept[1] == 1.0  # backoff, then the server's delay
    assert (rig.server.received, rig.server.completed) == (3, 1)
    assert rig.spent() == 1 and len(rig.cache) == 1
    assert_rerun_is_free(rig)


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_persistent_5xx_ends_in_one_error_and_charges_nothing(make_rig: RigFactory, code: int):
    rig = make_rig()
    rig.server.script(*[status(code)] * (MAX_RETRIES + 1))
    with pytest.raises(ProviderStatusError, match=f"HTTP {code}.*retried automatically") as info:
        rig.score()
    assert info.value.status == code
    assert str(info.value).endswith(f"(gave up after {MAX_RETRIES + 1} attempts)")
    assert rig.server.received == MAX_RETRIES + 1 and len(rig.slept) == MAX_RETRIES
    assert rig.spent() == 0 and len(rig.cache) == 0  # an error status is not billed
    assert_recovers(rig, cost=1)


# -- the connection: timeouts, resets, slow and cut bodies ----------------------------------
TRANSPORT_FAULTS = [
    pytest.param(stall(STALL_S), ProviderTimeoutError, "ReadTimeout", id="timeout"),
    pytest.param(stall_mid_body(STALL_S), ProviderTimeoutError, "ReadTimeout", id="stall-mid-body"),
    pytest.param(
        reset(),
        ProviderConnectionError,
        "broke before.*(ReadError|RemoteProtocolError)",
        id="reset",
    ),
    pytest.param(
        truncated(),
        ProviderConnectionError,
        "broke before.*RemoteProtocolError: peer closed connection",
        id="truncated-body",
    ),
]


@pytest.mark.parametrize(("fault", "error", "cause"), TRANSPORT_FAULTS)
def test_transient_transport_fault_is_retried_then_succeeds(
    make_rig: RigFactory, fault: Action, error: type[ProviderError], cause: str
):
    rig = make_rig(timeout=TIMEOUT_S)
    rig.server.script(fault)
    assert_good(rig.score())
    assert (rig.server.received, rig.server.completed) == (2, 1) and len(rig.slept) == 1
    # The lost answer's request reached the server: it may have been billed, so it is
    # charged with the retry that was answered.
    assert rig.spent() == 2 and len(rig.cache) == 1
    assert_rerun_is_free(rig)


@pytest.mark.parametrize(("fault", "error", "cause"), TRANSPORT_FAULTS)
def test_persistent_transport_fault_ends_in_one_error_naming_it(
    make_rig: RigFactory, fault: Action, error: type[ProviderError], cause: str
):
    rig = make_rig(timeout=TIMEOUT_S)
    rig.server.script(*[fault] * (MAX_RETRIES + 1))
    with pytest.raises(error, match=cause) as info:
        rig.score()
    assert info.value.request_sent is True  # the request was read: it may have been billed
    assert rig.server.received == MAX_RETRIES + 1 and rig.server.completed == 0
    # Each attempt was read by the server and its answer lost: each may have been billed.
    assert rig.spent() == MAX_RETRIES + 1 and len(rig.cache) == 0
    assert_recovers(rig, cost=1)


def test_a_slow_body_within_the_timeout_is_read_without_a_retry(make_rig: RigFactory):
    rig = make_rig(timeout=TIMEOUT_S)
    rig.server.script(slow_body(TIMEOUT_S / 4))  # four pieces, each well inside the timeout
    assert_good(rig.score())
    assert (rig.server.received, rig.server.completed) == (1, 1) and rig.slept == []
    assert rig.spent() == 1 and len(rig.cache) == 1


def test_a_body_dribbled_past_the_total_deadline_is_cut_off_and_retried(make_rig: RigFactory):
    rig = make_rig(timeout=TIMEOUT_S)
    # Four pieces, each inside the read timeout, but together past 3 x the timeout.
    rig.server.script(slow_body(0.85 * TIMEOUT_S))
    assert_good(rig.score())
    assert rig.server.received == 2 and len(rig.slept) == 1  # cut off once, then answered
    assert rig.spent() == 2 and len(rig.cache) == 1  # the cut-off one may have been billed


# -- answers that arrive but are wrong: never retried, never cached, always paid ---------------
RESPONSE_FAULTS = [
    pytest.param("extension", [malformed()], "not valid JSON", id="malformed-json"),
    pytest.param("extension", [malformed(b"")], "not valid JSON.*empty body", id="empty-body"),
    pytest.param("extension", [malformed(b"[1, 2]")], "JSON list, not an object", id="json-list"),
    pytest.param(
        "extension", [ok(drop_field("choices"))], "no 'choices' list", id="missing-choices"
    ),
    pytest.param(
        "extension",
        [ok(drop_field(EXT))],
        "ignored the 'maas_tune' request extension",
        id="missing-extension",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.label_logprobs", [-1.0]))],
        "1 label logprobs for 2 label tokens",
        id="too-few-logprobs",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.label_logprobs", ["high", "low"]))],
        "wrong type.*could not convert",
        id="logprobs-wrong-type",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.prompt_tokens", "many"))],
        "wrong type.*'many'",
        id="prompt-tokens-wrong-type",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.prompt_tokens", -3))],
        "prompt_tokens=-3",
        id="negative-prompt-tokens",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.hidden", 12345))],
        "not valid base64",
        id="hidden-wrong-type",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.label_logprobs", [math.nan, -1.0]))],
        r"\[nan, -1\.0\].*NaN",
        id="nan-logprob",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.label_logprobs", [-math.inf, -1.0]))],
        r"\[-inf, -1\.0\].*top-k/top-p",
        id="-inf-logprob",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.label_logprobs", [0.5, -1.0]))],
        r"\[0\.5, -1\.0\]",
        id="positive-logprob",
    ),
    pytest.param(
        "extension",
        [ok(set_field(f"{EXT}.hidden", NAN_HIDDEN))],
        "hidden state holds 4 NaN",
        id="nan-hidden",
    ),
    pytest.param(
        "extension",
        [ok(set_field("model", "other-model"))],
        "model 'other-model', not the 'fake-model'",
        id="wrong-model",
    ),
    pytest.param(
        "top_logprobs",
        [ok(drop_field("choices.0.logprobs"))],
        "no 'logprobs'",
        id="missing-logprobs",
    ),
    pytest.param(
        "top_logprobs",
        [ok(set_field("choices.0.logprobs.top_logprobs.0. positive", "high"))],
        "wrong type.*'high'",
        id="top-logprob-wrong-type",
    ),
    pytest.param(
        "top_logprobs",
        [ok(set_field("choices.0.logprobs.top_logprobs.0. positive", math.nan))],
        "NaN",
        id="nan-top-logprob",
    ),
    pytest.param(
        "top_logprobs",
        [ok(set_field("choices.0.logprobs.top_logprobs.0. negative", -math.inf))],
        "-inf",
        id="-inf-top-logprob",
    ),
    pytest.param(
        "top_logprobs",
        [ok(top_without(" negative")), ok(set_field("choices.0.logprobs.tokens", [" a"]))],
        "did not force label word 'negative'",
        id="logit-bias-ignored",
    ),
    pytest.param(
        "top_logprobs",
        [ok(top_without(" negative")), ok(set_field("choices.0.logprobs.token_logprobs", [-1e-5]))],
        "after logit_bias",
        id="logprob-reported-after-bias",
    ),
    pytest.param(
        "top_logprobs",
        [ok(set_field("model", "gpt-other"))],
        "model 'gpt-other', not the 'fake-model'",
        id="wrong-model-top-logprobs",
    ),
]


@pytest.mark.parametrize(("strategy", "faults", "cause"), RESPONSE_FAULTS)
def test_a_bad_answer_is_one_clear_error_and_never_cached(
    make_rig: RigFactory, strategy: str, faults: list[Action], cause: str
):
    rig = make_rig(strategy)
    rig.server.script(*faults)
    with pytest.raises(ProviderResponseError, match=cause) as info:
        rig.score()
    assert info.value.request_sent is True  # it was answered, hence billed
    assert rig.server.received == len(faults) and rig.slept == []  # not retried
    assert len(rig.cache) == 0
    # Exactly the requests that were answered are charged (each was billed).
    assert rig.spent() == rig.server.received
    assert_recovers(rig, cost=1)


def test_a_label_missing_from_top_logprobs_is_forced_with_one_more_request(make_rig: RigFactory):
    rig = make_rig("top_logprobs")
    rig.server.script(ok(top_without(" negative")))
    assert_good(rig.score())
    forced = rig.server.requests[1]
    assert list(forced["logit_bias"].values()) == [100]
    assert (rig.server.received, rig.server.completed) == (2, 2)
    assert rig.spent() == 2 and len(rig.cache) == 1  # both requests produced the answer
    assert_rerun_is_free(rig)


@pytest.mark.parametrize(
    ("asked", "answered", "same"),
    [
        ("fake-model", "fake-model", True),
        ("gpt-4o", "gpt-4o-2024-08-06", True),  # a dated snapshot
        ("gpt-3.5-turbo-instruct", "gpt-3.5-turbo-instruct:20230824-v2", True),
        ("Llama-3-8B", "meta-llama/llama-3-8b", True),  # an org prefix, another case
        ("gemma", "/models/gemma-3-270m-q4_k_m.gguf", True),  # llama.cpp may name the file
        ("gpt-4", "gpt-4o", False),
        ("fake-model", "other-model", False),
        ("gemma-3-270m", "gemma", False),
    ],
)
def test_what_counts_as_a_reply_for_the_same_model(asked: str, answered: str, same: bool):
    assert same_model(asked, answered) is same


def test_a_reply_naming_a_snapshot_of_the_model_is_accepted(make_rig: RigFactory):
    rig = make_rig()
    rig.server.script(ok(set_field("model", f"org/{MODEL}:2024-08-06")))
    assert_good(rig.score())
    assert rig.spent() == 1 and len(rig.cache) == 1


def test_one_bad_answer_is_refused_and_the_good_one_of_its_chunk_is_kept(make_rig: RigFactory):
    """The good answer of the failed chunk was paid for: it is cached, never paid again."""
    rig = make_rig()
    rig.server.script(ok(), ok(set_field(f"{EXT}.label_logprobs", [math.nan, -1.0])))
    with pytest.raises(ProviderResponseError, match="NaN"):
        rig.score(TEXTS)
    assert rig.server.received == 2 and rig.spent() == 2 and len(rig.cache) == 1
    assert_good(rig.score(TEXTS), TEXTS)
    assert rig.server.received == 3 and rig.spent() == 3 and len(rig.cache) == 2
