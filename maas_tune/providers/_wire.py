"""A lean HTTP/1.1 keep-alive transport for httpx, for the async hot path.

httpcore (httpx's default transport) spends about a millisecond of CPU per request on
its pool bookkeeping, anyio's cancel scopes and h11's event machinery: at 1,000
requests/s that is a whole core, and a single process could not keep up with the rate
limits hosted APIs grant. This transport speaks the small subset of HTTP/1.1 that JSON
APIs use, on :class:`asyncio.Protocol` connections (plain or TLS) kept alive per origin:
a request is written in one call, the answer is parsed from the bytes as they arrive
(``Content-Length``, ``chunked`` or read-until-close bodies). Everything above it
(headers, auth, URL joining, JSON, status handling) is still httpx's, and its failures
are httpx's exceptions, so the error translation of :mod:`.http` is unchanged:

- cannot connect (refused, DNS, TLS handshake) → :class:`httpx.ConnectError`, or
  :class:`httpx.ConnectTimeout` (never sent);
- no free connection within the pool timeout → :class:`httpx.PoolTimeout` (never sent);
- the connection broke after the request was written → :class:`httpx.RemoteProtocolError`
  or :class:`httpx.ReadError`, a silent server → :class:`httpx.ReadTimeout` (maybe billed).

A connection the server closed while idle is noticed by the event loop (``eof_received``)
and never reused, so a request is not written into a dead socket. Proxies are not
supported: :func:`wire_applies` says when httpx's own transport must be used instead.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from base64 import b64encode
from collections import deque
from typing import Any

import httpx

from ._http11 import Connection, read_response, request_head

__all__ = ["DirectSender", "WireTransport", "wire_applies"]

#: Environment variables that route requests through a proxy (httpx honours them).
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def wire_applies(env: dict[str, str] | None = None) -> bool:
    """Whether :class:`WireTransport` can carry requests: not when a proxy is configured
    in the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, any case)."""
    env = dict(os.environ) if env is None else env
    return not any(env.get(name) or env.get(name.lower()) for name in PROXY_ENV)


class WireTransport(httpx.AsyncBaseTransport):
    """httpx async transport: HTTP/1.1 over pooled keep-alive asyncio connections.

    Parameters
    ----------
    max_connections : int
        Connections per origin (scheme, host, port); more requests wait for a free one.
    ssl_context : ssl.SSLContext or None
        For ``https`` origins (made on first use when None).
    deadline_factor : float or None
        The whole answer must arrive within this many read timeouts (None: no limit).
    """

    def __init__(
        self,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        deadline_factor: float | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.deadline_factor = deadline_factor
        self._ssl = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], deque[Connection]] = {}
        self._open: dict[tuple[bytes, bytes, int], int] = {}
        self._waiting: dict[tuple[bytes, bytes, int], deque[asyncio.Future[None]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        origin = _origin(request.url)
        head = request_head(request)
        body = await request.aread()
        conn = await self._acquire(origin, request, timeouts)
        reusable = False
        self._set_deadline(conn, timeouts.get("read"))
        try:
            conn.transport.write(head + body if body else head)  # type: ignore[union-attr]
            status, headers, content, keep = await read_response(
                conn, request, timeouts.get("read")
            )
            reusable = keep and not conn.closed
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        finally:
            self._release(origin, conn, reusable)
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _set_deadline(self, conn: Connection, read_timeout: float | None) -> None:
        """A server that dribbles bytes, each within the read timeout, cannot hold a
        request open for ever: the whole answer must arrive within ``deadline_factor``
        read timeouts."""
        if self.deadline_factor is None or read_timeout is None:
            conn.deadline = None
            return
        conn.deadline = conn.loop.time() + self.deadline_factor * read_timeout
        conn.deadline_message = (
            f"the whole answer took longer than {self.deadline_factor:g} x the "
            f"{read_timeout:g} s read timeout"
        )

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.popleft().close()
        self._idle.clear()

    # -- the pool -------------------------------------------------------------------
    async def _acquire(
        self, origin: tuple[bytes, bytes, int], request: httpx.Request, timeouts: dict[str, Any]
    ) -> Connection:
        idle = self._idle.setdefault(origin, deque())
        while True:
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to be stale
                if not conn.closed:
                    return conn
                self._open[origin] -= 1
            if self._open.get(origin, 0) < self.max_connections:
                self._open[origin] = self._open.get(origin, 0) + 1
                try:
                    return await self._connect(origin, request, timeouts.get("connect"))
                except BaseException:
                    self._open[origin] -= 1
                    raise
            await self._wait_for_free(origin, request, timeouts.get("pool"))

    async def _wait_for_free(
        self, origin: tuple[bytes, bytes, int], request: httpx.Request, timeout: float | None
    ) -> None:
        freed = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(origin, deque())
        waiting.append(freed)
        try:
            await asyncio.wait_for(freed, timeout)
        except asyncio.TimeoutError:
            raise httpx.PoolTimeout("no free connection", request=request) from None
        finally:
            if freed in waiting:
                waiting.remove(freed)

    def _release(self, origin: tuple[bytes, bytes, int], conn: Connection, reusable: bool) -> None:
        if reusable:
            self._idle[origin].append(conn)
        else:
            conn.close()
            self._open[origin] -= 1
        waiting = self._waiting.get(origin)
        while waiting:
            freed = waiting.popleft()
            if not freed.done():
                freed.set_result(None)
                break

    async def _connect(
        self, origin: tuple[bytes, bytes, int], request: httpx.Request, timeout: float | None
    ) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        secure = scheme == b"https"
        if secure and self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        name = host.decode("ascii")
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(loop),
                    name,
                    port,
                    ssl=self._ssl if secure else None,
                    server_hostname=name if secure else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {name}:{port} timed out", request=request
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return conn


def _origin(url: httpx.URL) -> tuple[bytes, bytes, int]:
    scheme = url.raw_scheme
    if scheme not in (b"http", b"https"):
        raise httpx.UnsupportedProtocol(f"the URL scheme {url.scheme!r} is not http(s)")
    port = url.port or (443 if scheme == b"https" else 80)
    return scheme, url.raw_host, port


class DirectSender:
    """Sends ``client``'s requests straight to its :class:`WireTransport`.

    :class:`httpx.AsyncClient` rebuilds the URL, headers, cookies, auth and redirect
    state of every request; for the hot path's one method and handful of paths, this
    builds each (method, path) template once with the client itself (so URL joining,
    default headers and query parameters are httpx's; credentials in the URL become
    Basic auth, as httpx's auth flow makes them) and then only adds the body.
    """

    def __init__(self, client: httpx.AsyncClient, wire: WireTransport) -> None:
        self.client, self.wire = client, wire
        self._templates: dict[tuple[str, str], httpx.Request] = {}

    async def send(self, method: str, url: str, *, json: Any = None) -> httpx.Response:
        """Send one request and read its whole answer (httpx's exceptions on failure)."""
        template = self._templates.get((method, url))
        if template is None:  # without the empty body's Content-Length
            template = self.client.build_request(method, url)
            template.headers.pop("Content-Length", None)
            if template.url.userinfo:  # as httpx's auth flow: URL credentials win
                pair = f"{template.url.username}:{template.url.password}".encode()
                template.headers["Authorization"] = "Basic " + b64encode(pair).decode("ascii")
            self._templates[method, url] = template
        request = httpx.Request(
            method,
            template.url,
            headers=template.headers,
            json=json,
            extensions=template.extensions,
        )
        response = await self.wire.handle_async_request(request)
        response.request = request
        await response.aread()
        return response
