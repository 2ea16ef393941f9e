"""Dynamic batching: concurrent score requests are gathered into one ``provider.score`` call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import MaasTuneError
from ..providers.base import ProviderAnswer
from ._planning import DEFAULT_PASS_OVERHEAD_TOKENS, plan_passes

__all__ = ["QueueFull", "ScoreBatcher"]

ScoreFn = Callable[[Sequence[str], Sequence[int]], list[ProviderAnswer]]


class QueueFull(MaasTuneError):
    """The batching queue has no room for the request; the client should retry later."""


@dataclass
class _Item:
    prompt: str
    token_ids: tuple[int, ...]
    length: int
    future: asyncio.Future[ProviderAnswer]


class ScoreBatcher:
    """Gather prompts that arrive within ``max_wait_ms`` into one forward pass.

    Parameters
    ----------
    score : callable
        Blocking ``score(prompts, token_ids) -> list[ProviderAnswer]`` (e.g.
        :meth:`Engine.score`); it runs in a worker thread.
    max_batch_size : int
        Most prompts per call.
    max_wait_ms : float
        How long the first prompt of a batch waits for company.
    max_queue : int
        Most prompts waiting; a request that would pass it raises :class:`QueueFull`.
    max_pass_size : int, optional
        Most prompts per ``score`` call (default ``max_batch_size``).
    pass_overhead_tokens : float
        Fixed cost of one ``score`` call in padded-token equivalents (see
        :func:`~maas_tune.server._planning.plan_passes`).

    Notes
    -----
    A gathered batch is sorted by prompt length (in tokens, as given to
    :meth:`submit`) and cut into the passes that waste the least padding; each pass is
    one ``score`` call, and its requests are answered as soon as it is done, so their
    clients can send the next request while the rest of the batch runs.

    Requests in one batch may ask for different label tokens: the batch is scored
    on the union of their token ids and each answer keeps its own columns, in its
    own order (the log-softmax is over the full vocabulary, so this changes nothing).
    """

    def __init__(
        self, score: ScoreFn, *, max_batch_size: int = 16, max_wait_ms: float = 5.0,
        max_queue: int = 256, max_pass_size: int | None = None,
        pass_overhead_tokens: float = DEFAULT_PASS_OVERHEAD_TOKENS,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_pass_size = max_pass_size or max_batch_size
        self.pass_overhead_tokens = pass_overhead_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        #: Sizes of the ``score`` calls made so far (for tests and metrics).
        self.batch_sizes: list[int] = []
        self._pending = 0

    @property
    def pending(self) -> int:
        """Prompts submitted and not answered yet (queued or being scored)."""
        return self._pending

    async def submit(
        self, prompts: Sequence[str], token_ids: Sequence[int],
        lengths: Sequence[int] | None = None,
    ) -> list[ProviderAnswer]:
        """Score ``token_ids`` after each prompt; answers come back in prompt order.

        ``lengths`` (tokens per prompt) lets the batcher group prompts of similar
        length; without it, characters stand in for tokens.

        Raises
        ------
        QueueFull
            If the prompts do not fit in the queue (nothing is enqueued then).
        """
        queue = self._start()
        if queue.qsize() + len(prompts) > self.max_queue:
            raise QueueFull(
                f"the scoring queue is full ({queue.qsize()} of {self.max_queue} prompts waiting); "
                "retry after a short wait"
            )
        loop = asyncio.get_running_loop()
        ids = tuple(int(t) for t in token_ids)
        sizes = [len(p) for p in prompts] if lengths is None else [int(n) for n in lengths]
        items = [_Item(p, ids, n, loop.create_future()) for p, n in zip(prompts, sizes)]
        for item in items:
            queue.put_nowait(item)
        self._pending += len(items)
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            self._pending -= len(items)

    async def aclose(self) -> None:
        """Stop the worker and fail whatever is still waiting."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(QueueFull("the server is shutting down; retry later"))
        self._worker = None

    # -- internals --------------------------------------------------------------
    def _start(self) -> asyncio.Queue[_Item]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await self._gather(batch)
            await self._process(batch)

    async def _gather(self, batch: list[_Item]) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            timeout = deadline - loop.time()
            if timeout <= 0:
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except asyncio.TimeoutError:
                return

    async def _process(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip cancelled requests
        passes = plan_passes([item.length for item in live], max_pass_size=self.max_pass_size,
                             overhead_tokens=self.pass_overhead_tokens)
        for indices in passes:
            await self._score_pass([live[i] for i in indices])

    async def _score_pass(self, items: list[_Item]) -> None:
        items = [item for item in items if not item.future.done()]
        if not items:
            return
        union = sorted({t for item in items for t in item.token_ids})
        self.batch_sizes.append(len(items))
        try:
            answers = await asyncio.to_thread(self._score, [i.prompt for i in items], union)
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        column = {t: j for j, t in enumerate(union)}
        for item, answer in zip(items, answers):
            if not item.future.done():
                cols = [column[t] for t in item.token_ids]
                item.future.set_result(replace(answer, logprobs=answer.logprobs[cols]))
