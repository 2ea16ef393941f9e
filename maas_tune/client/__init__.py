"""The one orchestrator: cache key → cache → budget → provider → cache, for a task's examples."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .._constants import CONTENT_FREE_TEXT
from ..data import Example
from ..errors import BudgetExceeded, OfflineCacheMiss
from ..frames import as_examples
from ..providers.base import Provider
from ..providers.remote import charge_of
from ..scores import ProviderAnswer, Scores, pad_token_features
from ..storage.budget import QueryBudget, Reservation
from ..storage.cache import ScoreCache, cache_key
from ..task import Task
from ._pipeline import ChunkPipeline
from ._runner import run_interruptibly
from .usage import Usage

__all__ = ["AsyncClient", "Client", "Usage"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Prompts sent per reservation / provider call / cache commit: a crash loses at most this many.
CLIENT_CHUNK_SIZE = 16
#: Prompt tokens reserved per probe request (tiny fixed prompts; a bound, not an estimate).
PROBE_TOKENS_BOUND = 64


class _Core(ChunkPipeline):
    """What :class:`Client` and :class:`AsyncClient` share: one implementation, async.

    Parameters
    ----------
    provider : Provider
        The model backend.
    cache : ScoreCache, path or None
        Where answers are kept; ``None`` uses the default store in the user cache dir.
    budget : QueryBudget or None
        Cap on the queries (and prompt tokens) this client may send; ``None`` sends
        without a cap. Cache hits are free.
    offline : bool, default False
        Never send anything: answer from the cache or raise :class:`OfflineCacheMiss`
        before sending.
    progress : bool or None, default None
        Show a progress bar; ``None`` shows it only on a terminal.
    chunk_size : int, default 16
        Prompts per provider call; each chunk is reserved, sent and committed
        together, so a crash loses at most the answers of the chunks in flight.
    chunks_in_flight : int or None, default None
        Chunks sent at once (they overlap: a slow request holds up only its chunk).
        None: enough to keep the provider's ``max_concurrency`` requests in flight
        (``ceil(max_concurrency / chunk_size) + 1``), or 1 for a provider that computes
        in-process (the local model). A crash or a kill -9 leaves at most this many
        chunks reserved but not committed (counted as spent: never an undercount).

    Notes
    -----
    Workers (threads, processes, hosts) sharing a store send each prompt once: before
    a chunk is sent its keys are claimed (:class:`~maas_tune.storage.claims.Claims`); keys
    another live worker is sending are waited for until their answers land in the
    cache, or taken over when that worker's claim expires.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        cache: ScoreCache | str | Path | None = None,
        budget: QueryBudget | None = None,
        offline: bool = False,
        progress: bool | None = None,
        chunk_size: int = CLIENT_CHUNK_SIZE,
        chunks_in_flight: int | None = None,
    ) -> None:
        self.provider = provider
        self.cache = cache if isinstance(cache, ScoreCache) else ScoreCache(cache)
        self.budget = budget
        self.offline = offline
        self.progress = progress
        self.chunk_size = chunk_size
        self.chunks_in_flight = chunks_in_flight
        self.usage = Usage()
        self._sleep = time.sleep  # tests may inject a clock
        provider.attach_facts(self.cache, offline=offline)

    # -- the core, async ----------------------------------------------------------
    async def _score(self, task: Task, examples: Any) -> Scores:
        prompts = [task.render(e) for e in as_examples(examples)]
        labels = list(task.label_words)
        token_ids = self.provider.label_token_ids(labels)  # checked single tokens; cache keys
        self._setup()
        answers, hits = await self._answers(prompts, labels, token_ids)
        return _to_scores(task, answers, hits)

    def prepare(self, task: Task) -> None:
        """Learn what scoring ``task`` needs from the provider (its label words' token ids;
        an HTTP API's capability probe) before any sample is sent, charged to the budget.

        :meth:`score` does this itself; call it first to read ``provider.fingerprint()``
        or ``provider.strategy`` without the probe escaping the budget: this is the
        explicit step in which an HTTP provider selects its strategy
        (:meth:`~maas_tune.providers.openai.OpenAICompletionsProvider.select_strategy`).
        """
        self.provider.label_token_ids(task.label_words)
        self._setup()

    # -- internals --------------------------------------------------------------
    def _setup(self) -> None:
        """Let the provider probe its API before any sample is sent, charged to the budget
        (reserved first, so the probe can never pass a cap)."""
        bound = self.provider.setup_requests()
        sending = bool(bound) and not self.offline  # offline: the probe comes from the cache
        reservation = None
        if sending and self.budget is not None:
            reservation = self.budget.reserve(bound, bound * PROBE_TOKENS_BOUND)
        try:
            cost = self.provider.prepare()  # selects the strategy, sending only if needed
        except BaseException as exc:
            outcome = charge_of(exc)
            lost = (bound if sending else 0, 0)  # what may have been sent, unanswered
            spent = (outcome.billable, outcome.prompt_tokens) if outcome else lost
            self._charge_probe(reservation, *spent)
            raise
        self._charge_probe(reservation, cost.requests, cost.prompt_tokens)
        self.usage.retries += cost.retries
        self.usage.rate_limited += cost.rate_limited

    def _charge_probe(self, reservation: Reservation | None, queries: int, tokens: int) -> None:
        if reservation is not None:
            assert self.budget is not None
            self.budget.commit(reservation, queries=queries, prompt_tokens=tokens)
        self.usage.probe_queries += queries
        self.usage.queries_sent += queries
        self.usage.prompt_tokens_sent += tokens

    async def _answers(
        self, prompts: list[str], labels: list[str], token_ids: list[int]
    ) -> tuple[list[ProviderAnswer], np.ndarray]:
        """Each prompt's answer, from the cache (keyed by the label words' token ids) or
        sent (the provider is given the label words), and which were cache hits."""
        fingerprint = self.provider.fingerprint()
        keys = [cache_key(fingerprint, p, token_ids) for p in prompts]
        found: dict[str, Any] = self.cache.get_many(list(dict.fromkeys(keys)))
        # One query per distinct missing prompt, in first-seen order.
        todo = {k: p for k, p in zip(keys, prompts) if k not in found}
        if todo:
            if self.offline:
                raise OfflineCacheMiss(missing=sum(k in todo for k in keys), total=len(prompts))
            self._check_budget(len(todo) * self.provider.max_queries_per_prompt(len(labels)))
            sent = await self._fetch(todo, labels, fingerprint)
            # What another worker sent meanwhile landed in the cache: a hit for us.
            found.update(self.cache.get_many([k for k in todo if k not in sent]))
            found.update(sent)
        else:
            sent = {}
        hits = np.array([k not in sent for k in keys], dtype=bool)
        self.usage.cache_hits += int(hits.sum())
        self.usage.prompt_tokens_cached += sum(
            found[k].prompt_tokens for k in keys if k not in sent
        )
        return [found[k] for k in keys], hits

    def _check_budget(self, needed: int) -> None:
        """Fail before sending anything when the whole job cannot fit the query cap."""
        if self.budget is None:
            return
        status = self.budget.status()
        if status.max_queries is None:
            return
        used = status.spent_queries + status.reserved_queries
        if used + needed > status.max_queries:
            raise BudgetExceeded(status.name, "queries", status.max_queries, used, needed)


class AsyncClient(_Core):
    """:class:`Client` for asyncio code: ``await client.score(task, examples)``.

    Chunks overlap: while one is sent, the next are claimed and reserved, and each
    commits when its answers are in, so a slow request holds up only itself. The
    requests in flight (all chunks together, per event loop) are capped by the
    provider's ``max_concurrency``, and paced by its ``rate_limit``: set the
    account's limit and the client keeps ``rate x latency`` requests in flight.
    Cancelling ``score`` (a timeout, Ctrl-C) stops sending and retrying at once; each
    chunk keeps what was answered and charges the requests in flight as spent.
    Parameters as :class:`Client`.
    """

    async def score(self, task: Task, examples: Any) -> Scores:
        """Label scores (and hidden states) for ``examples`` rendered through ``task``;
        see :meth:`Client.score`."""
        return await self._score(task, examples)

    async def content_free(self, task: Task) -> np.ndarray:
        """Class log-probs of the content-free input ``"N/A"``; see :meth:`Client.content_free`."""
        return (await self.score(task, [_content_free(task)])).label_logprobs[0]


class Client(_Core):
    __doc__ = _Core.__doc__

    def score(self, task: Task, examples: Any) -> Scores:
        """Label scores (and hidden states) for ``examples`` rendered through ``task``.

        Runs :class:`AsyncClient`'s code to its end (chunks overlap the same way).

        Parameters
        ----------
        task : Task
        examples : pandas.DataFrame, datasets.Dataset, or list of Example / dict / str; n rows
            Anything :func:`maas_tune.frames.as_examples` takes (columns ``text``, ``text_b``);
            other column names: ``as_examples(df, text="review")``. A bare str, a dict or an
            array of numbers is refused (:class:`DataError`).

        Returns
        -------
        Scores
            ``label_logprobs`` of shape (n, K): per class, the log of the summed
            probabilities of its label words.
        """
        return _run(self._score_and_close(task, examples))

    async def _score_and_close(self, task: Task, examples: Any) -> Scores:
        """Score, then close this event loop's connections (the loop ends with the call)."""
        try:
            return await self._score(task, examples)
        finally:
            aclose = getattr(self.provider, "aclose", None)
            if aclose is not None:
                await aclose()

    def content_free(self, task: Task) -> np.ndarray:
        """Class log-probs of the content-free input ``"N/A"`` (contextual calibration).

        Returns
        -------
        np.ndarray, shape (K,)
        """
        return self.score(task, [_content_free(task)]).label_logprobs[0]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from blocking code: on a fresh event loop here (Ctrl-C
    cancels it), or on a helper thread where this thread runs a loop already (a notebook);
    either way with :func:`~maas_tune._runner.run_interruptibly`'s bounded teardown."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_interruptibly(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="maas-tune") as pool:
        return pool.submit(run_interruptibly, coro).result()


def _content_free(task: Task) -> Example:
    text_b = CONTENT_FREE_TEXT if task.is_pair else None
    return Example(text=CONTENT_FREE_TEXT, label=None, text_b=text_b)


def _to_scores(task: Task, answers: Sequence[Any], hits: np.ndarray) -> Scores:
    k = len(task.labels)
    words = (
        np.stack([np.asarray(a.logprobs, dtype=np.float32) for a in answers])
        if answers
        else np.zeros((0, len(task.label_words)), np.float32)
    )  # (n, t)
    word_class = np.asarray(task.word_class)
    label_lp = np.full((len(answers), k), -np.inf, dtype=np.float32)  # (n, K)
    for c in range(k):
        cols = words[:, word_class == c]
        label_lp[:, c] = np.logaddexp.reduce(cols, axis=1)
    hidden = None
    if answers and all(a.hidden is not None for a in answers):
        hidden = np.stack([np.asarray(a.hidden, dtype=np.float32) for a in answers])  # (n, d)
    tokens = np.array([a.prompt_tokens for a in answers], dtype=np.int64)
    floored = np.array([getattr(a, "floored", 0) for a in answers], dtype=np.int64)
    feats, mask = None, None
    rows = [getattr(a, "token_features", None) for a in answers]
    if answers and all(r is not None for r in rows):
        feats, mask = pad_token_features([r for r in rows if r is not None])  # (n, N, d)
    return Scores(label_lp, hidden, hits, tokens, tuple(task.labels), floored, feats, mask)
