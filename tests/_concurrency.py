"""Run several jobs in threads that start their racing part at the same instant."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

__all__ = ["THREAD_TIMEOUT_S", "run_at_once"]

#: How long a race test waits for each of its threads.
THREAD_TIMEOUT_S = 60.0

#: A job: set itself up, call ``go()`` (which waits for every other job to get there), race.
Job = Callable[[Callable[[], object]], object]


def run_at_once(jobs: Sequence[Job]) -> list[BaseException]:
    """Run ``jobs`` in one thread each and return what they raised (``[]`` when nothing).

    Each job is called with ``go``, a barrier: whatever a job does before calling it (opening
    its own store, say) is set-up; after it, all jobs run at once. A thread still running
    after :data:`THREAD_TIMEOUT_S` is reported as a ``TimeoutError``.
    """
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Job) -> None:
        try:
            job(start.wait)
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
        if thread.is_alive():
            errors.append(TimeoutError(f"a thread ran past {THREAD_TIMEOUT_S:.0f} s"))
    return errors
