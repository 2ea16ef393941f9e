"""One chunk of a client's missing prompts: reserved, sent, checked, and committed with
what it cost, whatever ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import numpy as np

from ..errors import ProviderError, ProviderResponseError
from ..providers.base import Provider
from ..providers.remote import charge_of
from ..scores import ProviderAnswer
from ..storage.budget import QueryBudget
from ..storage.cache import ScoreCache
from ..storage.claims import Claims
from ._hold import ChunkHold
from .usage import Usage

log = logging.getLogger("maas_tune.client")
T = TypeVar("T")

#: Largest count believed from a provider (a signed 64-bit ledger column holds more).
MAX_COUNT = 2**40


class ChunkSender:
    """The client's step for one claimed chunk (a mixin of the client: it uses the
    client's provider, cache, budget and usage)."""

    provider: Provider
    cache: ScoreCache
    budget: QueryBudget | None
    usage: Usage

    async def _fetch_chunk(
        self,
        chunk: dict[str, str],
        labels: list[str],
        model: str,
        claims: Claims,
        event: Callable[[str], None] | None = None,
    ) -> dict[str, ProviderAnswer]:
        """Reserve, send and commit one claimed chunk; its claims are dropped either way
        (by the commit's transaction, or here when it did not happen)."""
        try:
            result, error = await self._send_chunk(chunk, labels, model, claims, event)
        except BaseException:
            try:  # the answers were not cached: let another worker (or a rerun) send them
                claims.release(list(chunk))
            except Exception as exc:  # noqa: BLE001 - the original error matters more
                log.warning("could not drop claims (they expire by themselves): %s", exc)
            raise
        if error is not None:  # raised after the commit: what arrived is kept and charged
            raise error
        return result

    async def _send_chunk(
        self,
        chunk: dict[str, str],
        labels: list[str],
        model: str,
        claims: Claims,
        event: Callable[[str], None] | None,
    ) -> tuple[dict[str, ProviderAnswer], BaseException | None]:
        """Send one chunk; whatever ends it, keep every answer that arrived and charge
        exactly the requests that were (or may have been) billed. Returns the answers
        committed and the error that ended the chunk (None), for the caller to raise; an
        error before the commit leaves this method (the claims are then still held)."""
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
        self.usage.samples_sent += len(result)
        self.usage.queries_lost += max(
            0, spent[0] - sum(_count(a.queries) for a in result.values())
        )
        log.debug("sent %d queries (%d prompt tokens); %d answers kept", *spent, len(result))
        return result, error if error is not None else problem

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
