"""GPU check (not part of CI): the embedded model on a device and dtype against CPU float32.

Scores N SST-2 test prompts with the in-process provider on CPU float32 (the reference),
then on ``--device`` in each of ``--dtypes``; checks that every label log-prob is within
the dtype's tolerance of the reference (``DTYPE_LOGPROB_TOLERANCE``) and that hidden
states come back as float32 numpy, and reports throughput (samples/s) of each. Prints one
JSON summary; exit status 0 when every run is within tolerance, else 1.

Usage::

    python benchmarks/gpu_check.py                      # cuda, bfloat16 and float32
    python benchmarks/gpu_check.py --device cpu -n 16   # runs anywhere (bfloat16, float32)
    python benchmarks/gpu_check.py --device cuda:0 --dtypes bfloat16,float16 -n 512
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from typing import Any

import numpy as np

import maas_tune as mt
from maas_tune.providers.device import DTYPE_LOGPROB_TOLERANCE
from maas_tune.providers.local import TransformersProvider


def _prompts(n: int) -> tuple[list[str], list[str]]:
    task, data = mt.datasets.load_task("sst2"), mt.datasets.load("sst2")
    return [task.render(e) for e in list(data.test)[:n]], list(task.label_words)


def _run(device: str, dtype: str, prompts: list[str], words: list[str], batch: int) -> dict:
    """Load the model on ``device`` in ``dtype``, score ``prompts``; log-probs and timing."""
    start = time.perf_counter()
    provider = TransformersProvider(device=device, dtype=dtype, batch_size=batch)
    load_s = time.perf_counter() - start
    provider.score(prompts[: min(8, len(prompts))], words)  # warm-up (kernels, allocator)
    start = time.perf_counter()
    answers = provider.score(prompts, words)  # numpy out: the device has finished
    seconds = time.perf_counter() - start
    hidden = answers[0].hidden
    out = {
        "device": provider.device,
        "dtype": provider.dtype,
        "fingerprint_dtype": provider.fingerprint()["dtype"],
        "load_s": round(load_s, 2),
        "samples_per_s": round(len(prompts) / seconds, 1),
        "logprobs": np.stack([a.logprobs for a in answers]),
        "float32_numpy_out": bool(
            answers[0].logprobs.dtype == np.float32
            and (hidden is None or (isinstance(hidden, np.ndarray) and hidden.dtype == np.float32))
        ),
    }
    provider.close()
    del provider
    gc.collect()
    _empty_cuda_cache()
    return out


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _compare(run: dict, reference: dict) -> dict:
    diff = np.abs(run["logprobs"] - reference["logprobs"])
    tolerance = DTYPE_LOGPROB_TOLERANCE[run["dtype"]]
    same = run["logprobs"].argmax(1) == reference["logprobs"].argmax(1)
    summary = {k: v for k, v in run.items() if k != "logprobs"}
    summary.update(
        max_abs_diff=round(float(diff.max()), 5),
        mean_abs_diff=round(float(diff.mean()), 5),
        argmax_agreement=round(float(same.mean()), 4),
        tolerance=tolerance,
        speedup_vs_cpu_float32=round(run["samples_per_s"] / reference["samples_per_s"], 2),
    )
    summary["ok"] = bool(diff.max() <= tolerance and run["float32_numpy_out"])
    return summary


def _machine(device: str) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="device to check (default cuda)")
    parser.add_argument(
        "--dtypes",
        default="bfloat16,float32",
        help="comma-separated dtypes to check (default bfloat16,float32)",
    )
    parser.add_argument("-n", type=int, default=128, help="SST-2 test prompts (default 128)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per pass")
    args = parser.parse_args(argv)
    prompts, words = _prompts(args.n)
    reference = _run("cpu", "float32", prompts, words, args.batch_size)
    runs = [
        _compare(_run(args.device, dtype.strip(), prompts, words, args.batch_size), reference)
        for dtype in args.dtypes.split(",")
        if dtype.strip()
    ]
    report = {
        "machine": _machine(runs[0]["device"] if runs else "cpu"),
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "reference": {k: v for k, v in reference.items() if k != "logprobs"},
        "runs": runs,
        "ok": all(r["ok"] for r in runs),
    }
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
