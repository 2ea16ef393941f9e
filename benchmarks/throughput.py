"""Benchmark: local scoring throughput, cache-hit scoring rate and decoder fit time.

Usage: ``python benchmarks/throughput.py`` (writes ``benchmarks/results/throughput.json``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import STORE_PATH, write_result

import maas_tune as mt
from maas_tune.experiment import fit_method
from maas_tune.registry import make_decoder

N_PROMPTS = 128
BATCH_SIZES = (1, 8, 16, 32)
CACHE_HIT_SAMPLES = 872
FIT_REPEATS = 7


def scoring_throughput(provider: mt.Provider, task: mt.Task, examples: list[mt.Example]) -> dict:
    prompts = [task.render(e) for e in examples[:N_PROMPTS]]
    provider.score(prompts[:8], task.label_words)  # warm-up
    out = {}
    for bs in BATCH_SIZES:
        provider.batch_size = bs
        start = time.perf_counter()
        provider.score(prompts, task.label_words)
        out[str(bs)] = round(len(prompts) / (time.perf_counter() - start), 2)
    provider.batch_size = 16
    return out


def cache_hit_rate(provider: mt.Provider, task: mt.Task, examples: list[mt.Example]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = mt.Store(Path(tmp) / "hits.sqlite")
        client = mt.Client(provider, cache=mt.ScoreCache(store), progress=False)
        client.score(task, examples)  # fill (real model)
        rates = []
        for _ in range(5):
            start = time.perf_counter()
            scores = client.score(task, examples)
            rates.append(len(examples) / (time.perf_counter() - start))
            assert scores.n_cache_hits == len(examples)
        store.close()
    return round(statistics.median(rates), 1)


def fit_times(
    client: mt.Client, task: mt.Task, shots: list[mt.Example], train: mt.Scores, cf: np.ndarray
) -> dict:
    data = {"client": client, "task": task, "shots": shots, "scores": train, "content_free": cf}
    out = {}
    for method in ("dect-paper", "dect", "lr", "linear-probe"):
        times = []
        for seed in range(FIT_REPEATS):
            dec = make_decoder(method, shots=16, random_state=seed)
            times.append(fit_method(dec, **data))
        out[method] = round(statistics.median(times), 4)
    return out


def main() -> None:
    provider = mt.TransformersProvider()
    sst2_task, sst2 = mt.datasets.load_task("sst2"), mt.datasets.load("sst2")
    throughput = scoring_throughput(provider, sst2_task, sst2.test)
    hit_rate = cache_hit_rate(provider, sst2_task, sst2.test[:CACHE_HIT_SAMPLES])
    ag_task, ag = mt.datasets.load_task("agnews"), mt.datasets.load("agnews")
    shots = mt.sample_k_shot(ag.train, 16, labels=ag_task.labels, seed=0)
    store = mt.Store(STORE_PATH)
    client = mt.Client(provider, cache=mt.ScoreCache(store), progress=False)
    train, content_free = client.score(ag_task, shots), client.content_free(ag_task)
    fits = fit_times(client, ag_task, shots, train, content_free)
    path = write_result(
        "throughput",
        {
            "scoring_samples_per_s_by_batch_size": throughput,
            "scoring_prompts": N_PROMPTS,
            "cache_hit_samples_per_s": hit_rate,
            "cache_hit_samples": CACHE_HIT_SAMPLES,
            "fit_seconds_agnews_16shot_x4": fits,
        },
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
