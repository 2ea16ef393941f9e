"""The generated blocks of docs/dect-research.md: the dev protocol's tables, rendered from
``benchmarks/results/dect_research/*.json`` (written by ``dect_research.py --result``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The dev protocol's result files (``--result`` names), in the order they are run.
RUNS = ("dev_16shot", "dev_ytuning", "dev_ytuning_more", "dev_prior", "dev_defaults", "dev_timing")
#: Runs a page may do without (too slow to always have: Y-Tuning's cross-validated
#: weight decay trains 17 label networks per fit).
OPTIONAL = ("dev_ytuning_more",)
DATASETS = ("sst2", "agnews", "trec", "subj", "rte")
#: Method names of ``dect_research.py`` -> how the tables name them; the defaults of the
#: package are marked, and each trainable method's candidates are grouped under it.
LABELS = {
    "zero-shot": "zero-shot",
    "calibrated": "calibrated",
    "dect-paper": "DecT as in the paper",
    "lr:alpha=0.01": "LR, alpha 0.01 (default before)",
    "lr:alpha=cv": "LR, alpha by CV on the shots",
    "lr:alpha=0.001": "LR, alpha 0.001",
    "lr:alpha=0.1": "**LR, alpha 0.1** (default)",
    "lr": "LR (alpha 0.1)",
    "linear-probe:alpha=0.1": "probe, alpha 0.1 (default before)",
    "linear-probe:alpha=cv": "probe, alpha by CV on the shots",
    "linear-probe:alpha=0.01": "probe, alpha 0.01",
    "linear-probe:alpha=1": "**probe, alpha 1** (default)",
    "linear-probe": "linear probe (alpha 1, scale_prior 4)",
    "ytuning": "**Y-Tuning, weight decay 1** (default)",
    "ytuning:wd=0.01": "Y-Tuning, weight decay 0.01 (default before)",
    "ytuning:wd=10": "Y-Tuning, weight decay 10",
    "ytuning:wd=cv": "Y-Tuning, weight decay by CV on the shots",
    "dect": "**DecT default** (votes at the CV temperature)",
    "dect:vote=one": "DecT, votes (and weights) at T = 1",
    "dect:select=best": "DecT, best `lam` only (no pseudo-BMA)",
    "dect:refit": "DecT, refit on all shots",
}
#: Each trainable method's candidates at 16 shots, the default first.
CANDIDATES = {
    "LR": ("lr:alpha=0.1", "lr:alpha=0.01", "lr:alpha=cv", "lr:alpha=0.001"),
    "linear probe": (
        "linear-probe:alpha=1",
        "linear-probe:alpha=0.1",
        "linear-probe:alpha=cv",
        "linear-probe:alpha=0.01",
    ),
    "DecT": ("dect", "dect:vote=one", "dect:select=best", "dect:refit"),
    "Y-Tuning": ("ytuning", "ytuning:wd=0.01", "ytuning:wd=10", "ytuning:wd=cv"),
}


def _load(results: Path, name: str) -> dict[str, Any]:
    path = results / "dect_research" / f"{name}.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _rows(results: Path, *names: str) -> list[dict[str, Any]]:
    return [row for name in _present(results, names) for row in _load(results, name)["rows"]]


def _present(results: Path, names: tuple[str, ...]) -> list[str]:
    """``names`` less the optional runs that have no result file yet."""
    folder = results / "dect_research"
    return [n for n in names if n not in OPTIONAL or (folder / f"{n}.json").exists()]


def _cell(row: dict[str, Any], d: str, best: bool) -> str:
    text = f"{row['accuracy'][d]:.3f} ± {row['std'][d]:.3f}"
    return f"**{row['accuracy'][d]:.3f}** ± {row['std'][d]:.3f}" if best else text


def _table(rows: list[dict[str, Any]], *, shots_column: bool, bold: bool) -> list[str]:
    head = "| method | " + ("shots | " if shots_column else "") + " | ".join(DATASETS)
    lines = [head + " | mean | fit s |", "|---" * (len(DATASETS) + 3 + shots_column) + "|"]
    top = {d: max(r["accuracy"][d] for r in rows) for d in DATASETS}
    top_mean = max(r["mean"] for r in rows)
    for r in rows:
        cells = " | ".join(_cell(r, d, bold and r["accuracy"][d] == top[d]) for d in DATASETS)
        mean = f"**{r['mean']:.3f}**" if bold and r["mean"] == top_mean else f"{r['mean']:.3f}"
        shots = f"{r['shots']} | " if shots_column else ""
        lines.append(
            f"| {LABELS.get(r['method'], r['method'])} | {shots}{cells} | {mean} "
            f"| {r['fit_seconds']:.3f} |"
        )
    return lines


def commands(results: Path) -> str:
    """The commands that wrote the result files, as a shell block."""
    lines = [_load(results, name)["command"] for name in _present(results, RUNS)]
    return "```bash\n" + "\n".join(f"nice -n 10 {c}" for c in lines) + "\n```"


def candidates(results: Path) -> str:
    """Every method's candidates at 16 shots (bold: the best per column)."""
    runs = ("dev_16shot", "dev_ytuning", "dev_ytuning_more")
    rows = [r for r in _rows(results, *runs) if r["shots"] == 16 and r["method"] in LABELS]
    pools = _load(results, "dev_16shot")
    lines = _table(rows, shots_column=False, bold=True)
    lines += [
        "",
        f"Seeds 0–{pools['seeds'] - 1}; pools "
        + ", ".join(f"{d} {n}" for d, n in pools["pools"].items())
        + ". "
        + _choices(rows),
    ]
    return "\n".join(lines)


def _choices(rows: list[dict[str, Any]]) -> str:
    """Per trainable method: its default's five-dataset mean and its candidates' range."""
    mean = {r["method"]: r["mean"] for r in rows}
    said = []
    for method, names in CANDIDATES.items():
        found = [n for n in names if n in mean]
        if not found:
            continue
        best = max(found, key=mean.__getitem__)
        values = [mean[n] for n in found]
        verdict = (
            "the default is the best candidate"
            if best == names[0]
            else f"best candidate {LABELS[best].replace('**', '')} ({mean[best]:.3f})"
        )
        said.append(
            f"{method}: default {mean[names[0]]:.3f}, candidates {min(values):.3f}–"
            f"{max(values):.3f}, {verdict}"
        )
    return "Five-dataset means at 16 shots — " + "; ".join(said) + "."


def prior(results: Path) -> str:
    """The five-dataset mean of each ``scale_prior`` at 1, 4 and 16 shots."""
    rows = _rows(results, "dev_prior")
    shots = sorted({r["shots"] for r in rows})
    lines = [
        "| method | scale_prior | " + " | ".join(f"{k} shot{'s' * (k > 1)}" for k in shots) + " |",
        "|---" * (2 + len(shots)) + "|",
    ]
    by = {(r["method"], r["shots"]): r["mean"] for r in rows}
    for method in dict.fromkeys(r["method"] for r in rows):
        base, value = method.split(":prior=")
        name = {"dect": "DecT", "linear-probe": "linear probe"}[base]
        mark = " (default)" if value == "4" else ""
        cells = " | ".join(f"{by[(method, k)]:.3f}" for k in shots)
        lines.append(f"| {name} | {value}{mark} | {cells} |")
    return "\n".join(lines)


def defaults(results: Path) -> str:
    """Every method at its default at each shots setting."""
    rows = _rows(results, "dev_defaults") + [
        r for r in _rows(results, "dev_ytuning") if r["method"] == "ytuning"
    ]
    order = ["zero-shot", "calibrated", "lr", "linear-probe", "ytuning", "dect-paper", "dect"]
    rows.sort(key=lambda r: (r["shots"], order.index(r["method"])))
    return "\n".join(_table(rows, shots_column=True, bold=False))


def timing(results: Path) -> str:
    """DecT's fit seconds on the AG News pool at 16 shots, one thread and torch's default."""
    t = _load(results, "dev_timing")
    lines = [
        "| method | torch threads during fit | median s | max s | CPU median s |",
        "|---|---|---|---|---|",
    ]
    for r in t["rows"]:
        threads = "1 (`n_threads=1`, the default)" if r["n_threads"] == 1 else "2 (torch's default)"
        name = {"dect": "DecT default", "dect-paper": "DecT as in the paper"}[r["method"]]
        lines.append(
            f"| {name} | {threads} | {r['wall_median_s']:.3f} | {r['wall_max_s']:.3f} "
            f"| {r['cpu_median_s']:.3f} |"
        )
    loads = [x for r in t["rows"] for x in r["load_average"]]
    lines += ["", f"(20 fits after a warm-up; load average {min(loads):.1f}–{max(loads):.1f}.)"]
    return "\n".join(lines)
