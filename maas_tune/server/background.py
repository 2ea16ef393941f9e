"""Run an ASGI app under uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

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
def serve_in_thread(app: object) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1; yield ``http://127.0.0.1:<port>``; stop it.

    Raises
    ------
    MaasTuneError
        The server did not start within :data:`START_TIMEOUT_S` seconds.
    """
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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
