"""Tests for maas_tune.providers.openai: strategies, probe and faults against scripted servers."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from typing import Any

import httpx
import numpy as np
import pytest

from maas_tune.errors import (
    ConfigurationError,
    ProviderResponseError,
    ProviderStatusError,
    TaskError,
)
from maas_tune.providers._probe import clear_probe_cache
from maas_tune.providers.openai import OpenAICompletionsProvider

from .._servers import serve_in_thread

KEY = "sk-test-SECRETKEY123456"
BASE = "http://fake.test/v1"
WORDS = ["positive", "negative"]
# The fake model's next-token distribution (unnormalised weights, made log-probs below).
_WEIGHTS = {
    " the": 8.0,
    " a": 4.0,
    " positive": 3.0,
    " it": 2.0,
    " very": 1.5,
    " so": 1.0,
    " negative": 0.25,
    " ok": 0.25,
}
NEXT = {tok: math.log(w / sum(_WEIGHTS.values())) for tok, w in _WEIGHTS.items()}


class FakeServer:
    """A scripted OpenAI-style completions server (an httpx.MockTransport handler).

    Flags say which features it has; ``faults`` is a list of responses served first.
    """

    def __init__(
        self,
        *,
        extension: bool = False,
        strict: bool = False,
        top: bool = True,
        echo: bool = True,
        tokenizer: bool = True,
        biased: bool = False,
        max_top: int = 5,
        faults: list[httpx.Response] | None = None,
    ) -> None:
        self.extension, self.strict, self.top, self.echo = extension, strict, top, echo
        self.tokenizer, self.biased, self.max_top = tokenizer, biased, max_top
        self.faults = list(faults or [])
        self.vocab: dict[str, int] = {tok: i + 10 for i, tok in enumerate(NEXT)}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(p, len(self.vocab) + 10) for p in re.findall(r"\s?\S+", text)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append({"path": request.url.path, **body})
        self.headers.append(request.headers)
        if self.faults:
            return self.faults.pop(0)
        if request.url.path == "/extras/tokenize":
            if not self.tokenizer:
                return httpx.Response(404, json={"error": "not found"})
            return httpx.Response(200, json={"tokens": self.ids(body["input"])})
        if self.strict and "maas_tune" in body:
            error = {"message": "Unrecognized request argument supplied: maas_tune"}
            return httpx.Response(400, json={"error": error})
        return httpx.Response(200, json=self.complete(body))

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        choice: dict[str, Any] = {"index": 0, "text": " the", "logprobs": None}
        if self.extension and "maas_tune" in body:
            by_id = {self.vocab[t]: lp for t, lp in NEXT.items()}
            ids = body["maas_tune"]["label_token_ids"]
            hidden = base64.b64encode(np.arange(4, dtype="<f4").tobytes()).decode()
            choice["maas_tune"] = {
                "label_logprobs": [by_id.get(i, -30.0) for i in ids],
                "hidden": hidden,
                "prompt_tokens": len(self.ids(prompt)),
            }
        if body.get("echo") and self.echo:
            choice["logprobs"] = self.echoed(prompt)
        elif body.get("logprobs") and self.top:
            choice["logprobs"] = self.top_logprobs(body)
        return {"choices": [choice], "usage": {"prompt_tokens": len(self.ids(prompt))}}

    def top_logprobs(self, body: dict[str, Any]) -> dict[str, Any]:
        k = min(body["logprobs"], self.max_top)
        top = dict(sorted(NEXT.items(), key=lambda kv: -kv[1])[:k])
        token, value = " the", NEXT[" the"]
        if body.get("logit_bias"):
            forced = int(next(iter(body["logit_bias"])))
            token = next(t for t, i in self.vocab.items() if i == forced)
            value = -1e-5 if self.biased else NEXT.get(token, -12.0)
        return {
            "tokens": [token],
            "token_logprobs": [value],
            "top_logprobs": [top],
            "text_offset": [len(body["prompt"])],
        }

    def echoed(self, prompt: str) -> dict[str, Any]:
        # The fake splits an echoed prompt at its last word: "<context>" + " <word>".
        cut = prompt.rstrip().rfind(" ")
        head, word = prompt[:cut], prompt[cut:]
        values = [None, NEXT.get(word, -9.0), -1.0]
        return {
            "tokens": [head, word, " the"],
            "token_logprobs": values,
            "top_logprobs": None,
            "text_offset": [0, cut, len(prompt)],
        }


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    clear_probe_cache()
    yield
    clear_probe_cache()


def make(server: FakeServer, **kwargs: Any) -> OpenAICompletionsProvider:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("sleep", lambda s: None)
    return OpenAICompletionsProvider(
        BASE, "fake-model", transport=httpx.MockTransport(server), **kwargs
    )


def completions(server: FakeServer) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"] == "/v1/completions"]


# -- strategies -------------------------------------------------------------------------
def test_extension_happy_path_is_exact_with_hidden():
    server = FakeServer(extension=True)
    provider = make(server, strategy="extension")
    ids = provider.label_token_ids(WORDS)
    assert ids == [server.vocab[" positive"], server.vocab[" negative"]]
    [answer] = provider.score(["Review: great. Sentiment:"], WORDS)
    np.testing.assert_allclose(answer.logprobs, [NEXT[" positive"], NEXT[" negative"]], atol=1e-6)
    np.testing.assert_array_equal(answer.hidden, np.arange(4, dtype=np.float32))
    assert answer.queries == 1 and answer.prompt_tokens == 3
    assert completions(server)[0]["maas_tune"] == {"label_token_ids": ids, "return_hidden": True}
    assert provider.returns_hidden and provider.max_queries_per_prompt(2) == 1
    assert provider.count_tokens(["a b c", "d"]) == [4, 2]  # tokenizer ids + BOS


def test_top_logprobs_words_in_top_k_cost_one_request():
    server = FakeServer()
    provider = make(server, strategy="top_logprobs", top_logprobs=5)
    answers = provider.score(["a b:", "c d:"], ["positive", "it"])
    for answer in answers:
        np.testing.assert_allclose(answer.logprobs, [NEXT[" positive"], NEXT[" it"]], atol=1e-6)
        assert answer.queries == 1 and answer.hidden is None
    assert [r["max_tokens"] for r in completions(server)] == [1, 1]
    assert provider.max_queries_per_prompt(2) == 3


def test_top_logprobs_recovers_a_missing_word_with_one_forced_request():
    server = FakeServer()
    provider = make(server, strategy="top_logprobs")
    ids = provider.label_token_ids(WORDS)
    [answer] = provider.score(["Review: meh. Sentiment:"], WORDS)
    np.testing.assert_allclose(answer.logprobs, [NEXT[" positive"], NEXT[" negative"]], atol=1e-6)
    assert answer.queries == 2 and answer.prompt_tokens == 2 * 3
    forced = completions(server)[1]
    assert forced["logit_bias"] == {str(ids[1]): 100}
    assert forced["max_tokens"] == 1 and forced["logprobs"] == 5


def test_top_logprobs_refuses_logprobs_reported_after_the_bias():
    provider = make(FakeServer(biased=True), strategy="top_logprobs")
    with pytest.raises(ProviderResponseError, match="after logit_bias") as info:
        provider.score(["x:"], WORDS)
    assert info.value.request_sent  # the first request was answered, hence billed


def test_top_logprobs_without_tokenizer_matches_by_text_and_uses_synthetic_ids():
    server = FakeServer(tokenizer=False)
    provider = make(server, strategy="top_logprobs")
    ids = provider.label_token_ids(["positive", "it"])
    assert all(i < 0 for i in ids) and ids == provider.label_token_ids(["positive", "it"])
    [answer] = provider.score(["x:"], ["positive", "it"])
    np.testing.assert_allclose(answer.logprobs, [NEXT[" positive"], NEXT[" it"]], atol=1e-6)
    with pytest.raises(ProviderResponseError, match="cannot be forced"):
        provider.score(["x:"], ["negative"])
    # No tokenizer: a bound no tokenizer can pass (UTF-8 bytes + special tokens), so a
    # prompt-token cap holds for any script: CJK characters are 3 bytes each.
    assert provider.count_tokens(["abcdefg", "日本語"]) == [7 + 8, 9 + 8]


def test_echo_sums_the_word_tokens_after_the_prompt():
    server = FakeServer(top=False)
    provider = make(server, strategy="echo")
    [answer] = provider.score(["Review: fine. Sentiment:"], WORDS)
    np.testing.assert_allclose(answer.logprobs, [NEXT[" positive"], NEXT[" negative"]], atol=1e-6)
    assert answer.queries == 2 == provider.max_queries_per_prompt(2)
    sent = completions(server)
    assert [r["prompt"] for r in sent] == [
        "Review: fine. Sentiment: positive",
        "Review: fine. Sentiment: negative",
    ]
    assert all(r["echo"] is True and r["max_tokens"] == 1 and r["logprobs"] == 0 for r in sent)


def test_label_words_must_be_single_tokens():
    provider = make(FakeServer(), strategy="top_logprobs")
    with pytest.raises(TaskError, match="'very good' is 2 tokens"):
        provider.label_token_ids(["positive", "very good"])


def test_score_keeps_prompt_order_under_concurrency():
    server = FakeServer(extension=True)
    provider = make(server, strategy="extension", max_concurrency=4)
    prompts = [f"p {'x ' * i}:" for i in range(12)]
    answers = provider.score(prompts, WORDS)
    assert [a.prompt_tokens for a in answers] == [len(server.ids(p)) for p in prompts]


# -- probe ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "expected", "missing"),
    [
        ({"extension": True}, "extension", None),
        ({}, "top_logprobs", "force"),  # a tokenizer, log-probs reported before the bias
        ({"strict": True}, "top_logprobs", "force"),  # the extension field is refused
        ({"tokenizer": False}, "top_logprobs", "echo"),  # no token ids: echo missing words
        ({"biased": True}, "top_logprobs", "echo"),  # biased values: echo missing words
        ({"top": False}, "echo", None),
    ],
)
def test_auto_picks_the_cheapest_exact_plan(flags, expected, missing):
    provider = make(FakeServer(**flags))
    plan = provider.select_strategy()
    assert (provider.strategy, plan.missing) == (expected, missing) and plan.reason
    assert provider.probe_result.requests == provider.probe_requests <= 4
    # Every plan is exact, so the cache identity names what answers hold, not the strategy.
    assert provider.fingerprint()["reading"] == (
        "exact+hidden" if expected == "extension" else "exact"
    )


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"top": False, "echo": False}, "returns no top log-probs and does not echo"),
        ({"tokenizer": False, "echo": False}, "pass --tokenizer"),
        ({"biased": True, "echo": False}, "after logit_bias"),
    ],
)
def test_auto_refuses_before_scoring_when_no_plan_is_exact(flags, says):
    server = FakeServer(**flags)
    provider = make(server)
    provider.label_token_ids(WORDS)
    with pytest.raises(ConfigurationError, match=says):
        provider.select_strategy()
    probed = len(completions(server))
    with pytest.raises(ConfigurationError, match=says):  # decided again, never kept
        provider.score(["x y:"], WORDS)
    assert len(completions(server)) == probed  # no sample was sent


def test_probe_requests_are_counted_once_per_process():
    server = FakeServer(top=False)
    provider = make(server)
    [answer] = provider.score(["x y:"], WORDS)
    assert provider.probe_requests == 2 and answer.queries == 2  # extension+top, echo
    again = make(server)
    assert again.select_strategy().strategy == "echo" and again.probe_requests == 0


def test_auto_switches_to_echo_when_the_label_words_are_mostly_missing():
    server = FakeServer(tokenizer=False)  # " negative" and " zebra" are never in the top-5
    provider = make(server)
    first = provider.score([f"p{i}:" for i in range(8)], ["negative", "zebra"])
    assert all(a.queries == 3 for a in first)  # top-k, then both words echoed
    before = len(completions(server))
    second = provider.score([f"q{i}:" for i in range(4)], ["negative", "zebra"])
    assert all(a.queries == 2 for a in second)  # echo only: 2 < 1 + 2
    assert len(completions(server)) - before == 8
    np.testing.assert_allclose(first[0].logprobs, second[0].logprobs, atol=1e-6)


def test_client_charges_the_probe_and_the_samples(db_path):
    from maas_tune.client import Client
    from maas_tune.storage.budget import QueryBudget
    from maas_tune.task import Task

    task = Task("t", "Review: {text}. Sentiment:", {"pos": ["positive"], "neg": ["negative"]})
    server = FakeServer()
    provider = make(server)
    budget = QueryBudget("b", max_queries=20, store=db_path)
    client = Client(provider, cache=db_path, budget=budget, progress=False)
    scores = client.score(task, ["great", "bad"])
    assert scores.label_logprobs.shape == (2, 2)
    assert provider.probe_requests == 3 == client.usage.probe_queries  # top-k, bias, echo
    # Every request the API answered is charged: the probe's and 2 x (1 + forced).
    assert budget.status().spent_queries == 7 == client.usage.queries_sent
    assert len(completions(server)) == 7


# -- faults and secrets ---------------------------------------------------------------
def test_429_is_retried_after_the_servers_retry_after():
    slept: list[float] = []
    limited = httpx.Response(429, headers={"retry-after": "7"}, json={"error": "slow down"})
    server = FakeServer(extension=True, faults=[limited])
    provider = make(server, strategy="extension", sleep=slept.append, tokenizer=server.ids)
    [answer] = provider.score(["x:"], ["the"])
    assert slept == [7.0] and answer.queries == 1


def test_persistent_500_gives_up_after_bounded_retries():
    slept: list[float] = []
    server = FakeServer(faults=[httpx.Response(500, json={"error": "boom"}) for _ in range(5)])
    provider = make(
        server, strategy="extension", max_retries=4, sleep=slept.append, tokenizer=server.ids
    )
    with pytest.raises(ProviderStatusError) as info:
        provider.score(["x:"], ["the"])
    assert info.value.status == 500 and len(server.requests) == 5 and len(slept) == 4


def test_malformed_json_is_a_response_error():
    server = FakeServer(faults=[httpx.Response(200, content=b"{not json")])
    with pytest.raises(ProviderResponseError, match="not valid JSON"):
        make(server, strategy="extension", tokenizer=server.ids).score(["x:"], ["the"])


def test_api_key_is_sent_but_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("MAAS_TUNE_API_KEY", KEY)
    echoing = httpx.Response(401, json={"error": {"message": f"bad key Bearer {KEY}"}})
    server = FakeServer(faults=[echoing])
    provider = OpenAICompletionsProvider(
        BASE, "m", strategy="extension", transport=httpx.MockTransport(server), tokenizer=server.ids
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ProviderStatusError) as info:
        provider.score(["x:"], ["the"])
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"
    shown = [str(info.value), repr(provider), json.dumps(provider.fingerprint()), caplog.text]
    assert all(KEY not in text for text in shown)


def test_invalid_options_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="unknown strategy"):
        OpenAICompletionsProvider(BASE, "m", strategy="magic")
    with pytest.raises(ConfigurationError, match="base_url"):
        OpenAICompletionsProvider("fake.test/v1", "m")


# -- real server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_gemma(gemma):
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import Engine, create_app

    with serve_in_thread(create_app(Engine(gemma, "gemma-3-270m"))) as url:
        yield f"{url}/v1"


@pytest.mark.model
def test_real_server_auto_and_top_logprobs_match_the_local_model(gemma, served_gemma):
    prompts = ["Review: a delight from start to finish. Sentiment:", "Review: dull. Sentiment:"]
    ids = gemma.label_token_ids(WORDS)
    expected = np.stack([a.logprobs for a in gemma.score(prompts, WORDS)])
    with OpenAICompletionsProvider(served_gemma, "gemma-3-270m") as auto:
        assert auto.label_token_ids(WORDS) == ids
        assert auto.select_strategy().strategy == "extension"
        got = np.stack([a.logprobs for a in auto.score(prompts, WORDS)])
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with OpenAICompletionsProvider(served_gemma, "gemma-3-270m", strategy="top_logprobs") as top:
        got = np.stack([a.logprobs for a in top.score(prompts, WORDS)])
        np.testing.assert_allclose(got, expected, atol=1e-3)
