"""The provider contract: what every model backend answers for a batch of prompts."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._constants import MAX_TOKEN_FEATURES
from ..errors import ConfigurationError
from ..scores import ProviderAnswer

__all__ = [
    "FactStore",
    "Provider",
    "SetupCost",
    "Spend",
    "check_token_features",
]


class FactStore(Protocol):
    """Where a provider keeps small JSON facts about its server across runs.

    :class:`~maas_tune.storage.cache.ScoreCache` is one; keys never hold credentials.
    """

    def remember(self, key: str, value: Any) -> None:
        """Keep ``value`` (JSON-serialisable) under ``key``."""

    def recall(self, key: str) -> Any | None:
        """The value kept under ``key``, or None."""

    # Optional: ``remember_many(facts: Mapping[str, Any])`` keeps several in one
    # transaction (ScoreCache has it); without it, each is kept with :meth:`remember`.


@dataclass
class Spend:
    """What one :meth:`Provider.score` call sent that may be billed, where the provider
    counts its requests itself (HTTP providers); None where it does not (then the
    answers' ``queries`` and ``prompt_tokens`` are what was spent)."""

    requests: int | None = None
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class SetupCost:
    """What a provider sent before scoring (a capability probe): charged like any request.

    Attributes
    ----------
    requests : int
        Requests that were, or may have been, billed.
    prompt_tokens : int
        Their prompt tokens (usage, or a bound where unknown).
    """

    requests: int
    prompt_tokens: int
    #: Attempts retried, and answered 429, on the way.
    retries: int = 0
    rate_limited: int = 0


class Provider(abc.ABC):
    """A model backend that scores label words as the next token after a prompt.

    Subclasses implement :meth:`fingerprint`, :meth:`label_token_ids`,
    :meth:`count_tokens` and :meth:`score`. :meth:`score` is given the label words
    themselves; their token ids (:meth:`label_token_ids`) only key the cache. The
    fingerprint goes into every cache key, so two providers with equal fingerprints
    must give equal answers.
    """

    #: Whether :meth:`score` returns hidden states.
    returns_hidden: bool = False
    #: How many of the prompt's last tokens' states :meth:`score` returns (None: none).
    token_features: int | None = None

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable identity: provider kind, model id, scoring strategy, options.

        Never contains credentials.
        """

    @abc.abstractmethod
    def label_token_ids(self, words: Sequence[str]) -> list[int]:
        """Token id of each label word (as it follows the prompt, prefix included).

        The client keys its cache with them, and checks here, before anything is sent,
        that each word is one token. A provider without a tokenizer may return stable
        synthetic ids (negative).

        Raises
        ------
        TaskError
            If a word is not exactly one token; the message names the word and how
            it tokenizes.
        """

    @abc.abstractmethod
    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Number of prompt tokens each prompt will cost (exact or an upper estimate)."""

    @abc.abstractmethod
    def score(self, prompts: Sequence[str], labels: Sequence[str]) -> list[ProviderAnswer]:
        """Score each label word as the next token after each prompt.

        Parameters
        ----------
        prompts : sequence of str, length n
        labels : sequence of str, length t
            The label words (as the task lists them, without the prefix that joins them
            to the prompt); the same words are scored for every prompt.

        Returns
        -------
        list of ProviderAnswer, length n
            In the order of ``prompts``; ``logprobs`` has one value per label word.

        Raises
        ------
        TaskError
            If a word is not exactly one token (as :meth:`label_token_ids`).
        """

    def max_queries_per_prompt(self, n_labels: int) -> int:
        """Upper bound on the requests one prompt may cost when ``n_labels`` are scored.

        The client reserves this much budget before sending; the default (1) suits
        providers that answer any number of label tokens in one request.
        """
        return 1

    def max_prompt_tokens(self, prompts: Sequence[str], labels: Sequence[str]) -> int:
        """Upper bound on the prompt tokens scoring ``labels`` after ``prompts`` may cost
        (reserved first).

        Default: each prompt's :meth:`count_tokens` times :meth:`max_queries_per_prompt`.
        """
        return sum(self.count_tokens(prompts)) * self.max_queries_per_prompt(len(labels))

    @contextlib.contextmanager
    def observed(
        self,
        events: Callable[[str], None] | None = None,
        max_requests: int | None = None,
        extend: Callable[[], bool] | None = None,
    ) -> Iterator[Spend]:
        """While inside, this thread's :meth:`score` calls report ``"answered"`` (a prompt
        done), ``"retry"`` and ``"rate_limited"`` to ``events``, and send at most
        ``max_requests`` requests that may be billed, retries included (the budget's
        reservation), unless ``extend()`` holds one more; the :class:`Spend` yielded is
        filled with what they sent. Default:
        nothing to report, nothing that could pass the cap, spend as the answers say."""
        yield Spend()

    async def ascore(
        self,
        prompts: Sequence[str],
        labels: Sequence[str],
        *,
        events: Callable[[str], None] | None = None,
        max_requests: int | None = None,
        extend: Callable[[], bool] | None = None,
    ) -> tuple[list[ProviderAnswer], Spend]:
        """:meth:`score` for an event loop, observed as by :meth:`observed` (the answers
        and what was spent). Default: :meth:`score`, blocking the loop (a local model
        computes; it does not wait). The HTTP providers send without blocking."""
        with self.observed(events, max_requests, extend) as spend:
            return self.score(prompts, labels), spend

    def setup_requests(self) -> int:
        """Most requests :meth:`prepare` may still send (reserved from the budget first)."""
        return 0

    def prepare(self) -> SetupCost:
        """Learn what scoring needs before any sample is sent (e.g. probe the API), and
        return what that cost. The client calls it, charging the result to its budget;
        an error leaving it carries ``outcome`` with what was sent. Default: nothing."""
        return SetupCost(0, 0)

    def attach_facts(self, facts: FactStore, *, offline: bool = False) -> None:
        """Lend the provider a store for what it learns about its server.

        The :class:`~maas_tune.client.Client` calls this with its cache. A provider that
        asks its server things before scoring (capability probe, tokenizer) keeps the
        answers there, so later runs need no request for them; with ``offline=True`` it
        must send nothing and raise :class:`~maas_tune.errors.OfflineCacheMiss` for a
        fact it does not have. Default: nothing to keep.
        """

    def close(self) -> None:
        """Release resources (connections, model memory). Default: nothing."""

    def __enter__(self) -> Provider:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_token_features(n: int | None) -> None:
    """Refuse a ``token_features`` option that is not None or 1..``MAX_TOKEN_FEATURES``.

    Raises
    ------
    ConfigurationError
        Naming the value and the range.
    """
    if n is not None and (
        isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TOKEN_FEATURES
    ):
        raise ConfigurationError(
            f"token_features must be None or a number of tokens in 1..{MAX_TOKEN_FEATURES}, "
            f"got {n!r}"
        )
