"""OpenAIChatProvider: against maas-tune serve (real model, hosted-style cap of 5 top logprobs),
and a scripted chat API for the tokenizer-less and fault cases."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from maas_tune.client import Client
from maas_tune.errors import ConfigurationError, ProviderResponseError, TaskError
from maas_tune.providers._forcing import missing_bound
from maas_tune.providers._probe import clear_probe_cache
from maas_tune.providers.chat import OpenAIChatProvider
from maas_tune.providers.chat_format import ChatFormat
from maas_tune.storage.budget import QueryBudget
from maas_tune.task import Task

from .._servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gemma-3-270m"
CAP = 5
CHAT = "/v1/chat/completions"
#: Request timeout against the loopback server: the test machine may be loaded, and a
#: timed-out request is retried, which the server would count twice.
PATIENT_S = 600.0
TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "dull and lifeless",
    "the plot is a mess.",
    "a delight from start to finish.",
]


def task_with(*words: str) -> Task:
    return Task("t", "Review: {text}\nSentiment:", {f"c{i}": [w] for i, w in enumerate(words)})


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    clear_probe_cache()
    yield
    clear_probe_cache()


# -- against maas-tune serve ----------------------------------------------------------
class CountingApp:
    """ASGI wrapper that counts the HTTP requests reaching the server, per path."""

    def __init__(self, app: Any) -> None:
        self.app, self.hits = app, Counter()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.hits[scope["path"]] += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def served(gemma):
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import Engine, create_app

    counting = CountingApp(create_app(Engine(gemma, MODEL), max_top_logprobs=CAP))
    with serve_in_thread(counting) as url:
        yield f"{url}/v1", counting.hits


def top_k(url: str, task: Task, text: str) -> dict[str, float]:
    """The first answer token's top-k as the official client parses it (one request)."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=PATIENT_S)
    messages = ChatFormat().messages(task.render({"text": text}), task.label_words)
    out = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1, temperature=0, logprobs=True, top_logprobs=CAP
    )
    return {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}


def expected_logprobs(gemma, task: Task, ids: list[int]) -> np.ndarray:
    from maas_tune.server._chat import plain_template
    from maas_tune.server.chat_schemas import ChatMessage

    prompts = [
        plain_template(
            [
                ChatMessage(**m)
                for m in ChatFormat().messages(task.render({"text": t}), task.label_words)
            ]
        )
        for t in TEXTS
    ]
    return np.stack([a.logprobs for a in gemma.score_with_tokens(prompts, ids, 0)])  # (n, t)


@pytest.mark.model
def test_probe_finds_logprobs_before_the_bias_and_picks_force(served):
    url, hits = served
    before = hits[CHAT]
    provider = OpenAIChatProvider(url, MODEL, timeout=PATIENT_S)
    provider.select_strategy()
    result = provider.probe_result
    assert (result.top_logprobs, result.bias, provider.strategy) == (CAP, "before", "force")
    assert result.served_model == MODEL
    assert result.requests == provider.probe_requests == hits[CHAT] - before == 2
    again = OpenAIChatProvider(url, MODEL, timeout=PATIENT_S)
    assert (
        again.select_strategy().strategy == "force"
        and again.probe_requests == 0
        and hits[CHAT] - before == 2
    )


@pytest.mark.model
def test_one_request_per_sample_plus_one_per_missing_word(gemma, served, db_path):
    url, hits = served
    provider = OpenAIChatProvider(url, MODEL, strategy="force", timeout=PATIENT_S)
    budget = QueryBudget("chat", store=db_path)
    client = Client(provider, cache=db_path, budget=budget, progress=False)
    missing: dict[tuple[str, ...], list[int]] = {}
    for words in (("I", "Positive"), ("Negative", "Positive")):
        task = task_with(*words)
        missing[words] = [sum(w not in top_k(url, task, t) for w in words) for t in TEXTS]
        spent, before = budget.status().spent_queries, hits[CHAT]
        scores = client.score(task, TEXTS)
        sent = hits[CHAT] - before
        assert sent == len(TEXTS) + sum(missing[words]) == budget.status().spent_queries - spent
        want = expected_logprobs(gemma, task, provider.label_token_ids(words))
        np.testing.assert_allclose(scores.label_logprobs, want, atol=1e-4)  # the model's own
    # Both words of the first task are in every top-5: exactly one request per sample.
    assert missing[("I", "Positive")] == [0] * len(TEXTS)
    # "Negative" is missing from some samples' top-5 only: those cost one more each.
    assert 0 < sum(missing[("Negative", "Positive")]) < len(TEXTS)
    assert provider.forced_words == sum(missing[("Negative", "Positive")])
    assert client.usage.queries_sent == budget.status().spent_queries
    before = hits[CHAT]
    client.score(task, TEXTS)
    assert hits[CHAT] == before  # cached: a rerun costs nothing


@pytest.mark.model
def test_top_logprobs_strategy_costs_one_request_and_bounds_missing_words(served):
    url, hits = served
    task = task_with("Negative", "Positive")
    tops = [top_k(url, task, t) for t in TEXTS]
    provider = OpenAIChatProvider(url, MODEL, strategy="top_logprobs", timeout=PATIENT_S)
    before = hits[CHAT]
    answers = provider.score([task.render({"text": t}) for t in TEXTS], task.label_words)
    assert hits[CHAT] - before == len(TEXTS) and provider.max_queries_per_prompt(2) == 1
    for answer, top in zip(answers, tops):
        want = [top.get(w, missing_bound(top)) for w in task.label_words]
        np.testing.assert_allclose(answer.logprobs, want, atol=1e-4)
        assert answer.queries == 1
    n_missing = sum(w not in top for top in tops for w in task.label_words)
    assert provider.floored_words == n_missing > 0 and provider.forced_words == 0


@pytest.mark.model
def test_dect_through_chat_from_the_cli_then_offline(served, capsys, tmp_path, monkeypatch):
    from maas_tune.cli import main

    url, hits = served
    monkeypatch.setitem(OpenAIChatProvider.__init__.__kwdefaults__, "timeout", PATIENT_S)
    argv = [
        "eval",
        "--dataset",
        "sst2",
        "--shots",
        "2",
        "--seed",
        "0",
        "--test-limit",
        "6",
        "--method",
        "dect",
        "--api",
        "chat",
        "--base-url",
        url,
        "--quiet",
        "--json",
        "--cache",
        str(tmp_path / "c.sqlite"),
    ]
    before = hits[CHAT]
    assert main(argv) == 0
    online = json.loads(capsys.readouterr().out)
    assert (online["provider"], online["strategy"]) == ("openai-chat", "force")
    assert online["samples_sent"] == 2 * 2 + 6
    # Every request is charged: the probe (2 requests), 1 per sample, 1 per missing word.
    assert online["queries_sent"] == hits[CHAT] - before
    assert online["probe_queries"] == 2
    assert online["samples_sent"] <= online["queries_sent"] - 2 <= 3 * online["samples_sent"]
    assert main([*argv, "--offline"]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert offline["queries_sent"] == 0 and offline["accuracy"] == online["accuracy"]


@pytest.mark.model
def test_docs_example_runs(served, tmp_path, monkeypatch):
    url, _ = served
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "chat.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    namespace: dict[str, Any] = {}
    code = compile(block.replace("http://127.0.0.1:8000/v1", url), "docs/chat.md", "exec")
    exec(code, namespace)  # noqa: S102 - the page's example, run as written
    assert namespace["provider"].strategy == "force"
    assert namespace["scores"].label_logprobs.shape == (2, 2)


# -- a scripted chat API ----------------------------------------------------------------
TOP = {"Positive": -1.0, "I": -1.5, "1": -2.0, "-": -2.5, "The": -3.0}
VOCAB = {w: i + 10 for i, w in enumerate([*TOP, "Negative", "zebra"])}
UNSHOWN = -6.0  # the model's log-prob of every word outside TOP


class FakeChat:
    """A chat-completions API (httpx.MockTransport handler) without a tokenizer endpoint."""

    def __init__(
        self, faults: list[httpx.Response] | None = None, model: str = "m", biased: bool = False
    ) -> None:
        self.faults, self.model, self.biased = list(faults or []), model, biased
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append({"path": request.url.path, **body})
        if self.faults:
            return self.faults.pop(0)
        if request.url.path != CHAT:
            return httpx.Response(404, json={"error": {"message": "not found"}})
        bias = body.get("logit_bias") or {}
        word = next((w for w, i in VOCAB.items() if str(i) in bias), "Positive")
        top = [{"token": t, "logprob": v, "bytes": None} for t, v in TOP.items()]
        value = -1e-5 if bias and self.biased else TOP.get(word, UNSHOWN)
        first = {
            "token": word,
            "logprob": value,
            "bytes": None,
            "top_logprobs": top[: body["top_logprobs"]],
        }
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": word},
            "logprobs": {"content": [first]},
            "finish_reason": "length",
        }
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "model": self.model,
                "choices": [choice],
                "usage": {"prompt_tokens": 7, "total_tokens": 8},
            },
        )


def fake(server: FakeChat, **kwargs: Any) -> OpenAIChatProvider:
    kwargs.setdefault("sleep", lambda s: None)
    return OpenAIChatProvider(
        "http://fake.test/v1", "m", api_key="k", transport=httpx.MockTransport(server), **kwargs
    )


def test_force_without_a_known_tokenizer_is_a_clear_error():
    provider = fake(FakeChat(), strategy="force")
    with pytest.raises(ConfigurationError, match="no tokenizer is known.*pass --tokenizer"):
        provider.label_token_ids(["Negative", "Positive"])


def test_auto_without_a_tokenizer_refuses_before_sending_anything():
    server = FakeChat()
    provider = fake(server)
    provider.label_token_ids(["Negative", "Positive"])
    assert provider.setup_requests() == 0  # nothing to probe: no plan could be exact
    with pytest.raises(ConfigurationError, match="pass --tokenizer.*--strategy top_logprobs"):
        provider.select_strategy()
    assert [r for r in server.requests if r["path"] == CHAT] == []


def test_top_logprobs_on_request_bounds_missing_words_and_says_so():
    provider = fake(FakeChat(), strategy="top_logprobs")
    [answer] = provider.score(["Review: ok.\nSentiment:"], ["Negative", "Positive"])
    np.testing.assert_allclose(answer.logprobs, [missing_bound(TOP), -1.0], rtol=1e-6)
    assert answer.queries == 1 and answer.floored == 1 and provider.floored_words == 1
    assert provider.fingerprint()["reading"] == "top-5 bound"


def test_a_given_tokenizer_enables_exact_forcing():
    server = FakeChat()
    provider = fake(server, tokenizer=lambda text: [VOCAB[text]] if text in VOCAB else [1, 2])
    assert provider.select_strategy().strategy == "force"
    assert provider.probe_result.bias == "before"
    ids = provider.label_token_ids(["Negative", "Positive"])
    assert ids == [VOCAB["Negative"], VOCAB["Positive"]]
    [answer] = provider.score(["Review: ok.\nSentiment:"], ["Negative", "Positive"])
    np.testing.assert_allclose(answer.logprobs, [UNSHOWN, -1.0])
    assert answer.queries == 2 and answer.prompt_tokens == 14 and provider.forced_words == 1
    forced = server.requests[-1]
    assert forced["logit_bias"] == {str(VOCAB["Negative"]): 100}
    assert (forced["max_tokens"], forced["temperature"], forced["top_logprobs"]) == (1, 0, 5)
    assert forced["messages"][1]["content"].startswith(
        "Classify the text. Answer with one word: Negative, Positive."
    )
    with pytest.raises(TaskError, match="'very good' is 2 tokens"):
        provider.label_token_ids(["very good", "Positive"])


def test_logprobs_reported_after_the_bias_rule_forcing_out():
    def tokenizer(text: str) -> list[int]:
        return [VOCAB[text]]

    auto = fake(FakeChat(biased=True), tokenizer=tokenizer)
    with pytest.raises(ConfigurationError, match="after logit_bias.*--strategy top_logprobs"):
        auto.select_strategy()
    assert auto.probe_result.bias == "after"
    forced = fake(FakeChat(biased=True), tokenizer=tokenizer, strategy="force")
    with pytest.raises(ProviderResponseError, match="after logit_bias.*strategy='top_logprobs'"):
        forced.score(["x"], ["Negative", "Positive"])


def test_429_is_retried_after_retry_after():
    slept: list[float] = []
    server = FakeChat()
    provider = fake(server, strategy="top_logprobs", sleep=slept.append)
    provider.label_token_ids(["I", "Positive"])  # learnt before the fault is armed
    server.faults.append(httpx.Response(429, headers={"retry-after": "3"}, json={"error": "slow"}))
    [answer] = provider.score(["x"], ["I", "Positive"])
    assert slept == [3.0] and answer.queries == 1
    assert [r["path"] for r in server.requests[-2:]] == [CHAT, CHAT]


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (
            {"choices": [{"index": 0, "message": {"content": "I"}, "logprobs": None}]},
            "carries no 'logprobs.content'",
        ),
        (
            {"choices": [{"logprobs": {"content": [{"token": "I", "top_logprobs": "x"}]}}]},
            "no 'top_logprobs'",
        ),
        ({"model": "gpt-4o", "choices": []}, "answered for model 'gpt-4o'"),
        (
            {
                "choices": [
                    {
                        "logprobs": {
                            "content": [{"top_logprobs": [{"token": "I", "logprob": "high"}]}]
                        }
                    }
                ]
            },
            "field of the wrong type",
        ),
    ],
)
def test_malformed_replies_are_response_errors(reply, match):
    server = FakeChat()
    provider = fake(server, strategy="top_logprobs")
    provider.label_token_ids(["I", "Positive"])  # learnt before the fault is armed
    server.faults.append(httpx.Response(200, json=reply))
    with pytest.raises(ProviderResponseError, match=match) as info:
        provider.score(["x"], ["I", "Positive"])
    assert info.value.request_sent  # it was answered, hence billed


def test_invalid_options_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="unknown strategy 'echo' for the chat"):
        OpenAIChatProvider("http://x.test/v1", "m", strategy="echo")
    with pytest.raises(ConfigurationError, match="exactly once"):
        ChatFormat(instruction="Answer.")
    with pytest.raises(ConfigurationError, match="tokenizer must map"):
        OpenAIChatProvider("http://x.test/v1", "m", tokenizer="cl100k")  # type: ignore[arg-type]
