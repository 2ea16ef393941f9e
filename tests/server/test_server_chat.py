"""``/v1/chat/completions`` of maas-tune serve, against a real uvicorn with the real model."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the 'server' extra")
pytest.importorskip("uvicorn", reason="needs the 'server' extra")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from maas_tune.server._chat import plain_template, render_chat
from maas_tune.server.chat_schemas import ChatMessage

from .._servers import serve_in_thread

pytestmark = pytest.mark.model

MODEL = "gemma-3-270m"
CAP = 5
MESSAGES = [
    {"role": "system", "content": "You are a text classifier."},
    {
        "role": "user",
        "content": "Answer with one word: negative, positive.\n\n"
        "Review: a wonderful, moving film.\nSentiment:",
    },
]
#: A template in the shape of Gemma's, whose text starts with the BOS token.
GEMMA_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def engine(gemma):
    from maas_tune.server.engine import Engine

    return Engine(gemma, MODEL)


@pytest.fixture(scope="module")
def base_url(engine):
    from maas_tune.server import create_app

    with serve_in_thread(create_app(engine, max_top_logprobs=CAP)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)


def _prompt() -> str:
    return plain_template([ChatMessage(**m) for m in MESSAGES])


def test_official_client_parses_chat_logprobs(client, gemma):
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True, top_logprobs=CAP
    )
    choice = out.choices[0]
    assert out.object == "chat.completion" and out.model == MODEL and out.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason in {"length", "stop"}
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert len(tokens) == out.usage.completion_tokens
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    first = tokens[0]
    assert len(first.top_logprobs) == CAP and first.bytes == list(first.token.encode())
    values = [t.logprob for t in first.top_logprobs]
    assert values == sorted(values, reverse=True) and first.logprob == values[0]  # greedy
    # The reported top-k is the model's next-token distribution after the rendered prompt.
    ids = [gemma.tokenizer.convert_tokens_to_ids(t.token) for t in first.top_logprobs[:2]]
    expected = gemma.score_with_tokens([_prompt()], ids, 0)[0].logprobs
    np.testing.assert_allclose(values[:2], expected, atol=1e-3)


def test_logit_bias_forces_a_token_and_leaves_its_logprob_unbiased(client, gemma, engine):
    [forced] = engine.tokenize("zebra")
    plain = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0, logprobs=True, top_logprobs=CAP
    )
    biased = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=CAP,
        logit_bias={str(forced): 100},
    )
    token = biased.choices[0].logprobs.content[0]
    assert biased.choices[0].message.content == token.token == "zebra"
    expected = float(gemma.score_with_tokens([_prompt()], [forced], 0)[0].logprobs[0])
    assert token.logprob == pytest.approx(expected, abs=1e-3)
    assert token.logprob < plain.choices[0].logprobs.content[0].top_logprobs[-1].logprob
    top = [(t.token, t.logprob) for t in token.top_logprobs]
    assert top == [
        (t.token, pytest.approx(t.logprob, abs=1e-4))
        for t in plain.choices[0].logprobs.content[0].top_logprobs
    ]


def test_top_logprobs_cap_applies_to_chat_and_completions(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=1, logprobs=True, top_logprobs=CAP + 1
        )
    assert info.value.body["param"] == "top_logprobs" and f"at most {CAP}" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="The sky is", max_tokens=1, logprobs=CAP + 1)
    assert info.value.body["param"] == "logprobs"


def test_without_logprobs_the_reply_has_none(client):
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=2, temperature=0
    )
    assert out.choices[0].logprobs is None and out.usage.completion_tokens <= 2


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"stream": True}, "streaming is not supported"),
        ({"n": 2}, "only n=1"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs: needs logprobs=true"),
        ({"messages": []}, "messages:"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role:"),
        ({"logit_bias": {"x": 1}}, "logit_bias: keys must be token ids"),
        ({"logit_bias": {"999999999": 1}}, "outside the vocabulary"),
    ],
)
def test_invalid_requests_are_400_in_openai_shape(base_url, change, fragment):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1, **change}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)


def test_content_parts_and_developer_role_are_accepted(client):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}],
        },
    ]
    out = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1, temperature=0
    )
    assert out.usage.completion_tokens == 1


def test_plain_template_starts_the_answer_on_a_new_line():
    messages = [ChatMessage(role="system", content="S"), ChatMessage(role="user", content="U")]
    assert plain_template(messages) == "S\n\nU\n"


def test_a_models_chat_template_is_used_without_a_second_bos(gemma):
    tokenizer = copy.deepcopy(gemma.tokenizer)
    tokenizer.chat_template = GEMMA_LIKE_TEMPLATE
    engine = SimpleNamespace(provider=SimpleNamespace(tokenizer=tokenizer))
    text = render_chat(
        engine, [ChatMessage(role="developer", content="S"), ChatMessage(role="user", content="U")]
    )
    assert text == (
        "<start_of_turn>system\nS<end_of_turn>\n"
        "<start_of_turn>user\nU<end_of_turn>\n<start_of_turn>model\n"
    )
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    from maas_tune.server.schemas import APIError

    with pytest.raises(APIError, match="roles must alternate") as info:
        render_chat(engine, [ChatMessage(role="user", content="U")])
    assert info.value.status == 400
