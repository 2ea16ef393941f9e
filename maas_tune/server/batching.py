"""Dynamic batching: concurrent score requests are gathered into one ``provider.score`` call."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from ..errors import MaasTuneError
from ..providers.packing import pack_runs
from ..scores import ProviderAnswer
from ._planning import DEFAULT_PASS_OVERHEAD_TOKENS, pass_waste, plan_passes

__all__ = ["QueueFull", "ScoreBatcher", "TooManyPrompts"]

#: How many recent pass sizes :attr:`ScoreBatcher.batch_sizes` keeps.
BATCH_SIZE_HISTORY = 1024
#: Default longest wait of a prompt for company of its length.
DEFAULT_MAX_DELAY_MS = 1000.0

#: Threads that run admitted generations (as many as asyncio's default executor has).
GENERATION_THREADS = min(32, (os.cpu_count() or 1) + 4)

T = TypeVar("T")

#: ``score(prompts, token_ids)``, or ``score(prompts, token_ids, n)`` when a prompt of the
#: pass asks for the states of its last ``n`` tokens.
ScoreFn = Callable[..., list[ProviderAnswer]]


class QueueFull(MaasTuneError):
    """The batching queue has no room for the request; the client should retry later."""


class TooManyPrompts(MaasTuneError):
    """One request holds more prompts than the queue ever takes: retrying cannot help."""


def _check_size(n: int, max_queue: int) -> None:
    if n > max_queue:
        raise TooManyPrompts(
            f"this request has {n} prompts; send at most {max_queue} prompts per request"
        )


@dataclass
class _Item:
    prompt: str
    token_ids: tuple[int, ...]
    length: int
    future: asyncio.Future[ProviderAnswer]
    arrived: float = 0.0
    token_features: int = 0


class ScoreBatcher:
    """Gather concurrent prompts into forward passes of similar length.

    Parameters
    ----------
    score : callable
        Blocking ``score(prompts, token_ids) -> list[ProviderAnswer]`` (e.g.
        :meth:`Engine.score`); it runs in a worker thread.
    max_batch_size : int
        Most prompts in the planning window (the prompts a pass is chosen from).
    max_wait_ms : float
        How long the first prompt after an idle spell waits for company.
    max_queue : int
        Most prompts waiting; a request that would pass it raises :class:`QueueFull`.
    max_pass_size : int, optional
        Most prompts per ``score`` call (default ``max_batch_size``).
    pass_overhead_tokens : float
        Fixed cost of one ``score`` call in padded-token equivalents (see
        :func:`~maas_tune.server._planning.plan_passes`).
    max_delay_ms : float
        A prompt that has waited this long goes into the next pass, whatever its length.
    max_pass_tokens : int, optional
        Set when ``score`` packs prompts into one row (no padding, see
        :class:`~maas_tune.providers.local.TransformersProvider`): each pass then takes
        the oldest prompts, up to ``max_pass_size`` prompts and this many tokens.

    Notes
    -----
    Continuous batching: while the model runs one pass, new prompts join the planning
    window, and the next pass is chosen from it. Where ``score`` packs prompts
    (``max_pass_tokens`` set), the oldest prompts that fit go first. Where it pads,
    the window (prompt lengths in tokens, as given to :meth:`submit`) is cut into the
    passes that waste the least padding, and the pass that wastes the least per prompt
    runs next: prompts of unusual length wait for company of their length (at most
    ``max_delay_ms``), much as an offline pass sorted by length groups them. Each pass
    answers its requests as soon as it is done.

    Requests in one batch may ask for different label tokens: the batch is scored
    on the union of their token ids and each answer keeps its own columns, in its
    own order (the log-softmax is over the full vocabulary, so this changes nothing).
    """

    def __init__(
        self,
        score: ScoreFn,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        max_pass_size: int | None = None,
        pass_overhead_tokens: float = DEFAULT_PASS_OVERHEAD_TOKENS,
        max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
        max_pass_tokens: int | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_pass_size = max_pass_size or max_batch_size
        self.pass_overhead_tokens = pass_overhead_tokens
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_pass_tokens = max_pass_tokens
        self._waiting: list[_Item] = []  # the planning window
        # One long-lived thread runs every pass: torch keeps one intra-op thread team
        # warm, instead of one per thread of asyncio's default executor.
        self._executor: ThreadPoolExecutor | None = None
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        #: Sizes of the most recent ``score`` calls (for tests and metrics; bounded, so a
        #: long-running server does not grow it for ever).
        self.batch_sizes: deque[int] = deque(maxlen=BATCH_SIZE_HISTORY)
        self._pending = 0
        self._generating = 0
        self._generation: ThreadPoolExecutor | None = None  # runs admitted generations

    @property
    def pending(self) -> int:
        """Prompts submitted and not answered yet (queued or being scored)."""
        return self._pending

    @property
    def queued(self) -> int:
        """Prompts waiting in the queue (at most ``max_queue``)."""
        return 0 if self._queue is None else self._queue.qsize()

    @property
    def generating(self) -> int:
        """Prompts admitted by :meth:`admitting` and not finished yet (at most ``max_queue``)."""
        return self._generating

    @contextlib.contextmanager
    def admitting(self, n: int) -> Iterator[None]:
        """Hold room for ``n`` prompts handled outside the queue (generation, echo).

        They wait for the model as queued prompts do, so they get the same bound: a
        flood is refused with :class:`QueueFull` instead of piling up in memory.

        Raises
        ------
        QueueFull
            If ``max_queue`` such prompts are already admitted (nothing is held then).
        TooManyPrompts
            If ``n`` is more than ``max_queue``.
        """
        _check_size(n, self.max_queue)
        if self._generating + n > self.max_queue:
            raise QueueFull(
                f"the server is busy ({self._generating} of {self.max_queue} prompts "
                f"generating, {n} more asked for); retry after a short wait"
            )
        self._generating += n
        try:
            yield
        finally:
            self._generating -= n

    async def generate(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)``, a blocking generation admitted by :meth:`admitting`, on the
        generation threads.

        Not on asyncio's default executor: there a generation holds a thread for its
        whole length, and the requests behind it, waiting for a thread to tokenize them,
        would reach neither the model nor the queue bound (no 429, no answer).
        """
        if self._generation is None:
            self._generation = ThreadPoolExecutor(
                max_workers=GENERATION_THREADS, thread_name_prefix="maas-tune-generate"
            )
        return await asyncio.get_running_loop().run_in_executor(self._generation, fn, *args)

    async def submit(
        self,
        prompts: Sequence[str],
        token_ids: Sequence[int],
        lengths: Sequence[int] | None = None,
        token_features: int = 0,
    ) -> list[ProviderAnswer]:
        """Score ``token_ids`` after each prompt; answers come back in prompt order.

        ``lengths`` (tokens per prompt) lets the batcher group prompts of similar
        length; without it, characters stand in for tokens. ``token_features`` > 0 asks
        for the states of each prompt's last that many tokens (else the answers carry none).

        Raises
        ------
        QueueFull
            If the prompts do not fit in the queue (nothing is enqueued then).
        TooManyPrompts
            If there are more prompts than ``max_queue``: they would never fit.
        """
        _check_size(len(prompts), self.max_queue)
        queue = self._start()
        if queue.qsize() + len(prompts) > self.max_queue:
            raise QueueFull(
                f"the scoring queue is full ({queue.qsize()} of {self.max_queue} prompts waiting); "
                "retry after a short wait"
            )
        loop = asyncio.get_running_loop()
        ids = tuple(int(t) for t in token_ids)
        sizes = [len(p) for p in prompts] if lengths is None else [int(n) for n in lengths]
        now = loop.time()
        items = [
            _Item(p, ids, n, loop.create_future(), now, token_features)
            for p, n in zip(prompts, sizes)
        ]
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
        left = list(self._waiting)
        self._waiting.clear()
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        for item in left:
            if not item.future.done():
                item.future.set_exception(QueueFull("the server is shutting down; retry later"))
        self._worker = None
        for executor in (self._executor, self._generation):
            if executor is not None:
                executor.shutdown(wait=False)
        self._executor = self._generation = None

    # -- internals --------------------------------------------------------------
    def _start(self) -> asyncio.Queue[_Item]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maas-tune-score")
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def _run(self) -> None:
        assert self._queue is not None
        waiting = self._waiting
        while True:
            if not waiting:  # idle: the first prompt waits up to max_wait_ms for company
                waiting.append(await self._queue.get())
                await self._gather(self.max_wait_s)
            else:  # busy: take what arrived while the last pass ran, without waiting
                await self._gather(0.0)
            await self._score_pass(self._choose())

    async def _gather(self, wait_s: float) -> None:
        """Move queued prompts into the planning window, waiting up to ``wait_s`` for more."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while len(self._waiting) < self.max_batch_size:
            if not self._queue.empty():
                self._waiting.append(self._queue.get_nowait())
                continue
            timeout = deadline - loop.time()
            if timeout <= 0:
                return
            try:
                self._waiting.append(await asyncio.wait_for(self._queue.get(), timeout))
            except asyncio.TimeoutError:
                return

    def _choose(self) -> list[_Item]:
        """Take the next pass out of the planning window (see the class notes)."""
        live = [item for item in self._waiting if not item.future.done()]  # skip cancelled
        if not live:
            self._waiting.clear()
            return []
        chosen = self._oldest_run(live) if self.max_pass_tokens else self._least_waste(live)
        taken = {id(live[i]) for i in chosen}
        self._waiting[:] = [item for item in live if id(item) not in taken]
        return [live[i] for i in chosen]

    def _oldest_run(self, live: list[_Item]) -> list[int]:
        """Packed passes: padding costs nothing, so the oldest prompts that fit go first."""
        order = sorted(range(len(live)), key=lambda i: live[i].arrived)
        run = pack_runs(
            [live[i].length for i in order], self.max_pass_size, self.max_pass_tokens or 0
        )[0]
        return [order[k] for k in run]

    def _least_waste(self, live: list[_Item]) -> list[int]:
        """Padded passes: plan the window (:func:`plan_passes`) and take the pass that
        wastes least per prompt, unless a prompt has waited ``max_delay_ms``."""
        lengths = [item.length for item in live]
        passes = plan_passes(
            lengths, max_pass_size=self.max_pass_size, overhead_tokens=self.pass_overhead_tokens
        )
        oldest = min(range(len(live)), key=lambda i: live[i].arrived)
        if asyncio.get_running_loop().time() - live[oldest].arrived >= self.max_delay_s:
            return next(p for p in passes if oldest in p)
        return min(
            passes, key=lambda p: pass_waste([lengths[i] for i in p], self.pass_overhead_tokens)
        )

    async def _score_pass(self, items: list[_Item]) -> None:
        items = [item for item in items if not item.future.done()]
        if not items:
            return
        union = sorted({t for item in items for t in item.token_ids})
        n_last = max(item.token_features for item in items)  # the pass gives the most asked
        self.batch_sizes.append(len(items))
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                self._score,
                [i.prompt for i in items],
                union,
                *((n_last,) if n_last else ()),
            )
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        column = {t: j for j, t in enumerate(union)}
        for item, answer in zip(items, answers):
            if not item.future.done():
                cols = [column[t] for t in item.token_ids]
                states, n = answer.token_features, item.token_features
                tail = states[-n:] if states is not None and n else None
                item.future.set_result(
                    replace(answer, logprobs=answer.logprobs[cols], token_features=tail)
                )
