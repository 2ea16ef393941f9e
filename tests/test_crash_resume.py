"""kill -9 in the middle of scoring: nothing already answered is sent again on restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from maas_tune.client import Client
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache

from .fakes import FakeProvider
from .test_client import TASK

N = 400
ROOT = Path(__file__).resolve().parent.parent

SCORER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from maas_tune.storage import Store
    from maas_tune.storage.budget import QueryBudget
    from maas_tune.storage.cache import ScoreCache
    from maas_tune.client import Client
    from tests.fakes import FakeProvider
    from tests.test_client import TASK

    class Slow(FakeProvider):
        def score(self, prompts, labels):
            time.sleep(0.05)
            if len(self.sent) >= {n} // 2:  # the run never ends: the kill lands mid-run
                time.sleep(600)
            return super().score(prompts, labels)

    store = Store({db!r})
    budget = QueryBudget("crash", max_queries={n} + 8, store=store)  # room for one lost chunk
    client = Client(Slow(), cache=ScoreCache(store), budget=budget, progress=False, chunk_size=8)
    client.score(TASK, ["text %d" % i for i in range({n})])
    """
)


def test_kill_9_mid_run_then_restart_resends_nothing_already_cached(tmp_path):
    db = tmp_path / "crash.sqlite"
    code = SCORER.format(root=str(ROOT), db=str(db), n=N)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 60
    store = Store(db) if db.exists() else None
    while time.monotonic() < deadline:
        if db.exists():
            store = store or Store(db)
            if len(ScoreCache(store)) >= 80:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert store is not None
    cached = len(ScoreCache(store))
    assert 80 <= cached < N, "the kill must land mid-run"

    budget = QueryBudget("crash", store=store)
    spent_before = budget.status()
    # committed answers + at most the one chunk that was in flight (reclaimed as spent)
    assert cached <= spent_before.spent_queries <= cached + 8
    assert spent_before.reserved_queries == 0

    provider = FakeProvider()
    client = Client(provider, cache=ScoreCache(store), budget=budget, progress=False)
    scores = client.score(TASK, [f"text {i}" for i in range(N)])
    assert len(provider.sent) == N - cached  # nothing cached was paid for twice
    assert scores.n_cache_hits == cached
    assert budget.status().spent_queries == spent_before.spent_queries + N - cached
