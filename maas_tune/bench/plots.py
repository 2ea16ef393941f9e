"""PNG plots of a benchmark grid, per dataset: accuracy vs shots and vs API queries, and a
reliability diagram (accuracy vs confidence of the class probabilities)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .report import RELIABILITY_SUFFIX, Summary

__all__ = ["plot_datasets", "plot_reliability", "pooled_reliability"]


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise ConfigurationError(
            "plots need matplotlib: pip install 'maas-tune[bench]' (or pass --no-plots)"
        ) from None
    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


#: Inputs labelled per run on the queries axis: rows measured on test sets of other sizes
#: are put on one scale (queries to fit + queries per test input x this).
LABELLED_INPUTS = 100
_MARKERS = "osD^vP*Xh<>p"


def queries_for(s: Summary, inputs: int = LABELLED_INPUTS) -> float:
    """API queries to fit ``s``'s method and label ``inputs`` inputs with it."""
    per_input = (s.queries - s.fit_queries) / s.n_test if s.n_test else 0.0
    return s.fit_queries + per_input * inputs


def plot_datasets(summaries: Sequence[Summary], folder: Path, rows: Sequence[str]) -> list[Path]:
    """One PNG per dataset, two panels; return the files written.

    Left: accuracy (mean ± std over seeds) against shots per class. Right: accuracy
    against the API queries needed to fit and label :data:`LABELLED_INPUTS` inputs (log
    scale), a point per shots setting; white-box methods (no query) are left out there.
    """
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in dict.fromkeys(s.dataset for s in summaries):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.4))
        for i, row in enumerate(rows):
            pts = sorted((s for s in summaries if s.dataset == dataset and s.row == row),
                         key=lambda s: s.shots)  # fmt: skip
            if not pts:
                continue
            style = {"marker": _MARKERS[i % len(_MARKERS)], "label": row,
                     "color": plt.get_cmap("tab20")(i % 20),
                     "linestyle": ("-" if i < 10 else "--") if len(pts) > 1 else "none"}  # fmt: skip
            acc = [s.accuracy_mean for s in pts]
            left.errorbar([s.shots for s in pts], acc, yerr=[s.accuracy_std for s in pts],
                          capsize=3, **style)  # fmt: skip
            paid = [(queries_for(s), s.accuracy_mean) for s in pts if s.queries > 0]
            if paid:
                right.plot([q for q, _ in paid], [a for _, a in paid], **style)
        shots = sorted({s.shots for s in summaries if s.dataset == dataset})
        left.set_xscale("log", base=2)
        left.set_xticks(shots, [str(k) for k in shots])
        left.set_xlabel("shots per class")
        right.set_xscale("log")
        right.set_xlabel(f"API queries to fit and label {LABELLED_INPUTS:,} inputs (log scale)")
        for ax in (left, right):
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        left.set_title(f"{dataset}: accuracy vs shots")
        right.set_title(f"{dataset}: accuracy vs queries")
        fig.legend(*left.get_legend_handles_labels(), loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.86, 1))
        path = folder / f"{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def pooled_reliability(
    rows: Sequence[dict[str, Any]],
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Reliability bins per (row, dataset) at its largest shots, pooled over seeds.

    Returns
    -------
    dict
        (row, dataset) → (confidence (B,), accuracy (B,), count (B,)): each bin's
        count-weighted mean confidence and accuracy over the seeds (NaN where empty).
        Rows without reliability bins (results written before they were recorded) are
        left out.
    """
    top: dict[tuple[str, str], int] = {}
    for r in rows:
        if r.get("reliability"):
            key = (str(r["row"]), str(r["dataset"]))
            top[key] = max(top.get(key, 0), int(r["shots"]))
    sums: dict[tuple[str, str], np.ndarray] = {}
    for r in rows:
        key = (str(r["row"]), str(r["dataset"]))
        if not r.get("reliability") or int(r["shots"]) != top[key]:
            continue
        bins = r["reliability"]
        count = np.asarray(bins["count"], dtype=np.float64)  # (B,)
        conf = np.nan_to_num(np.asarray(bins["confidence"], dtype=np.float64))  # (B,)
        acc = np.nan_to_num(np.asarray(bins["accuracy"], dtype=np.float64))  # (B,)
        total = np.stack([count * conf, count * acc, count])  # (3, B)
        sums[key] = sums[key] + total if key in sums else total
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, (conf_sum, acc_sum, count) in sums.items():
            out[key] = (conf_sum / count, acc_sum / count, count)
    return out


def plot_reliability(
    rows: Sequence[dict[str, Any]], folder: Path, plotted: Sequence[str]
) -> list[Path]:
    """One reliability diagram per dataset, ``<dataset>-reliability.png``; return the files.

    Each of the ``plotted`` rows at its largest shots, pooled over seeds: the accuracy
    of each confidence bin (15 equal-width bins of the largest class probability, see
    :mod:`maas_tune.metrics`) against its mean confidence. On the diagonal a method is
    right as often as it claims; below it, overconfident. The legend gives the ECE of the
    pooled predictions (the report's table averages the per-seed ECE).
    """
    pooled = pooled_reliability(rows)
    if not pooled:
        return []
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in dict.fromkeys(d for _, d in pooled):
        fig, ax = plt.subplots(figsize=(6.4, 5.4))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
        for i, row in enumerate(plotted):
            if (row, dataset) not in pooled:
                continue
            conf, acc, count = pooled[(row, dataset)]
            full = count > 0
            ece = float(np.sum(count[full] * np.abs(acc[full] - conf[full])) / count.sum())
            color = plt.get_cmap("tab20")(i % 20)
            ax.plot(conf[full], acc[full], color=color, linewidth=1, alpha=0.6)
            # Marker area by the bin's share of predictions: a bin of two is noise.
            ax.scatter(conf[full], acc[full], s=8 + 240 * count[full] / count.sum(),
                       marker=_MARKERS[i % len(_MARKERS)], color=color,
                       label=f"{row} (pooled ECE {ece:.3f})")  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (largest class probability), bin mean; area: predictions")
        ax.set_ylabel("accuracy in the bin")
        ax.set_title(f"{dataset}: reliability at the largest shots (seeds pooled)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = folder / f"{dataset}{RELIABILITY_SUFFIX}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
