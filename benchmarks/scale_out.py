"""Scale-out benchmark: distributed scoring on Ray against a loopback API with latency and a rate limit.

For 1, 2 and 4 Ray workers (actors of ``maas_tune.ray.score``), 100,000 synthetic
samples are scored through the deterministic OpenAI-compatible server of
``tests/_det_server.py`` (run as its own process, with a per-request latency and a
server-side requests/min limit that answers 429 past it). Each run starts from an
empty store and reports throughput, duplicate queries (prompts the server saw more
than once, split by who sent the first copy: the killed worker, or a live one), 429s,
and budget overshoot (spent beyond the cap). A last run kills one worker process
(SIGKILL, as a crash would) a third of the way in and checks that the result is still
complete. Writes ``results/scale_out.json``::

    cd benchmarks && ../.venv/bin/python scale_out.py            # the full run (~35 min)
    cd benchmarks && ../.venv/bin/python scale_out.py --samples 5000 --workers 1 2
    cd benchmarks && ../.venv/bin/python scale_out.py --workers --result scale_out_killed  # the kill only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _common import write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's maas_tune, in the driver and (below) the workers

import maas_tune as mt
from maas_tune.providers.options import concurrency_for
from maas_tune.providers.ratelimit import RateLimit
from maas_tune.ray import BudgetSpec, ProviderConfig, score
from tests._det_server import client_ports

TASK = mt.Task(
    "synthetic", "Review: {text} Sentiment:", {"positive": ["positive"], "negative": ["negative"]}
)
#: Queries the client reserves per prompt with the ``top_logprobs`` strategy (1 + 2 label words
#: that might be missing from the top 5); each chunk reserves this much and commits what it used.
RESERVED_PER_PROMPT = 3
#: Burst of the client-side limiter, in seconds of the rate: below the server's 1 s, so that
#: arrival jitter does not turn into 429s.
CLIENT_BURST_S = 0.5


def budget_limit(samples: int, workers: int, chunk: int, depth: int, *, kill: bool) -> int:
    """A cap just above what the run spends: room for each worker's reservations in flight
    (``depth`` chunks of ``RESERVED_PER_PROMPT`` x ``chunk``), and in the killed run for the
    dead worker's, counted as spent because they may have been billed."""
    return samples + RESERVED_PER_PROMPT * chunk * depth * (workers + (1 if kill else 0))


def start_server(latency: float, rpm: float | None) -> tuple[subprocess.Popen[str], str]:
    """The deterministic server in its own process (its own GIL); returns it and its base URL."""
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "_det_server.py"),
        "--latency",
        str(latency),
        "--no-tokenizer",
    ]
    if rpm is not None:
        cmd += ["--rpm", str(rpm)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def server_call(base_url: str, method: str, path: str) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    return httpx.request(method, root + path, timeout=30).json()


def worker_pids() -> list[int]:
    """Processes of the scoring actors (Ray names them ``ray::MapWorker(...)``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::MapWorker"):
                found.append(int(entry))
    return sorted(found)


def kill_one_worker_at(base_url: str, received: int, log: dict[str, Any]) -> None:
    """Wait until the server has answered ``received`` requests, then SIGKILL one worker."""
    while server_call(base_url, "GET", "/stats")["received"] < received:
        time.sleep(0.2)
    pids = worker_pids()
    ports = client_ports(pids[0])  # its connections to the server: its requests in flight
    os.kill(pids[0], signal.SIGKILL)
    log.update(
        killed_pid=pids[0],
        killed_at_received=received,
        workers_seen=len(pids),
        killed_ports=sorted(ports),
    )


def run(
    args: argparse.Namespace,
    base_url: str,
    new_store: Callable[[], str],
    workers: int,
    *,
    kill: bool,
) -> dict[str, Any]:
    import ray

    n = args.samples
    rate = (
        RateLimit(requests_per_minute=args.rpm, burst_seconds=CLIENT_BURST_S) if args.rpm else None
    )
    depth = -(-concurrency_for(args.concurrency, rate) // args.chunk_size) + 1  # chunks in flight
    limit = budget_limit(n, workers, args.chunk_size, depth, kill=kill)
    rows = [
        {"text": f"synthetic review {i}: {'great' if i % 2 else 'poor'} value"} for i in range(n)
    ]
    store = new_store()
    server_call(base_url, "POST", "/reset")
    killed: dict[str, Any] = {}
    if kill:
        threading.Thread(
            target=kill_one_worker_at, args=(base_url, n // 3, killed), daemon=True
        ).start()
    config = ProviderConfig(
        base_url, "det", strategy="top_logprobs", max_concurrency=args.concurrency
    )
    start = time.perf_counter()
    dataset = score(
        ray.data.from_items(rows),
        TASK,
        config,
        str(store),
        BudgetSpec(f"bench-{workers}", max_queries=limit),
        num_workers=workers,
        batch_size=args.batch_size,
        rate_limit=rate,
        chunk_size=args.chunk_size,
    )
    scored = total = 0
    for batch in dataset.iter_batches(batch_size=4096, batch_format="numpy"):
        total += len(batch["scored"])
        scored += int(batch["scored"].sum())
    wall = time.perf_counter() - start
    stats = server_call(base_url, "GET", "/stats")
    status = mt.QueryBudget(f"bench-{workers}", store=store).status()
    result = {
        "workers": workers,
        "samples": n,
        "rows_returned": total,
        "rows_scored": scored,
        "wall_s": round(wall, 2),
        "throughput_per_s": round(n / wall, 1),  # incl. actor start
        "provider_rate_per_s": round(stats["distinct"] / stats["span_s"], 1),
        "requests": stats["received"],
        "probe_requests": stats["probe"],
        "duplicate_queries": stats["duplicates"],
        "http_429": stats["rejected"],
        "budget_limit": limit,
        "budget_spent": status.spent_queries,
        "budget_overshoot": max(0, status.spent_queries - limit),
        "spent_minus_distinct": status.spent_queries - stats["distinct"],
        "ledger_minus_billed": status.spent_queries - (stats["received"] - stats["probe"]),
    }
    # who sent each duplicate's first copy: the killed worker (its answers died with it, so
    # the retry asked again) or a live one (two workers racing: what claims must prevent)
    by_port = server_call(base_url, "GET", "/duplicates")  # {"port": duplicates}
    dead_ports = {str(p) for p in killed.get("killed_ports", ())}
    resent = sum(k for p, k in by_port.items() if p in dead_ports)
    result["duplicates_resent_after_crash"] = resent
    result["duplicates_between_live_workers"] = stats["duplicates"] - resent
    if kill:
        result["killed"] = killed
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[1, 2, 4],
        help="worker counts of the runs without a kill (none: only the killed run)",
    )
    parser.add_argument(
        "--kill-workers",
        type=int,
        default=None,
        help="workers of the killed run (default: the largest of --workers, or 4)",
    )
    parser.add_argument(
        "--result", default="scale_out", help="writes results/RESULT.json (default: scale_out)"
    )
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight per worker (default: from the rate limit)",
    )
    parser.add_argument(
        "--rpm",
        type=float,
        default=21_600,
        help="the provider's requests/min (server 429s past it; 0: none)",
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--no-kill", action="store_true", help="skip the killed-worker run")
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the Ray node")
    parser.add_argument(
        "--store",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="shared cache + budget: a PostgreSQL server started here (default, "
        "fsync on) or a SQLite file",
    )
    args = parser.parse_args(argv)

    import ray

    postgres = None
    if args.store == "postgres":
        from tests._postgres import PostgresServer

        postgres = PostgresServer(durable=True).start()
        new_store: Callable[[], str] = postgres.create_database
    else:

        def new_store() -> str:
            return str(Path(tempfile.mkdtemp(prefix="scale-out-")) / "store.sqlite")

    server, base_url = start_server(args.latency, args.rpm or None)
    ray.init(
        num_cpus=args.ray_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        runs = [run(args, base_url, new_store, w, kill=False) for w in args.workers]
        kill_workers = args.kill_workers or max(args.workers, default=4)
        killed = None if args.no_kill else run(args, base_url, new_store, kill_workers, kill=True)
    finally:
        ray.shutdown()
        server.terminate()
        server.wait(timeout=10)
        if postgres is not None:
            postgres.stop()
    path = write_result(
        args.result,
        {
            "command": "cd benchmarks && python scale_out.py " + " ".join(argv or sys.argv[1:]),
            "config": {
                "latency_s": args.latency,
                "concurrency_per_worker": args.concurrency,
                "provider_rpm": args.rpm or None,
                "batch_size": args.batch_size,
                "chunk_size": args.chunk_size,
                "ray_cpus": args.ray_cpus,
                "ray": ray.__version__,
                "cores": os.cpu_count(),
                "store": args.store,
            },
            "runs": runs,
            "killed_worker_run": killed,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
