"""One keep-alive HTTP/1.1 connection of :class:`~maas_tune.providers._wire.WireTransport`
and the framing of its messages: a request's head written, an answer's status, headers
and body (``Content-Length``, ``chunked`` or read-until-close) parsed as bytes arrive.

Failures are httpx's exceptions (:class:`httpx.RemoteProtocolError`,
:class:`httpx.ReadTimeout`), as httpcore raises them.
"""

from __future__ import annotations

import asyncio

import httpx

__all__ = ["Connection", "read_response", "request_head"]

_MAX_HEAD = 64 * 1024  # bytes of status line + headers accepted
_NO_BODY = frozenset({204, 304})


class Connection(asyncio.Protocol):
    """One keep-alive connection: the bytes received so far and a waiter for more."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.in_body = False  # the current answer's headers have arrived
        self.deadline: float | None = None  # the whole current answer must be in by then
        self.deadline_message = ""
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.error = True, exc
        self._wake()

    # -- reading ------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self, timeout: float | None, request: httpx.Request) -> None:
        """Wait until more bytes arrive (or the peer closes): at most ``timeout`` seconds,
        and never past the answer's deadline (:attr:`deadline`, loop time)."""
        if self.deadline is not None:
            left = self.deadline - self.loop.time()
            if left <= 0:
                raise httpx.ReadTimeout(self.deadline_message, request=request)
            timeout = left if timeout is None else min(timeout, left)
        if self.closed:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
                if self.in_body
                else "Server disconnected without sending a response.",
                request=request,
            )
        waiter = self._waiter = self.loop.create_future()
        timer = None if timeout is None else self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except asyncio.TimeoutError:
            if self.deadline is not None and self.loop.time() >= self.deadline:
                raise httpx.ReadTimeout(self.deadline_message, request=request) from None
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


def request_head(request: httpx.Request) -> bytes:
    """The request line and headers (httpx has set Host and Content-Length)."""
    lines = [request.method.encode("ascii") + b" " + request.url.raw_path + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in request.headers.raw)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def read_response(
    conn: Connection, request: httpx.Request, timeout: float | None
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """Status, headers, the whole body and whether the connection can be reused."""
    conn.in_body = False
    while True:  # skip interim (1xx) answers
        status, headers, keep = await _read_head(conn, request, timeout)
        if status >= 200 or status == 101:
            break
    conn.in_body = True
    fields = {name.lower(): value for name, value in headers}
    if status in _NO_BODY or request.method == "HEAD":
        return status, headers, b"", keep
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        return status, headers, await _read_chunked(conn, request, timeout), keep
    length = fields.get(b"content-length")
    if length is not None:
        size = _int(length, request)
        while len(conn.buffer) < size:
            await conn.more(timeout, request)
        body = bytes(conn.buffer[:size])
        del conn.buffer[:size]
        return status, headers, body, keep
    while not conn.closed:  # delimited by the end of the connection
        await conn.more(timeout, request)
    body = bytes(conn.buffer)
    conn.buffer.clear()
    return status, headers, body, False


async def _read_head(
    conn: Connection, request: httpx.Request, timeout: float | None
) -> tuple[int, list[tuple[bytes, bytes]], bool]:
    while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
        if len(conn.buffer) > _MAX_HEAD:
            raise httpx.RemoteProtocolError("the answer's headers are too long", request=request)
        await conn.more(timeout, request)
    lines = bytes(conn.buffer[:end]).split(b"\r\n")
    del conn.buffer[: end + 4]
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise httpx.RemoteProtocolError(
            f"not an HTTP/1.x answer: {lines[0][:80]!r}", request=request
        )
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}", request=request)
        headers.append((name.strip(), value.strip()))
    connection = b",".join(v for n, v in headers if n.lower() == b"connection").lower()
    keep = b"close" not in connection and (parts[0] == b"HTTP/1.1" or b"keep-alive" in connection)
    return _int(parts[1], request), headers, keep


async def _read_chunked(conn: Connection, request: httpx.Request, timeout: float | None) -> bytes:
    body = bytearray()
    while True:
        while (end := conn.buffer.find(b"\r\n")) < 0:
            await conn.more(timeout, request)
        size = _int(bytes(conn.buffer[:end]).split(b";", 1)[0], request, base=16)
        del conn.buffer[: end + 2]
        if size == 0:  # the last chunk, then optional trailers and an empty line
            while (end := conn.buffer.find(b"\r\n")) != 0:
                if end > 0:
                    del conn.buffer[: end + 2]
                else:
                    await conn.more(timeout, request)
            del conn.buffer[:2]
            return bytes(body)
        while len(conn.buffer) < size + 2:
            await conn.more(timeout, request)
        body += conn.buffer[:size]
        del conn.buffer[: size + 2]


def _int(text: bytes, request: httpx.Request, base: int = 10) -> int:
    try:
        value = int(text.strip(), base)
    except ValueError:
        value = -1
    if value < 0:
        raise httpx.RemoteProtocolError(
            f"malformed number in the answer: {text[:40]!r}", request=request
        )
    return value
