"""The frame shared by the HTTP scoring providers: their API session, the label words' token
ids, the probe that finds a plan (charged to the client's budget), and the cache identity."""

from __future__ import annotations

import abc
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ..errors import ConfigurationError
from ..scores import ProviderAnswer
from ._batch import Batch, BatchOutcome, Events
from ._forcing import synthetic_token_id
from ._script import Script
from .base import FactStore, Provider, SetupCost, Spend
from .http import public_url
from .session import APISession
from .tokenizers import check_single_tokens

if TYPE_CHECKING:
    from .options import HTTPOptions

__all__ = ["RemoteProvider", "Tokenizer"]

#: Maps a text to its token ids, without special tokens (e.g. ``tiktoken``'s ``encode``).
Tokenizer = Callable[[str], Sequence[int]]
T = TypeVar("T")
R = TypeVar("R")


class RemoteProvider(Provider):
    """A provider behind an OpenAI-style API whose ``"auto"`` strategy is found by a probe.

    Subclasses validate their options, call ``super().__init__`` and implement
    :meth:`_load_probe`, :meth:`_choose_plan` and the contract; they set
    :attr:`max_probe_requests` (the most requests their probe sends).

    Choosing the strategy is an explicit step: :meth:`select_strategy`, which
    :meth:`prepare` runs for the :class:`~maas_tune.client.Client` (so a probe is charged
    to its budget). Reading :attr:`strategy`, :attr:`plan`, :attr:`probe_result` or
    :meth:`fingerprint` sends nothing: under ``"auto"`` they refuse until a strategy was
    selected.

    Attributes
    ----------
    base_url : str
        The API root without credentials: the full origin (scheme, host, port, path).
    model : str
    max_concurrency : int
    probe_requests : int
        Probe requests this provider sent (charged to the client's budget, itemised in
        :class:`~maas_tune.client.Usage`).
    """

    max_probe_requests = 0
    route = ""

    def __init__(
        self,
        base_url: str,
        model: str,
        strategy: str,
        *,
        api_key: str | None,
        http: HTTPOptions,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.base_url = public_url(base_url)  # shown and kept in the cache: no credentials
        self.model = model
        self.max_concurrency = int(http.max_concurrency or 0)
        self.probe_requests = 0
        self._local = threading.local()  # events and request cap of this thread's scoring
        self._requested = strategy
        self._tokenizer = tokenizer
        self._label_ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}  # (prefix, words)
        self._choices: list[str] = []  # the label words last looked up (chat count_tokens)
        self._lock = threading.RLock()
        self._batch: Batch | None = None
        self._probe: Any = None  # what the capability probe found (subclasses' type)
        self._plan: Any = None  # the plan select_strategy() chose last
        self._session = APISession(
            base_url, api_key=api_key, http=http, transport=transport, sleep=sleep
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, "
            f"strategy={self._requested!r})"
        )

    @property
    def strategy(self) -> str:
        """The strategy in use: the one requested, or the one :meth:`select_strategy`
        chose. Reading it sends nothing.

        Raises
        ------
        ConfigurationError
            Under ``"auto"`` before a strategy was selected.
        """
        return str(self.plan.strategy)

    @property
    def plan(self) -> Any:
        """How samples are scored (the requested strategy's plan, or the one
        :meth:`select_strategy` chose last). Reading it sends nothing.

        Raises
        ------
        ConfigurationError
            Under ``"auto"`` before a strategy was selected.
        """
        if self._requested != "auto":
            return self._choose_plan()  # no request: nothing to probe
        with self._lock:
            plan = self._plan
        if plan is None:
            raise ConfigurationError(_not_selected(self, "strategy"))
        return plan

    @property
    def probe_result(self) -> Any:
        """What the capability probe found (read from the cache or sent by
        :meth:`select_strategy`). Reading it sends nothing.

        Raises
        ------
        ConfigurationError
            When no probe result is known yet.
        """
        with self._lock:
            probe = self._probe
        if probe is None:
            raise ConfigurationError(_not_selected(self, "capability probe result"))
        return probe

    def select_strategy(self) -> Any:
        """Choose how samples are scored, and return the plan (its ``strategy`` names it).

        Under ``"auto"`` this is where the capability probe is sent, once per cache (kept
        in the attached fact store); a requested strategy needs no request. Call it
        through :meth:`prepare` (the client does), so the probe is charged to a budget.

        Raises
        ------
        ConfigurationError
            Under ``"auto"``, when no exact plan exists on this API.
        OfflineCacheMiss
            Offline, when the probe result is not in the cache.
        """
        plan = self._choose_plan()
        with self._lock:
            self._plan = plan
        return plan

    @abc.abstractmethod
    def _choose_plan(self) -> Any:
        """The plan for the requested strategy, or under ``"auto"`` the one the probe
        result allows (loading it with :meth:`_load_probe`)."""

    @abc.abstractmethod
    def _load_probe(self) -> Any:
        """The probe result: this object's, the fact store's, or the probe's (sent now)."""

    @abc.abstractmethod
    def _probe_key(self) -> str:
        """Key of the probe result among the facts."""

    @contextlib.contextmanager
    def observed(
        self,
        events: Events | None = None,
        max_requests: int | None = None,
        extend: Callable[[], bool] | None = None,
    ) -> Iterator[Spend]:
        local = self._local
        previous = getattr(local, "observed", None)
        local.observed = (events, max_requests, extend, Spend(0, 0))
        try:
            yield local.observed[3]
        finally:
            local.observed = previous

    @abc.abstractmethod
    def _scoring(
        self, prompts: list[str], labels: Sequence[str]
    ) -> tuple[Callable[[str], Script[ProviderAnswer]], Callable[[list[ProviderAnswer]], None]]:
        """How to score ``labels`` after ``prompts``: each prompt's script of requests, and
        what to do with the answers once all came back (learn from them)."""

    def score(self, prompts: Sequence[str], labels: Sequence[str]) -> list[ProviderAnswer]:
        """:meth:`Provider.score`; selects the strategy first where none was (under
        ``"auto"`` the probe is then among the requests sent, uncharged: no budget here)."""
        prompts = list(prompts)
        if not prompts:
            return []
        one, after = self._scoring(prompts, labels)
        answers = self._map(one, prompts)
        after(answers)
        return answers

    async def ascore(
        self,
        prompts: Sequence[str],
        labels: Sequence[str],
        *,
        events: Events | None = None,
        max_requests: int | None = None,
        extend: Callable[[], bool] | None = None,
    ) -> tuple[list[ProviderAnswer], Spend]:
        """:meth:`score` on the running event loop: the same scripts, sent by
        :meth:`APISession.amap`; requests in flight are shared with other chunks."""
        prompts, spend = list(prompts), Spend(0, 0)
        if not prompts:
            return [], spend
        one, after = self._scoring(prompts, labels)
        batch = Batch(events, max_requests, extend)
        try:
            answers = await self._session.amap(
                one, prompts, self.route, model=self.model, batch=batch
            )
        finally:  # requests answered or lost: what may be billed
            spend.requests, spend.prompt_tokens = (
                batch.answered + batch.unknown,
                batch.prompt_tokens,
            )
        after(answers)
        return answers, spend

    def _map(self, one: Callable[[T], Script[R]], prompts: Sequence[T]) -> list[R]:
        """``one(prompt)`` (a script) for each prompt through the session, as observed."""
        events, max_requests, extend, spend = getattr(self._local, "observed", None) or (
            None,
            None,
            None,
            None,
        )
        batch = Batch(events, max_requests, extend)
        try:
            return self._session.map(one, prompts, self.route, model=self.model, batch=batch)
        finally:
            if spend is not None:  # requests answered or lost: what may be billed
                spend.requests = (spend.requests or 0) + batch.answered + batch.unknown
                spend.prompt_tokens = (spend.prompt_tokens or 0) + batch.prompt_tokens

    # -- setup: the probe, charged by the client -------------------------------------
    def setup_requests(self) -> int:
        """Requests :meth:`prepare` may still send: the probe's, unless it is known."""
        if self._requested != "auto" or self._probe_known():
            return 0
        return self.max_probe_requests

    def prepare(self) -> SetupCost:
        """Probe the API now (if not known) and return what that cost; an error leaving
        this method carries ``outcome`` (what was sent, to be charged)."""
        if self._requested != "auto":
            return SetupCost(0, 0)
        batch = self._batch = Batch()
        try:
            self.select_strategy()  # probes, and refuses here when no exact plan exists
        except BaseException as exc:
            exc.outcome = batch.outcome({})  # type: ignore[attr-defined]
            raise
        finally:
            self._batch = None
        return SetupCost(
            batch.answered + batch.unknown, batch.prompt_tokens, batch.retries, batch.rate_limited
        )

    def _probe_known(self) -> bool:
        return self._probe is not None or self._session.recall(self._probe_key()) is not None

    def _probe_batch(self) -> Batch:
        return self._batch if self._batch is not None else Batch()

    # -- token ids ----------------------------------------------------------------
    def _token_ids(self, text: str) -> list[int] | None:
        if self._tokenizer is not None:
            return [int(i) for i in self._tokenizer(text)]
        return self._session.tokenize(text)

    def _ids_known(self) -> bool:
        if self._tokenizer is not None:
            return True
        with self._lock:  # the label words' ids were learnt (kept in the cache offline)
            learnt = [i for ids in self._label_ids.values() for i in ids]
        if learnt:
            return all(i >= 0 for i in learnt)
        return self._session.has_tokenizer

    def _count(self, texts: Sequence[str]) -> list[int]:
        if self._tokenizer is not None:  # +1: the BOS token requests add
            return [len(self._tokenizer(t)) + 1 for t in texts]
        return self._session.count_tokens(texts)

    def _label_token_ids(self, words: Sequence[str], prefix: str) -> list[int]:
        """Each word's token id after ``prefix``: learnt once per process (and kept in the
        fact store, so an offline rerun knows them), checked to be single tokens."""
        words = list(words)
        with self._lock:
            learnt = self._label_ids.get((prefix, tuple(words)))
            if learnt is not None:
                self._choices = words
                return list(learnt)
        if self._tokenizer is not None:  # local: nothing to ask, nothing to keep
            result = self._fetch_label_token_ids(words, prefix)
        else:
            key = "|".join(("label_token_ids2", *self._identity(), repr(prefix), json.dumps(words)))
            what = f"the token ids of the label words {words}"
            fetch = partial(self._fetch_label_token_ids, words, prefix)
            result = [int(i) for i in self._session.fact(key, what, fetch)]
        with self._lock:
            self._label_ids[(prefix, tuple(words))] = result
            self._choices = words
        return list(result)

    def _fetch_label_token_ids(self, words: list[str], prefix: str) -> list[int]:
        found = {w: self._token_ids(prefix + w) for w in dict.fromkeys(words)}
        if any(ids is None for ids in found.values()):  # no tokenizer: stable synthetic ids
            return [synthetic_token_id(w) for w in words]
        as_text = {prefix + w: [str(i) for i in ids or []] for w, ids in found.items()}
        check_single_tokens(words, as_text.__getitem__, prefix=prefix)
        return [int(found[w][0]) for w in words]  # type: ignore[index]

    # -- identity -----------------------------------------------------------------
    def _identity(self) -> tuple[str, ...]:
        """What a fact about this API depends on (never a credential)."""
        source = "given" if self._tokenizer is not None else "server"
        return (self.base_url, self.model, f"tokenizer={source}")

    def _identity_fingerprint(self, kind: str, reading: str, **options: Any) -> dict[str, Any]:
        """The cache identity: full origin, model asked for and served, what answers hold."""
        found: dict[str, Any] = {
            "provider": kind,
            "origin": self.base_url,
            "model": self.model,
            "reading": reading,
        }
        with self._lock:
            served = getattr(self._probe, "served_model", None)
        if served:
            found["served_model"] = served
        if options:
            found["options"] = options
        return found

    # -- plumbing -----------------------------------------------------------------
    def attach_facts(self, facts: FactStore, *, offline: bool = False) -> None:
        """Keep the probe result and label token ids in ``facts`` (the client's cache);
        with ``offline=True`` send nothing and raise :class:`OfflineCacheMiss` instead."""
        self._session.attach_facts(facts, offline=offline)

    def close(self) -> None:
        self._session.close()

    async def aclose(self) -> None:
        """Close the connections of the running event loop."""
        await self._session.aclose()


def _not_selected(provider: RemoteProvider, what: str) -> str:
    return (
        f"{provider.base_url} (strategy='auto'): no {what} yet — call "
        "provider.select_strategy() (it may send the capability probe), or let the client "
        "do it with client.prepare(task), which charges the probe to the budget"
    )


def charge_of(exc: BaseException) -> BatchOutcome[Any] | None:
    """The :class:`BatchOutcome` an error of a provider call carries, if any."""
    outcome = getattr(exc, "outcome", None)
    return outcome if isinstance(outcome, BatchOutcome) else None
