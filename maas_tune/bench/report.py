"""Summarise a benchmark grid's results: mean ± std over seeds, costs, and a markdown report."""

from __future__ import annotations

import datetime as _dt
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..registry import is_white_box
from .config import BenchConfig
from .grid import read_results

#: File-name suffix of a dataset's reliability diagram (``<dataset>-reliability.png``).
RELIABILITY_SUFFIX = "-reliability"
#: The lines between which a markdown report page gets the grid's tables.
BEGIN_MARKER = "<!-- bench-grid:begin (written by maas-tune bench report) -->"
END_MARKER = "<!-- bench-grid:end -->"

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "MISSING",
    "RELIABILITY_SUFFIX",
    "Summary",
    "is_white_box",
    "render_markdown",
    "summarize",
    "write_report",
]


@dataclass(frozen=True)
class Summary:
    """One (row, dataset, shots) over its seeds: accuracy and the mean cost of one run.

    ``queries`` and ``prompt_tokens`` are what one run needs from an empty cache (fit
    and test together); ``fit_queries`` the part spent before predicting.
    """

    row: str
    method: str
    dataset: str
    shots: int
    seeds: int
    accuracy_mean: float
    accuracy_std: float
    n_test: int
    queries: float
    fit_queries: float
    prompt_tokens: float
    fit_seconds: float
    wall_seconds: float
    #: Mean (and std) over seeds of macro-F1, log-loss and ECE; None when a run of the
    #: group lacks it (results written before maas-tune recorded them).
    macro_f1_mean: float | None = None
    macro_f1_std: float | None = None
    log_loss_mean: float | None = None
    ece_mean: float | None = None

    @property
    def accuracy(self) -> str:
        """``0.842 ± 0.016`` (no ± for a single seed)."""
        return _mean_std(self.accuracy_mean, self.accuracy_std, self.seeds)

    @property
    def macro_f1(self) -> str:
        """``0.801 ± 0.020``, or ``–`` where the results lack it."""
        if self.macro_f1_mean is None:
            return MISSING
        return _mean_std(self.macro_f1_mean, self.macro_f1_std or 0.0, self.seeds)

    @property
    def ece(self) -> str:
        """Mean expected calibration error over seeds, or ``–``."""
        return MISSING if self.ece_mean is None else f"{self.ece_mean:.3f}"


#: A table cell with no value (a shots setting not run, a metric not recorded).
MISSING = "–"


def _mean_std(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.3f}" if seeds < 2 else f"{mean:.3f} ± {std:.3f}"


def _stats(rs: Sequence[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    """Mean and sample std of ``key`` over ``rs``; (None, None) unless every row has it."""
    values = [r.get(key) for r in rs]
    if any(v is None for v in values):
        return None, None
    xs = [float(v) for v in values]  # type: ignore[arg-type]
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(rows: Iterable[dict[str, Any]]) -> list[Summary]:
    """Group rows by (row, dataset, shots) and average over seeds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["row"], r["dataset"], int(r["shots"]))].append(r)

    def mean(rs: Sequence[dict[str, Any]], key: str) -> float:
        return statistics.fmean(float(r.get(key) or 0) for r in rs)

    out = []
    for (row, dataset, shots), rs in groups.items():
        accs = [float(r["accuracy"]) for r in rs]
        f1_mean, f1_std = _stats(rs, "macro_f1")
        out.append(Summary(
            row=row, method=rs[0]["method"], dataset=dataset, shots=shots, seeds=len(rs),
            accuracy_mean=statistics.fmean(accs),
            accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            n_test=int(rs[0]["n_test"]), queries=mean(rs, "queries_needed"),
            fit_queries=mean(rs, "fit_queries"), prompt_tokens=mean(rs, "prompt_tokens_needed"),
            fit_seconds=mean(rs, "fit_seconds"), wall_seconds=mean(rs, "wall_seconds"),
            macro_f1_mean=f1_mean, macro_f1_std=f1_std, log_loss_mean=_stats(rs, "log_loss")[0],
            ece_mean=_stats(rs, "ece")[0],
        ))  # fmt: skip
    return out


def _count(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:,.0f}"


def _headline(
    config: BenchConfig, summaries: Sequence[Summary], datasets: Sequence[str], rows: Sequence[str]
) -> list[str]:
    """Accuracy of ``rows`` at the largest shots per dataset; the best black-box entry in bold."""
    at: dict[tuple[str, str], Summary] = {}
    for s in summaries:
        if s.row not in rows:
            continue
        held = at.get((s.row, s.dataset))
        if held is None or s.shots > held.shots:
            at[(s.row, s.dataset)] = s
    lines = ["| method | " + " | ".join(datasets) + " | mean |",
             "|---" * (len(datasets) + 2) + "|"]  # fmt: skip
    best: dict[str, float] = {}
    for (row, dataset), s in at.items():
        if not is_white_box(s.method):
            best[dataset] = max(best.get(dataset, 0.0), round(s.accuracy_mean, 3))
    for row in rows:
        cells, means = [], []
        for d in datasets:
            found = at.get((row, d))
            if found is None:
                cells.append(MISSING)
                continue
            s = found
            text = (
                f"{s.accuracy} ({s.shots})" if s.shots != _max_shots(summaries, d) else s.accuracy
            )
            bold = not is_white_box(s.method) and round(s.accuracy_mean, 3) == best.get(d)
            cells.append(f"**{text}**" if bold else text)
            means.append(s.accuracy_mean)
        if not means:
            continue
        mean = f"{statistics.fmean(means):.3f}" if len(means) == len(datasets) else MISSING
        label = f"{row} (white-box)" if is_white_box(config.method_of(row)) else row
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def _max_shots(summaries: Sequence[Summary], dataset: str) -> int:
    return max(s.shots for s in summaries if s.dataset == dataset)


def _dataset_table(config: BenchConfig, summaries: Sequence[Summary], dataset: str) -> list[str]:
    mine = [s for s in summaries if s.dataset == dataset]
    shots = sorted({s.shots for s in mine})
    top = shots[-1]
    head = (["method"] + [f"{k}-shot" for k in shots] + [f"macro-F1 ({top}-shot)", "ECE"]
            + ["test n", "seeds", f"queries ({top}-shot)", "of which fit", "prompt tokens", "fit s", "wall s"])  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in config.row_names():
        by_shots = {s.shots: s for s in mine if s.row == row}
        if not by_shots:
            continue
        accs = [by_shots[k].accuracy if k in by_shots else MISSING for k in shots]
        s = by_shots.get(top) or by_shots[max(by_shots)]
        accs += [s.macro_f1, s.ece]
        costs = [str(s.n_test), str(s.seeds), _count(s.queries), _count(s.fit_queries), _count(s.prompt_tokens),
                 f"{s.fit_seconds:.2f}", f"{s.wall_seconds:.1f}"]  # fmt: skip
        lines.append(f"| {row} | " + " | ".join(accs + costs) + " |")
    return lines


def _generated_on(rows: Sequence[dict[str, Any]]) -> str:
    """The day the newest run finished: the same results always render the same page."""
    days = [str(r["finished"])[:10] for r in rows if r.get("finished")]
    return max(days) if days else _dt.date.today().isoformat()


def render_markdown(
    config: BenchConfig,
    rows: Sequence[dict[str, Any]],
    *,
    plots: Mapping[str, str] | None = None,
    level: int = 1,
) -> str:
    """The report: a headline table at the largest shots, then one table per dataset.

    ``plots`` maps a dataset to the link of its PNG; ``level`` is the title's heading level.
    """
    h = "#" * level
    summaries = summarize(rows)
    datasets = list(dict.fromkeys(d for b in config.blocks for d in b.datasets
                                  if any(s.dataset == d for s in summaries)))  # fmt: skip
    seeds = sorted({int(r["seed"]) for r in rows})
    machines = sorted({str(r.get("machine", "?")) for r in rows})
    models = sorted({f"{r.get('model')} via {r.get('provider')}" for r in rows})
    lines = [
        f"{h} Benchmark grid",
        "",
        (
            f"Generated {_generated_on(rows)} from {len(rows)} runs in "
            f"`{config.results_path.name}` (config: `{config.source or 'in memory'}`). "
            f"Model: {'; '.join(models)}. Machine: {', '.join(machines)}. Seeds: {seeds}."
        ),
        "",
        (
            "Accuracy is mean ± std over seeds (sample std). *queries* and *prompt tokens* are "
            "what one run needs from an empty cache (training + test set); *of which fit* is the "
            "part spent before predicting; *fit s* is the method's own fitting time and "
            "*wall s* the whole run's in this grid (answers already in the cache cost no model "
            "time, so a decoder that shares its scoring with an earlier row shows little). "
            "*macro-F1* (the unweighted mean of the per-class F1, so a rare class counts as "
            "much as a frequent one) and *ECE* (expected calibration error of the class "
            "probabilities, 15 equal-width confidence bins) are at the largest shots; "
            f"{MISSING} where the results predate them."
        ),
        "",
        "Test sets per block: "
        + "; ".join(
            f"{b.name}: {'all' if b.test_cap is None else f'≤ {b.test_cap}'} "
            f"(seeds {list(b.seeds)}, shots {list(b.shots)})"
            for b in config.blocks
        )
        + ".",
        "",
        f"{h}# Accuracy at the largest number of shots",
        "",
        (
            "Bold: the best black-box method per dataset among the rows measured on the same "
            "test inputs (prompt tuning needs the weights); (k) marks fewer shots."
        ),
    ]
    by_cap: dict[int | None, list[str]] = {}
    for block in config.blocks:
        by_cap.setdefault(block.test_cap, []).extend(block.row_name(m) for m in block.methods)
    for cap in sorted(by_cap, key=lambda c: -(c or 2**62)):  # the largest test sets first
        if not any(s.row in by_cap[cap] for s in summaries):
            continue
        where = "every test input" if cap is None else f"at most {cap} test inputs"
        lines += ["", f"{h}## On {where} per dataset", "",
                  *_headline(config, summaries, datasets, by_cap[cap])]  # fmt: skip
    for d in datasets:
        lines += ["", f"{h}# {d}", "", *_dataset_table(config, summaries, d)]
        if plots and d in plots:
            lines += ["", f"![{d}: accuracy vs shots and vs queries]({plots[d]})"]
        if plots and f"{d}{RELIABILITY_SUFFIX}" in plots:
            link = plots[f"{d}{RELIABILITY_SUFFIX}"]
            lines += ["", f"![{d}: reliability diagram at the largest shots]({link})"]
    return "\n".join(lines) + "\n"


def _insert(path: Path, text: str) -> None:
    """Put ``text`` between the report markers of an existing markdown file."""
    try:
        page = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"report page {path} does not exist; create it with the "
                                 f"lines {BEGIN_MARKER} and {END_MARKER}") from None  # fmt: skip
    begin, end = page.find(BEGIN_MARKER), page.find(END_MARKER)
    if begin < 0 or end < begin:
        raise ConfigurationError(
            f"report page {path} needs the lines {BEGIN_MARKER} and {END_MARKER} (in that "
            "order) around the place where the grid's tables go"
        )
    head, tail = page[: begin + len(BEGIN_MARKER)], page[end:]
    path.write_text(f"{head}\n{text}{tail}", encoding="utf-8")


def write_report(config: BenchConfig, *, plots: bool = True) -> list[Path]:
    """Write the report; return the files written.

    If ``config.report_dir`` is a folder: ``table.md``, ``plots/<dataset>.png`` and
    ``plots/<dataset>-reliability.png`` (where the results have reliability bins) in
    it. If it is a markdown page (``*.md``): the tables go between its
    :data:`BEGIN_MARKER` and :data:`END_MARKER` lines (one heading level down) and
    the plots into ``grid-plots/`` beside it.
    """
    rows = read_results(config.results_path)
    target = config.report_dir
    into_page = target.suffix == ".md"
    plot_dir = target.parent / "grid-plots" if into_page else target / "plots"
    written: list[Path] = []
    if plots and rows:
        from .plots import plot_datasets, plot_reliability

        written += plot_datasets(summarize(rows), plot_dir, config.plotted_rows())
        written += plot_reliability(rows, plot_dir, config.plotted_rows())
    links = {p.stem: f"{plot_dir.name}/{p.name}" for p in written}
    if into_page:
        _insert(target, render_markdown(config, rows, plots=links, level=2))
        return [target, *written]
    table = target / "table.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(render_markdown(config, rows, plots=links), encoding="utf-8")
    return [table, *written]
