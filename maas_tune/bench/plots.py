"""PNG plots of a benchmark grid: accuracy vs shots and accuracy vs API queries, per dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigurationError
from .report import Summary

__all__ = ["plot_datasets"]


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
