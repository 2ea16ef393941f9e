"""The conformance matrix: default ``auto`` against a strict hosted API, cell by cell.

A strict hosted-API simulator of our own (:mod:`tests._hosted_api`) stands in front of
``maas-tune serve`` with the real Gemma 3 270M. It strips the ``maas_tune`` extension and
every field OpenAI does not define, caps top log-probs, and switches the tokenizer
endpoint, echo, how ``logit_bias`` is reported, and embeddings. For every cell, the
default ``auto`` either returns label log-probs equal to the in-process model's (1e-4)
with the ledger equal to the requests the API billed, or refuses before any sample is
sent with a message that says what to pass. docs/http.md tabulates the cells.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from maas_tune.client import Client
from maas_tune.errors import ConfigurationError
from maas_tune.providers._probe import clear_probe_cache
from maas_tune.providers.chat import OpenAIChatProvider
from maas_tune.providers.chat_format import ChatFormat
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.storage.budget import QueryBudget
from maas_tune.task import Task

from .._hosted_api import HostedConfig

pytestmark = pytest.mark.model

KEY = "sk-test-hosted-conformance-0123456789"
TASK = Task(
    "sst2-like", "Review: {text}\nSentiment:", {"negative": ["negative"], "positive": ["positive"]}
)
TEXTS = ["a gorgeous, witty, seductive movie.", "dull and lifeless", "the plot is a mess."]
BIAS = ("pre", "post", "ignored", "rejected")
#: What a refused cell's message must say (the remedy), by the switches that decide it.
NO_TOKENIZER = "pass --tokenizer"


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    clear_probe_cache()
    yield
    clear_probe_cache()


def completions_outcome(tokenizer: bool, echo: bool, bias: str) -> str | None:
    """None when the cell must score exactly, else what the refusal must say."""
    if (tokenizer and bias == "pre") or echo:
        return None
    return (
        NO_TOKENIZER
        if not tokenizer
        else {
            "post": "after logit_bias",
            "ignored": "did not change",
            "rejected": "rejects logit_bias",
        }[bias]
    )


def chat_outcome(tokenizer: bool, bias: str) -> str | None:
    if not tokenizer:
        return NO_TOKENIZER
    return (
        None
        if bias == "pre"
        else {
            "post": "after logit_bias",
            "ignored": "did not change",
            "rejected": "rejects logit_bias",
        }[bias]
    )


def in_process(gemma: Any, prompts: list[str], words: list[str], prefix: str = " ") -> np.ndarray:
    """The in-process model's log-probs of ``words`` (after ``prefix``) after each prompt,
    shape (n, t)."""
    ids = [gemma.tokenizer(prefix + w, add_special_tokens=False)["input_ids"][0] for w in words]
    return np.stack([a.logprobs for a in gemma.score_with_tokens(prompts, ids, 0)])


def chat_prompts(task: Task, texts: list[str]) -> list[str]:
    """What ``maas-tune serve`` feeds the model for the chat provider's requests."""
    from maas_tune.server._chat import plain_template
    from maas_tune.server.chat_schemas import ChatMessage

    fmt = ChatFormat()
    return [
        plain_template(
            [ChatMessage(**m) for m in fmt.messages(task.render({"text": t}), task.label_words)]
        )
        for t in texts
    ]


def run_cell(api: Any, provider: Any, db_path: Any) -> tuple[Client, QueryBudget, Any]:
    budget = QueryBudget("conformance", max_queries=10_000, store=db_path)
    client = Client(provider, cache=db_path, budget=budget, progress=False)
    return client, budget, client.score(TASK, TEXTS)


def check_refused(api: Any, provider: Any, db_path: Any, says: str) -> None:
    budget = QueryBudget("conformance", max_queries=10_000, store=db_path)
    client = Client(provider, cache=db_path, budget=budget, progress=False)
    with pytest.raises(ConfigurationError, match=says):
        client.score(TASK, TEXTS)
    probe = api.billable
    assert probe <= provider.max_probe_requests  # nothing but the probe was sent
    assert budget.status().spent_queries == probe  # and the probe is charged
    assert budget.status().reserved_queries == 0


def check_exact(
    api: Any,
    client: Client,
    budget: QueryBudget,
    scores: Any,
    expected: np.ndarray,
    per_sample_max: int,
) -> None:
    np.testing.assert_allclose(scores.label_logprobs, expected, atol=1e-4)
    assert budget.status().spent_queries == api.billable == client.usage.queries_sent
    scoring = api.billable - client.usage.probe_queries
    assert len(TEXTS) <= scoring <= per_sample_max * len(TEXTS)
    assert api.prompt_duplicates() == 0 or client.usage.probe_queries  # probe prompt aside
    before = api.billable
    again = client.score(TASK, TEXTS)  # a rerun is answered from the cache
    assert api.billable == before and again.n_cache_hits == len(TEXTS)


COMPLETIONS_CELLS = list(itertools.product((5, 20), (True, False), (True, False), BIAS))


@pytest.mark.parametrize(
    ("cap", "tokenizer", "echo", "bias"),
    COMPLETIONS_CELLS,
    ids=[f"top{c}-tok{int(t)}-echo{int(e)}-{b}" for c, t, e, b in COMPLETIONS_CELLS],
)
def test_completions_cell(gemma, real_server, hosted_api, db_path, cap, tokenizer, echo, bias):
    config = HostedConfig(
        api_key=KEY,
        top_k_cap=cap,
        tokenizer=tokenizer,
        echo=echo,
        logit_bias=bias,
        embeddings=False,
    )
    api = hosted_api(config, upstream=real_server)
    provider = OpenAICompletionsProvider(
        api.base_url, config.model, api_key=KEY, top_logprobs=cap, sleep=lambda s: None
    )
    says = completions_outcome(tokenizer, echo, bias)
    if says is not None:
        check_refused(api, provider, db_path, says)
        return
    client, budget, scores = run_cell(api, provider, db_path)
    assert provider.strategy in ("top_logprobs", "echo")
    expected = in_process(gemma, [TASK.render({"text": t}) for t in TEXTS], TASK.label_words)
    check_exact(api, client, budget, scores, expected, per_sample_max=1 + 2)


CHAT_CELLS = list(itertools.product((5, 20), (True, False), BIAS))


@pytest.mark.parametrize(
    ("cap", "tokenizer", "bias"),
    CHAT_CELLS,
    ids=[f"top{c}-tok{int(t)}-{b}" for c, t, b in CHAT_CELLS],
)
def test_chat_cell(gemma, real_server, hosted_api, db_path, cap, tokenizer, bias):
    config = HostedConfig(
        api_key=KEY, chat_top_k_cap=cap, tokenizer=tokenizer, logit_bias=bias, embeddings=False
    )
    api = hosted_api(config, upstream=real_server)
    provider = OpenAIChatProvider(
        api.base_url, config.model, api_key=KEY, top_logprobs=cap, sleep=lambda s: None
    )
    says = chat_outcome(tokenizer, bias)
    if says is not None:
        check_refused(api, provider, db_path, says)
        return
    client, budget, scores = run_cell(api, provider, db_path)
    assert provider.strategy == "force"
    expected = in_process(gemma, chat_prompts(TASK, TEXTS), TASK.label_words, prefix="")
    check_exact(api, client, budget, scores, expected, per_sample_max=1 + 2)


def test_chat_without_a_tokenizer_endpoint_is_exact_with_a_local_tokenizer(
    gemma, real_server, hosted_api, db_path
):
    """The hosted case proper: no tokenizer endpoint, ``--tokenizer`` given locally."""
    config = HostedConfig(api_key=KEY, chat_top_k_cap=5, tokenizer=False, embeddings=False)
    api = hosted_api(config, upstream=real_server)
    tokenizer = lambda text: gemma.tokenizer(text, add_special_tokens=False)["input_ids"]
    provider = OpenAIChatProvider(
        api.base_url, config.model, api_key=KEY, tokenizer=tokenizer, sleep=lambda s: None
    )
    client, budget, scores = run_cell(api, provider, db_path)
    assert provider.strategy == "force"
    expected = in_process(gemma, chat_prompts(TASK, TEXTS), TASK.label_words, prefix="")
    check_exact(api, client, budget, scores, expected, per_sample_max=1 + 2)


@pytest.mark.parametrize("embeddings", [True, False])
def test_embeddings_cell(gemma, real_server, hosted_api, db_path, embeddings):
    """``--embeddings``: hidden states from ``/v1/embeddings`` where the API has them."""
    from maas_tune.providers.embeddings import OpenAIEmbeddingsProvider
    from maas_tune.providers.with_embeddings import WithEmbeddings

    config = HostedConfig(api_key=KEY, tokenizer=False, embeddings=embeddings)
    api = hosted_api(config, upstream=real_server)
    scorer = OpenAICompletionsProvider(
        api.base_url, config.model, api_key=KEY, sleep=lambda s: None
    )
    embedder = OpenAIEmbeddingsProvider(
        api.base_url, config.model, api_key=KEY, sleep=lambda s: None
    )
    provider = WithEmbeddings(scorer, embedder)
    budget = QueryBudget("conformance", max_queries=10_000, store=db_path)
    client = Client(provider, cache=db_path, budget=budget, progress=False)
    if not embeddings:
        with pytest.raises(Exception, match="404"):
            client.score(TASK, TEXTS)
        assert budget.status().spent_queries == api.billable  # what was answered is charged
        return
    scores = client.score(TASK, TEXTS)
    expected = in_process(gemma, [TASK.render({"text": t}) for t in TEXTS], TASK.label_words)
    np.testing.assert_allclose(scores.label_logprobs, expected, atol=1e-4)
    assert scores.hidden is not None and scores.hidden.shape[0] == len(TEXTS)
    assert budget.status().spent_queries == api.billable
