"""Run a benchmark grid: every block's methods × datasets × shots × seeds, resumably.

Each finished (row, dataset, shots, seed) appends one JSON line to the results file
at once, so an interrupted run loses at most the method it was running, and a rerun
skips what is there. Every block scores through one cache: a rerun, or a method that
asks for prompts another already paid for, costs no query.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import datasets
from ..data import Dataset
from ..errors import BudgetExceeded
from ..experiment import TEST_BUDGET_SUFFIX, EvalResult, evaluate, subsample_test
from ..storage import Store
from ..storage.budget import QueryBudget
from ..storage.cache import ScoreCache
from ._providers import ProviderPool
from .config import BenchConfig, Block

__all__ = ["Cell", "GridRun", "cells", "read_results", "row_key", "run_grid"]

_LOG = logging.getLogger(__name__)

RowKey = tuple[str, str, int, int]


@dataclass(frozen=True)
class Cell:
    """One block's methods on one dataset, number of shots and seed."""

    block: Block
    dataset: str
    shots: int
    seed: int

    def keys(self) -> list[RowKey]:
        """The result rows this cell produces."""
        return [(self.block.row_name(m), self.dataset, self.shots, self.seed)
                for m in self.block.methods]  # fmt: skip


@dataclass(frozen=True)
class GridRun:
    """What one :func:`run_grid` call did.

    Attributes
    ----------
    cells, cells_skipped : int
        Cells in the grid, and those already complete in the results file.
    rows_written : int
        Result rows appended by this call.
    queries_sent : int
        Queries this call sent (0 on a rerun of a finished grid).
    stopped_by_budget : str or None
        Set when the budget ran out: what was refused. The rows before it are kept.
    """

    cells: int
    cells_skipped: int
    rows_written: int
    queries_sent: int
    stopped_by_budget: str | None = None


def cells(config: BenchConfig) -> list[Cell]:
    """Every cell of the grid, block by block, then dataset, shots and seed."""
    return [Cell(b, d, k, s) for b in config.blocks for d in b.datasets
            for k in b.shots for s in b.seeds]  # fmt: skip


def row_key(row: dict[str, Any]) -> RowKey:
    """(row name, dataset, shots, seed) of a result row."""
    return (str(row["row"]), str(row["dataset"]), int(row["shots"]), int(row["seed"]))


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results file (none if it does not exist); a torn last line is skipped.

    A later row with the same :func:`row_key` replaces an earlier one.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows: dict[RowKey, dict[str, Any]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a crash while appending: that row is run again
                _LOG.warning("%s: ignoring a torn last line", path)
                continue
            raise
        rows[row_key(row)] = row
    return list(rows.values())


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (a crash while appending) so that new rows start on a line."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _row(
    result: EvalResult, cell: Cell, *, wall: float, rate: float, test_cap: int | None
) -> dict[str, Any]:
    """A result row: the eval result plus the grid's own columns."""
    queries = result.queries_sent + result.cache_hits * rate
    row = result.to_dict()
    row.update(
        row=cell.block.row_name(result.method),
        block=cell.block.name,
        wall_seconds=round(wall, 3),
        test_cap=test_cap,
        queries_needed=round(queries),
        fit_queries=max(0, round(queries - result.n_test * rate)),
        prompt_tokens_needed=result.prompt_tokens_sent + result.prompt_tokens_cached,
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
    )
    return row


class _Data:
    """Bundled datasets and their test subsets, loaded once per run."""

    def __init__(self) -> None:
        self._loaded: dict[str, Dataset] = {}

    def get(self, name: str) -> Dataset:
        if name not in self._loaded:
            self._loaded[name] = datasets.load(name)
        return self._loaded[name]


def _pending(config: BenchConfig, done: set[RowKey]) -> Iterator[tuple[Cell, list[str]]]:
    for cell in cells(config):
        methods = [m for m, key in zip(cell.block.methods, cell.keys()) if key not in done]
        yield cell, methods


def run_grid(
    config: BenchConfig,
    *,
    pool: ProviderPool | None = None,
    progress: bool | None = None,
) -> GridRun:
    """Run every cell of ``config`` not yet in its results file; append a row per method.

    Parameters
    ----------
    config : BenchConfig
    pool : ProviderPool or None
        Providers to use (e.g. with an already loaded local model); None builds one
        for this call and closes it at the end.
    progress : bool or None
        A progress bar over the grid's cells; None shows it only on a terminal.

    Returns
    -------
    GridRun
        What was run, skipped and sent. Running out of budget ends the run early
        (``stopped_by_budget``), keeping every row written before.
    """
    done = {row_key(r) for r in read_results(config.results_path)}
    _drop_torn_tail(config.results_path)
    todo = list(_pending(config, done))
    owned = pool is None
    pool = pool or ProviderPool(config.model)
    data, store = _Data(), Store(config.cache)
    cache = ScoreCache(store)
    budget = QueryBudget(config.budget, max_queries=config.max_queries, store=store)
    test_budget = QueryBudget(config.budget + TEST_BUDGET_SUFFIX, store=store)
    skipped = sum(1 for _cell, methods in todo if not methods)
    written = sent = 0
    rates: dict[str, float] = {}
    stopped = None
    bar = tqdm(total=len(todo), initial=skipped, desc="bench", unit="cell",
               disable=False if progress else None if progress is None else True)  # fmt: skip
    try:
        for cell, methods in todo:
            if not methods:
                continue
            bar.set_postfix_str(f"{cell.block.name} {cell.dataset} {cell.shots}-shot s{cell.seed}")
            ds = data.get(cell.dataset)
            test = subsample_test(ds.test, cell.block.test_cap)
            provider = pool.get(cell.block.provider)
            task = datasets.load_task(cell.dataset)
            for method in methods:
                start = time.perf_counter()
                try:
                    (result,) = evaluate(
                        provider=provider, task=task, dataset=cell.dataset,
                        train_pool=ds.train, test=test, methods=[method], shots=cell.shots,
                        seed=cell.seed, cache=cache, budget=budget, test_budget=test_budget,
                        progress=False, params=cell.block.params,
                    )  # fmt: skip
                except BudgetExceeded as exc:
                    stopped = str(exc)
                    return GridRun(len(todo), skipped, written, sent, stopped)
                wall = time.perf_counter() - start
                if result.samples_sent:
                    rates[cell.block.name] = result.queries_sent / result.samples_sent
                rate = rates.get(cell.block.name, 1.0)
                _append(config.results_path,
                        [_row(result, cell, wall=wall, rate=rate, test_cap=cell.block.test_cap)])  # fmt: skip
                written, sent = written + 1, sent + result.queries_sent
            bar.update(1)
    finally:
        bar.close()
        store.close()
        if owned:
            pool.close()
    return GridRun(len(todo), skipped, written, sent, stopped)
