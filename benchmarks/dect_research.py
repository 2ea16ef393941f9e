"""The dev protocol: how the decoders' defaults are chosen, without the test split.

Features come from the real model: for each bundled dataset a class-balanced pool
(at most 100 per class and 400 in all) is drawn from ``train.jsonl`` only, checked
to share no input with ``test.jsonl``, and scored by the in-process Gemma 3 270M
through :class:`maas_tune.Client` (answers cached in ``benchmarks/.cache/dev.sqlite``;
see ``_dev_data.py``). For seed s a class-balanced k-shot set is drawn from the pool
with ``np.random.default_rng(s)`` and every method is scored on the rest of the pool.

Examples::

    python benchmarks/dect_research.py --seeds 10 --shots 16 --methods dect,dect:vote=one
    python benchmarks/dect_research.py --seeds 10 --shots 1,4 --methods lr,linear-probe,dect
    python benchmarks/dect_research.py --timing
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _dev_data import DevData, build

from maas_tune.decoders import (
    BaseDecoder,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    YTuning,
    ZeroShot,
)

Factory = Callable[[int, int], BaseDecoder]
DATASETS = "sst2,agnews,trec,subj,rte"

#: The methods at their defaults: name -> factory(shots, seed).
METHODS: dict[str, Factory] = {
    "zero-shot": lambda shots, seed: ZeroShot(),
    "calibrated": lambda shots, seed: ContextualCalibration(),
    "lr": lambda shots, seed: ScoreLogisticRegression(random_state=seed),
    "linear-probe": lambda shots, seed: LinearProbe(random_state=seed),
    "ytuning": lambda shots, seed: YTuning(random_state=seed),
    "dect-paper": lambda shots, seed: DecT.paper(shots, random_state=seed),
    "dect": lambda shots, seed: DecT(random_state=seed),
}

#: Candidate variants, the same number per trainable method: ``method:name`` -> parameters
#: set on the method's default (``set_params``).
VARIANTS: dict[str, dict[str, object]] = {
    "dect:vote=one": {"vote_temperature": "one"},
    "dect:vote=cv": {"vote_temperature": "cv"},
    "dect:select=best": {"lam_selection": "best"},
    "dect:refit": {"refit": True},
    "lr:alpha=cv": {"alpha": None},
    "lr:alpha=0.001": {"alpha": 0.001},
    "lr:alpha=0.01": {"alpha": 0.01},
    "lr:alpha=0.1": {"alpha": 0.1},
    "linear-probe:alpha=cv": {"alpha": None},
    "linear-probe:alpha=0.01": {"alpha": 0.01},
    "linear-probe:alpha=0.1": {"alpha": 0.1},
    "linear-probe:alpha=1": {"alpha": 1.0},
    "ytuning:wd=cv": {"weight_decay": None},
    "ytuning:wd=0.01": {"weight_decay": 0.01},
    "ytuning:wd=1": {"weight_decay": 1.0},
    "ytuning:wd=10": {"weight_decay": 10.0},
    # the conditioning of standardisation (decisive at 1 shot)
    **{f"dect:prior={v:g}": {"scale_prior": v} for v in (0.0, 4.0, 16.0, 64.0)},
    **{f"linear-probe:prior={v:g}": {"scale_prior": v} for v in (0.0, 4.0, 16.0, 64.0)},
}


def factory(name: str) -> Factory:
    """The factory of a method or variant name (see :data:`METHODS`, :data:`VARIANTS`)."""
    if name in METHODS:
        return METHODS[name]
    if name not in VARIANTS:
        raise SystemExit(f"unknown method {name!r}; use one of {[*METHODS, *VARIANTS]}")
    base, params = METHODS[name.split(":")[0]], VARIANTS[name]
    return lambda shots, seed: base(shots, seed).set_params(**params)


def sample_shots(y: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced k-shot set drawn from the pool labels ``y``."""
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(picked))


def run_one(make: Factory, data: DevData, shots: int, seed: int) -> tuple[float, float]:
    """Dev accuracy (the pool minus the shots) and fit seconds of one method on one draw."""
    idx = sample_shots(data.y, shots, seed)
    rest = np.setdiff1d(np.arange(len(data.y)), idx)
    decoder = make(shots, seed)
    kwargs = {}
    if "content_free" in inspect.signature(decoder.fit).parameters:
        kwargs["content_free"] = data.content_free
    start = time.perf_counter()
    decoder.fit(data.scores.subset(idx), data.y[idx], **kwargs)
    seconds = time.perf_counter() - start
    predicted = decoder.predict(data.scores.subset(rest))
    return float(np.mean(predicted == np.asarray(data.labels)[data.y[rest]])), seconds


#: Where ``--result NAME`` writes its table (docs/dect-research.md is made from them).
RESULTS = Path(__file__).resolve().parent / "results" / "dect_research"


def accuracy_table(args: argparse.Namespace, data: dict[str, DevData]) -> list[dict[str, Any]]:
    """Print a markdown table: method x dataset, mean ± std dev accuracy over the seeds;
    return its rows."""
    names = list(data)
    rows: list[dict[str, Any]] = []
    print(
        f"dev protocol: seeds 0..{args.seeds - 1}; pool sizes {[len(d.y) for d in data.values()]}"
    )
    print("| method | shots | " + " | ".join(names) + " | mean | fit s (mean) |")
    print("|---" * (len(names) + 4) + "|")
    for name in args.methods.split(","):
        make = factory(name)
        for shots in [int(s) for s in args.shots.split(",")]:
            cells, means, stds, times = [], [], [], []
            for d in data.values():
                runs = [run_one(make, d, shots, seed) for seed in range(args.seeds)]
                times += [sec for _, sec in runs]
                accs = [acc for acc, _ in runs]
                means.append(np.mean(accs))
                stds.append(round(float(np.std(accs)), 3))  # as printed
                cells.append(f"{means[-1]:.3f} ± {np.std(accs):.3f}")
            row = " | ".join(cells) + f" | {np.mean(means):.3f} | {np.mean(times):.3f} |"
            print(f"| {name} | {shots} | {row}", flush=True)
            rows.append(
                {
                    "method": name,
                    "shots": shots,
                    "accuracy": dict(zip(names, [float(m) for m in means])),
                    "std": dict(zip(names, stds)),
                    "mean": float(np.mean(means)),
                    "fit_seconds": float(np.mean(times)),
                }
            )
    return rows


def write_result(
    name: str, argv: Sequence[str], seeds: int, data: dict[str, DevData], rows: list
) -> Path:
    """Keep one run's table as ``results/dect_research/<name>.json`` (with its command)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    found = {
        "command": "python benchmarks/dect_research.py " + " ".join(argv),
        "seeds": seeds,
        "pools": {d.name: len(d.y) for d in data.values()},
        "rows": rows,
    }
    path.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    return path


def timing_table(data: DevData, repeats: int = 20) -> list[dict[str, Any]]:
    """Fit seconds of DecT on one dataset, 16 shots per class: median / max over repeats;
    return the rows."""
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    print(f"load average before: {os.getloadavg()}; torch threads: {torch.get_num_threads()}")
    DecT(random_state=0).fit(data.scores.subset(np.arange(64)), data.y[:64])  # warm-up
    print("| method | n_threads | wall median s | wall max s | cpu median s |")
    print("|---|---|---|---|---|")
    for n_threads in (1, None):
        for name in ("dect", "dect-paper"):
            walls, cpus = [], []
            for seed in range(repeats):
                idx = sample_shots(data.y, 16, seed)
                decoder = METHODS[name](16, seed).set_params(n_threads=n_threads)
                wall, cpu = time.perf_counter(), time.process_time()
                decoder.fit(data.scores.subset(idx), data.y[idx], content_free=data.content_free)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            print(
                f"| {name} | {n_threads} | {np.median(walls):.3f} | {np.max(walls):.3f} "
                f"| {np.median(cpus):.3f} |",
                flush=True,
            )
            rows.append(
                {
                    "method": name,
                    "n_threads": n_threads,
                    "wall_median_s": float(np.median(walls)),
                    "wall_max_s": float(np.max(walls)),
                    "cpu_median_s": float(np.median(cpus)),
                    "load_average": [load_before, os.getloadavg()[0]],
                }
            )
    print(f"load average after: {os.getloadavg()}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=DATASETS, help="comma-separated bundled datasets")
    parser.add_argument("--shots", default="16", help="comma-separated shots per class")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    parser.add_argument("--methods", default=",".join(METHODS), help="METHODS or VARIANTS names")
    parser.add_argument("--timing", action="store_true", help="time DecT fits on agnews instead")
    parser.add_argument(
        "--result", help="also write the table to benchmarks/results/dect_research/RESULT.json"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    data = build(["agnews"] if args.timing else args.datasets.split(","))
    rows = timing_table(data["agnews"]) if args.timing else accuracy_table(args, data)
    if args.result:
        print(f"wrote {write_result(args.result, argv, args.seeds, data, rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
