"""The provider contract (issue 20): providers are given label words, and choosing a
strategy is an explicit step — reading a provider's state never sends a request."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from maas_tune.client import Client
from maas_tune.errors import ConfigurationError
from maas_tune.providers._probe import clear_probe_cache
from maas_tune.scores import ProviderAnswer
from maas_tune.task import Task

from ..fakes import FakeProvider
from .test_chat_provider import CHAT, FakeChat, fake
from .test_openai_provider import FakeServer, completions, make

TASK = Task("contract", "Review: {text}\nSentiment:", {"neg": ["bad"], "pos": ["good"]})


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    clear_probe_cache()  # what this process learnt of a server: each test probes anew
    yield
    clear_probe_cache()


class Recording(FakeProvider):
    """The fake provider, keeping what each :meth:`score` call was given."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[list[str]] = []

    def score(self, prompts: Sequence[str], labels: Sequence[str]) -> list[ProviderAnswer]:
        self.given.append(list(labels))
        return super().score(prompts, labels)


def test_the_client_gives_the_provider_the_label_words(db_path):
    """Providers were given token ids, and the HTTP ones mapped them back to words
    through a side table filled by label_token_ids."""
    provider = Recording()
    Client(provider, cache=db_path, progress=False).score(TASK, ["fine", "awful"])
    assert provider.given == [["bad", "good"]]


def test_a_fresh_http_provider_scores_words_without_a_label_token_ids_call():
    """Chat scoring refused ids that label_token_ids had not returned first."""
    chat = fake(FakeChat(), strategy="top_logprobs")
    [answer] = chat.score(["Review: ok.\nSentiment:"], ["Negative", "Positive"])
    assert answer.logprobs.shape == (2,) and answer.queries == 1
    completions_ = make(FakeServer(), strategy="top_logprobs")
    [answer] = completions_.score(["x y:"], ["positive", "negative"])
    assert answer.logprobs.shape == (2,)


@pytest.mark.parametrize("read", ["strategy", "plan", "probe_result", "fingerprint"])
def test_reading_an_unselected_auto_provider_sends_nothing(read):
    """Reading ``.strategy`` (or ``.plan``, ``.probe_result``, ``fingerprint()``) sent the
    capability probe, unbudgeted, behind a property."""
    server = FakeServer()
    provider = make(server)
    with pytest.raises(ConfigurationError, match=r"select_strategy\(\).*client.prepare"):
        value = getattr(provider, read)
        if callable(value):
            value()
    assert server.requests == []
    plan = provider.select_strategy()  # the explicit step: the probe is sent here
    probed = len(completions(server))
    assert probed > 0 and provider.strategy == plan.strategy == provider.plan.strategy
    assert provider.probe_result.requests == probed and provider.fingerprint()["reading"]
    assert len(completions(server)) == probed  # reading again sends nothing


def test_a_requested_strategy_is_known_without_selecting():
    server = FakeChat()
    provider = fake(server, strategy="top_logprobs")
    assert provider.strategy == "top_logprobs" and provider.plan.reason == "requested"
    assert [r for r in server.requests if r["path"] == CHAT] == []


def test_chat_bounds_the_prompt_tokens_of_the_label_words_it_is_given():
    """The chat provider's bound counted the messages with the label words looked up last
    (another task's, a shorter list), not the ones it was asked to bound."""
    provider = fake(FakeChat(), strategy="top_logprobs")
    prompts = ["Review: ok.\nSentiment:", "Review: a long, slow film.\nSentiment:"]
    words = ["Negative", "Positive", "Neutral", "Mixed"]
    provider.label_token_ids(words)
    alone = provider.max_prompt_tokens(prompts, words)
    provider.label_token_ids(["Yes", "No"])  # another task's words, looked up since
    assert provider.max_prompt_tokens(prompts, words) == alone
    assert alone > provider.max_prompt_tokens(prompts, ["Yes", "No"])
