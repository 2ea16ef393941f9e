"""Tests for maas_tune.providers.embeddings: a real maas-tune server, and faults from scripted ones."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import numpy as np
import pytest

from maas_tune import datasets
from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.data import labels_to_indices, sample_k_shot
from maas_tune.decoders import DecT
from maas_tune.errors import ConfigurationError, ProviderResponseError, ProviderStatusError
from maas_tune.providers.embeddings import OpenAIEmbeddingsProvider
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.providers.with_embeddings import WithEmbeddings
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache

from .._servers import serve_in_thread
from ..fakes import FakeProvider

KEY = "sk-test-SECRETKEY123456"
BASE = "http://fake.test/v1"
MODEL = "gemma-3-270m"
PROMPTS = [
    "Review: a gorgeous, witty, seductive movie.\nSentiment:",
    "Review: dull and lifeless\nSentiment:",
    "Review: the plot is a mess.\nSentiment:",
]


# -- against a real `maas-tune serve` -------------------------------------------------
@pytest.fixture(scope="module")
def served(gemma):
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import Engine, create_app

    with serve_in_thread(create_app(Engine(gemma, MODEL))) as url:
        yield f"{url}/v1"


@pytest.mark.model
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_equal_the_extension_hidden_state(served, encoding):
    with OpenAICompletionsProvider(served, MODEL, strategy="extension") as scorer:
        expected = np.stack(
            [a.hidden for a in scorer.score(PROMPTS, ["negative", "positive"])]
        )  # (3, d)
    # batch_size 2: the three prompts go out in two requests and come back in order
    with OpenAIEmbeddingsProvider(served, MODEL, encoding_format=encoding, batch_size=2) as emb:
        got = emb.embed(PROMPTS)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


def _sst2_shots(n_per_class: int):
    task = datasets.load_task("sst2")
    shots = sample_k_shot(datasets.load("sst2").train, n_per_class, labels=task.labels, seed=0)
    return task, shots


@pytest.mark.model
def test_with_embeddings_through_the_client_costs_one_more_query_per_sample(
    served, db_path, monkeypatch
):
    task, shots = _sst2_shots(2)
    n = len(shots)
    scorer = OpenAICompletionsProvider(served, MODEL, strategy="top_logprobs")
    from_scorer: list = []  # the scorer's own answers, to know how many words it forced

    async def spy(prompts, token_ids, ascore=scorer.ascore, **observe):
        answers, spend = await ascore(prompts, token_ids, **observe)
        from_scorer.extend(answers)
        return answers, spend

    monkeypatch.setattr(scorer, "ascore", spy)  # the client's path: async end to end
    provider = WithEmbeddings(scorer, OpenAIEmbeddingsProvider(served, MODEL))
    with provider:
        assert provider.returns_hidden and not scorer.returns_hidden
        assert provider.max_queries_per_prompt(2) == scorer.max_queries_per_prompt(2) + 1 == 4
        budget = QueryBudget("emb", max_queries=1000, store=db_path)
        scores = Client(provider, cache=db_path, budget=budget, progress=False).score(task, shots)
        spent = budget.status()
        scorer_queries = sum(a.queries for a in from_scorer)  # 1 each + forced label words
        assert len(from_scorer) == n and scorer_queries >= n
        # + the embedding requests: one per batch of inputs (all n fit in one)
        assert spent.spent_queries == scorer_queries + 1
        assert spent.reserved_queries == 0 and not scores.cache_hit.any()
        assert spent.spent_prompt_tokens == int(scores.prompt_tokens.sum())
        embedded = provider.embedder.embed([task.render(e) for e in shots])
        assert scores.hidden is not None and np.abs(scores.hidden - embedded).max() < 1e-4

        rerun = Client(provider, cache=db_path, budget=budget, progress=False)
        again = rerun.score(task, shots)
        assert rerun.usage.queries_sent == 0 and again.cache_hit.all()
        assert budget.status().spent_queries == spent.spent_queries
        np.testing.assert_array_equal(again.hidden, scores.hidden)

    dect = DecT(random_state=0).fit(scores, labels_to_indices(shots, task.labels))
    assert dect.uses_hidden_
    assert set(dect.predict(scores)) <= set(task.labels)


@pytest.mark.model
def test_cli_embeddings_eval_fit_predict(served, capsys, tmp_path):
    cache = ["--cache", str(tmp_path / "c.sqlite"), "--quiet"]
    # extension: one scoring request per sample, so the count below is exact (the client
    # test above covers top_logprobs); its own hidden state is replaced by the embedding
    http = ["--base-url", served, "--strategy", "extension", "--embeddings"]
    data = ["--dataset", "sst2", "--shots", "2", "--seed", "0"]
    argv = ["eval", *data, "--test-limit", "4", "--method", "dect", "--json", *http, *cache]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["strategy"] == "extension+embeddings"
    # Train shots and test slice: one scoring request per sample, one embeddings request
    # per batch (each set fits in one batch).
    assert result["queries_sent"] == (4 + 1) + (4 + 1)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["queries_sent"] == 0  # all cached

    out = tmp_path / "dect"
    assert main(["fit", *data, "--out", str(out), *http, *cache]) == 0
    capsys.readouterr()
    (tmp_path / "in.jsonl").write_text('{"text": "a joy"}\n{"text": "a bore"}\n')
    predict = ["predict", "--decoder", str(out), "--input", str(tmp_path / "in.jsonl")]
    assert main([*predict, "--api-model", MODEL, *http, *cache]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["prediction"] in ("negative", "positive") for r in rows] == [True, True]
    assert "differs" not in captured.err  # same provider fingerprint as at fit time


def test_cli_embeddings_without_base_url_is_a_clear_error(capsys, tmp_path):
    argv = ["eval", "--dataset", "sst2", "--embeddings", "--cache", str(tmp_path / "c.sqlite")]
    assert main(argv) == 1
    assert "--embeddings needs --base-url" in capsys.readouterr().err


# -- scripted servers (httpx.MockTransport) ----------------------------------------------
def _vec(i: int, dim: int = 3) -> list[float]:
    return [float(i) + 0.5 * j for j in range(dim)]


def _reply(n: int, *, dim: int = 3, tokens: int | None = 12) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": _vec(i, dim)} for i in range(n)]
    body: dict[str, Any] = {"object": "list", "data": data, "model": "emb-model"}
    if tokens is not None:
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return body


class FakeEmbeddings:
    """A scripted ``/embeddings`` server: ``faults`` are served first, then good replies."""

    def __init__(self, faults: list[httpx.Response] | None = None, dim: int = 3) -> None:
        self.faults = list(faults or [])
        self.dim = dim
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.faults:
            return self.faults.pop(0)
        n = len(json.loads(request.content)["input"])
        return httpx.Response(200, json=_reply(n, dim=self.dim))


def _embedder(server: FakeEmbeddings, **kwargs: Any) -> OpenAIEmbeddingsProvider:
    kwargs.setdefault("api_key", KEY)
    return OpenAIEmbeddingsProvider(
        BASE, "emb-model", transport=httpx.MockTransport(server), sleep=lambda s: None, **kwargs
    )


def _raw(content: str) -> httpx.Response:
    return httpx.Response(
        200, content=content.encode(), headers={"content-type": "application/json"}
    )


_GOOD = '{"index": 1, "embedding": [1.0, 2.0]}'
MALFORMED = {
    "no data": (_raw('{"object": "list"}'), "no list of embedding objects"),
    "wrong count": (httpx.Response(200, json=_reply(1)), "holds 1 embeddings for 2 inputs"),
    "repeated index": (
        _raw(
            '{"data": [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 0, "embedding": [1.0, 2.0]}]}'
        ),
        "indices [0, 0] are not each of 0..1 exactly once",
    ),
    "NaN": (_raw(f'{{"data": [{{"index": 0, "embedding": [NaN, 1.0]}}, {_GOOD}]}}'), "non-finite"),
    "dimension mismatch": (
        _raw(f'{{"data": [{{"index": 0, "embedding": [1.0, 2.0, 3.0]}}, {_GOOD}]}}'),
        "dimension(s) [2, 3], expected 3",
    ),
    "not a vector": (
        _raw(f'{{"data": [{{"index": 0, "embedding": {{"x": 1}}}}, {_GOOD}]}}'),
        "embedding 0 is a JSON dict, not a list of numbers or a base64 string",
    ),
    "bad base64": (
        _raw(f'{{"data": [{{"index": 0, "embedding": "@@"}}, {_GOOD}]}}'),
        "not valid base64",
    ),
    "beyond float32": (
        _raw(f'{{"data": [{{"index": 0, "embedding": [1e39, 1.0]}}, {_GOOD}]}}'),
        "embedding 0 holds non-finite values",
    ),
    "another model": (
        httpx.Response(200, json={**_reply(2), "model": "text-embedding-3-large"}),
        "answered for model 'text-embedding-3-large', not the 'emb-model'",
    ),
    "not JSON": (_raw("<html>oops</html>"), "is not valid JSON"),
}


@pytest.mark.parametrize("fault", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_replies_raise_clear_errors(fault):
    response, message = MALFORMED[fault]
    emb = _embedder(FakeEmbeddings([response]))
    with emb, pytest.raises(ProviderResponseError, match=re.escape(message)) as info:
        emb.embed(["first text", "second"])
    assert info.value.request_sent  # a 2xx: the provider did the work
    assert KEY not in str(info.value)


def test_replies_go_back_in_input_order_in_either_encoding_and_usage_is_shared_out():
    shuffled = [
        {"index": 2, "embedding": _vec(2)},
        {"index": 0, "embedding": base64.b64encode(np.asarray(_vec(0), "<f4").tobytes()).decode()},
        {"index": 1, "embedding": _vec(1)},
    ]
    body = {"data": shuffled, "usage": {"prompt_tokens": 10}}
    server = FakeEmbeddings([httpx.Response(200, json=body)])
    with _embedder(server) as emb:
        vectors, tokens = emb.embed_with_usage(["aaaa", "b", "cc"])
        np.testing.assert_array_equal(vectors, np.asarray([_vec(0), _vec(1), _vec(2)], np.float32))
        assert tokens.tolist() == [5, 2, 3] and tokens.sum() == 10  # by length, exact total
        server.faults.append(httpx.Response(200, json=_reply(1, dim=4)))
        with pytest.raises(ProviderResponseError, match=r"dimension\(s\) \[4\], expected 3"):
            emb.embed(["later call, other model"])
    sent = json.loads(server.requests[0].content)
    assert sent == {"model": "emb-model", "input": ["aaaa", "b", "cc"], "encoding_format": "float"}
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_batches_retries_and_no_credentials_in_fingerprint(monkeypatch):
    monkeypatch.setenv("MAAS_TUNE_API_KEY", KEY)
    busy = httpx.Response(
        503, json={"error": {"message": "overloaded"}}, headers={"retry-after": "0"}
    )
    server = FakeEmbeddings([busy])
    with _embedder(server, api_key=None, batch_size=2, max_concurrency=1) as emb:
        vectors, tokens = emb.embed_with_usage(["one", "two", "three"])
        fingerprint = emb.fingerprint()
    assert vectors.shape == (3, 3) and tokens.sum() == 12 + 12  # usage of each batch
    assert len(server.requests) == 3  # the 503 retried, then two batches of at most 2
    assert [len(json.loads(r.content)["input"]) for r in server.requests[1:]] == [2, 1]
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"  # key from the env
    assert fingerprint == {  # the full origin: scheme, host, port, path
        "provider": "openai-embeddings",
        "origin": "http://fake.test/v1",
        "model": "emb-model",
    }
    assert KEY not in repr(emb) + json.dumps(fingerprint)


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"encoding_format": "int8"}, {"max_concurrency": 0}, {"timeout": -1}],
)
def test_bad_options_are_configuration_errors(kwargs):
    with pytest.raises(ConfigurationError):
        OpenAIEmbeddingsProvider(BASE, "m", **kwargs)
    with pytest.raises(ConfigurationError, match="http"):
        OpenAIEmbeddingsProvider("ftp://x/v1", "m")


def test_with_embeddings_contract(db_path, monkeypatch):
    scorer = FakeProvider(dim=8)
    provider = WithEmbeddings(scorer, _embedder(FakeEmbeddings()))
    attached: list[bool] = []
    monkeypatch.setattr(scorer, "attach_facts", lambda facts, offline: attached.append(offline))
    Client(provider, cache=db_path, offline=True)
    assert attached == [True]  # the scorer keeps its probe / token ids in the client's cache
    fp = provider.fingerprint()
    assert fp["scorer"] == scorer.fingerprint() and fp["embedder"]["model"] == "emb-model"
    assert fp["model"] == "fake-model" and fp["strategy"] == "fake+embeddings"
    assert provider.max_queries_per_prompt(3) == 2
    assert provider.label_token_ids(["a"]) == scorer.label_token_ids(["a"])
    assert provider.count_tokens(["a b"]) == [3]
    answers = provider.score(["x y", "z"], ["a", "b"])
    assert [a.queries for a in answers] == [2, 1]  # one embeddings request for the batch
    assert [a.hidden.tolist() for a in answers] == [_vec(0), _vec(1)]  # embeddings win
    assert sum(a.prompt_tokens for a in answers) == 3 + 2 + 12  # scorer's + embedding usage
    provider.close()
    assert provider.embedder._session.closed
    with pytest.raises(ConfigurationError, match="embedder"):
        WithEmbeddings(scorer, scorer)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fault",
    [
        _raw('{"data": [{"index": 0, "embedding": [NaN]}, {"index": 1, "embedding": [1.0]}]}'),
        httpx.Response(400, json={"error": {"message": "model not found", "type": "invalid"}}),
    ],
    ids=["NaN reply", "HTTP 400"],
)
def test_embeddings_failure_after_scores_counts_the_spend_and_caches_nothing(fault, db_path):
    server = FakeEmbeddings([fault])
    provider = WithEmbeddings(FakeProvider(), _embedder(server))
    cache, budget = ScoreCache(db_path), QueryBudget("b", max_queries=100, store=db_path)
    client = Client(provider, cache=cache, budget=budget, progress=False)
    with pytest.raises((ProviderResponseError, ProviderStatusError)) as info:
        client.score(_sst2_shots(1)[0], ["fine", "awful"])
    assert info.value.request_sent  # the scores were answered: paid for
    status = budget.status()
    # Exactly what was billed: the 2 scoring requests, and the embeddings request when it
    # was answered (a 2xx with a NaN in it), not when it was refused (HTTP 400).
    answered_embeddings = int(fault.status_code == 200)
    assert (status.spent_queries, status.reserved_queries) == (2 + answered_embeddings, 0)
    assert cache.stats().entries == 0

    scores = client.score(_sst2_shots(1)[0], ["fine", "awful"])  # the server recovered
    assert scores.hidden is not None and scores.hidden.shape == (2, 3)
    assert budget.status().spent_queries == 2 + answered_embeddings + 2 + 1
    assert cache.stats().entries == 2


def test_with_embeddings_scores_without_blocking_the_event_loop():
    """The client's chunks overlap on one event loop: while this provider waits for its
    scorer and embedder, other coroutines run (before, its ascore called the blocking
    score, and nothing else ran until it returned)."""
    import asyncio

    from .._det_server import DetServer

    with DetServer(latency=0.3) as det:
        scorer = OpenAICompletionsProvider(
            det.base_url, "det", strategy="top_logprobs", api_key=KEY
        )
        provider = WithEmbeddings(scorer, _embedder(FakeEmbeddings()))
        ticks: list[int] = []

        async def ticker(done: asyncio.Event) -> None:
            while not done.is_set():
                ticks.append(1)
                await asyncio.sleep(0.01)

        async def both() -> tuple[list, object]:
            done = asyncio.Event()
            ticking = asyncio.create_task(ticker(done))
            await asyncio.sleep(0)  # the ticker's first tick
            first = len(ticks)
            try:
                return await provider.ascore(["a b", "c"], ["positive", "negative"]), first
            finally:
                done.set()
                await ticking

        with provider:
            (answers, _spend), first = asyncio.run(both())
        assert len(ticks) > first  # the loop served the ticker while the requests were out
        assert [a.hidden.tolist() for a in answers] == [_vec(0), _vec(1)]
        assert [a.queries for a in answers] == [2, 1]  # scorer's request + the embeddings one


def test_with_embeddings_keeps_the_scorers_token_features():
    """Y-Tuning's token states came back None through WithEmbeddings: its answers were
    rebuilt without them."""
    scorer = FakeProvider(dim=8, token_features=4)
    provider = WithEmbeddings(scorer, _embedder(FakeEmbeddings()))
    answers = provider.score(["x y", "z"], ["a", "b"])
    expected = scorer.score(["x y", "z"], ["a", "b"])
    for got, want in zip(answers, expected):
        assert got.token_features is not None
        np.testing.assert_array_equal(got.token_features, want.token_features)
