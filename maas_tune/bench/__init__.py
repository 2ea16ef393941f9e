"""The benchmark harness: methods × datasets × shots × seeds through one cache and budget.

Driven by a TOML file (``benchmarks/grid.toml``): ``maas-tune bench run CONFIG`` runs
what is not yet in the results file, ``maas-tune bench report CONFIG`` writes the
markdown table and the plots. Plots need ``pip install 'maas-tune[bench]'``.
"""

from __future__ import annotations

from ._providers import ProviderPool
from .config import BenchConfig, Block, BlockProvider, load_config, parse_config
from .grid import Cell, GridRun, cells, read_results, run_grid
from .report import Summary, render_markdown, summarize, write_report

__all__ = [
    "BenchConfig",
    "Block",
    "BlockProvider",
    "Cell",
    "GridRun",
    "ProviderPool",
    "Summary",
    "cells",
    "load_config",
    "parse_config",
    "read_results",
    "render_markdown",
    "run_grid",
    "summarize",
    "write_report",
]
