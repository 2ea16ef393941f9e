"""Loopback servers for tests: uvicorn in a thread on a free 127.0.0.1 port."""

from __future__ import annotations

import subprocess
import time

from maas_tune.server.background import free_port, serve_in_thread

__all__ = ["free_port", "serve_in_thread", "wait_until_up"]


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
