"""Connection bounds of the server: a read deadline per request and a cap on open connections.

uvicorn closes idle keep-alive connections, but a client that trickles a request's
headers or body a byte at a time holds its connection (and a slot of the server) for
ever: a few hundred such clients (slow loris) would starve everyone else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .._version import __version__
from ._middleware import VERSION_HEADER
from .schemas import APIError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_READ_TIMEOUT_S",
    "deadline_protocol",
    "server_config",
]

#: Seconds a client gets to send a request's headers, and again its body.
DEFAULT_READ_TIMEOUT_S = 30.0
#: Connections served at once; a request on one more gets 503.
DEFAULT_MAX_CONNECTIONS = 128


class _DeadlineH11(H11Protocol):
    """uvicorn's h11 protocol plus a deadline on reading each request.

    The headers must arrive within ``read_timeout_s`` of the connection opening (or of
    the previous response), else the connection is closed; the body then gets
    ``read_timeout_s`` of its own, else the client gets 408 and the connection is closed.
    """

    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        their = self.conn.their_state
        if their in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._disarm()  # the request is read: the app's own time is not bounded here
        elif self.cycle is not cycle and their is h11.SEND_BODY:
            self._arm()  # headers read: the body gets its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on this connection

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _expire(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.response_started
            and self.conn.their_state is h11.SEND_BODY
        ):
            cycle.disconnected = True  # the app's reads now end and its answer is dropped
            cycle.message_event.set()
            self._send_408()
        self.transport.close()

    def _send_408(self) -> None:
        body = json.dumps(
            APIError(
                408,
                f"the request body did not arrive within {self.read_timeout_s:g} s; "
                "send it at once, or start the server with a larger --read-timeout",
                code="request_timeout",
            ).body()
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"connection", b"close"),
            (VERSION_HEADER.encode(), __version__.encode()),
        ]
        try:
            for event in (
                h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # the state machine refuses: closing is answer enough
            pass


def deadline_protocol(read_timeout_s: float) -> type[H11Protocol]:
    """An h11 protocol class for uvicorn whose requests must arrive within ``read_timeout_s``."""
    if read_timeout_s <= 0:
        raise ValueError(f"read_timeout_s must be > 0, got {read_timeout_s}")
    return type("DeadlineH11Protocol", (_DeadlineH11,), {"read_timeout_s": float(read_timeout_s)})


def server_config(
    app: Callable[..., Any],
    host: str,
    port: int,
    *,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    **options: Any,
) -> Any:
    """A ``uvicorn.Config`` with the read deadline and the connection cap.

    Parameters
    ----------
    app : ASGI app
    host, port : str, int
    read_timeout_s : float, default 30
        Seconds for a request's headers, and again for its body.
    max_connections : int or None, default 128
        Connections served at once; a request on one more gets 503 (uvicorn's
        ``limit_concurrency``, which counts the connection asking). None: no cap.
    **options
        Other ``uvicorn.Config`` arguments (e.g. ``log_level``).
    """
    import uvicorn

    if max_connections is not None and max_connections < 1:
        raise ValueError(f"max_connections must be >= 1 or None, got {max_connections}")
    limit = None if max_connections is None else max_connections + 1
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=deadline_protocol(read_timeout_s),
        limit_concurrency=limit,
        **options,
    )
