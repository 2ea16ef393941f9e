"""Benchmark: accuracy of every method at 1/4/16 shots, mean ± std over seeds 0–4.

Usage: ``python benchmarks/accuracy.py [--datasets sst2 agnews] [--shots 1 4 16]``
(writes ``benchmarks/results/accuracy.json``). SST-2 uses all 872 test sentences,
other datasets a seeded random 1,000 of their test set. Answers are cached in
``benchmarks/.cache/bench.sqlite``, so a rerun costs no model time.
"""

from __future__ import annotations

import argparse
import statistics

from _common import STORE_PATH, write_result

import maas_tune as mt
from maas_tune.experiment import evaluate, subsample_test
from maas_tune.registry import METHODS

SEEDS = (0, 1, 2, 3, 4)
TEST_LIMIT = 1000


def run(datasets: list[str], shots_list: list[int], methods: list[str]) -> dict:
    provider = mt.TransformersProvider()
    store = mt.Store(STORE_PATH)
    cache, budget = mt.ScoreCache(store), mt.QueryBudget("bench", store=store)
    table: dict = {}
    for name in datasets:
        task, data = mt.datasets.load_task(name), mt.datasets.load(name)
        test = subsample_test(data.test, TEST_LIMIT)
        for shots in shots_list:
            per_method: dict[str, list] = {m: [] for m in methods}
            fit_s: dict[str, list] = {m: [] for m in methods}
            for seed in SEEDS:
                results = evaluate(
                    provider=provider,
                    task=task,
                    dataset=name,
                    train_pool=data.train,
                    test=test,
                    methods=methods,
                    shots=shots,
                    seed=seed,
                    cache=cache,
                    budget=budget,
                    progress=False,
                )
                for r in results:
                    per_method[r.method].append(r.accuracy)
                    fit_s[r.method].append(r.fit_seconds)
            table.setdefault(
                name,
                {
                    "n_test": len(test),
                    "template": task.template,
                    "words": {k: list(v) for k, v in task.verbalizer.items()},
                },
            )
            table[name][str(shots)] = {
                m: {
                    "mean": round(statistics.mean(a), 4),
                    "std": round(statistics.pstdev(a), 4),
                    "runs": [round(x, 4) for x in a],
                    "fit_seconds_median": round(statistics.median(fit_s[m]), 4),
                }
                for m, a in per_method.items()
            }
            print(name, shots, {m: table[name][str(shots)][m]["mean"] for m in methods}, flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["sst2", "agnews"])
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    table = run(args.datasets, args.shots, args.methods)
    path = write_result("accuracy", {"seeds": list(SEEDS), "results": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
