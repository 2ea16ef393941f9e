"""Every measured number in README.md and docs/*.md is rendered from benchmarks/results/.

Pure file rendering (``benchmarks/publish.py``): no model, no network. A page that
disagrees with its result files fails here; ``make report`` rewrites it.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def publish() -> Iterator[ModuleType]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("publish")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _copy_repo(tmp_path: Path) -> Path:
    """The pages and result files of the repository, in a folder of their own."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copytree(ROOT / "benchmarks" / "results", root / "benchmarks" / "results")
    shutil.copy(ROOT / "benchmarks" / "grid.toml", root / "benchmarks" / "grid.toml")
    shutil.copy(ROOT / "README.md", root / "README.md")
    return root


def _block_body(publish: ModuleType, root: Path, name: str) -> tuple[Path, str, int, int]:
    block = next(b for b in publish.blocks() if b.name == name)
    path = root / block.page
    page = path.read_text(encoding="utf-8")
    start, stop = publish._span(page, block, path)
    return path, page, start, stop


def test_every_published_block_matches_its_result_files(publish: ModuleType) -> None:
    assert publish.check(ROOT) == []


def test_every_marker_in_the_pages_names_a_known_block(publish: ModuleType) -> None:
    known = {b.name for b in publish.blocks()}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {
        m for p in pages for m in re.findall(r"<!-- published:([\w-]+) begin", p.read_text("utf-8"))
    }
    assert found == known - {"grid"}


def _dect_agnews(root: Path) -> str:
    """AG News DecT at 16 shots as the README shows it, computed here from the result rows."""
    results = root / "benchmarks" / "results" / "grid" / "results.jsonl"
    acc = [
        r["accuracy"]
        for line in results.read_text("utf-8").splitlines()
        if (r := json.loads(line))["row"] == "dect"
        and r["dataset"] == "agnews"
        and r["shots"] == 16
    ]
    return f"{statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f}"


def test_a_tampered_number_in_a_page_is_caught(publish: ModuleType, tmp_path: Path) -> None:
    root = _copy_repo(tmp_path)
    path, page, start, stop = _block_body(publish, root, "readme-accuracy")
    body, true = page[start:stop], _dect_agnews(root)
    assert true in body  # AG News DecT at 16 shots, from the grid
    path.write_text(page[:start] + body.replace(true, "0.830 ± 0.014") + page[stop:], "utf-8")

    problems = publish.check(root)

    assert len(problems) == 1
    assert "README.md: block 'readme-accuracy' differs" in problems[0]
    assert "0.830 ± 0.014" in problems[0] and true in problems[0]


def test_a_changed_result_file_is_caught(publish: ModuleType, tmp_path: Path) -> None:
    root = _copy_repo(tmp_path)
    path = root / "benchmarks" / "results" / "throughput.json"
    data = json.loads(path.read_text("utf-8"))
    data["cache_hit_samples_per_s"] = 12345.0
    path.write_text(json.dumps(data), "utf-8")

    problems = publish.check(root)

    assert {p.split(":")[0] for p in problems} == {"README.md", "docs/benchmarks.md"}
    assert any("12,345 samples/s" in p for p in problems)


def test_write_makes_a_tampered_page_agree_again(publish: ModuleType, tmp_path: Path) -> None:
    root = _copy_repo(tmp_path)
    path, page, start, stop = _block_body(publish, root, "grid")
    path.write_text(page[:start] + "\nSTALE\n" + page[stop:], "utf-8")
    assert publish.check(root) != []

    assert publish.write(root, plots=False) == [path]
    assert publish.check(root) == []


def test_the_blocks_render_from_whatever_the_grid_holds(
    publish: ModuleType, tmp_path: Path
) -> None:
    # e.g. a grid rerun in progress: only the decoders on two datasets so far
    root = _copy_repo(tmp_path)
    results = root / "benchmarks" / "results" / "grid" / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text("utf-8").splitlines()]
    kept = [r for r in rows if r["block"] == "decoders" and r["dataset"] in ("sst2", "agnews")]
    results.write_text("".join(json.dumps(r) + "\n" for r in kept), "utf-8")

    rendered = publish.render(root)

    assert "bdpl" not in rendered["grid-cost"] and "### trec" not in rendered["grid"]
    assert _dect_agnews(root) in rendered["readme-accuracy"]
    results.write_text("", "utf-8")
    with pytest.raises(ValueError, match="holds no runs: run `maas-tune bench run"):
        publish.render(root)


def test_a_page_without_its_markers_names_them(publish: ModuleType, tmp_path: Path) -> None:
    root = _copy_repo(tmp_path)
    readme = root / "README.md"
    readme.write_text(
        readme.read_text("utf-8").replace("published:readme-accuracy end", "x"), "utf-8"
    )

    with pytest.raises(ValueError, match=r"README.md must hold the lines .*readme-accuracy end"):
        publish.check(root)


def test_the_dev_tables_say_when_a_candidate_beats_its_default(
    publish: ModuleType, tmp_path: Path
) -> None:
    """The dev protocol's rule (the best five-dataset mean becomes the default) is read
    from the result files, so a result where a candidate wins says so on the page."""
    dev = importlib.import_module("_published_dev")
    root = _copy_repo(tmp_path)
    results = root / "benchmarks" / "results"
    said = dev.candidates(results)
    assert "LR: default" in said and "LR, alpha 0.01 (default before)" in said
    path = results / "dect_research" / "dev_16shot.json"
    data = json.loads(path.read_text("utf-8"))
    old = next(r for r in data["rows"] if r["method"] == "lr:alpha=0.01")
    old["mean"] = 0.999
    path.write_text(json.dumps(data), "utf-8")
    assert "best candidate LR, alpha 0.01 (default before) (0.999)" in dev.candidates(results)
    assert publish.check(root) != []  # the page no longer matches its results
