"""A provider that takes label scores from one provider and hidden states from an embeddings API."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..scores import ProviderAnswer
from ._batch import BatchOutcome, bound_tokens
from .base import FactStore, Provider, SetupCost, Spend
from .embeddings import OpenAIEmbeddingsProvider

__all__ = ["WithEmbeddings"]


class WithEmbeddings(Provider):
    """Label scores from one provider, hidden states from an embeddings API.

    For APIs that expose no hidden state, DecT can take its representation from the
    provider's ``/embeddings`` endpoint instead: each prompt is scored by ``scorer``,
    then the same rendered prompt is embedded by ``embedder``; the vector becomes the
    answer's ``hidden`` (replacing any the scorer returned).

    Parameters
    ----------
    scorer : Provider
        Answers the label log-probs (e.g. :class:`OpenAICompletionsProvider`).
    embedder : OpenAIEmbeddingsProvider
        Answers the hidden states.

    Notes
    -----
    Each sample costs the scorer's requests plus one: hosted APIs bill embeddings per
    input, so an input counts as one query even when a request carries several. An
    answer's ``prompt_tokens`` adds the tokens the embedding was billed. If embedding
    fails after the scorer was answered, the error carries ``request_sent=True`` so
    the client counts the spend instead of releasing it.
    """

    returns_hidden = True

    def __init__(self, scorer: Provider, embedder: OpenAIEmbeddingsProvider) -> None:
        if not isinstance(scorer, Provider):
            raise ConfigurationError(f"scorer must be a Provider, got {type(scorer).__name__}")
        if not callable(getattr(embedder, "embed_with_usage", None)):
            raise ConfigurationError(
                f"embedder must be an OpenAIEmbeddingsProvider, got {type(embedder).__name__}"
            )
        self.scorer = scorer
        self.embedder = embedder

    def __repr__(self) -> str:
        return f"WithEmbeddings({self.scorer!r}, {self.embedder!r})"

    def fingerprint(self) -> dict[str, Any]:
        scorer = self.scorer.fingerprint()
        return {
            "provider": "with-embeddings",
            "model": scorer.get("model"),  # the cache's per-model bookkeeping
            "strategy": f"{getattr(self.scorer, 'strategy', scorer.get('provider'))}+embeddings",
            "scorer": scorer,
            "embedder": self.embedder.fingerprint(),
        }

    def label_token_ids(self, words: Sequence[str]) -> list[int]:
        return self.scorer.label_token_ids(words)

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        return self.scorer.count_tokens(prompts)

    def max_queries_per_prompt(self, n_labels: int) -> int:
        return self.scorer.max_queries_per_prompt(n_labels) + 1

    def max_prompt_tokens(self, prompts: Sequence[str], labels: Sequence[str]) -> int:
        return self.scorer.max_prompt_tokens(prompts, labels) + sum(map(bound_tokens, prompts))

    @contextlib.contextmanager
    def observed(
        self,
        events: Callable[[str], None] | None = None,
        max_requests: int | None = None,
        extend: Callable[[], bool] | None = None,
    ) -> Iterator[Spend]:
        # The embeddings requests are not counted against the scorer's cap; the answers'
        # queries (the scorer's plus the embeddings requests) are what was spent.
        with self.scorer.observed(events, max_requests, extend):
            yield Spend()

    def setup_requests(self) -> int:
        return self.scorer.setup_requests()

    def prepare(self) -> SetupCost:
        return self.scorer.prepare()

    def attach_facts(self, facts: FactStore, *, offline: bool = False) -> None:
        # Only the scorer asks its server things before scoring (probe, tokenizer).
        self.scorer.attach_facts(facts, offline=offline)

    def score(self, prompts: Sequence[str], labels: Sequence[str]) -> list[ProviderAnswer]:
        prompts = list(prompts)
        answers = self.scorer.score(prompts, labels)
        if not prompts:
            return answers
        try:
            vectors, tokens = self.embedder.embed_with_usage(prompts)  # (n, d), (n,)
        except BaseException as exc:
            _charge_scored(exc, answers)
            raise
        return self._combined(answers, vectors, tokens)

    async def ascore(
        self,
        prompts: Sequence[str],
        labels: Sequence[str],
        *,
        events: Callable[[str], None] | None = None,
        max_requests: int | None = None,
        extend: Callable[[], bool] | None = None,
    ) -> tuple[list[ProviderAnswer], Spend]:
        # As score, without blocking the loop: the scorer's and the embedder's requests
        # overlap other chunks'. The spend is the answers' (see observed).
        prompts = list(prompts)
        answers, _ = await self.scorer.ascore(
            prompts, labels, events=events, max_requests=max_requests, extend=extend
        )
        if not prompts:
            return answers, Spend()
        try:
            vectors, tokens = await self.embedder.aembed_with_usage(prompts)  # (n, d), (n,)
        except BaseException as exc:
            _charge_scored(exc, answers)
            raise
        return self._combined(answers, vectors, tokens), Spend()

    def _combined(
        self, answers: list[ProviderAnswer], vectors: np.ndarray, tokens: np.ndarray
    ) -> list[ProviderAnswer]:
        # The embedder sends one request per batch of inputs: each is charged to the
        # answer of the batch's first prompt, so the answers' queries sum to what was billed.
        size = self.embedder.batch_size
        return [
            ProviderAnswer(
                a.logprobs,
                vectors[i],
                a.prompt_tokens + int(tokens[i]),
                a.queries + (i % size == 0),
                a.floored,
                a.token_features,
            )
            for i, a in enumerate(answers)
        ]

    def close(self) -> None:
        try:
            self.scorer.close()
        finally:
            self.embedder.close()


def _charge_scored(exc: BaseException, answers: list[ProviderAnswer]) -> None:
    """Embedding failed after the scorer was answered: those requests were paid for
    whatever stops us now, so the error carries them; an answer without its hidden
    state is not this provider's answer, so none is kept."""
    with contextlib.suppress(AttributeError):
        exc.request_sent = True  # type: ignore[attr-defined]
        lost = getattr(exc, "outcome", None) or BatchOutcome()
        exc.outcome = BatchOutcome(  # type: ignore[attr-defined]
            {},
            lost.answered + sum(a.queries for a in answers),
            lost.unknown,
            lost.prompt_tokens + sum(a.prompt_tokens for a in answers),
        )
