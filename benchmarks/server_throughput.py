"""Benchmark: `maas-tune serve` scoring throughput with 1, 8 and 32 concurrent clients.

Usage: ``python benchmarks/server_throughput.py [--n 256]`` (writes
``benchmarks/results/server_throughput.json``). The server runs in its own process
(``maas-tune serve``); clients send one extension request (one SST-2 test prompt) each,
as the HTTP provider does; the clients are asyncio tasks, each on its own connection,
sending its next request when the last is answered. The reference is an offline batched
forward pass of the same model (``TransformersProvider.score``, batch 16, prompts sorted
by length) over the same prompts, in this process while the server is idle, measured
before and after every server run (the mean is the reference).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

import maas_tune as mt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result  # noqa: E402

from tests._servers import free_port, wait_until_up  # noqa: E402

CONCURRENCY = (1, 8, 32)


def start_server(port: int, max_batch_size: int, max_wait_ms: float) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "maas_tune",
        "serve",
        "--port",
        str(port),
        "--max-wait-ms",
        str(max_wait_ms),
        "--max-batch-size",
        str(max_batch_size),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=180)
    return proc


def run_clients(url: str, prompts: list[str], ids: list[int], concurrency: int) -> dict:
    """``concurrency`` clients, each sending its next request as soon as one is answered."""
    return asyncio.run(_run_clients(url, prompts, ids, concurrency))


async def _run_clients(url: str, prompts: list[str], ids: list[int], concurrency: int) -> dict:
    latencies: list[float] = []
    todo = iter(prompts)

    async def worker() -> None:
        # One connection per client, as separate processes would have (a shared httpx pool
        # of 32 connections costs more client CPU than the server spends per request).
        async with httpx.AsyncClient(timeout=120) as client:
            for prompt in todo:  # the iterator is shared: each prompt is sent once
                body = {
                    "model": "gemma-3-270m",
                    "prompt": prompt,
                    "max_tokens": 0,
                    "maas_tune": {"label_token_ids": ids, "return_hidden": True},
                }
                start = time.perf_counter()
                response = await client.post(f"{url}/v1/completions", json=body)
                response.raise_for_status()
                response.json()
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "samples_per_s": round(len(prompts) / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
    }


def offline_rate(local: mt.TransformersProvider, prompts: list[str], ids: list[int]) -> float:
    """Samples/s of one batched pass over ``prompts`` in this process (server idle)."""
    start = time.perf_counter()
    local.score(prompts, ids)
    return len(prompts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args()
    task, data = mt.datasets.load_task("sst2"), mt.datasets.load("sst2")
    prompts = [task.render(e) for e in data.test[: args.n]]
    port = free_port()
    server = start_server(port, args.max_batch_size, args.max_wait_ms)
    local = mt.TransformersProvider(batch_size=16)
    ids = local.label_token_ids(task.label_words)
    local.score(prompts[:16], ids)  # warm-up
    try:
        url = f"http://127.0.0.1:{port}"
        run_clients(url, prompts[:16], ids, 8)  # warm-up
        offline_runs = [offline_rate(local, prompts, ids)]
        results = {}
        for c in args.concurrency:  # offline runs bracket every server run (machine drift)
            results[str(c)] = run_clients(url, prompts, ids, c)
            offline_runs.append(offline_rate(local, prompts, ids))
    finally:
        server.terminate()
        server.wait(timeout=30)
        local.close()
    offline = statistics.mean(offline_runs)
    for r in results.values():
        r["ratio_to_offline"] = round(r["samples_per_s"] / offline, 3)
    out = {
        "n_prompts": len(prompts),
        "offline_batched_samples_per_s": round(offline, 2),
        "offline_runs": [round(x, 2) for x in offline_runs],
        "server": {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms},
        "by_concurrency": results,
        "cpu_count": os.cpu_count(),
    }
    print(write_result("server_throughput", out).read_text())


if __name__ == "__main__":
    main()
