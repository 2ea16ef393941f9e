"""The one orchestrator: cache key → cache → budget → provider → cache, for a task's examples."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._constants import CLAIM_POLL_MAX_S, CLAIM_POLL_S, CONTENT_FREE_TEXT
from ._hold import ChunkHold
from ._runner import run_interruptibly
from .data import Example
from .errors import BudgetExceeded, OfflineCacheMiss, ProviderError, ProviderResponseError
from .frames import as_examples
from .providers.base import Provider
from .providers.remote import charge_of
from .scores import ProviderAnswer, Scores, pad_token_features
from .storage.budget import QueryBudget, Reservation
from .storage.cache import ScoreCache, cache_key
from .storage.claims import Claims
from .task import Task

__all__ = ["AsyncClient", "Client", "Usage"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Prompts sent per reservation / provider call / cache commit: a crash loses at most this many.
CLIENT_CHUNK_SIZE = 16
#: Prompt tokens reserved per probe request (tiny fixed prompts; a bound, not an estimate).
PROBE_TOKENS_BOUND = 64
#: Largest count believed from a provider (a signed 64-bit ledger column holds more).
MAX_COUNT = 2**40


@dataclass
class Usage:
    """Running totals of what a :class:`Client` did (this process only).

    ``queries_sent`` counts every request charged to the budget: those of answered
    samples, of samples whose scoring failed after a request was answered, of requests
    whose answer was lost (timeouts, Ctrl-C), and the probe's (also in ``probe_queries``).
    """

    queries_sent: int = 0
    samples_sent: int = 0
    cache_hits: int = 0
    prompt_tokens_sent: int = 0
    #: Prompt tokens of the answers served from the cache: what they cost when first sent.
    prompt_tokens_cached: int = 0
    #: Requests of the provider's capability probe (part of ``queries_sent``).
    probe_queries: int = 0
    #: Requests charged although no answer was kept for them (a failed or interrupted
    #: sample's, a lost answer's): part of ``queries_sent``.
    queries_lost: int = 0
    #: Attempts retried (5xx, timeouts, connection errors) and answered 429.
    retries: int = 0
    rate_limited: int = 0


class _Core:
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
        if not bound or self.offline:  # offline: the probe must come from the cache
            if bound:
                self.provider.prepare()
            return
        reservation = None
        if self.budget is not None:
            reservation = self.budget.reserve(bound, bound * PROBE_TOKENS_BOUND)
        try:
            cost = self.provider.prepare()
        except BaseException as exc:
            outcome = charge_of(exc)
            spent = (outcome.billable, outcome.prompt_tokens) if outcome else (bound, 0)
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

    async def _fetch(
        self, todo: dict[str, str], labels: list[str], fingerprint: Mapping[str, Any]
    ) -> dict[str, ProviderAnswer]:
        """Send the keys of ``todo`` no other worker is sending; wait for the others.

        Returns the answers this client sent; the rest are in the cache on return.
        """
        from tqdm.auto import tqdm

        model = str(fingerprint.get("model", ""))
        claims = Claims(self.cache.store)  # one owner per call: threads may share a client
        out: dict[str, ProviderAnswer] = {}
        pending, pause = list(todo), CLAIM_POLL_S
        disable = None if self.progress is None else not self.progress
        with tqdm(total=len(todo), desc="scoring", unit="sample", disable=disable) as bar:
            event = self._observer(bar)
            while pending:
                blocked: list[str] = []
                chunks = self._chunks(pending, todo, claims, blocked)
                await self._pipeline(chunks, labels, model, claims, event, bar, out)
                landed = set(self.cache.get_many(blocked)) if blocked else set()
                bar.update(len(landed))
                if len(blocked) == len(pending) and not landed:  # no progress: wait
                    log.debug("waiting for %d prompts other workers are sending", len(blocked))
                    await self._wait(pause)
                    pause = min(2 * pause, CLAIM_POLL_MAX_S)
                else:
                    pause = CLAIM_POLL_S
                pending = [k for k in blocked if k not in landed]
        return out

    async def _chunks(
        self, pending: list[str], todo: dict[str, str], claims: Claims, blocked: list[str]
    ) -> AsyncIterator[dict[str, str]]:
        """The claimed chunks of ``pending``, claimed one at a time as they are needed
        (keys another worker holds go to ``blocked``)."""
        for start in range(0, len(pending), self.chunk_size):
            batch = pending[start : start + self.chunk_size]
            mine = await _off_loop(
                partial(self._claim, claims, batch), undo=lambda got: claims.release(list(got))
            )
            blocked.extend(k for k in batch if k not in mine)
            if mine:
                yield {k: todo[k] for k in batch if k in mine}

    def _depth(self) -> int:
        """Chunks in flight at once: enough to keep the provider's requests in flight busy
        while chunks start and commit (one for a provider that computes in-process)."""
        if self.chunks_in_flight is not None:
            return max(1, int(self.chunks_in_flight))
        if type(self.provider).ascore is Provider.ascore:
            return 1
        slots = int(getattr(self.provider, "max_concurrency", 1) or 1)
        return -(-slots // max(1, self.chunk_size)) + 1

    async def _pipeline(
        self,
        chunks: AsyncIterator[dict[str, str]],
        labels: list[str],
        model: str,
        claims: Claims,
        event: Callable[[str], None],
        bar: Any,
        out: dict[str, ProviderAnswer],
    ) -> None:
        """Send ``chunks`` overlapping (up to :meth:`_depth` at once), each reserved, sent
        and committed on its own. The first failure stops new chunks; those in flight
        finish (they were paid for). Cancellation cancels them: each keeps what was
        answered and charges what was sent, then the cancellation goes on."""
        running: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        async def one(chunk: dict[str, str]) -> None:
            shown = [0]

            def seen(kind: str) -> None:
                shown[0] += kind == "answered"
                event(kind)

            try:
                out.update(await self._fetch_chunk(chunk, labels, model, claims, seen))
            finally:
                bar.update(max(0, len(chunk) - shown[0]))  # what the events did not show

        try:
            async for chunk in chunks:
                running.add(asyncio.ensure_future(one(chunk)))
                while len(running) >= self._depth() or (errors and running):
                    errors += await _settle(running)
                if errors:
                    break
            while running:
                errors += await _settle(running)
        except BaseException:
            for task in running:
                task.cancel()
            if running:  # let each cancelled chunk commit what it got
                await asyncio.wait(running)
            raise
        if errors:
            raise errors[0]

    async def _wait(self, seconds: float) -> None:
        if self._sleep is time.sleep:
            await asyncio.sleep(seconds)
        else:
            self._sleep(seconds)

    def _observer(self, bar: Any) -> Callable[[str], None]:
        """An event callback that moves the bar as each prompt is answered and shows
        retries and 429s on it."""
        lock = threading.Lock()

        def event(kind: str) -> None:
            with lock:
                if kind == "answered":
                    bar.update(1)
                    return
                if kind == "retry":
                    self.usage.retries += 1
                elif kind == "rate_limited":
                    self.usage.rate_limited += 1
                bar.set_postfix(
                    retries=self.usage.retries, http_429=self.usage.rate_limited, refresh=False
                )
                log.info(
                    "scoring: %d retries, %d answered 429 so far",
                    self.usage.retries,
                    self.usage.rate_limited,
                )

        return event

    def _claim(self, claims: Claims, batch: list[str]) -> set[str]:
        """Claim what no other worker sends, less what another worker's commit cached since
        this client looked (a worker commits its answers and drops its claims at once)."""
        mine = claims.acquire(batch)
        landed = set(self.cache.get_many(list(mine))) if mine else set()
        if landed:
            claims.release(list(landed))
        return mine - landed

    async def _fetch_chunk(
        self,
        chunk: dict[str, str],
        labels: list[str],
        model: str,
        claims: Claims,
        event: Callable[[str], None] | None = None,
    ) -> dict[str, ProviderAnswer]:
        """Reserve, send and commit one claimed chunk; its claims are dropped either way."""
        committed: list[bool] = []  # the commit's transaction dropped the claims
        try:
            return await self._send_chunk(chunk, labels, model, claims, event, committed)
        except BaseException:
            if committed:  # an error after the commit: nothing left to drop
                raise
            try:  # the answers were not cached: let another worker (or a rerun) send them
                claims.release(list(chunk))
            except Exception as exc:  # noqa: BLE001 - the original error matters more
                log.warning("could not drop claims (they expire by themselves): %s", exc)
            raise

    async def _send_chunk(
        self,
        chunk: dict[str, str],
        labels: list[str],
        model: str,
        claims: Claims,
        event: Callable[[str], None] | None = None,
        committed: list[bool] | None = None,
    ) -> dict[str, ProviderAnswer]:
        """Send one chunk; whatever ends it, keep every answer that arrived and charge
        exactly the requests that were (or may have been) billed, then re-raise (after
        appending True to ``committed`` once the commit has dropped the chunk's claims)."""
        keys, prompts = list(chunk), list(chunk.values())
        hold = await _off_loop(
            partial(self._hold, prompts, labels),
            undo=lambda held: (
                held.settle_failed(request_sent=False) if self.budget is not None else None
            ),
        )
        error: BaseException | None = None
        try:
            got, seen = await self.provider.ascore(
                prompts, labels, events=event, max_requests=hold.queries, extend=hold.extend
            )
            answers = dict(enumerate(got))
            spent = (
                sum(_count(a.queries) for a in answers.values()),
                sum(_count(a.prompt_tokens) for a in answers.values()),
            )
            if seen.requests is not None:  # counted per request (answers reused aren't paid)
                spent = (seen.requests, _count(seen.prompt_tokens))
            if len(answers) != len(prompts):
                error = _refused(
                    f"provider returned {len(answers)} answers for {len(prompts)} prompts"
                )
                answers = {}
                spent = (hold.queries or spent[0], hold.prompt_tokens or spent[1])
        except BaseException as exc:
            outcome = charge_of(exc)
            if outcome is None:  # not an HTTP batch (the local model, a bug)
                if self.budget is not None:
                    hold.settle_failed(bool(getattr(exc, "request_sent", False)))
                raise
            answers, spent, error = (
                dict(outcome.results),
                (outcome.billable, outcome.prompt_tokens),
                exc,
            )
        kept, problem = _checked(answers, len(labels))
        result = {keys[i]: a for i, a in kept.items()}
        await _off_loop(partial(self._commit_chunk, result, hold, spent, claims, keys, model))
        if committed is not None:
            committed.append(True)
        self.usage.samples_sent += len(result)
        self.usage.queries_lost += max(
            0, spent[0] - sum(_count(a.queries) for a in result.values())
        )
        log.debug("sent %d queries (%d prompt tokens); %d answers kept", *spent, len(result))
        if error is not None:
            raise error
        if problem is not None:
            raise problem
        return result

    def _hold(self, prompts: list[str], labels: list[str]) -> ChunkHold:
        """The chunk's worst case, reserved before sending (nothing without a budget);
        a retry of a lost answer reserves one request more, or is not sent."""
        if self.budget is None:
            return ChunkHold(None, 0, 0, 0)
        per_prompt = self.provider.max_queries_per_prompt(len(labels))
        tokens = self.provider.max_prompt_tokens(prompts, labels)
        per_request = -(-tokens // max(1, len(prompts) * per_prompt))
        return ChunkHold(self.budget, len(prompts) * per_prompt, tokens, per_request)

    def _commit_chunk(
        self,
        result: dict[str, ProviderAnswer],
        hold: ChunkHold,
        spent: tuple[int, int],
        claims: Claims,
        keys: list[str],
        model: str,
    ) -> None:
        """Answers and spend land together (one transaction where the stores are one)."""
        queries, used = spent
        settled = False  # spend durably committed (a rolled-back transaction undoes it)
        try:
            with self.cache.store.transaction() as conn:
                if result:
                    self.cache.put_many(result, model=model, conn=conn)
                claims.release(keys, conn=conn)
                if self.budget is not None:
                    # One transaction with the answers where the ledger is in the same
                    # database; else the ledger's own.
                    hold.settle(queries, used, conn if self._same_store() else None)
                    settled = not self._same_store()
        except BaseException as exc:
            # The answers arrived, so they were paid for, even if they cannot be cached.
            if isinstance(exc, ProviderError):
                exc.request_sent = True
            if self.budget is not None and not settled:
                hold.settle(queries, used)
            raise
        finally:
            self.usage.queries_sent += queries
            self.usage.prompt_tokens_sent += used

    def _same_store(self) -> bool:
        """Whether the budget ledger is in the cache's database (one transaction for both)."""
        assert self.budget is not None
        return self.budget.store.identity == self.cache.store.identity


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


async def _off_loop(step: Callable[[], T], undo: Callable[[T], Any] | None = None) -> T:
    """Run a blocking store step (a claim, a reservation, a commit: each one fsync'd
    transaction, milliseconds) on a worker thread, so the event loop keeps other chunks'
    requests moving. A cancellation waits for the step to end, undoes what it did with
    ``undo`` (claims dropped, a reservation released; a commit is kept), then goes on."""
    future = asyncio.get_running_loop().run_in_executor(None, step)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if undo is not None and not future.cancelled() and future.exception() is None:
            undo(future.result())
        raise


async def _settle(running: set[asyncio.Task[None]]) -> list[BaseException]:
    """Wait for one of ``running`` to end; drop the ended ones, return their errors."""
    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    running -= done
    return [e for t in done if not t.cancelled() and (e := t.exception()) is not None]


def _content_free(task: Task) -> Example:
    text_b = CONTENT_FREE_TEXT if task.is_pair else None
    return Example(text=CONTENT_FREE_TEXT, label=None, text_b=text_b)


def _count(value: object) -> int:
    """A reported count clamped into [0, MAX_COUNT] for the ledger (bad ones are refused
    separately, but what they cost is still charged)."""
    try:
        return min(max(int(value), 0), MAX_COUNT)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0


def _checked(
    answers: Mapping[int, ProviderAnswer], t: int
) -> tuple[dict[int, ProviderAnswer], ProviderResponseError | None]:
    """The answers fit to cache, and the first problem with the others (they arrived, so
    they were paid for; they must never reach the cache)."""
    kept: dict[int, ProviderAnswer] = {}
    problem = None
    for index, answer in answers.items():
        found = _problem(answer, t)
        if found is None:
            kept[index] = answer
        elif problem is None:
            problem = _refused(found)
    return kept, problem


def _problem(answer: ProviderAnswer, t: int) -> str | None:
    lp = np.asarray(answer.logprobs)
    if lp.shape != (t,):
        return f"provider returned logprobs of shape {lp.shape}, expected ({t},)"
    # -inf is no model's log-prob of a word: the server masked it (top-k/top-p filtering or
    # a bias applied before reporting), and one such value breaks every decoder later.
    if not np.isfinite(lp).all() or (lp > 0).any():
        return (
            f"provider returned label logprobs {lp.tolist()}; each must be a finite number "
            "<= 0 (NaN, +inf or > 0 is corrupt; -inf means the server masked the word: it "
            "reports log-probs after top-k/top-p filtering)"
        )
    for name in ("prompt_tokens", "queries"):
        value = getattr(answer, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            return f"provider returned {name}={value!r}, not a count >= 0"
        if value > MAX_COUNT:
            return f"provider returned {name}={value!r}, beyond any real count"
    return None


def _refused(problem: str) -> ProviderResponseError:
    err = ProviderResponseError(
        f"{problem}; nothing was cached — retry later, and report it to the provider if it persists"
    )
    err.request_sent = True  # the answers came back: the provider did the work
    return err


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
