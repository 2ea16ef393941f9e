"""Quickstart: 16-shot DecT on SST-2 with the embedded Gemma 3 270M, under a query budget.

Run it with ``python examples/quickstart.py``. The first run sends 32 queries (the 32 shots;
the default DecT needs no content-free query) plus one per test example; a second run
sends none.
"""

from __future__ import annotations

from pathlib import Path

import maas_tune as mt


def main(
    provider: mt.Provider | None = None, cache: str | Path | None = None, n_test: int = 200
) -> float:
    provider = provider or mt.TransformersProvider()  # Gemma 3 270M, in process
    store = mt.Store(cache)  # SQLite: cache + budget ledger
    budget = mt.QueryBudget("quickstart", max_queries=64, store=store)
    client = mt.Client(provider, cache=mt.ScoreCache(store), budget=budget)

    task = mt.datasets.load_task("sst2")  # template + verbalizer
    data = mt.datasets.load("sst2")
    shots = mt.sample_k_shot(data.train, 16, labels=task.labels, seed=0)

    train = client.score(task, shots)  # 32 queries, then cached
    decoder = mt.DecT(random_state=0).fit(train, [ex.label for ex in shots])

    test = mt.Client(provider, cache=mt.ScoreCache(store)).score(task, data.test[:n_test])
    accuracy = decoder.score(test, [ex.label for ex in data.test[:n_test]])
    print(f"DecT accuracy on {n_test} SST-2 test sentences: {accuracy:.3f}")
    print(f"budget: {budget.status().spent_queries} of 64 training queries spent")
    return accuracy


if __name__ == "__main__":
    main()
