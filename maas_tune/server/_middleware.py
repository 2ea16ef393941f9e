"""Pure ASGI middleware of the server: Host allow-list, version header, API key, 500s, and the
body size limit.

Pure ASGI (not ``BaseHTTPMiddleware``): no extra task per request, and exceptions
raised while a route reads the body reach FastAPI unwrapped.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from . import LOOPBACK_HOSTS
from .schemas import APIError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "LOOPBACK_HOST_NAMES",
    "PUBLIC_PATHS",
    "VERSION_HEADER",
    "BodyLimit",
    "Gate",
    "HostCheck",
]

logger = logging.getLogger(__name__)

#: Default largest request body (4 MiB: thousands of prompts per request).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Header carried by every response.
VERSION_HEADER = "x-maas-tune-version"
#: Paths answered without an API key (liveness probes).
PUBLIC_PATHS = frozenset({"/health"})
#: ``Host`` names served by default: only this machine's own names for itself.
LOOPBACK_HOST_NAMES = LOOPBACK_HOSTS


async def _send_error(err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
    response.headers[VERSION_HEADER] = __version__
    await response(scope, receive, send)


class Gate:
    """Every response gets the version header; the API key is checked in constant time;
    an unhandled exception becomes a 500 in OpenAI's error shape (and is logged)."""

    def __init__(self, app: ASGIApp, api_key: str | None = None) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._expected is not None and scope["path"] not in PUBLIC_PATHS:
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                await _send_error(
                    APIError(
                        401,
                        "missing or invalid API key; send 'Authorization: Bearer <key>'",
                        code="invalid_api_key",
                    ),
                    scope,
                    receive,
                    send,
                )
                return
        started = False

        async def stamped_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[VERSION_HEADER] = __version__
            await send(message)

        try:
            await self.app(scope, receive, stamped_send)
        except Exception:
            logger.exception("unhandled error on %s", scope["path"])
            if not started:
                await _send_error(
                    APIError(500, "internal server error; see the server log", type="server_error"),
                    scope,
                    receive,
                    send,
                )


def host_name(header: str) -> str:
    """The name in a ``Host`` header, lower-case, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8000
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """Answer 421 to a request whose ``Host`` is not allowed.

    A web page can point a name it controls at 127.0.0.1 (DNS rebinding) and so reach
    a key-less loopback server from the user's browser; its requests then carry that
    name in ``Host``, which this refuses. ``"*"`` in ``allowed`` turns the check off.
    """

    def __init__(self, app: ASGIApp, allowed: Collection[str] = LOOPBACK_HOST_NAMES) -> None:
        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host", "")
        if host_name(header) not in self.allowed:
            shown = header[:100].encode("ascii", "replace").decode() or "(none)"
            await _send_error(
                APIError(
                    421,
                    f"this server does not answer for Host {shown!r}; if that name is meant to "
                    "reach it, start it with --allowed-host NAME (repeatable)",
                    param="Host",
                    code="host_not_allowed",
                ),
                scope,
                receive,
                send,
            )
            return
        await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTP exceptions to the handlers."""


class BodyLimit:
    """Answer 413 (OpenAI's error shape) to bodies over ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused at once; a chunked body is
    counted as it streams and refused when it passes the limit (a 413 HTTP exception
    raised while the route reads it).
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_error(
                APIError(413, self._message(), code="request_too_large"), scope, receive, send
            )
            return
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(413, self._message())
            return message

        await self.app(scope, counted_receive, send)

    def _message(self) -> str:
        return (
            f"the request body is larger than {self.max_bytes} bytes; "
            "send fewer or shorter prompts per request"
        )
