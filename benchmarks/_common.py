"""Shared helpers for the benchmark scripts: the benchmark store and result files."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
#: The benchmarks keep their own answer cache, so reruns cost no model time.
STORE_PATH = ROOT / ".cache" / "bench.sqlite"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps({"machine": machine(), **payload}, indent=2) + "\n", encoding="utf-8"
    )
    return path
