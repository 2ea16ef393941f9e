"""Client: cache → budget → provider → cache, with a deterministic fake provider."""

from __future__ import annotations

import numpy as np
import pytest

from maas_tune.client import Client
from maas_tune.data import Example
from maas_tune.errors import BudgetExceeded, OfflineCacheMiss, ProviderError
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.task import Task

from .fakes import FakeProvider

TASK = Task(
    name="toy",
    template="Review: {text}\nSentiment:",
    verbalizer={"negative": ["bad", "awful"], "positive": ["good"]},
)
EXAMPLES = [
    Example(text=f"sample {i}", label="negative" if i % 2 else "positive") for i in range(40)
]


def make_client(db_path, provider=None, **kwargs):
    store = Store(db_path)
    return Client(
        provider or FakeProvider(), cache=ScoreCache(store), progress=False, **kwargs
    ), store


def test_scores_shape_and_logsumexp_over_label_words(db_path):
    client, _ = make_client(db_path)
    scores = client.score(TASK, EXAMPLES[:5])
    assert scores.label_logprobs.shape == (5, 2)
    assert scores.hidden.shape == (5, 8)
    assert scores.labels == ("negative", "positive")
    raw = client.provider.score([TASK.render(EXAMPLES[0])], TASK.label_words)[0]
    assert scores.label_logprobs[0, 0] == pytest.approx(
        np.logaddexp(raw.logprobs[0], raw.logprobs[1]), rel=1e-6
    )
    assert scores.label_logprobs[0, 1] == pytest.approx(raw.logprobs[2], rel=1e-6)


def test_second_call_is_served_from_cache_and_sends_nothing(db_path):
    client, _ = make_client(db_path)
    first = client.score(TASK, EXAMPLES)
    assert first.n_queries_sent == 40 and not first.cache_hit.any()
    second = client.score(TASK, EXAMPLES)
    assert second.n_cache_hits == 40
    assert len(client.provider.sent) == 40
    np.testing.assert_array_equal(first.label_logprobs, second.label_logprobs)
    np.testing.assert_array_equal(first.hidden, second.hidden)


def test_cache_is_shared_across_client_instances(db_path):
    make_client(db_path)[0].score(TASK, EXAMPLES[:10])
    other_provider = FakeProvider()
    scores = make_client(db_path, other_provider)[0].score(TASK, EXAMPLES[:10])
    assert scores.n_cache_hits == 10 and other_provider.sent == []


def test_duplicate_prompts_are_sent_once(db_path):
    client, _ = make_client(db_path)
    scores = client.score(TASK, [EXAMPLES[0]] * 5 + [EXAMPLES[1]])
    assert len(client.provider.sent) == 2
    assert len(set(map(tuple, scores.label_logprobs))) == 2


def test_changed_template_is_a_cache_miss(db_path):
    client, _ = make_client(db_path)
    client.score(TASK, EXAMPLES[:3])
    other = TASK.with_template("{text} It was")
    assert client.score(other, EXAMPLES[:3]).n_queries_sent == 3


def test_offline_mode_fails_before_sending_and_counts_missing(db_path):
    client, _ = make_client(db_path)
    client.score(TASK, EXAMPLES[:10])
    offline, _ = make_client(db_path, offline=True)
    assert offline.score(TASK, EXAMPLES[:10]).n_cache_hits == 10
    with pytest.raises(OfflineCacheMiss) as err:
        offline.score(TASK, EXAMPLES[:25])
    assert err.value.missing == 15 and "15 of 25" in str(err.value)
    assert offline.provider.sent == []


def test_budget_caps_queries_and_cache_hits_are_free(db_path):
    store = Store(db_path)
    budget = QueryBudget("train", max_queries=30, store=store)
    client = Client(FakeProvider(), cache=ScoreCache(store), budget=budget, progress=False)
    client.score(TASK, EXAMPLES[:20])
    client.score(TASK, EXAMPLES[:20])  # all hits: free
    assert budget.status().spent_queries == 20
    with pytest.raises(BudgetExceeded) as err:
        client.score(TASK, EXAMPLES[:40])  # 20 more needed, 10 left: refused before sending
    assert err.value.remaining == 10 and len(client.provider.sent) == 20
    status = budget.status()
    assert status.spent_queries == 20 and status.reserved_queries == 0
    assert status.spent_prompt_tokens == sum(
        client.provider.count_tokens([TASK.render(e) for e in EXAMPLES[:20]])
    )


def test_provider_failure_releases_reservation_and_keeps_earlier_chunks(db_path):
    store = Store(db_path)
    budget = QueryBudget("b", max_queries=100, store=store)
    provider = FakeProvider(fail_after=20)
    client = Client(provider, cache=ScoreCache(store), budget=budget, progress=False, chunk_size=8)
    with pytest.raises(ProviderError):
        client.score(TASK, EXAMPLES)
    status = budget.status()
    assert status.spent_queries == 16 and status.reserved_queries == 0
    assert len(ScoreCache(store)) == 16  # the two chunks answered before the failure are kept
    retry = Client(FakeProvider(), cache=ScoreCache(store), budget=budget, progress=False)
    assert retry.score(TASK, EXAMPLES).n_cache_hits == 16


def test_content_free_query_is_cached(db_path):
    client, _ = make_client(db_path)
    cf = client.content_free(TASK)
    assert cf.shape == (2,)
    np.testing.assert_array_equal(client.content_free(TASK), cf)
    assert client.provider.sent == ["Review: N/A\nSentiment:"]


def test_accepts_strings_and_mappings(db_path):
    client, _ = make_client(db_path)
    scores = client.score(TASK, ["plain text", {"text": "mapped"}])
    assert len(scores) == 2


def test_answer_that_cannot_be_cached_is_still_counted_as_spent(db_path):
    """A NaN hidden state is refused by the cache; the query was answered, so it was paid."""
    from maas_tune.errors import ProviderResponseError
    from maas_tune.scores import ProviderAnswer

    class NaNHidden(FakeProvider):
        def score(self, prompts, labels):
            good = super().score(prompts, labels)
            return [
                ProviderAnswer(a.logprobs, np.full(self.dim, np.nan), a.prompt_tokens) for a in good
            ]

    store = Store(db_path)
    budget = QueryBudget("nan", max_queries=100, store=store)
    client = Client(NaNHidden(), cache=ScoreCache(store), budget=budget, progress=False)
    with pytest.raises(ProviderResponseError):
        client.score(TASK, EXAMPLES[:4])
    status = budget.status()
    assert status.spent_queries == 4 and status.reserved_queries == 0
    assert len(ScoreCache(store)) == 0
