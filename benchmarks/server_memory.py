"""Benchmark: peak memory of `maas-tune serve` for the costliest single request it accepts.

Usage: ``python benchmarks/server_memory.py [--max-context-tokens 4096]
[--max-generated-tokens 256] [--cases echo generate]`` (writes
``benchmarks/results/server_memory.json``). The server runs in its own process
(``maas-tune serve``); after a small warm-up request its resident memory is the idle
figure, its peak is reset (``/proc/PID/clear_refs``), one request is sent, and the
peak (``VmHWM``) minus idle is reported. The requests, each the largest the server
accepts:

- ``echo``: a prompt of exactly ``--max-context-tokens`` tokens (BOS included) with
  ``echo: true, logprobs: <--max-top-logprobs>, max_tokens: 0``;
- ``generate``: a prompt that leaves room for ``--max-generated-tokens`` tokens, all
  generated (EOS banned with ``logit_bias``).

Goal (issue 16): peak minus idle <= 1.5 GB for each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result

from tests._servers import free_port, wait_until_up

MODEL = "gemma-3-270m"
#: Gemma 3's end-of-sequence tokens (<eos>, <end_of_turn>), banned so that generation runs on.
EOS_IDS = (1, 106)
GOAL_BYTES = 1.5e9


def status_bytes(pid: int, field: str) -> int:
    """A ``kB`` line of ``/proc/PID/status`` (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def prompt_of(url: str, tokens: int) -> str:
    """A prompt the model reads as exactly ``tokens`` tokens, BOS included."""
    text = " the" * (tokens - 1)
    got = httpx.post(f"{url}/extras/tokenize", json={"input": text}, timeout=60).json()["tokens"]
    assert len(got) == tokens - 1, (len(got), tokens - 1)
    return text


def body(case: str, url: str, args: argparse.Namespace) -> dict:
    if case == "echo":
        return {
            "model": MODEL,
            "prompt": prompt_of(url, args.max_context_tokens),
            "max_tokens": 0,
            "echo": True,
            "logprobs": args.max_top_logprobs,
        }
    room = args.max_context_tokens - args.max_generated_tokens
    return {
        "model": MODEL,
        "prompt": prompt_of(url, room),
        "temperature": 0,
        "max_tokens": args.max_generated_tokens,
        "logit_bias": {str(i): -100 for i in EOS_IDS},
    }


def measure(case: str, args: argparse.Namespace) -> dict:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "maas_tune",
        "serve",
        "--port",
        str(port),
        "--max-context-tokens",
        str(args.max_context_tokens),
        "--max-generated-tokens",
        str(args.max_generated_tokens),
        "--max-top-logprobs",
        str(args.max_top_logprobs),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, timeout=180)
        request = body(case, url, args)
        warm = {
            "model": MODEL,
            "prompt": "Hello there",
            "max_tokens": 2,
            "echo": True,
            "logprobs": 1,
        }
        assert httpx.post(f"{url}/v1/completions", json=warm, timeout=60).status_code == 200
        idle = status_bytes(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak to now
        started = time.perf_counter()
        answer = httpx.post(f"{url}/v1/completions", json=request, timeout=1800)
        seconds = time.perf_counter() - started
        assert answer.status_code == 200, answer.text[:300]
        peak = status_bytes(proc.pid, "VmHWM")
        usage = answer.json()["usage"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "case": case,
        "idle_rss_bytes": idle,
        "peak_rss_bytes": peak,
        "peak_above_idle_bytes": peak - idle,
        "seconds": round(seconds, 1),
        "usage": usage,
        "within_goal": peak - idle <= GOAL_BYTES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-context-tokens", type=int, default=4096)
    parser.add_argument("--max-generated-tokens", type=int, default=256)
    parser.add_argument("--max-top-logprobs", type=int, default=20)
    parser.add_argument(
        "--cases", nargs="+", default=["echo", "generate"], choices=["echo", "generate"]
    )
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        row = measure(case, args)
        rows.append(row)
        print(
            f"{case}: idle {row['idle_rss_bytes'] / 1e9:.2f} GB, peak "
            f"+{row['peak_above_idle_bytes'] / 1e9:.2f} GB, {row['seconds']} s, "
            f"usage {row['usage']}",
            flush=True,
        )
    path = write_result(
        "server_memory", {"settings": vars(args), "goal_bytes": GOAL_BYTES, "results": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
