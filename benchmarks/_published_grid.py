"""The published blocks that come from the benchmark grid (``results/grid/results.jsonl``).

Every function renders markdown from the grid's rows alone, so whatever the grid holds
after a rerun is what the README and the docs say.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from maas_tune.bench import BenchConfig, Summary, load_config, read_results, summarize
from maas_tune.bench.report import is_white_box, render_markdown

#: The grid rows the README and the accuracy section show, with their names there.
HEADLINE = {
    "zero-shot": "zero-shot",
    "calibrated": "contextual calibration",
    "lr": "logistic regression on calibrated scores",
    "linear-probe": "linear probe on the hidden state",
    "dect-paper": "DecT as published (lambda = 1/16, 30 epochs)",
    "dect": "**DecT, maas-tune default**",
}
#: What each headline row queries to fit, K classes and 16 shots per class (by design).
FIT_QUERIES = {
    "zero-shot": "0 for training",
    "calibrated": "1",
    "lr": "1 + 16·K",
    "linear-probe": "16·K",
    "dect-paper": "1 + 16·K",
    "dect": "16·K",
}
#: The datasets of the README's table, with their names there.
README_DATASETS = {"sst2": "SST-2", "agnews": "AG News"}
#: Methods (and their presets, ``bdpl-paper``) that adapt the input rather than decode the output.
INPUT_SIDE = ("bdpl", "prompt-tuning")


@dataclass(frozen=True)
class GridResults:
    """The grid's config, its rows and their summaries over seeds."""

    config: BenchConfig
    rows: list[dict[str, Any]]
    summaries: list[Summary]

    @classmethod
    def load(cls, root: Path, config: Path) -> GridResults:
        """Read ``root / config`` and every row of its results file.

        The report names the config by ``config`` (relative), wherever ``root`` is.
        """
        config_ = replace(load_config(root / config), source=config)
        rows = read_results(config_.results_path)
        return cls(config_, rows, summarize(rows))

    @property
    def plot_dir(self) -> Path:
        """``grid-plots/`` beside the report page."""
        return self.config.report_dir.parent / "grid-plots"

    def write_plots(self) -> None:
        """Redraw the PNGs the report links to (needs ``maas-tune[bench]``)."""
        from maas_tune.bench.plots import plot_datasets, plot_reliability

        plot_datasets(self.summaries, self.plot_dir, self.config.plotted_rows())
        plot_reliability(self.rows, self.plot_dir, self.config.plotted_rows())

    def report(self) -> str:
        """The tables of ``maas-tune bench report``, linking the PNGs that exist."""
        links = {
            p.stem: f"{self.plot_dir.name}/{p.name}" for p in sorted(self.plot_dir.glob("*.png"))
        }
        return render_markdown(self.config, self.rows, plots=links, level=2)

    def get(self, row: str, dataset: str, shots: int | None = None) -> Summary | None:
        """The summary of ``row`` on ``dataset`` at ``shots`` (default: its largest)."""
        mine = [s for s in self.summaries if s.row == row and s.dataset == dataset]
        if shots is not None:
            mine = [s for s in mine if s.shots == shots]
        return max(mine, key=lambda s: s.shots, default=None)

    def top_shots(self, dataset: str) -> int:
        """The largest shots setting run on ``dataset``."""
        return max(s.shots for s in self.summaries if s.dataset == dataset)

    def blocks_of(self, row: str) -> list[str]:
        """The datasets ``row`` ran on, in config order."""
        seen = {s.dataset for s in self.summaries if s.row == row}
        order = dict.fromkeys(d for b in self.config.blocks for d in b.datasets)
        return [d for d in order if d in seen]

    def block_rows(self, row: str) -> list[str]:
        """The rows of the block that holds ``row`` (measured on the same test inputs)."""
        for b in self.config.blocks:
            names = [b.row_name(m) for m in b.methods]
            if row in names:
                return names
        return []


def _acc(s: Summary | None) -> str:
    return "–" if s is None else s.accuracy


def _pm(s: Summary) -> str:
    return (
        f"{s.accuracy_mean:.3f}" if s.seeds < 2 else f"{s.accuracy_mean:.3f} ± {s.accuracy_std:.3f}"
    )


def _throughput(results: Path) -> dict[str, Any]:
    return json.loads((results / "throughput.json").read_text(encoding="utf-8"))


def _round_sig(x: float, digits: int = 2) -> str:
    """``47169.4`` → ``47,000``."""
    if x <= 0:
        return "0"
    places = digits - 1 - math.floor(math.log10(x))
    return f"{round(x, places):,.{max(places, 0)}f}"


def readme_accuracy(results: Path, grid: GridResults) -> str:
    """README's table: the headline rows at the largest shots on SST-2 and AG News."""
    shots = min(grid.top_shots(d) for d in README_DATASETS)
    seeds = sorted({int(r["seed"]) for r in grid.rows if r["row"] == "dect"})
    n = {
        d: max(s.n_test for s in grid.summaries if s.dataset == d and s.row in HEADLINE)
        for d in README_DATASETS
    }
    lines = [
        (
            f"Measured on Gemma 3 270M, CPU, {shots} shots, mean ± std over seeds {seeds[0]}–"
            f"{seeds[-1]}, every row on the same test inputs (the benchmark grid, "
            "[docs/benchmarks.md](docs/benchmarks.md), has every number and the command):"
        ),
        "",
        f"| method ({shots} shots) | "
        + " | ".join(f"{name} ({n[d]:,} test)" for d, name in README_DATASETS.items())
        + " | queries to fit |",
        "|---|---|---|---|",
    ]
    best = {  # bold: the best mean per dataset, whichever row it is
        d: max((s.accuracy_mean for r in HEADLINE if (s := grid.get(r, d, shots))), default=None)
        for d in README_DATASETS
    }
    for row, name in HEADLINE.items():
        cells = []
        for d in README_DATASETS:
            summary = grid.get(row, d, shots)
            cell = _acc(summary)
            bold = summary is not None and best[d] is not None and summary.accuracy_mean == best[d]
            cells.append(f"**{cell}**" if bold else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {FIT_QUERIES[row]} |")
    speed = _throughput(results)
    fit = speed["fit_seconds_agnews_16shot_x4"]["dect"]
    lines += [
        "",
        f"Fit time of the default DecT (16 shots × 4 classes, cross-validation included): "
        f"{fit:.2f} s. Cache hits are served at about "
        f"{_round_sig(speed['cache_hit_samples_per_s'])} samples/s "
        "(`benchmarks/throughput.py`). " + _sst2_margin(grid),
    ]
    return "\n".join(lines)


def _sst2_margin(grid: GridResults) -> str:
    """Where DecT stands against contextual calibration on SST-2, at every shots setting."""
    top = grid.top_shots("sst2")
    dect, cal = grid.get("dect", "sst2", top), grid.get("calibrated", "sst2", top)
    if dect is None or cal is None:
        return ""
    behind = [
        s.shots
        for s in grid.summaries
        if s.row == "dect"
        and s.dataset == "sst2"
        and (c := grid.get("calibrated", "sst2", s.shots))
        and c.accuracy_mean > s.accuracy_mean
    ]
    text = (
        f"On SST-2 DecT's margin over contextual calibration at {top} shots is "
        f"{dect.accuracy_mean - cal.accuracy_mean:+.3f} (std over seeds {dect.accuracy_std:.3f})"
    )
    if behind:
        shots = [str(k) for k in sorted(behind)]
        listed = shots[0] if len(shots) == 1 else f"{', '.join(shots[:-1])} and {shots[-1]}"
        text += f"; at {listed} shots calibration is ahead there"
    return text + "."


def findings(grid: GridResults) -> str:
    """DecT against the best other black-box row per dataset, with the noise of each gap."""
    lines = [
        (
            "| dataset | test n | seeds | DecT | best other black-box row | its accuracy "
            "| DecT − it | standard error of the difference (paired over seeds) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts: dict[str, list[str]] = {
        "ahead": [],
        "behind": [],
        "within two standard errors": [],
        "one seed, no standard error": [],
    }
    for d in grid.blocks_of("dect"):
        pair = _dect_and_best_rival(grid, d)
        if pair is None:
            continue
        dect, best = pair
        se = _paired_se(grid, dect, best)
        gap = dect.accuracy_mean - best.accuracy_mean
        verdict = _verdict(gap, se, ("one seed, no standard error", "ahead", "behind"))
        verdicts[verdict].append(d)
        lines.append(
            f"| {d} | {dect.n_test:,} | {dect.seeds} | {_pm(dect)} | {best.row} | {_pm(best)} "
            f"| {gap:+.3f} | {se:.3f} |"
        )
    said = "; ".join(f"{k} on {', '.join(v)}" for k, v in verdicts.items() if v)
    lines += ["", f"DecT against the best other row: {said}."]
    small = min((b.test_cap for b in grid.config.blocks if b.test_cap), default=None)
    if small:
        lines.append(
            f"One accuracy on {small} test inputs has a standard error of up to "
            f"{math.sqrt(0.25 / small):.2f} (at 0.5), so on the {small}-input slice "
            "only differences well beyond that mean anything."
        )
    return "\n".join(lines)


def prompt_findings(grid: GridResults) -> str:
    """DecT against every prompt method on the same test inputs and seeds (the ``@200``
    rows), with the noise of each gap."""
    lines = [
        (
            "| dataset | prompt method | its accuracy | DecT on the same inputs | DecT − it "
            "| standard error of the difference (paired over seeds) | verdict |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for s in sorted(grid.summaries, key=lambda s: (s.dataset, s.row)):
        dect = grid.get("dect@200", s.dataset, s.shots)
        if not s.method.startswith((*INPUT_SIDE, "icl")) or dect is None:
            continue
        se, gap = _paired_se(grid, dect, s), dect.accuracy_mean - s.accuracy_mean
        verdict = _verdict(gap, se, ("one seed", "DecT ahead", "DecT behind"))
        name = f"{s.row} (white-box)" if is_white_box(s.method) else s.row
        lines.append(
            f"| {s.dataset} | {name} | {_pm(s)} | {_pm(dect)} | {gap:+.3f} | {se:.3f} | {verdict} |"
        )
    return "\n".join(lines)


def _verdict(gap: float, se: float, words: tuple[str, str, str]) -> str:
    """What a gap says given its standard error: ``words`` name no standard error, ahead
    and behind; a gap within two standard errors is no ranking."""
    if math.isnan(se):
        return words[0]
    if abs(gap) <= 2 * se:
        return "within two standard errors"
    return words[1] if gap > 0 else words[2]


def _paired_se(grid: GridResults, a: Summary, b: Summary) -> float:
    """Standard error of the mean per-seed difference of two rows (same shots, same inputs)."""
    acc: dict[tuple[str, int], float] = {
        (r["row"], int(r["seed"])): float(r["accuracy"])
        for r in grid.rows
        if r["dataset"] == a.dataset and int(r["shots"]) == a.shots and r["row"] in (a.row, b.row)
    }
    seeds = sorted({seed for row, seed in acc if (a.row, seed) in acc and (b.row, seed) in acc})
    diffs = [acc[(a.row, seed)] - acc[(b.row, seed)] for seed in seeds]
    return statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan


def _dect_and_best_rival(grid: GridResults, dataset: str) -> tuple[Summary, Summary] | None:
    """DecT and the most accurate other black-box row of its block, at the largest shots."""
    top = grid.top_shots(dataset)
    dect = grid.get("dect", dataset, top)
    others = [
        s
        for r in grid.block_rows("dect")
        if r != "dect"
        and (s := grid.get(r, dataset, top)) is not None
        and not is_white_box(s.method)
    ]
    if dect is None or not others:
        return None
    return dect, max(others, key=lambda s: s.accuracy_mean)


def cost_ratios(grid: GridResults) -> str:
    """Our measured cost of the input-side methods against DecT: queries and seconds to fit."""
    lines = [
        (
            "| dataset | shots | input-side row | its queries to fit | DecT's | ratio | its fit s "
            "| DecT's fit s | ratio |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted(grid.summaries, key=lambda s: (s.dataset, s.row)):
        if not s.method.startswith(INPUT_SIDE) or s.shots != grid.top_shots(s.dataset):
            continue
        dect = grid.get("dect", s.dataset, s.shots)
        if dect is None:
            continue
        q = f"{s.fit_queries / dect.fit_queries:.0f}×" if s.fit_queries else "– (needs the weights)"
        lines.append(
            f"| {s.dataset} | {s.shots} | {s.row} | {s.fit_queries:,.0f} | {dect.fit_queries:,.0f} "
            f"| {q} | {s.fit_seconds:.1f} | {dect.fit_seconds:.2f} "
            f"| {s.fit_seconds / dect.fit_seconds:,.0f}× |"
        )
    return "\n".join(lines + ["", _icl_tokens(grid)])


def _icl_tokens(grid: GridResults) -> str:
    """ICL's prompt tokens per query against DecT's on the same inputs."""
    pairs = []
    for d in grid.blocks_of("icl"):
        icl, dect = grid.get("icl", d), grid.get("dect@200", d) or grid.get("dect", d)
        if icl and dect and icl.queries and dect.queries:
            pairs.append((icl.prompt_tokens / icl.queries, dect.prompt_tokens / dect.queries))
    if not pairs:
        return ""
    icl, dect = [a for a, _ in pairs], [b for _, b in pairs]
    ratio = [a / b for a, b in pairs]
    return (
        f"ICL sends no training query, but every prompt carries its demonstrations (by "
        f"default 4 per class): {_span(icl, ',.0f')} prompt tokens per query against DecT's "
        f"{_span(dect, ',.0f')}, {_span(ratio, '.0f')}× on every input, for as long as the "
        "model is used."
    )


def _span(values: list[float], fmt: str) -> str:
    """``lo–hi`` in ``fmt``, or one number where they round alike."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}–{hi}"


def accuracy(grid: GridResults) -> str:
    """The headline rows at every shots setting on SST-2 and AG News, and the best per column."""
    shots = sorted(
        {s.shots for s in grid.summaries if s.row == "dect" and s.dataset in README_DATASETS}
    )
    cols = [(d, k) for d in README_DATASETS for k in shots]
    lines = [
        "| method | " + " | ".join(f"{d} {k}-shot" for d, k in cols) + " |",
        "|---" * (1 + len(cols)) + "|",
    ]
    for row, name in HEADLINE.items():
        lines.append(f"| {name} | " + " | ".join(_acc(grid.get(row, d, k)) for d, k in cols) + " |")
    lines.append("")
    for d, k in cols:
        found = [(s, HEADLINE[r]) for r in HEADLINE if (s := grid.get(r, d, k)) is not None]
        if found:
            s, name = max(found, key=lambda f: f[0].accuracy_mean)
            lines.append(
                f"- {d}, {k}-shot: most accurate {name.strip('*')} ({s.accuracy_mean:.3f}, "
                f"{s.n_test:,} test inputs, {s.seeds} seeds)"
            )
    return "\n".join(lines)


def concepts_dect(results: Path, grid: GridResults) -> str:
    """concepts.md's two measured sentences on DecT: fit time and where it stands."""
    fit = _throughput(results)["fit_seconds_agnews_16shot_x4"]["dect"]
    parts = [
        (
            f"Fit, selection included, takes {fit:.2f} s for 16 shots × 4 classes on 2 cores "
            "(`benchmarks/throughput.py`). In the benchmark grid at the largest shots:"
        ),
        "",
    ]
    for d, name in README_DATASETS.items():
        top = grid.top_shots(d)
        here = [s for r in HEADLINE if (s := grid.get(r, d, top)) is not None]
        dect = grid.get("dect", d, top)
        rivals = [s for s in here if s.row != "dect"]
        if dect is None or not rivals:
            continue
        best = max(rivals, key=lambda s: s.accuracy_mean)
        paper = grid.get("dect-paper", d, top)
        text = (
            f"{name}: DecT {dect.accuracy_mean:.3f}, the best other row (`{best.row}`) "
            f"{best.accuracy_mean:.3f}"
        )
        if paper is not None:
            text += f", the published recipe {paper.accuracy_mean:.3f}"
        parts.append(f"- {text}.")
    return "\n".join(parts)
