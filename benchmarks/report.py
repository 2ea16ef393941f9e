"""Render ``results/accuracy.json`` as the markdown tables of ``docs/benchmarks.md``.

Usage: ``python benchmarks/report.py``.
"""

from __future__ import annotations

import json

from _common import RESULTS

ORDER = ("zero-shot", "calibrated", "lr", "linear-probe", "dect-paper", "dect")
NAMES = {
    "zero-shot": "zero-shot",
    "calibrated": "calibrated (Zhao et al.)",
    "lr": "LR on calibrated scores",
    "linear-probe": "linear probe (hidden state)",
    "dect-paper": "DecT as in the paper",
    "dect": "**DecT (default)**",
}


def table(results: dict, shots: list[str]) -> str:
    datasets = list(results)
    head = "| method | " + " | ".join(f"{d} {s}-shot" for d in datasets for s in shots) + " |"
    lines = [head, "|---" * (1 + len(datasets) * len(shots)) + "|"]
    for method in ORDER:
        cells = []
        for d in datasets:
            for s in shots:
                r = results[d].get(s, {}).get(method)
                cells.append("" if r is None else f"{r['mean']:.3f} ± {r['std']:.3f}")
        lines.append(f"| {NAMES[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    data = json.loads((RESULTS / "accuracy.json").read_text(encoding="utf-8"))["results"]
    shots = sorted({k for d in data.values() for k in d if k.isdigit()}, key=int)
    print(table(data, shots))
    print()
    for name, d in data.items():
        words = ", ".join(f"{k}→{'/'.join(v)}" for k, v in d["words"].items())
        print(f"- {name}: `{d['template']!r}` ({words}); {d['n_test']} test examples")


if __name__ == "__main__":
    main()
