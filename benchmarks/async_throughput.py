"""Async throughput benchmark: one process against a rate-limited loopback API (issue 18).

For each (latency, provider limit) cell, ``tests/_det_server.py`` runs as its own process
with a per-request latency and a server-side limit (429 past it); one client process
scores N synthetic samples with the ``top_logprobs`` strategy into a fresh SQLite store
(cache + budget), its client-side limiter set to the provider's limit. Reported per
cell: samples/s and its ratio to the limit, duplicate requests, 429s, budget overshoot
(spent beyond the cap) and the ledger against what the server received, and the
client's CPU time per request. The old synchronous path (another checkout, e.g. the
main branch, ``--old-root``) runs in the same benchmark run for the ratio::

    cd benchmarks && ../.venv/bin/python async_throughput.py --samples 20000 \\
        --old-root /path/to/main --old-samples 4000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from _common import write_result

ROOT = Path(__file__).resolve().parent.parent
#: (seconds of latency, provider limit in requests/s) of each cell.
CELLS = ((0.05, 100), (0.05, 400), (0.05, 1000), (0.2, 400))
#: Queries reserved per prompt by ``top_logprobs`` (1 + 2 label words maybe missing).
RESERVED_PER_PROMPT = 3
#: Burst of the client-side limiter in seconds of the rate (the server allows 1 s).
CLIENT_BURST_S = 0.5

_CLIENT = r"""
import json, resource, sys, time
import maas_tune as mt
from maas_tune import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.client import Client
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.providers.ratelimit import RateLimit

url, db, n, rps, burst, old = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5]), sys.argv[6] == "old"
task = mt.Task("synthetic", "Review: {text} Sentiment:",
               {"positive": ["positive"], "negative": ["negative"]})
texts = [f"sample {i}: a film with {i % 97} scenes" for i in range(n)]
store = Store(db)
budget = QueryBudget("bench", max_queries=3 * n, store=store)
rate = RateLimit(requests_per_minute=rps * 60, burst_seconds=burst)
# The old path needs a concurrency number: as many as the chunk (its thread pool's bound).
extra = {"max_concurrency": 64} if old else {}
provider = OpenAICompletionsProvider(url, "det", api_key="sk-bench", strategy="top_logprobs",
                                     rate_limit=rate, timeout=30, **extra)
client = Client(provider, cache=ScoreCache(store), budget=budget, progress=False,
                **({"chunk_size": 64} if old else {}))
cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
client.score(task, texts)
wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
status = budget.status()
print(json.dumps({"wall_s": wall, "cpu_s": (cpu1.ru_utime - cpu0.ru_utime)
                  + (cpu1.ru_stime - cpu0.ru_stime), "spent": status.spent_queries,
                  "reserved": status.reserved_queries, "cap": 3 * n,
                  "queries_sent": client.usage.queries_sent,
                  "max_concurrency": provider.max_concurrency}))
"""


def _server(latency: float, rps: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "_det_server.py"),
        "--latency",
        str(latency),
        "--rpm",
        str(rps * 60),
        "--no-tokenizer",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cell(latency: float, rps: float, samples: int, root: Path, old: bool) -> dict[str, Any]:
    """One run: a fresh server and store, one client process; its measurements."""
    server, url = _server(latency, rps)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "PYTHONPATH": str(root)}
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CLIENT,
                    url,
                    str(Path(tmp) / "s.sqlite"),
                    str(samples),
                    str(rps),
                    str(CLIENT_BURST_S),
                    "old" if old else "new",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=3600,
            )
        client = json.loads(done.stdout.strip().splitlines()[-1])
        stats = httpx.get(url.removesuffix("/v1") + "/stats").json()
        server_cpu = _cpu_seconds(server.pid)
    finally:
        server.kill()
        server.wait()
    rate = samples / client["wall_s"]
    return {
        "path": "sync (old)" if old else "async",
        "latency_ms": round(latency * 1000),
        "limit_per_s": rps,
        "samples": samples,
        "wall_s": round(client["wall_s"], 2),
        "samples_per_s": round(rate, 1),
        "ratio": round(rate / rps, 3),
        "requests": stats["received"],
        "duplicate_requests": stats["duplicates"],
        "http_429": stats["rejected"],
        "budget_cap": client["cap"],
        "budget_spent": client["spent"],
        "budget_overshoot": max(0, client["spent"] - client["cap"]),
        "ledger_minus_received": client["spent"] - stats["received"],
        "client_cpu_us_per_request": round(1e6 * client["cpu_s"] / max(1, stats["received"])),
        "server_cpu_us_per_request": round(1e6 * server_cpu / max(1, stats["received"])),
        "max_concurrency": client["max_concurrency"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--old-root", type=Path, help="checkout of the old sync path")
    parser.add_argument("--old-samples", type=int, default=4_000)
    parser.add_argument("--result", default="async_throughput")
    args = parser.parse_args()
    rows = []
    for latency, rps in CELLS:
        for old in (False, True) if args.old_root else (False,):
            root = args.old_root if old else ROOT
            row = cell(latency, rps, args.old_samples if old else args.samples, root, old)
            print(json.dumps(row), flush=True)
            rows.append(row)
    path = write_result(
        args.result,
        {
            "command": " ".join(sys.argv),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
