"""Async plumbing of the HTTP session: the async request, a private event loop for blocking
callers, and an adapter that runs an injected blocking transport off the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

from ._wire import DirectSender
from .http import AnswerDeadline, json_answer, transport_failure, whole_answer

__all__ = ["LoopThread", "ThreadedTransport", "arequest_json"]

T = TypeVar("T")


async def arequest_json(
    client: httpx.AsyncClient | DirectSender,
    method: str,
    url: str,
    *,
    json: Any = None,
) -> dict[str, Any]:
    """The async twin of :func:`~maas_tune.providers.http.request_json` (same errors);
    the whole answer must arrive within ``TOTAL_TIMEOUT_FACTOR`` x the read timeout."""
    try:
        if isinstance(client, DirectSender):  # the lean transport enforces the deadline
            response = await client.send(method, url, json=json)
        else:
            response = await _send_within_deadline(client, method, url, json=json)
    except httpx.TransportError as exc:
        raise transport_failure(exc, method, url) from exc
    return json_answer(response, method)


async def _send_within_deadline(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    request = client.build_request(method, url, **kwargs)
    check = AnswerDeadline(client.timeout.read, request)
    response = await client.send(request, stream=True)
    if response.is_stream_consumed:
        return response
    try:
        parts = []
        async for part in response.aiter_raw():
            parts.append(part)
            check()
    finally:
        await response.aclose()
    return whole_answer(response, parts)


class ThreadedTransport(httpx.AsyncBaseTransport):
    """Runs a blocking transport (e.g. a test's ``httpx.MockTransport`` whose handler
    blocks) on a worker thread, so the event loop keeps serving other requests."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await asyncio.to_thread(self._handle, request)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        response = self._transport.handle_request(request)
        try:
            raw = b"".join(response.stream)  # type: ignore[arg-type]  # a sync transport's
        finally:
            response.close()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await asyncio.to_thread(self._transport.close)


class LoopThread:
    """A private event loop on a daemon thread, for callers that block (the sync API)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, daemon=True, name="maas-tune-http"
                ).start()
                self.loop = loop
            return self.loop

    def run(self, coro: Coroutine[Any, Any, T], on_interrupt: Any = None) -> T:
        """Run ``coro`` on the loop and wait; an exception here (Ctrl-C) calls
        ``on_interrupt()`` first, then cancels ``coro`` without waiting for it."""
        future = asyncio.run_coroutine_threadsafe(coro, self._start())
        try:
            return future.result()
        except BaseException:
            if not future.done():
                if on_interrupt is not None:
                    on_interrupt()
                future.cancel()
            raise

    def stop(self) -> None:
        with self._lock:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.loop = None
