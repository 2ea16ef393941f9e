"""Many items' scripts on one event loop: the per-loop connection pools, the in-flight
gate, and the driver that books each item's first turn at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx

from ..errors import ProviderResponseError
from ._aio import ThreadedTransport
from ._answers import check_model
from ._batch import Batch, Cancelled, bound_tokens
from ._script import Script, adrive
from ._wire import DirectSender, WireTransport, wire_applies
from .http import TOTAL_TIMEOUT_FACTOR
from .ratelimit import RateLimiter, book, estimate_request_tokens

__all__ = ["LoopState", "Send", "gather", "payload_bound", "request_key", "run_scripts"]

#: Connections per httpx pool (a session holds ceil(max_concurrency / this) pools).
POOL_CONNECTIONS = 4

R = TypeVar("R")


def request_key(path: str, payload: dict[str, Any]) -> str:
    """A content hash of one request (route and body)."""
    text = json.dumps([path, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def payload_bound(payload: dict[str, Any]) -> int:
    """A bound on the prompt tokens of a request body (its texts' UTF-8 bytes + specials)."""
    texts = [payload.get("prompt"), payload.get("input")]
    texts += [m.get("content") for m in payload.get("messages") or () if isinstance(m, dict)]
    return sum(bound_tokens(t) for t in texts if isinstance(t, str))


@dataclass
class LoopState:
    """What one event loop's requests share: the connection pool and the in-flight gate."""

    options: dict[str, Any]  # of each client
    size: int  # connections per client
    clients: list[httpx.AsyncClient]
    load: list[int]  # requests in flight on each client
    gate: asyncio.Semaphore
    senders: list[httpx.AsyncClient | DirectSender] = field(default_factory=list)  # per client

    @classmethod
    def open(cls, options: dict[str, Any], transport: Any, max_concurrency: int) -> LoopState:
        """The state of a new event loop: ``options`` of each client (less the transport
        and limits), ``transport`` the injected one (None: the network)."""
        sync = transport is not None and not isinstance(transport, httpx.AsyncBaseTransport)
        if sync or isinstance(transport, httpx.MockTransport):  # a sync handler: off-loop
            transport = ThreadedTransport(transport)
        if transport is None and wire_applies():  # the lean transport: one pool
            size = max_concurrency
            transport = WireTransport(size, options["verify"], deadline_factor=TOTAL_TIMEOUT_FACTOR)
        else:  # httpcore's pool costs O(connections x waiting requests) per event:
            # shard it into pools of POOL_CONNECTIONS, each request to the least busy
            size = min(max_concurrency, POOL_CONNECTIONS)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        options = {**options, "transport": transport, "limits": limits}
        return cls(options, size, [], [], asyncio.Semaphore(max_concurrency))

    def pick(self) -> int:
        """The least busy pool (a new one when all are full), counted busier by one."""
        pool = self.load.index(min(self.load)) if self.load else -1
        if pool < 0 or self.load[pool] >= self.size:
            client = httpx.AsyncClient(**self.options)
            wire = self.options["transport"]
            self.clients.append(client)
            self.senders.append(
                DirectSender(client, wire) if isinstance(wire, WireTransport) else client
            )
            self.load.append(0)
            pool = len(self.clients) - 1
        self.load[pool] += 1
        return pool


class Send(Protocol):
    """POST one request body (with retries), its first attempt at ``booked`` if given."""

    def __call__(
        self, payload: dict[str, Any], *, booked: float | None
    ) -> Awaitable[dict[str, Any]]: ...


async def run_scripts(
    scripts: Sequence[Script[R]],
    *,
    send: Send,
    wait_turn: Callable[[float | None], Awaitable[None]],
    gate: asyncio.Semaphore,
    limiter: RateLimiter | None,
    path: str,
    model: str,
    batch: Batch,
    results: dict[int, R],
) -> None:
    """Drive every script; each first request's turn is booked in one call.

    ``send`` posts a request (the session's retrying POST to ``path``); ``wait_turn``
    waits for a booked turn (and any 429 pause); ``gate`` bounds the requests in
    flight; ``limiter`` books the first requests' turns (None: no limit).
    """
    firsts: dict[int, dict[str, Any]] = {}
    for index, script in enumerate(scripts):
        try:
            firsts[index] = next(script)
        except StopIteration as stop:  # needs no request
            results[index] = stop.value
    waits = (
        book(limiter, [(1, estimate_request_tokens(p)) for p in firsts.values()])
        if (limiter is not None and firsts)
        else None
    )
    now = time.monotonic()
    turns = dict(zip(firsts, (now + w for w in waits))) if waits is not None else {}
    failed = asyncio.Event()

    async def run(index: int) -> None:
        last: list[str] = []  # the key of the request this item sent last

        async def post(payload: dict[str, Any]) -> dict[str, Any]:
            body = await send(payload, booked=turns.pop(index, None))
            last[:] = [request_key(path, payload)]
            check_model(body, model)  # never cache another model's answer under this one
            return body

        await wait_turn(turns.get(index))  # its booked turn, before the gate
        async with gate:
            if failed.is_set() or batch.cancelled:
                return
            try:
                results[index] = await adrive(scripts[index], post, firsts[index])
            except BaseException as exc:
                failed.set()
                if isinstance(exc, ProviderResponseError) and last:
                    batch.discard(last[0])  # the last answer is unusable: never reuse it
                raise
        batch.item_done()

    await gather([run(i) for i in firsts])


async def gather(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Await every coroutine; then raise the first real error (a cancellation of the
    caller cancels them all)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done = await asyncio.gather(*tasks, return_exceptions=True)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    errors = [r for r in done if isinstance(r, BaseException)]
    if errors:
        cancels = (Cancelled, asyncio.CancelledError)
        raise next((e for e in errors if not isinstance(e, cancels)), errors[0])
