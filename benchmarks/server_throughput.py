"""Benchmark: `maas-tune serve` scoring throughput with 1, 8 and 32 concurrent clients.

Usage: ``python benchmarks/server_throughput.py [--n 256]`` (writes
``benchmarks/results/server_throughput.json``). The server runs in its own process
(``maas-tune serve``); clients send one extension request (one SST-2 test prompt) each,
as the HTTP provider does. The reference is an offline batched forward pass of the same
model (``TransformersProvider.score``, batch 16) over the same prompts, in this process
while the server is idle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

import maas_tune as mt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result  # noqa: E402

from tests._servers import free_port, wait_until_up  # noqa: E402

CONCURRENCY = (1, 8, 32)


def start_server(port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "maas_tune",
        "serve",
        "--port",
        str(port),
        "--max-wait-ms",
        "10",
        "--max-batch-size",
        "32",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=180)
    return proc


def run_clients(url: str, prompts: list[str], ids: list[int], concurrency: int) -> dict:
    latencies: list[float] = []
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(prompt: str) -> None:
            body = {
                "model": "gemma-3-270m",
                "prompt": prompt,
                "max_tokens": 0,
                "maas_tune": {"label_token_ids": ids, "return_hidden": True},
            }
            start = time.perf_counter()
            client.post(f"{url}/v1/completions", json=body).raise_for_status()
            latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, prompts))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "samples_per_s": round(len(prompts) / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    task, data = mt.datasets.load_task("sst2"), mt.datasets.load("sst2")
    prompts = [task.render(e) for e in data.test[: args.n]]
    port = free_port()
    server = start_server(port)
    try:
        local = mt.TransformersProvider(batch_size=16)
        ids = local.label_token_ids(task.label_words)
        local.score(prompts[:16], ids)  # warm-up
        start = time.perf_counter()
        local.score(prompts, ids)
        offline = len(prompts) / (time.perf_counter() - start)
        local.close()
        url = f"http://127.0.0.1:{port}"
        run_clients(url, prompts[:16], ids, 8)  # warm-up
        results = {str(c): run_clients(url, prompts, ids, c) for c in CONCURRENCY}
    finally:
        server.terminate()
        server.wait(timeout=30)
    for r in results.values():
        r["ratio_to_offline"] = round(r["samples_per_s"] / offline, 3)
    out = {
        "n_prompts": len(prompts),
        "offline_batched_samples_per_s": round(offline, 2),
        "by_concurrency": results,
        "cpu_count": os.cpu_count(),
    }
    print(write_result("server_throughput", out).read_text())


if __name__ == "__main__":
    main()
