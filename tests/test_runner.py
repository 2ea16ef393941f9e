"""Ctrl-C from blocking code: the run is cancelled, and the process exits even when a
task's cleanup waits on something that will never come (asyncio.run waits for it for
ever; a second Ctrl-C lands in the same wait)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from maas_tune.client._runner import run_interruptibly

ROOT = Path(__file__).resolve().parent.parent
#: A hang guard, not a timing goal: the run below gives up after 0.5 s of grace.
GUARD_S = 60

STUCK = textwrap.dedent(
    """
    import asyncio, signal, sys
    from maas_tune.client._runner import run_interruptibly

    # Ctrl-C as in a terminal (a background job of a non-interactive shell ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    async def stubborn_cleanup():
        try:
            print("ready", flush=True)
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.Event().wait()  # a cleanup that never ends

    try:
        run_interruptibly(stubborn_cleanup(), grace_s=0.5)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


def test_ctrl_c_exits_when_a_cleanup_never_ends():
    """Before: asyncio.run waited for the cancelled task for ever (this test hit its guard)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in out
    assert "cancelling again" in err and "stubborn_cleanup" in err  # where it waited


def test_a_task_left_behind_does_not_hold_up_the_result(caplog):
    async def main() -> int:
        async def ignores_cancellation() -> None:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    continue

        asyncio.get_running_loop().create_task(ignores_cancellation())
        await asyncio.sleep(0)
        return 7

    with caplog.at_level(logging.WARNING, logger="maas_tune.client._runner"):
        assert run_interruptibly(main(), grace_s=0.2) == 7
    assert "did not end" in caplog.text and "ignores_cancellation" in caplog.text


def test_an_error_and_a_plain_cancellation_pass_through():
    before = signal.getsignal(signal.SIGINT)

    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_interruptibly(fails())

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run_interruptibly(cancelled())
    assert signal.getsignal(signal.SIGINT) is before  # restored (or never replaced)
