"""The client's sending loop: the missing prompts in claimed chunks, several in flight at
once, each reserved, sent and committed on its own; keys another worker sends are waited
for."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any

from .._constants import CLAIM_POLL_MAX_S, CLAIM_POLL_S
from ..providers.base import Provider
from ..scores import ProviderAnswer
from ..storage.claims import Claims
from ._chunk import ChunkSender, _off_loop

log = logging.getLogger("maas_tune.client")


class ChunkPipeline(ChunkSender):
    """How the client sends what the cache lacks (a mixin of the client: it uses the
    client's options, chunk size and chunks in flight)."""

    progress: bool | None
    chunk_size: int
    chunks_in_flight: int | None
    _sleep: Callable[[float], None]

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


async def _settle(running: set[asyncio.Task[None]]) -> list[BaseException]:
    """Wait for one of ``running`` to end; drop the ended ones, return their errors."""
    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    running -= done
    return [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
