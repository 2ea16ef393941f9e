"""Loopback servers for tests: uvicorn in a thread on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

#: Seconds a server gets to start before the test fails.
START_TIMEOUT_S = 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: object) -> Iterator[str]:
    """Run ``app`` under uvicorn on loopback; yield ``http://127.0.0.1:<port>``; stop it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        assert thread.is_alive(), "server thread died while starting"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits first."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server process exited with code {proc.returncode}")
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
