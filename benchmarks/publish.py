"""Write every published number of README.md and docs/*.md from ``benchmarks/results/``.

Usage::

    python benchmarks/publish.py           # rewrite every generated block (and the grid plots)
    python benchmarks/publish.py --check   # exit 1, naming each block that differs

``make report`` runs the first. A block is the text between two marker lines::

    <!-- published:NAME begin (written by `make report` from benchmarks/results/) -->
    ...
    <!-- published:NAME end -->

(the grid's tables keep the ``bench-grid`` markers of ``maas-tune bench report``). Each
block is rendered from result files only: no model, no network. A measured number in
the README or the docs lives in such a block, or it is not published.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the sibling modules are importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _published_dev as dev_blocks
import _published_grid as grid_blocks
import _published_scripts as script_blocks
from _published_grid import GridResults

from maas_tune.bench.report import BEGIN_MARKER, END_MARKER

#: The repository this file belongs to.
ROOT = Path(__file__).resolve().parent.parent
#: Where a result file name is looked up, relative to the repository root.
RESULTS = Path("benchmarks") / "results"
#: The grid's config, relative to the repository root.
GRID_CONFIG = Path("benchmarks") / "grid.toml"


def begin_marker(name: str) -> str:
    """The line that opens block ``name``."""
    return f"<!-- published:{name} begin (written by `make report` from benchmarks/results/) -->"


def end_marker(name: str) -> str:
    """The line that closes block ``name``."""
    return f"<!-- published:{name} end -->"


@dataclass(frozen=True)
class Block:
    """One generated block: where it lives and how it is rendered from the results."""

    name: str
    page: str  # relative to the repository root
    render: Callable[[Path, GridResults], str]  # (results folder, grid) -> markdown
    begin: str = ""
    end: str = ""

    @property
    def markers(self) -> tuple[str, str]:
        """The opening and closing lines of this block in its page."""
        return (self.begin or begin_marker(self.name), self.end or end_marker(self.name))


def blocks() -> list[Block]:
    """Every generated block of README.md and docs/*.md, in page order."""
    g, s = grid_blocks, script_blocks
    return [
        Block("readme-accuracy", "README.md", lambda r, gr: g.readme_accuracy(r, gr)),
        Block(
            "grid",
            "docs/benchmarks.md",
            lambda r, gr: gr.report(),
            begin=BEGIN_MARKER,
            end=END_MARKER,
        ),
        Block("grid-findings", "docs/benchmarks.md", lambda r, gr: g.findings(gr)),
        Block("grid-prompt-findings", "docs/benchmarks.md", lambda r, gr: g.prompt_findings(gr)),
        Block("grid-cost", "docs/benchmarks.md", lambda r, gr: g.cost_ratios(gr)),
        Block("speed", "docs/benchmarks.md", lambda r, gr: s.speed(r)),
        Block("accuracy", "docs/benchmarks.md", lambda r, gr: g.accuracy(gr)),
        Block("chat", "docs/benchmarks.md", lambda r, gr: s.chat(r)),
        Block("server-throughput", "docs/benchmarks.md", lambda r, gr: s.server_throughput(r)),
        Block("async-throughput", "docs/benchmarks.md", lambda r, gr: s.async_throughput(r)),
        Block("chat-summary", "docs/chat.md", lambda r, gr: s.chat_summary(r)),
        Block("concepts-dect", "docs/concepts.md", lambda r, gr: g.concepts_dect(r, gr)),
        Block("server-memory", "docs/http.md", lambda r, gr: s.server_memory(r)),
        Block("hosted-run", "docs/http.md", lambda r, gr: s.hosted_run(r)),
        Block("agreement", "docs/http.md", lambda r, gr: s.agreement(r)),
        Block("reliability-memory", "docs/reliability.md", lambda r, gr: s.server_memory(r)),
        Block("scale-out", "docs/scale-out.md", lambda r, gr: s.scale_out(r)),
        Block("dev-commands", "docs/dect-research.md", lambda r, gr: dev_blocks.commands(r)),
        Block("dev-candidates", "docs/dect-research.md", lambda r, gr: dev_blocks.candidates(r)),
        Block("dev-prior", "docs/dect-research.md", lambda r, gr: dev_blocks.prior(r)),
        Block("dev-defaults", "docs/dect-research.md", lambda r, gr: dev_blocks.defaults(r)),
        Block("dev-timing", "docs/dect-research.md", lambda r, gr: dev_blocks.timing(r)),
    ]


def _span(page: str, block: Block, path: Path) -> tuple[int, int]:
    """Where the body of ``block`` starts and ends in ``page``; an error if not exactly once."""
    begin, end = block.markers
    if page.count(begin) != 1 or page.count(end) != 1:
        raise ValueError(
            f"{path} must hold the lines {begin!r} and {end!r} exactly once each "
            f"(block {block.name!r}); restore them around the block's text"
        )
    start, stop = page.index(begin) + len(begin), page.index(end)
    if stop < start:
        raise ValueError(f"{path}: the end marker of block {block.name!r} comes before its start")
    return start, stop


def render(root: Path) -> dict[str, str]:
    """Each block's text, rendered from ``root``'s result files (keyed by block name)."""
    results = root / RESULTS
    grid = GridResults.load(root, GRID_CONFIG)
    if not grid.rows:
        raise ValueError(
            f"{grid.config.results_path} holds no runs: run `maas-tune bench run "
            f"{GRID_CONFIG}` before `make report`"
        )
    return {b.name: b.render(results, grid).strip("\n") for b in blocks()}


def check(root: Path = ROOT) -> list[str]:
    """One line per block whose published text differs from its rendering; empty if none."""
    rendered = render(root)
    problems = []
    for b in blocks():
        path = root / b.page
        page = path.read_text(encoding="utf-8")
        start, stop = _span(page, b, path)
        have, want = page[start:stop].strip("\n"), rendered[b.name]
        if have != want:
            problems.append(
                f"{b.page}: block {b.name!r} differs from the results: "
                f"{_first_difference(have, want)}; run `make report`"
            )
    return problems


def _first_difference(have: str, want: str) -> str:
    for i, (a, b) in enumerate(zip(have.splitlines(), want.splitlines(), strict=False)):
        if a != b:
            return f"line {i + 1} reads {a!r}, the results give {b!r}"
    return f"{len(have.splitlines())} lines published, {len(want.splitlines())} rendered"


def write(root: Path = ROOT, *, plots: bool = True) -> list[Path]:
    """Rewrite every block (and, with ``plots``, the grid's PNGs); return the pages changed."""
    if plots:
        GridResults.load(root, GRID_CONFIG).write_plots()
    rendered = render(root)
    changed: list[Path] = []
    for b in blocks():
        path = root / b.page
        page = path.read_text(encoding="utf-8")
        start, stop = _span(page, b, path)
        new = f"{page[:start]}\n{rendered[b.name]}\n{page[stop:]}"
        if new != page:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    parser.add_argument("--no-plots", action="store_true", help="leave docs/grid-plots/ as it is")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    for path in dict.fromkeys(write(plots=not args.no_plots)):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
