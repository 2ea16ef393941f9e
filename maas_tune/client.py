"""The one orchestrator: cache key → cache → budget → provider → cache, for a task's examples."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._constants import CLAIM_POLL_MAX_S, CLAIM_POLL_S, CONTENT_FREE_TEXT
from .budget import QueryBudget, Reservation
from .cache import ScoreCache, cache_key
from .claims import Claims
from .data import Example
from .errors import BudgetExceeded, OfflineCacheMiss, ProviderError, ProviderResponseError
from .providers.base import Provider, ProviderAnswer
from .scores import Scores
from .task import Task

__all__ = ["Client", "Usage"]

log = logging.getLogger(__name__)

ExampleLike = Example | Mapping[str, Any] | str

#: Prompts sent per reservation / provider call / cache commit: a crash loses at most this many.
CLIENT_CHUNK_SIZE = 16


@dataclass
class Usage:
    """Running totals of what a :class:`Client` did (this process only)."""

    queries_sent: int = 0
    samples_sent: int = 0
    cache_hits: int = 0
    prompt_tokens_sent: int = 0
    #: Prompt tokens of the answers served from the cache: what they cost when first sent.
    prompt_tokens_cached: int = 0


class Client:
    """Score a task's examples through a provider, paying for each distinct prompt once.

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
        together, so a crash loses at most one chunk's answers.

    Notes
    -----
    Workers (threads, processes, hosts) sharing a store send each prompt once: before
    a chunk is sent its keys are claimed (:class:`~maas_tune.claims.Claims`); keys
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
    ) -> None:
        self.provider = provider
        self.cache = cache if isinstance(cache, ScoreCache) else ScoreCache(cache)
        self.budget = budget
        self.offline = offline
        self.progress = progress
        self.chunk_size = chunk_size
        self.usage = Usage()
        self._sleep = time.sleep  # tests may inject a clock
        provider.attach_facts(self.cache, offline=offline)

    # -- public API -------------------------------------------------------------
    def score(self, task: Task, examples: Sequence[ExampleLike]) -> Scores:
        """Label scores (and hidden states) for ``examples`` rendered through ``task``.

        Parameters
        ----------
        task : Task
        examples : sequence of Example, mapping with ``text``/``text_b``, or str; length n

        Returns
        -------
        Scores
            ``label_logprobs`` of shape (n, K): per class, the log of the summed
            probabilities of its label words.
        """
        prompts = [task.render(_as_example(e)) for e in examples]
        token_ids = self.provider.label_token_ids(task.label_words)
        answers, hits = self._answers(prompts, token_ids)
        return _to_scores(task, answers, hits)

    def content_free(self, task: Task) -> np.ndarray:
        """Class log-probs of the content-free input ``"N/A"`` (contextual calibration).

        Returns
        -------
        np.ndarray, shape (K,)
        """
        text_b = CONTENT_FREE_TEXT if task.is_pair else None
        example = Example(text=CONTENT_FREE_TEXT, label=None, text_b=text_b)
        return self.score(task, [example]).label_logprobs[0]

    # -- internals --------------------------------------------------------------
    def _answers(
        self, prompts: list[str], token_ids: list[int]
    ) -> tuple[list[ProviderAnswer], np.ndarray]:
        fingerprint = self.provider.fingerprint()
        keys = [cache_key(fingerprint, p, token_ids) for p in prompts]
        found: dict[str, Any] = self.cache.get_many(list(dict.fromkeys(keys)))
        # One query per distinct missing prompt, in first-seen order.
        todo = {k: p for k, p in zip(keys, prompts) if k not in found}
        if todo:
            if self.offline:
                raise OfflineCacheMiss(missing=sum(k in todo for k in keys), total=len(prompts))
            self._check_budget(len(todo) * self.provider.max_queries_per_prompt(len(token_ids)))
            sent = self._fetch(todo, token_ids, fingerprint)
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

    def _fetch(
        self, todo: dict[str, str], token_ids: list[int], fingerprint: Mapping[str, Any]
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
            while pending:
                blocked: list[str] = []
                for start in range(0, len(pending), self.chunk_size):
                    batch = pending[start : start + self.chunk_size]
                    mine = self._claim(claims, batch)
                    blocked.extend(k for k in batch if k not in mine)
                    if mine:
                        chunk = {k: todo[k] for k in batch if k in mine}
                        out.update(self._fetch_chunk(chunk, token_ids, model, claims))
                        bar.update(len(chunk))
                landed = set(self.cache.get_many(blocked)) if blocked else set()
                bar.update(len(landed))
                if len(blocked) == len(pending) and not landed:  # no progress: wait
                    log.debug("waiting for %d prompts other workers are sending", len(blocked))
                    self._sleep(pause)
                    pause = min(2 * pause, CLAIM_POLL_MAX_S)
                else:
                    pause = CLAIM_POLL_S
                pending = [k for k in blocked if k not in landed]
        return out

    def _claim(self, claims: Claims, batch: list[str]) -> set[str]:
        """Claim what no other worker sends, less what another worker's commit cached since
        this client looked (a worker commits its answers and drops its claims at once)."""
        mine = claims.acquire(batch)
        landed = set(self.cache.get_many(list(mine))) if mine else set()
        if landed:
            claims.release(list(landed))
        return mine - landed

    def _fetch_chunk(
        self, chunk: dict[str, str], token_ids: list[int], model: str, claims: Claims
    ) -> dict[str, ProviderAnswer]:
        """Reserve, send and commit one claimed chunk; its claims are dropped either way."""
        try:
            return self._send_chunk(chunk, token_ids, model, claims)
        except BaseException:
            try:  # the answers were not cached: let another worker (or a rerun) send them
                claims.release(list(chunk))
            except Exception as exc:  # noqa: BLE001 - the original error matters more
                log.warning("could not drop claims (they expire by themselves): %s", exc)
            raise

    def _send_chunk(
        self, chunk: dict[str, str], token_ids: list[int], model: str, claims: Claims
    ) -> dict[str, ProviderAnswer]:
        prompts = list(chunk.values())
        reservation = None
        per_prompt = self.provider.max_queries_per_prompt(len(token_ids))
        if self.budget is not None:
            tokens = sum(self.provider.count_tokens(prompts)) * per_prompt
            reservation = self.budget.reserve(len(prompts) * per_prompt, tokens)
        try:
            answers = self.provider.score(prompts, token_ids)
            _validate(answers, len(prompts), len(token_ids))
        except BaseException as exc:
            if reservation is not None:
                self._settle_failed(reservation, exc)
            raise
        result = dict(zip(chunk, answers))
        used = sum(a.prompt_tokens for a in answers)
        queries = sum(a.queries for a in answers)
        settled = False  # spend durably committed (a rolled-back transaction undoes it)
        try:
            with self.cache.store.transaction() as conn:  # answers and spend land together
                self.cache.put_many(result, model=model, conn=conn)
                claims.release(list(chunk), conn=conn)
                if reservation is not None:
                    self._commit(reservation, queries, used, conn)
                    settled = not self._same_store()
        except BaseException as exc:
            # The answers arrived, so they were paid for, even if they cannot be cached.
            if isinstance(exc, ProviderError):
                exc.request_sent = True
            if reservation is not None and not settled:
                self.budget.commit(reservation, queries=queries, prompt_tokens=used)  # type: ignore[union-attr]
            raise
        self.usage.queries_sent += queries
        self.usage.samples_sent += len(prompts)
        self.usage.prompt_tokens_sent += used
        log.debug("sent %d queries (%d prompt tokens)", queries, used)
        return result

    def _commit(self, reservation: Reservation, queries: int, tokens: int, conn: Any) -> None:
        budget = self.budget
        assert budget is not None
        if self._same_store():
            budget.commit(reservation, queries=queries, prompt_tokens=tokens, conn=conn)
        else:  # the ledger lives in another database file: its own transaction
            budget.commit(reservation, queries=queries, prompt_tokens=tokens)

    def _same_store(self) -> bool:
        """Whether the budget ledger is in the cache's database (one transaction for both)."""
        assert self.budget is not None
        return self.budget.store.identity == self.cache.store.identity

    def _settle_failed(self, reservation: Reservation, exc: BaseException) -> None:
        """Release a failed chunk's reservation, unless the request may have been billed."""
        assert self.budget is not None
        if getattr(exc, "request_sent", False):
            self.budget.commit(reservation)  # conservative: count what may have been paid for
        else:
            self.budget.release(reservation)


def _as_example(example: ExampleLike) -> Example:
    if isinstance(example, Example):
        return example
    if isinstance(example, str):
        return Example(text=example, label=None)
    return Example(text=example["text"], label=example.get("label"), text_b=example.get("text_b"))


def _validate(answers: Sequence[ProviderAnswer], n: int, t: int) -> None:
    """Refuse answers that must never reach the cache; they arrived, so they were paid for."""
    if len(answers) != n:
        raise _refused(f"provider returned {len(answers)} answers for {n} prompts")
    for answer in answers:
        lp = np.asarray(answer.logprobs)
        if lp.shape != (t,):
            raise _refused(f"provider returned logprobs of shape {lp.shape}, expected ({t},)")
        # -inf is no model's log-prob of a word: the server masked it (top-k/top-p filtering or
        # a bias applied before reporting), and one such value breaks every decoder later.
        if not np.isfinite(lp).all() or (lp > 0).any():
            raise _refused(
                f"provider returned label logprobs {lp.tolist()}; each must be a finite number "
                "<= 0 (NaN, +inf or > 0 is corrupt; -inf means the server masked the word: it "
                "reports log-probs after top-k/top-p filtering)"
            )
        for name in ("prompt_tokens", "queries"):
            value = getattr(answer, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise _refused(f"provider returned {name}={value!r}, not a count >= 0")


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
    return Scores(label_lp, hidden, hits, tokens, tuple(task.labels))
