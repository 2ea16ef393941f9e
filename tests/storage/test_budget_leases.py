"""Reservation leases: a worker that went silent has its reservation counted as spent.

A worker on another host cannot be checked for liveness, so a reservation expires after
its lease instead. Each test runs on SQLite and on PostgreSQL (the ``store_url`` fixture).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import maas_tune.storage._reclaim as reclaim_module
from maas_tune.errors import BudgetExceeded, ConfigurationError
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget, list_budgets

from .._concurrency import run_at_once

LEASE_S = 0.05


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as opened:
        yield opened


def _expire() -> None:
    time.sleep(LEASE_S * 3)


def test_an_expired_reservation_counts_as_spent_and_the_cap_holds(store: Store) -> None:
    silent = QueryBudget("b", 10, store=store, lease_s=LEASE_S)
    silent.reserve(6, 60)
    _expire()
    other = QueryBudget("b", store=store)  # another worker, on the same ledger
    status = other.status()
    assert (status.spent_queries, status.spent_prompt_tokens, status.reserved_queries) == (6, 60, 0)
    other.reserve(4)  # up to the cap
    with pytest.raises(BudgetExceeded):
        other.reserve(1)  # the silent worker's units are not given away


@pytest.mark.parametrize(("settle", "spent"), [("commit", 2), ("release", 0), ("all", 6)])
def test_a_late_settle_corrects_the_counters(store: Store, settle: str, spent: int) -> None:
    slow = QueryBudget("b", 10, store=store, lease_s=LEASE_S)
    reservation = slow.reserve(6, 60)
    _expire()
    assert list_budgets(store)[0].spent_queries == 6  # reclaimed while the request ran
    if settle == "commit":
        slow.commit(reservation, queries=2, prompt_tokens=20)
    elif settle == "release":
        slow.release(reservation)
    else:
        slow.commit(reservation)
    status = slow.status()
    assert (status.spent_queries, status.spent_prompt_tokens) == (spent, spent * 10)
    assert status.reserved_queries == 0
    with pytest.raises(ConfigurationError, match="already committed or released"):
        slow.commit(reservation)


def test_a_reclaimed_reservation_is_forgotten_after_a_while(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reclaim_module, "RECLAIMED_KEEP_S", 0.0)
    gone = QueryBudget("b", store=store, lease_s=LEASE_S)
    reservation = gone.reserve(3)
    _expire()
    gone.status()  # reclaims it
    gone.status()  # and, its keeping time over, drops it
    with pytest.raises(ConfigurationError, match="already committed or released"):
        gone.commit(reservation)
    assert gone.status().spent_queries == 3


def test_workers_reclaiming_at_once_count_a_reservation_once(store_url: str) -> None:
    with Store(store_url) as store:
        for _ in range(5):
            QueryBudget("b", store=store, lease_s=LEASE_S).reserve(2)
    _expire()

    def reclaim(go: Callable[[], object]) -> None:
        with Store(store_url) as own:
            go()
            QueryBudget("b", store=own).status()

    errors = run_at_once([reclaim] * 8)
    assert errors == []
    with Store(store_url) as store:
        status = QueryBudget("b", store=store).status()
    assert (status.spent_queries, status.reserved_queries) == (10, 0)


def test_lease_must_be_positive(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="lease_s"):
        QueryBudget("b", store=store, lease_s=0)
