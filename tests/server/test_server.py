"""The OpenAI-compatible server, proved against a real uvicorn on 127.0.0.1 with the real model."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the 'server' extra")
uvicorn = pytest.importorskip("uvicorn", reason="needs the 'server' extra")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from .._servers import serve_in_thread

pytestmark = pytest.mark.model

MODEL = "gemma-3-270m"
PROMPT = "Review: a wonderful, moving film.\nSentiment:"
#: A one-shot prompt whose top-20 next tokens contain both label words.
FEW_SHOT = "Review: terrible plot.\nSentiment: negative\n\n" + PROMPT


@pytest.fixture(scope="module")
def engine(gemma):
    from maas_tune.server.engine import Engine

    return Engine(gemma, MODEL)


@pytest.fixture(scope="module")
def app(engine):
    from maas_tune.server import create_app

    return create_app(engine, max_batch_size=16, max_wait_ms=50)


@pytest.fixture(scope="module")
def base_url(app):
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)


#: The label words the tests score (their ids go in the server's wire field).
WORDS = ["positive", "negative"]


@pytest.fixture(scope="module")
def label_ids(gemma):
    return gemma.label_token_ids(WORDS)


def test_health_models_and_version_header(base_url, client):
    response = httpx.get(f"{base_url}/health")
    assert response.json() == {"status": "ok"}
    assert response.headers["x-maas-tune-version"]
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "maas-tune"


def test_completion_with_logprobs(client):
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=5
    )
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == MODEL
    assert choice.finish_reason in {"length", "stop"}
    assert len(choice.logprobs.tokens) == out.usage.completion_tokens == 3
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) <= 5 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.text_offset[0] == len(PROMPT)
    assert out.usage.total_tokens == out.usage.prompt_tokens + 3


def test_echo_without_generation(client, engine):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == PROMPT
    assert len(lp.tokens) == len(engine.tokenize(PROMPT)) == out.usage.prompt_tokens - 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == PROMPT


def test_list_of_prompts(client):
    out = client.completions.create(
        model=MODEL, prompt=["1, 2, 3,", "a, b, c,"], max_tokens=2, temperature=0
    )
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage.completion_tokens == 4


def test_errors_in_openai_shape(client, base_url):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0)
    assert info.value.body["param"] == "max_tokens" or "max_tokens" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=1)
    response = httpx.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": 3})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    too_long = httpx.post(
        f"{base_url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 10**6}
    )
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


def _extension(base_url, prompt, label_ids, hidden=True):
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 0,
        "maas_tune": {"label_token_ids": label_ids, "return_hidden": hidden},
    }
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def test_extension_matches_provider_score(base_url, gemma, label_ids):
    ext = _extension(base_url, PROMPT, label_ids)["maas_tune"]
    expected = gemma.score([PROMPT], WORDS)[0]
    np.testing.assert_allclose(ext["label_logprobs"], expected.logprobs, atol=1e-4)
    hidden = np.frombuffer(base64.b64decode(ext["hidden"]), dtype="<f4")
    assert hidden.shape == (640,)
    np.testing.assert_allclose(hidden, expected.hidden, atol=1e-4)
    assert ext["prompt_tokens"] == expected.prompt_tokens


def test_top_logprobs_unchanged_by_logit_bias(client, gemma, engine, label_ids):
    expected = gemma.score([FEW_SHOT], WORDS)[0].logprobs
    forced = engine.tokenize(" maybe")[0]
    plain = client.completions.create(
        model=MODEL, prompt=FEW_SHOT, max_tokens=1, temperature=0, logprobs=20
    )
    biased = client.completions.create(
        model=MODEL,
        prompt=FEW_SHOT,
        max_tokens=1,
        temperature=0,
        logprobs=20,
        logit_bias={str(forced): 100},
    )
    for out in (plain, biased):
        top = out.choices[0].logprobs.top_logprobs[0]
        np.testing.assert_allclose([top[" positive"], top[" negative"]], expected, atol=1e-3)
    assert biased.choices[0].text == " maybe"
    assert biased.choices[0].logprobs.top_logprobs[0] == pytest.approx(
        plain.choices[0].logprobs.top_logprobs[0], abs=1e-4
    )


def test_tokenize_and_embeddings(base_url, client, engine, gemma):
    response = httpx.post(f"{base_url}/extras/tokenize", json={"input": " positive"})
    assert response.json() == {"tokens": engine.tokenize(" positive")}
    emb = client.embeddings.create(model=MODEL, input=[PROMPT, "N/A"])
    assert [len(d.embedding) for d in emb.data] == [640, 640]
    np.testing.assert_allclose(
        emb.data[0].embedding, gemma.score([PROMPT], [])[0].hidden, atol=1e-4
    )


def test_concurrent_extension_requests_are_batched(app, base_url, gemma, label_ids):
    prompts = [
        f"Review: movie number {i} was {'great' if i % 2 else 'awful'}.\nSentiment:"
        for i in range(8)
    ]
    before = len(app.state.batcher.batch_sizes)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: _extension(base_url, p, label_ids, False), prompts))
    expected = gemma.score(prompts, WORDS)
    for answer, want in zip(answers, expected):
        np.testing.assert_allclose(answer["maas_tune"]["label_logprobs"], want.logprobs, atol=1e-4)
        assert answer["maas_tune"]["hidden"] is None
    assert max(list(app.state.batcher.batch_sizes)[before:]) > 1


def test_api_key_required(engine):
    from maas_tune.server import create_app

    with serve_in_thread(create_app(engine, api_key="secret")) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 401
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert wrong.headers["x-maas-tune-version"]
        good = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer secret"})
        assert good.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).models.list()


def test_stop_string_and_seeded_sampling(client):
    out = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0, stop=[" 7"], logprobs=0
    )
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and " 7" not in choice.text
    assert "".join(choice.logprobs.tokens) == choice.text
    texts = {
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0.8, seed=7)
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(texts) == 1


def test_unknown_route_and_full_queue(engine, base_url, label_ids):
    from maas_tune.server import create_app

    missing = httpx.get(f"{base_url}/v1/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    with serve_in_thread(create_app(engine, max_queue=1)) as url:
        body = {
            "model": MODEL,
            "prompt": ["a", "b"],
            "max_tokens": 0,
            "maas_tune": {"label_token_ids": label_ids},
        }
        # more prompts than the queue ever holds: a 400, since retrying cannot help
        # (a full queue's 429: tests/server/test_server_hardening.py, the flood tests)
        full = httpx.post(f"{url}/v1/completions", json=body)
        assert full.status_code == 400 and "retry-after" not in full.headers
        assert full.json()["error"]["code"] == "too_many_prompts"


def test_batcher_scores_union_of_label_ids_in_request_order():
    import asyncio

    from maas_tune.scores import ProviderAnswer
    from maas_tune.server.batching import ScoreBatcher

    calls = []

    def score(prompts, token_ids):
        calls.append((list(prompts), list(token_ids)))
        return [
            ProviderAnswer(np.asarray(token_ids, dtype=np.float32) + i, None, 1)
            for i in range(len(prompts))
        ]

    async def main():
        batcher = ScoreBatcher(score, max_batch_size=8, max_wait_ms=20)
        got = await asyncio.gather(batcher.submit(["a"], [5, 2]), batcher.submit(["b", "c"], [9]))
        await batcher.aclose()
        return got

    (first,), (second, third) = asyncio.run(main())
    assert calls == [(["a", "b", "c"], [2, 5, 9])]
    assert first.logprobs.tolist() == [5, 2]
    assert second.logprobs.tolist() == [10] and third.logprobs.tolist() == [11]
