"""Tests for the query budget: caps, settling, persistence, races, crashes, atomic commits.

Every test that takes the ``store`` fixture runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maas_tune.errors import BudgetExceeded, ConfigurationError
from maas_tune.scores import ProviderAnswer
from maas_tune.storage import Store
from maas_tune.storage.budget import KEEP, QueryBudget, list_budgets, reset_budget
from maas_tune.storage.cache import ScoreCache

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 60
RACE_PROCESSES, RACE_THREADS, RACE_LIMIT, RACE_MAX_REQUEST = 8, 8, 240, 3


# Helpers import maas_tune's store modules without running the package __init__, which
# loads torch: 64 racing workers then start in well under a second on a small machine.
_LIGHT_PACKAGE = (
    "import sys, types; _pkg = types.ModuleType('maas_tune'); "
    f"_pkg.__path__ = [{str(REPO / 'maas_tune')!r}]; sys.modules['maas_tune'] = _pkg\n"
)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -c code args`` on this checkout; stdout and stderr are piped."""
    return subprocess.Popen(
        [sys.executable, "-c", _LIGHT_PACKAGE + code, *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_file(path: Path, procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not path.exists():
        failed = [p for p in procs if p.poll() is not None]
        if failed or time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            pytest.fail(
                f"a helper process did not get ready: {[p.communicate()[1] for p in procs]}"
            )
        time.sleep(0.01)


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as opened:
        yield opened


def test_reserve_commit_release(store: Store) -> None:
    budget = QueryBudget("b", 10, 1000, store=store)
    first = budget.reserve(3, 300)
    second = budget.reserve(2, 200)
    status = budget.status()
    assert (status.reserved_queries, status.reserved_prompt_tokens, status.remaining_queries) == (
        5,
        500,
        5,
    )
    budget.commit(first, queries=2, prompt_tokens=250)  # actual use may be below the reservation
    budget.release(second)
    status = budget.status()
    assert (status.spent_queries, status.spent_prompt_tokens, status.reserved_queries) == (
        2,
        250,
        0,
    )
    assert status.remaining_queries == 8 and status.remaining_prompt_tokens == 750


def test_refusal_reserves_nothing(store: Store) -> None:
    budget = QueryBudget("b", 10, store=store)
    budget.reserve(6)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(5)
    err = info.value
    assert (err.budget, err.unit, err.limit, err.spent, err.requested, err.remaining) == (
        "b",
        "queries",
        10,
        6,
        5,
        4,
    )
    assert budget.status().reserved_queries == 6
    budget.reserve(4)  # exactly up to the cap is allowed
    with pytest.raises(BudgetExceeded):
        budget.reserve(1)


def test_token_cap(store: Store) -> None:
    budget = QueryBudget("tokens", max_prompt_tokens=100, store=store)
    budget.commit(budget.reserve(1, 60))
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(1, 50)
    assert info.value.unit == "prompt_tokens" and info.value.spent == 60
    assert budget.status().remaining_queries is None  # no query cap


def test_settling_twice_or_elsewhere_is_an_error(store: Store) -> None:
    budget, other = QueryBudget("b", store=store), QueryBudget("other", store=store)
    reservation = budget.reserve(1)
    with pytest.raises(ConfigurationError, match="belongs to budget 'b'"):
        other.commit(reservation)
    budget.commit(reservation)
    with pytest.raises(ConfigurationError, match="already committed or released"):
        budget.commit(reservation)
    with pytest.raises(ConfigurationError, match="already committed or released"):
        budget.release(reservation)
    assert budget.status().spent_queries == 1


def test_overspend_is_recorded_with_a_warning(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    budget = QueryBudget("b", 10, store=store)
    with caplog.at_level(logging.WARNING, logger="maas_tune.storage.budget"):
        budget.commit(budget.reserve(1, 10), prompt_tokens=15)
    assert budget.status().spent_prompt_tokens == 15
    assert "more than" in caplog.text


def test_reserving_context_manager(store: Store) -> None:
    budget = QueryBudget("b", 10, store=store)
    with pytest.raises(RuntimeError), budget.reserving(4):
        assert budget.status().reserved_queries == 4
        raise RuntimeError("request failed before it was sent")
    assert (budget.status().spent_queries, budget.status().reserved_queries) == (0, 0)
    with budget.reserving(3):
        pass  # ended unsettled: counted as spent, to be safe
    with budget.reserving(3) as reservation:
        budget.commit(reservation, queries=1)
    assert (budget.status().spent_queries, budget.status().reserved_queries) == (4, 0)


def test_limits(store: Store) -> None:
    QueryBudget("b", 10, 500, store=store)
    kept = QueryBudget("b", store=store).status()  # no limits given: the stored ones stay
    assert (kept.max_queries, kept.max_prompt_tokens) == (10, 500)
    budget = QueryBudget("b", 20, store=store)
    assert (budget.status().max_queries, budget.status().max_prompt_tokens) == (20, 500)
    budget.set_limits(max_prompt_tokens=None)
    assert (budget.status().max_queries, budget.status().max_prompt_tokens) == (20, None)
    budget.set_limits(max_queries=KEEP, max_prompt_tokens=7)
    assert (budget.status().max_queries, budget.status().max_prompt_tokens) == (20, 7)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigurationError, match="max_queries"):
            QueryBudget("b", bad, store=store)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="queries"):
        budget.reserve(-1)
    with pytest.raises(ConfigurationError, match="name"):
        QueryBudget("", store=store)


def test_list_and_reset(store: Store) -> None:
    alpha, beta = QueryBudget("alpha", 10, store=store), QueryBudget("beta", store=store)
    alpha.commit(alpha.reserve(4, 40))
    open_reservation = alpha.reserve(2)
    beta.commit(beta.reserve(1))
    assert [(s.name, s.spent_queries) for s in list_budgets(store)] == [("alpha", 4), ("beta", 1)]
    before = reset_budget(store.url, "alpha")  # a path or URL works as well as a Store
    assert (before.spent_queries, before.spent_prompt_tokens) == (4, 40)
    after = alpha.status()
    assert (
        after.spent_queries,
        after.spent_prompt_tokens,
        after.reserved_queries,
        after.max_queries,
    ) == (0, 0, 2, 10)
    alpha.commit(open_reservation)
    assert alpha.status().spent_queries == 2
    with pytest.raises(ConfigurationError, match="'alpha', 'beta'"):
        reset_budget(store, "gamma")


_SPEND = """
import sys
from maas_tune.storage.budget import QueryBudget
budget = QueryBudget(sys.argv[2], 100, store=sys.argv[1])
budget.commit(budget.reserve(7, 70))
"""


def test_restart_sees_what_was_spent(store: Store) -> None:
    proc = _python(_SPEND, store.url, "persist")
    assert proc.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0, proc.communicate()[1]
    status = QueryBudget("persist", store=Store(store.url)).status()
    assert (status.max_queries, status.spent_queries, status.spent_prompt_tokens) == (100, 7, 70)


_RESERVE_AND_HANG = """
import sys, time
from pathlib import Path
from maas_tune.storage.budget import QueryBudget
QueryBudget(sys.argv[2], store=sys.argv[1]).reserve(5, 50)
Path(sys.argv[3]).touch()
time.sleep(120)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="liveness checks need POSIX")
@pytest.mark.parametrize("trigger", ["status", "reserve", "list"])
def test_reservation_of_killed_process_is_counted_as_spent(
    store: Store, tmp_path: Path, trigger: str
) -> None:
    budget = QueryBudget("crash", 100, store=store)
    bystander = QueryBudget("bystander", store=store)
    ready = tmp_path / "ready"
    proc = _python(_RESERVE_AND_HANG, store.url, "crash", str(ready))
    try:
        _wait_for_file(ready, [proc])
        assert budget.status().reserved_queries == 5  # its owner is alive: left alone
    finally:
        proc.kill()
        proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    if trigger == "reserve":
        bystander.reserve(1)  # any budget on the store reclaims
    elif trigger == "list":
        list_budgets(store)
    status = budget.status()
    assert (status.spent_queries, status.spent_prompt_tokens, status.reserved_queries) == (5, 50, 0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombie detection reads /proc")
def test_reservation_of_unreaped_killed_child_is_counted_as_spent(
    store: Store, tmp_path: Path
) -> None:
    budget = QueryBudget("zombie", store=store)
    ready = tmp_path / "ready"
    proc = _python(_RESERVE_AND_HANG, store.url, "zombie", str(ready))
    try:
        _wait_for_file(ready, [proc])
        os.kill(proc.pid, signal.SIGKILL)  # not waited for yet: the child stays a zombie
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        status = budget.status()
    finally:
        proc.kill()
        proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert (status.spent_queries, status.reserved_queries) == (5, 0)


def test_reservations_from_other_hosts_stay_reserved(store: Store) -> None:
    budget = QueryBudget("b", store=store)
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO reservations (id, budget, queries, prompt_tokens, pid, hostname, created) "
            "VALUES ('r1', 'b', 3, 0, 999999999, ?, 0)",
            (socket.gethostname() + "-elsewhere",),
        )
    assert (budget.status().reserved_queries, budget.status().spent_queries) == (3, 0)


def test_cache_write_and_budget_commit_are_atomic(store: Store) -> None:
    cache, budget = ScoreCache(store), QueryBudget("b", 10, store=store)
    reservation = budget.reserve(2)
    answers = {
        "k1": ProviderAnswer(np.array([-1.0]), None, 3),
        "k2": ProviderAnswer(np.array([-2.0]), None, 3),
    }
    with pytest.raises(RuntimeError), store.transaction() as conn:
        cache.put_many(answers, conn=conn)
        budget.commit(reservation, conn=conn)
        raise RuntimeError("crash between the commit and the end of the transaction")
    assert cache.get_many(["k1", "k2"]) == {}
    assert (budget.status().spent_queries, budget.status().reserved_queries) == (0, 2)

    with (
        Store(store.url) as separate,
        separate.transaction() as conn,
    ):  # another Store on the same file
        cache.put_many(answers, conn=conn)
        budget.commit(reservation, conn=conn)
    assert set(cache.get_many(["k1", "k2"])) == {"k1", "k2"}
    with pytest.raises(ConfigurationError), store.transaction() as conn:
        cache.put_many({"k3": answers["k1"]}, conn=conn)
        budget.commit(reservation, conn=conn)  # already settled: the whole transaction is undone
    assert cache.get_many(["k3"]) == {} and budget.status().spent_queries == 2


_RACER = """
import json, os, random, sys, threading, time
from pathlib import Path
from maas_tune.storage.budget import QueryBudget
from maas_tune.errors import BudgetExceeded
path, go, ready = sys.argv[1:4]
n_threads, max_request = int(sys.argv[4]), int(sys.argv[5])
budget = QueryBudget("race", store=path)
totals, errors = [], []

def work(seed):
    rng, total = random.Random(seed), 0
    try:
        while True:
            try:
                reservation = budget.reserve(rng.randint(1, max_request))
            except BudgetExceeded:
                break
            budget.commit(reservation)
            total += reservation.queries
    except BaseException as exc:
        errors.append(repr(exc))
    totals.append(total)

Path(ready).touch()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
threads = [threading.Thread(target=work, args=(f"{os.getpid()}-{i}",)) for i in range(n_threads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"committed": sum(totals), "errors": errors}))
"""


def test_racing_processes_and_threads_never_overshoot(store: Store, tmp_path: Path) -> None:
    budget = QueryBudget("race", RACE_LIMIT, store=store)
    go = tmp_path / "go"
    procs = [
        _python(
            _RACER,
            store.url,
            str(go),
            str(tmp_path / f"ready-{i}"),
            str(RACE_THREADS),
            str(RACE_MAX_REQUEST),
        )
        for i in range(RACE_PROCESSES)
    ]
    try:
        for i in range(RACE_PROCESSES):
            _wait_for_file(tmp_path / f"ready-{i}", procs)
        go.touch()  # all start hammering at once
        results = [json.loads(proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)[0]) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [r["errors"] for r in results] == [[]] * RACE_PROCESSES
    status = budget.status()
    committed = sum(r["committed"] for r in results)
    assert status.spent_queries == committed and status.reserved_queries == 0
    assert RACE_LIMIT - RACE_MAX_REQUEST < status.spent_queries <= RACE_LIMIT
