"""The strict hosted-API simulator (:mod:`tests._hosted_api`): each switch, proved over loopback.

Most tests put it in front of the fast fakes (``fake_server``: maas-tune serve with the
fake engine; :class:`FaultServer`: exact log-probs, records what reaches it); the
``model`` ones in front of maas-tune serve with the real Gemma 3 270M.
"""

from __future__ import annotations

import json
import math

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette", reason="needs the 'server' extra")

from maas_tune.providers._forcing import Label, bias_problem

from .._fault_server import FaultServer, next_token_logprobs, ok, set_field, status, token_id
from .._hosted_api import HostedAPI, HostedConfig

MODEL = HostedConfig().model
PROMPT = "Review: a wonderful, moving film.\nSentiment:"
KEY = "sk-sim-test-key"


def _post(api: HostedAPI, path: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{api.root_url}{path}", json=body, headers=headers, timeout=60)


def _completion(**extra) -> dict:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "temperature": 0, **extra}


def _chat(**extra) -> dict:
    messages = [{"role": "user", "content": PROMPT}]
    return {"model": MODEL, "messages": messages, "max_tokens": 1, "temperature": 0, **extra}


def _error(response: httpx.Response, code: int) -> dict:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture()
def fault():
    with FaultServer() as server:
        yield server


def test_forwards_and_answers_under_its_own_model_name(hosted_api):
    api = hosted_api()
    out = _post(api, "/v1/completions", _completion(logprobs=3))
    assert out.status_code == 200 and out.json()["model"] == MODEL
    assert len(out.json()["choices"][0]["logprobs"]["top_logprobs"][0]) == 3
    assert api.upstream_model == "fake-model"  # discovered from the upstream's /v1/models
    models = httpx.get(f"{api.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert httpx.get(f"{api.base_url}/models/{MODEL}").json()["id"] == MODEL
    _error(httpx.get(f"{api.base_url}/models/gpt-4"), 404)
    assert (api.received, api.forwarded, api.billable) == (4, 1, 1)
    assert api.tokens_billed == out.json()["usage"]["total_tokens"] > 0
    reported = hosted_api(HostedConfig(reported_model=f"{MODEL}-2024-08-06"))
    assert _post(reported, "/v1/completions", _completion()).json()["model"].endswith("08-06")


def test_another_model_is_a_404_and_no_model_a_400(hosted_api):
    api = hosted_api()
    error = _error(_post(api, "/v1/completions", _completion(model="gpt-4")), 404)
    assert "The model `gpt-4` does not exist" in error["message"]
    assert error["code"] == "model_not_found"
    _error(_post(api, "/v1/chat/completions", _chat(model="gpt-4")), 404)
    body = _completion()
    del body["model"]
    assert _error(_post(api, "/v1/completions", body), 400)["param"] == "model"
    assert (api.received, api.forwarded, api.billable) == (3, 0, 0)


def test_api_key_is_required(hosted_api):
    api = hosted_api(HostedConfig(api_key=KEY))
    assert _error(_post(api, "/v1/completions", _completion()), 401)["code"] == "invalid_api_key"
    _error(_post(api, "/v1/completions", _completion(), key="sk-wrong"), 401)
    _error(httpx.get(f"{api.base_url}/models"), 401)
    assert _post(api, "/v1/completions", _completion(), key=KEY).status_code == 200
    assert KEY not in json.dumps(api.stats())
    assert api.by_status == {401: 3, 200: 1} and api.billable == 1


@pytest.mark.parametrize(("cap", "chat_cap"), [(5, 20), (20, 5)])
def test_top_k_caps(hosted_api, cap, chat_cap):
    api = hosted_api(HostedConfig(top_k_cap=cap, chat_top_k_cap=chat_cap))
    error = _error(_post(api, "/v1/completions", _completion(logprobs=cap + 1)), 400)
    assert error["message"] == f"logprobs must be <= {cap}" and error["param"] == "logprobs"
    assert _post(api, "/v1/completions", _completion(logprobs=cap)).status_code == 200
    too_many = _chat(logprobs=True, top_logprobs=chat_cap + 1)
    assert _error(_post(api, "/v1/chat/completions", too_many), 400)["param"] == "top_logprobs"
    assert (
        _post(api, "/v1/chat/completions", _chat(logprobs=True, top_logprobs=chat_cap)).status_code
        == 200
    )
    assert api.forwarded == api.billable == 2


@pytest.mark.parametrize("on", [False, True])
def test_tokenizer_switch(hosted_api, on):
    api = hosted_api(HostedConfig(tokenizer=on))
    out = _post(api, "/extras/tokenize", {"input": " positive film"})
    if on:
        assert out.status_code == 200 and len(out.json()["tokens"]) == 2
    else:
        _error(out, 404)
    assert api.forwarded == 0  # a tokenizer request is not a model request


@pytest.mark.parametrize("on", [False, True])
def test_echo_switch(hosted_api, on):
    api = hosted_api(HostedConfig(echo=on))
    echoed = _post(api, "/v1/completions", _completion(max_tokens=0, echo=True, logprobs=1))
    if on:
        assert echoed.json()["choices"][0]["text"] == PROMPT
    else:
        assert _error(echoed, 400)["message"] == "echo is not supported with logprobs"
    assert _post(api, "/v1/completions", _completion(echo=True)).status_code == 200


@pytest.mark.parametrize("on", [False, True])
def test_embeddings_switch(hosted_api, on):
    api = hosted_api(HostedConfig(embeddings=on))
    out = _post(api, "/v1/embeddings", {"model": MODEL, "input": ["a film", "a play"]})
    if on:
        assert [len(d["embedding"]) for d in out.json()["data"]] == [4, 4]
        assert api.per_prompt == {"a film": 1, "a play": 1}
    else:
        _error(out, 404)
        assert api.forwarded == 0


def test_strip_unknown_fields_both_ways(hosted_api, fault):
    extension = {"label_token_ids": [token_id(" positive")], "return_hidden": True}
    fault.script(ok(set_field("choices.0.extra", 1)), ok(set_field("choices.0.extra", 1)))
    strict = hosted_api(HostedConfig(), upstream=fault.base_url)
    choice = _post(strict, "/v1/completions", _completion(maas_tune=extension)).json()["choices"][0]
    assert "maas_tune" not in fault.requests[-1] and set(choice) == {
        "index",
        "text",
        "logprobs",
        "finish_reason",
    }
    lenient = hosted_api(HostedConfig(strip_unknown=False), upstream=fault.base_url)
    choice = _post(lenient, "/v1/completions", _completion(maas_tune=extension)).json()["choices"][
        0
    ]
    assert "maas_tune" in fault.requests[-1] and {"maas_tune", "extra"} <= set(choice)
    refusing = hosted_api(HostedConfig(reject_unknown=True), upstream=fault.base_url)
    error = _error(_post(refusing, "/v1/completions", _completion(maas_tune=extension)), 400)
    assert error["message"] == "Unrecognized request argument supplied: maas_tune"
    assert fault.received == 2


def _forced(api: HostedAPI, word: str, top_k: int = 2) -> tuple[dict, dict]:
    """A completions request forcing ``word`` with +100: the answer's logprobs, and its top."""
    body = _completion(logprobs=top_k, logit_bias={str(token_id(word)): 100})
    out = _post(api, "/v1/completions", body)
    assert out.status_code == 200, out.text
    lp = out.json()["choices"][0]["logprobs"]
    return lp, lp["top_logprobs"][0]


def test_logit_bias_pre_and_post_against_exact_logprobs(hosted_api, fault):
    model = next_token_logprobs(PROMPT)
    label = Label(token_id(" negative"), "negative")
    pre = hosted_api(HostedConfig(logit_bias="pre"), upstream=fault.base_url)
    lp, top = _forced(pre, " negative")
    assert lp["tokens"] == [" negative"] and lp["token_logprobs"][0] == model[" negative"]
    assert bias_problem(label, lp["tokens"][0], lp["token_logprobs"][0], min(top.values())) is None
    post = hosted_api(HostedConfig(logit_bias="post"), upstream=fault.base_url)
    lp, top = _forced(post, " negative")
    log_z = math.log(sum(math.exp(v + 100 * (t == " negative")) for t, v in model.items()))
    assert lp["token_logprobs"][0] == pytest.approx(model[" negative"] + 100 - log_z, abs=1e-9)
    shown = [*sorted(model, key=lambda t: -model[t])[:2], " negative"]  # pre-bias top-2 + forced
    after = {t: model[t] + 100 * (t == " negative") - log_z for t in shown}
    expected = dict(sorted(after.items(), key=lambda kv: -kv[1])[:2])  # re-ranked after the bias
    assert list(top) == list(expected) and next(iter(top)) == " negative"
    assert top == pytest.approx(expected, abs=1e-9)
    assert bias_problem(label, " negative", lp["token_logprobs"][0], -1.0) == "after"


def test_logit_bias_ignored_and_rejected(hosted_api, fault):
    ignored = hosted_api(HostedConfig(logit_bias="ignored"), upstream=fault.base_url)
    lp, top = _forced(ignored, " negative")
    assert "logit_bias" not in fault.requests[-1] and lp["tokens"] == [" the"]
    label = Label(token_id(" negative"), "negative")
    assert (
        bias_problem(label, lp["tokens"][0], lp["token_logprobs"][0], min(top.values()))
        == "ignored"
    )
    rejected = hosted_api(HostedConfig(logit_bias="rejected"), upstream=fault.base_url)
    body = _completion(logprobs=2, logit_bias={"13": 100})
    assert _error(_post(rejected, "/v1/completions", body), 400)["param"] == "logit_bias"
    chat = _chat(logit_bias={"13": 100})
    assert _error(_post(rejected, "/v1/chat/completions", chat), 400)["param"] == "logit_bias"
    assert fault.received == 1 and rejected.forwarded == 0


def test_rate_limit_answers_429_with_retry_after(hosted_api):
    # 0.01/s refills one request in 100 s: the third request is refused on any machine.
    api = hosted_api(HostedConfig(rate_limit_per_s=0.01, rate_limit_burst=2))
    codes = [_post(api, "/v1/completions", _completion()) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["Retry-After"]) >= 90
    assert codes[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert _post(api, "/extras/tokenize", {"input": "x"}).status_code == 404  # not limited
    assert (api.rejected_429, api.billable, api.forwarded) == (1, 2, 2)


def _statuses(api: HostedAPI, n: int) -> list[int]:
    return [_post(api, "/v1/completions", _completion()).status_code for _ in range(n)]


def test_injected_503s_are_not_billable(hosted_api):
    first = hosted_api(HostedConfig(fail_503_first_n=2))
    assert _statuses(first, 3) == [503, 503, 200]
    every = hosted_api(HostedConfig(fail_503_every_n=3))
    assert _statuses(every, 6) == [200, 200, 503, 200, 200, 503]
    every.inject_503(1)
    assert _error(_post(every, "/v1/chat/completions", _chat()), 503)["type"] == "server_error"
    assert (every.rejected_503, every.billable, every.forwarded) == (3, 4, 4)


def test_503_rate_is_seeded(hosted_api):
    runs = [_statuses(hosted_api(HostedConfig(fail_503_rate=0.5, seed=s)), 8) for s in (7, 7, 9)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert {200, 503} == set(runs[0])


def test_deep_json_fault(hosted_api):
    api = hosted_api(HostedConfig(deep_json_every_n=3))
    api.inject_deep_json()
    bodies = [_post(api, "/v1/completions", _completion()) for _ in range(3)]
    for i in (0, 2):
        assert bodies[i].status_code == 200
        with pytest.raises(RecursionError):
            json.loads(bodies[i].content)
    assert bodies[1].json()["choices"]
    assert (api.deep_json, api.forwarded, api.billable) == (2, 1, 1)


def test_paths_outside_v1_are_404(hosted_api):
    api = hosted_api()
    error = _error(_post(api, "/completions", _completion()), 404)
    assert error["message"] == "Invalid URL (POST /completions)"
    _error(_post(api, "/chat/completions", _chat()), 404)
    _error(httpx.get(f"{api.base_url}/completions"), 404)
    assert api.by_route == {
        "POST /completions": 1,
        "POST /chat/completions": 1,
        "GET /v1/completions": 1,
    }


def test_counts_duplicates_and_serves_stats(hosted_api):
    api = hosted_api()
    for body in (_completion(), _completion(), _completion(logit_bias={"5": 1})):
        assert _post(api, "/v1/completions", body).status_code == 200
    assert api.per_prompt == {PROMPT: 3}
    assert api.duplicates() == 1 and api.prompt_duplicates() == 2
    stats = httpx.get(f"{api.root_url}/stats").json()
    assert stats["received"] == api.received == 3  # /stats itself is not counted
    assert stats["by_status"] == {"200": 3} and stats["duplicates"] == 1
    assert [route for route, _ in api.requests] == ["completions"] * 3
    api.reset()
    assert api.received == 0 and api.per_prompt == {}


def test_upstream_errors_are_passed_on_and_not_billed(hosted_api, fault):
    fault.script(status(429, headers={"Retry-After": "7"}), status(500))
    api = hosted_api(upstream=fault.base_url)
    limited = _post(api, "/v1/completions", _completion())
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert _post(api, "/v1/completions", _completion()).status_code == 500
    assert (api.forwarded, api.billable, api.by_status) == (2, 0, {429: 1, 500: 1})


# -- in front of the real model ------------------------------------------------------------
FEW_SHOT = "Review: terrible plot.\nSentiment: negative\n\n" + PROMPT


@pytest.mark.model
def test_real_model_pre_is_openai_and_post_reports_the_biased_value(hosted_api, real_server, gemma):
    forced = gemma.label_token_ids(["maybe"])[0]
    label = Label(forced, "maybe")
    body = _completion(prompt=FEW_SHOT, logprobs=5, logit_bias={str(forced): 100})
    answers = {}
    for mode in ("pre", "post"):
        api = hosted_api(HostedConfig(logit_bias=mode, top_k_cap=5), upstream=real_server)
        lp = _post(api, "/v1/completions", body).json()["choices"][0]["logprobs"]
        answers[mode] = (lp["tokens"][0], lp["token_logprobs"][0], lp["top_logprobs"][0])
    token, value, top = answers["pre"]
    assert token == " maybe" and bias_problem(label, token, value, min(top.values())) is None
    token, value, top = answers["post"]
    assert token == " maybe" and value > -1e-3 and next(iter(top)) == " maybe"
    assert bias_problem(label, token, value, min(answers["pre"][2].values())) == "after"


@pytest.mark.model
def test_real_model_chat_post_bias_and_caps(hosted_api, real_server, gemma):
    forced = gemma.label_token_ids(["maybe"])[0]
    api = hosted_api(
        HostedConfig(logit_bias="post", chat_top_k_cap=5, api_key=KEY), upstream=real_server
    )
    body = _chat(logprobs=True, top_logprobs=5, logit_bias={str(forced): 100})
    out = _post(api, "/v1/chat/completions", body, key=KEY).json()
    item = out["choices"][0]["logprobs"]["content"][0]
    assert out["model"] == MODEL and item["logprob"] > -1e-3
    assert item["top_logprobs"][0]["token"] == item["token"]
    assert (
        _post(
            api, "/v1/chat/completions", _chat(logprobs=True, top_logprobs=6), key=KEY
        ).status_code
        == 400
    )
    assert api.billable == 1 and api.upstream_model == "gemma-3-270m"


@pytest.mark.parametrize(
    ("config", "strategy", "refused"),
    [
        (HostedConfig(api_key=KEY, tokenizer=True, strip_unknown=False), "extension", False),
        (HostedConfig(api_key=KEY, tokenizer=True), "top_logprobs", False),
        (HostedConfig(api_key=KEY, tokenizer=True, logit_bias="post"), "top_logprobs", True),
    ],
)
def test_the_completions_provider_sees_a_hosted_api(hosted_api, fault, config, strategy, refused):
    from maas_tune.errors import ProviderResponseError
    from maas_tune.providers.openai import OpenAICompletionsProvider

    api = hosted_api(config, upstream=fault.base_url)
    # The fake upstream cannot echo or force words it does not know, so `auto` would refuse
    # (tests/hosted/test_hosted_conformance.py covers `auto` on the real model): the strategy is named.
    provider = OpenAICompletionsProvider(
        api.base_url, MODEL, api_key=KEY, top_logprobs=2, strategy=strategy
    )
    if refused:  # the forced word comes back at about 0: reported after the bias
        with pytest.raises(ProviderResponseError, match="after logit_bias"):
            provider.score([PROMPT], ["negative", "positive"])
    else:
        expected = next_token_logprobs(PROMPT)
        assert provider.score([PROMPT], ["negative", "positive"])[0].logprobs == pytest.approx(
            [expected[" negative"], expected[" positive"]], abs=1e-6
        )
    assert api.billable == api.forwarded >= 1
