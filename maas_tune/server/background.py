"""Run an ASGI app under uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import MaasTuneError

__all__ = ["START_TIMEOUT_S", "free_port", "serve_in_thread"]

#: Seconds a server gets to start.
START_TIMEOUT_S = 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Callable[..., Any], **options: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1; yield ``http://127.0.0.1:<port>``; stop it.

    ``options`` go to :func:`~maas_tune.server._connections.server_config` (e.g.
    ``read_timeout_s``, ``max_connections``) and on to ``uvicorn.Config``. Unlike
    ``maas-tune serve``, the number of connections is not capped unless asked.

    Raises
    ------
    MaasTuneError
        The server did not start within :data:`START_TIMEOUT_S` seconds.
    """
    import uvicorn

    from ._connections import server_config

    port = free_port()
    options.setdefault("log_level", "warning")
    options.setdefault("max_connections", None)
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, **options))
    thread = threading.Thread(target=server.run, name="maas-tune-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise MaasTuneError(f"the loopback server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
