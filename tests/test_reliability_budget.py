"""The budget under contention: many processes and tasks scoring over HTTP on one budget.

4 processes × 16 concurrent tasks (threads), each with its own ``Client`` on one shared
store, run rounds of ``client.score`` with random sizes (some prompts shared by every
task) against one loopback server that counts the requests it receives, until the
budget refuses them. Then:

- the budget was never overshot: ``spent <= limit`` (the overshoot figure is 0);
- the ledger equals what the server received, request for request, and no
  reservation is left open;
- every answer a task got is the server's, and demand really exceeded the cap (some
  jobs were refused) — so the cap, not the workload, ended the run.

``test_budget.py::test_racing_processes_and_threads_never_overshoot`` proves the same
for the bare ledger (reserve/commit with no provider). Both run on SQLite and on
PostgreSQL (the ``store_url`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache

from ._fault_server import FaultServer
from ._figures import report
from .storage.test_budget import SUBPROCESS_TIMEOUT_S, _python, _wait_for_file

PROCESSES, TASKS, ROUNDS = 4, 16, 6
#: The cap: about half of what the tasks ask for in all.
LIMIT = 1000
#: Prompts per ``score`` call are drawn from 1..MAX_JOB; chunks hold CHUNK prompts.
MAX_JOB, CHUNK = 12, 4

_SCORER = """
import json, os, random, sys, threading, time
from pathlib import Path
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.client import Client
from maas_tune.data import Example
from maas_tune.errors import BudgetExceeded
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.task import Task
from tests._fault_server import next_token_logprobs

db, url, go, ready = sys.argv[1:5]
n_tasks, rounds, max_job, chunk = (int(a) for a in sys.argv[5:9])
TASK = Task("race", "Review: {text} Sentiment:", {"pos": ["positive"], "neg": ["negative"]})
store = Store(db)
provider = OpenAICompletionsProvider(url, "fake-model", api_key="sk-race", strategy="extension",
                                     max_concurrency=4, timeout=60)
results, lock = [], threading.Lock()

def run(i):
    rng = random.Random(f"{os.getpid()}-{i}")
    client = Client(provider, cache=ScoreCache(store), budget=QueryBudget("race", store=store),
                    progress=False, chunk_size=chunk)
    out = {"answered": 0, "refused": 0, "wrong": 0, "errors": []}
    for r in range(rounds):
        texts = [f"p{os.getpid()} t{i} r{r} #{j}" for j in range(rng.randint(1, max_job))]
        if rng.random() < 0.3:
            texts.append(f"shared {r}")  # asked by many tasks at once
        try:
            scores = client.score(TASK, texts)
        except BudgetExceeded:
            out["refused"] += 1
            continue
        except Exception as exc:
            out["errors"].append(repr(exc))
            continue
        for text, got in zip(texts, scores.label_logprobs):
            true = next_token_logprobs(TASK.render(Example(text=text, label=None)))
            out["wrong"] += bool(abs(got[0] - true[" positive"]) > 1e-5)
        out["answered"] += len(texts)
    with lock:
        results.append(out)

Path(ready).touch()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
threads = [threading.Thread(target=run, args=(i,)) for i in range(n_tasks)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def test_many_processes_and_tasks_never_overshoot_and_the_ledger_matches_the_server(
    tmp_path: Path, store_url: str
) -> None:
    db = store_url
    budget = QueryBudget("race", LIMIT, store=db)
    go = tmp_path / "go"
    with FaultServer() as server:
        procs = [
            _python(
                _SCORER,
                str(db),
                server.base_url,
                str(go),
                str(tmp_path / f"ready-{i}"),
                str(TASKS),
                str(ROUNDS),
                str(MAX_JOB),
                str(CHUNK),
            )
            for i in range(PROCESSES)
        ]
        try:
            for i in range(PROCESSES):
                _wait_for_file(tmp_path / f"ready-{i}", procs)
            go.touch()  # every task starts at once
            outputs = [proc.communicate(timeout=SUBPROCESS_TIMEOUT_S * 3) for proc in procs]
        finally:
            for proc in procs:
                proc.kill()
        received = server.received
    assert [proc.returncode for proc in procs] == [0] * PROCESSES, [e for _, e in outputs]
    tasks = [task for out, _ in outputs for task in json.loads(out)]
    assert len(tasks) == PROCESSES * TASKS
    assert [t["errors"] for t in tasks] == [[]] * len(tasks)
    assert sum(t["wrong"] for t in tasks) == 0

    status = budget.status()
    overshoot = max(0, status.spent_queries - LIMIT)
    report(
        "budget_overshoot",
        overshoot,
        limit=LIMIT,
        spent=status.spent_queries,
        server_received=received,
        processes=PROCESSES,
        tasks_each=TASKS,
        backend=store_url.partition(":")[0],
    )
    assert overshoot == 0
    assert status.reserved_queries == 0
    assert status.spent_queries == received  # the ledger is what the server received
    assert sum(t["refused"] for t in tasks) > 0  # demand passed the cap: the cap ended it
    assert status.spent_queries > LIMIT - (MAX_JOB + 1)  # and it was spent up to the last job
    with Store(db) as store:
        distinct = len(ScoreCache(store))
    # every answer paid for was cached, and a prompt asked by two tasks at once was paid once
    # (the second task waited on the first one's claim)
    assert 0 < distinct == received
