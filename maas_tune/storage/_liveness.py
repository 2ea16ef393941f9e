"""Whether the process that holds a reservation or a claim still runs (on this host only)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

__all__ = ["hostname", "pid_alive", "presumed_dead"]


def hostname() -> str:
    """This host's name, as reservations and claims record it."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs; when unsure, yes (what it holds stays held)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would terminate the process there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    try:  # a killed child that its parent has not reaped yet is a zombie: dead for us
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def presumed_dead(host: str, pid: int, expires: float | None, now: float) -> bool:
    """A holder is gone when its lease expired, or when it ran on this host and has exited.

    Another host's processes cannot be checked: only the lease frees what they hold.
    """
    if expires is not None and expires < now:
        return True
    return host == hostname() and not pid_alive(pid)
