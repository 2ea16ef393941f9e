"""Run a coroutine from blocking code with Ctrl-C as cancellation and a bounded teardown.

:func:`asyncio.run` cancels its task on the first Ctrl-C, but then waits for every task
left on the loop and for every worker thread of the default executor, without a limit:
one task that does not end after its cancellation keeps the process alive for ever (a
second Ctrl-C lands in that same wait). Here the first Ctrl-C cancels the task as
asyncio.run does; the teardown then gives the tasks left ``grace_s`` seconds to finish
what they were doing (a commit of what was answered, a release of a reservation), logs
the stack of any that did not, and returns. Nothing paid for depends on such a task:
its reservation counts as spent until it is reclaimed, and its claims expire.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

from .._constants import CANCEL_GRACE_S

__all__ = ["run_interruptibly"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_interruptibly(coro: Coroutine[Any, Any, T], grace_s: float = CANCEL_GRACE_S) -> T:
    """Run ``coro`` on a fresh event loop until it ends; Ctrl-C cancels it.

    Raises
    ------
    KeyboardInterrupt
        After a Ctrl-C, once the task has ended (or ``grace_s`` after its cancellation).
    """
    loop = asyncio.new_event_loop()
    main = loop.create_task(coro)
    interrupts = [0]

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        interrupts[0] += 1
        if interrupts[0] == 1 and not main.done():
            main.cancel()
            # Wake a select() with a long timeout; cancel again if the task is still
            # ending after grace_s (its cleanup waits on something that will not come).
            loop.call_soon_threadsafe(loop.call_later, grace_s, _force, main, loop, grace_s)
            return
        raise KeyboardInterrupt

    own = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if own:
        signal.signal(signal.SIGINT, on_sigint)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    except asyncio.CancelledError:
        if interrupts[0]:
            raise KeyboardInterrupt from None
        raise
    finally:
        if own and signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            _close(loop, grace_s)
        finally:
            asyncio.set_event_loop(None)


def _force(main: asyncio.Task[Any], loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
    """Cancel ``main`` again, logging where every task of ``loop`` waits."""
    if main.done():
        return
    log.warning(
        "still ending %g s after Ctrl-C; cancelling again. Waiting:%s",
        grace_s,
        "".join(_where(t) for t in asyncio.all_tasks(loop)),
    )
    main.cancel()


def _where(task: asyncio.Task[Any]) -> str:
    frames = task.get_stack()
    return f"\n  {task.get_name()}: " + " <- ".join(
        f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno})"
        for f in reversed(frames)
    )


def _close(loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
    """Cancel the tasks left, wait up to ``grace_s`` for them and for the executor's
    threads, log any task still pending, and close the loop."""
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in left:
        task.cancel()
    if left:
        _, stuck = loop.run_until_complete(asyncio.wait(left, timeout=grace_s))
        if stuck:
            log.warning(
                "%d tasks did not end %g s after their cancellation; left behind "
                "(their reservations count as spent, their claims expire):%s",
                len(stuck),
                grace_s,
                "".join(_where(t) for t in stuck),
            )
    loop.run_until_complete(_bounded(loop.shutdown_asyncgens(), grace_s))
    loop.run_until_complete(_bounded(loop.shutdown_default_executor(), grace_s))
    loop.close()


async def _bounded(step: Coroutine[Any, Any, None], seconds: float) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except asyncio.TimeoutError:
        log.warning("teardown step %s did not end within %g s", step, seconds)
