"""Benchmark: DecT fitted through ``/v1/chat/completions`` under a hosted-style top-5 cap.

Usage: ``python benchmarks/chat_accuracy.py [--datasets sst2 agnews] [--test-limit N]``
(writes ``benchmarks/results/chat_accuracy.json``). It starts ``maas-tune serve
--max-top-logprobs 5`` in its own process and scores through ``OpenAIChatProvider``
(``auto``: the probe picks ``force``), fits 16-shot DecT (scores-only: chat gives no
hidden state) and LR on calibrated scores per seed, and puts next to them the
completions path on the same shots and test examples: the in-process provider (what
``maas-tune serve``'s extension returns, to 1e-5), with and without the hidden state.

Test sets: the seeded 1,000-example subset of ``benchmarks/accuracy.py`` (all 872 for
SST-2), cut further to a seeded random ``--test-limit`` examples when given. Requests per
sample are read from the benchmark's budget ledger (spent queries / distinct samples),
so they stay right on reruns. Answers are cached in ``benchmarks/.cache/bench.sqlite``:
a rerun sends no scoring request (the server still starts; with the default port even
the probe and the label token ids come from the cache).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import STORE_PATH, write_result

import maas_tune as mt
from maas_tune.data import labels_to_indices
from maas_tune.experiment import TEST_BUDGET_SUFFIX, subsample_test
from maas_tune.registry import make_decoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests._servers import wait_until_up

SEEDS = (0, 1, 2, 3, 4)
SHOTS = 16
#: The accuracy benchmark's test subset (all of SST-2's 872).
ACCURACY_TEST_LIMIT = 1000
#: Hosted-style cap on top log-probs, on the server and asked for by the provider.
TOP_LOGPROBS = 5
#: Fixed so that facts kept under the server's URL (probe, token ids) hit on reruns.
DEFAULT_PORT = 8471
METHODS = ("zero-shot", "lr", "dect")


def start_server(port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "maas_tune",
        "serve",
        "--port",
        str(port),
        "--max-top-logprobs",
        str(TOP_LOGPROBS),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=300)
    return proc


def accuracy(
    method: str, seed: int, train: mt.Scores, y: np.ndarray, test: mt.Scores, y_test: np.ndarray
) -> float:
    decoder = make_decoder(method, shots=SHOTS, random_state=seed).fit(train, y)
    return float(np.mean(decoder.predict(test) == np.asarray(train.labels)[y_test]))


def without_hidden(scores: mt.Scores) -> mt.Scores:
    return mt.Scores(
        scores.label_logprobs, None, scores.cache_hit, scores.prompt_tokens, scores.labels
    )


def summary(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.pstdev(values), 4),
        "runs": [round(v, 4) for v in values],
    }


def run_dataset(
    name: str, chat: mt.Provider, local: mt.Provider, store: mt.Store, test_limit: int | None
) -> dict:
    task, data = mt.datasets.load_task(name), mt.datasets.load(name)
    test = subsample_test(subsample_test(data.test, ACCURACY_TEST_LIMIT), test_limit)
    y_test = labels_to_indices(test, task.labels)
    cache = mt.ScoreCache(store)
    train_budget = mt.QueryBudget(f"bench-chat-{name}", store=store)
    chat_train = mt.Client(chat, cache=cache, budget=train_budget, progress=False)
    chat_test = mt.Client(
        chat,
        cache=cache,
        progress=False,
        budget=mt.QueryBudget(train_budget.name + TEST_BUDGET_SUFFIX, store=store),
    )
    local_client = mt.Client(local, cache=cache, progress=False)
    start = time.perf_counter()
    test_scores = {
        "chat": chat_test.score(task, test),
        "completions": local_client.score(task, test),
    }
    acc: dict[str, dict[str, list[float]]] = {}
    distinct = {task.render(e) for e in test}
    for seed in SEEDS:
        shots = mt.sample_k_shot(data.train, SHOTS, labels=task.labels, seed=seed)
        distinct |= {task.render(e) for e in shots}
        y = labels_to_indices(shots, task.labels)
        local_train = local_client.score(task, shots)
        paths = {
            "chat": (chat_train.score(task, shots), test_scores["chat"]),
            "completions": (local_train, test_scores["completions"]),
            "completions, scores only": (
                without_hidden(local_train),
                without_hidden(test_scores["completions"]),
            ),
        }
        for path, (train, test_x) in paths.items():
            for method in METHODS:
                acc.setdefault(path, {}).setdefault(method, []).append(
                    accuracy(method, seed, train, y, test_x, y_test)
                )
        print(name, seed, {p: round(m["dect"][-1], 4) for p, m in acc.items()}, flush=True)
    spent = train_budget.status().spent_queries + chat_test.budget.status().spent_queries
    return {
        "n_test": len(test),
        "n_distinct_samples": len(distinct),
        "label_words": list(task.label_words),
        "chat_requests": spent,
        "chat_requests_per_sample": round(spent / len(distinct), 3),
        "forced_label_words_share": round(
            (spent - len(distinct)) / (len(distinct) * len(task.label_words)), 3
        ),
        "seconds_this_run": round(time.perf_counter() - start, 1),
        "queries_sent_this_run": chat_train.usage.queries_sent + chat_test.usage.queries_sent,
        "accuracy": {p: {m: summary(v) for m, v in by_m.items()} for p, by_m in acc.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sst2", "agnews"])
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="cap each test set at a seeded random N (default: no cap)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--store", default=str(STORE_PATH), help="answer cache + budget ledger")
    args = parser.parse_args()
    server = start_server(args.port)
    store = mt.Store(args.store)
    # A patient timeout: on a loaded machine a timed-out request would be retried (and
    # computed twice by the server) although nothing is wrong.
    chat = mt.OpenAIChatProvider(
        f"http://127.0.0.1:{args.port}/v1", "gemma-3-270m", top_logprobs=TOP_LOGPROBS, timeout=600
    )
    local = mt.TransformersProvider()
    try:
        table = {
            name: run_dataset(name, chat, local, store, args.test_limit) for name in args.datasets
        }
        plan = chat.plan
    finally:
        server.terminate()
        server.wait(timeout=60)
        local.close()
    path = write_result(
        "chat_accuracy",
        {
            "seeds": list(SEEDS),
            "shots": SHOTS,
            "server_max_top_logprobs": TOP_LOGPROBS,
            "test_limit": args.test_limit,
            "strategy": chat.strategy,
            "probe": plan.reason,
            "chat_format": chat.chat_format.fingerprint(),
            "results": table,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
