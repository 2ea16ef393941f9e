"""A first-come, first-served lock: whoever waits longest gets the model next.

``threading.Lock`` hands itself to no one in particular: a thread that releases it
and asks again at once (a generation loop, one token per turn) usually wins it back,
so a scoring pass waiting beside it would wait for the whole generation.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

__all__ = ["FairLock"]


class FairLock:
    """A mutex granted in arrival order (a context manager, like ``threading.Lock``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._held = False

    def acquire(self) -> None:
        """Wait until every thread that asked before has had its turn, then hold the lock."""
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                while self._held or self._queue[0] is not me:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: give up the place in line
                self._queue.remove(me)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._held = True

    def release(self) -> None:
        """Let the longest-waiting thread in."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
