"""The benchmark harness: config checks, a resumable grid, the report and the plots.

Most cases run on the deterministic fake provider; one smoke slice of the real grid
runs the embedded Gemma model through every kind of block (in process, and through
``maas-tune serve``'s app with the embeddings endpoint).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from maas_tune import datasets
from maas_tune.bench import (
    ProviderPool,
    cells,
    load_config,
    parse_config,
    read_results,
    run_grid,
    summarize,
    write_report,
)
from maas_tune.cli import main
from maas_tune.decoders import DecT
from maas_tune.errors import ConfigurationError, ProviderError
from maas_tune.experiment import subsample_test
from maas_tune.persistence import load_decoder, save_decoder
from maas_tune.scores import Scores

from ..fakes import FakeProvider

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(tmp_path: Path, **top):
    raw = {
        "output": "out",
        "cache": "cache.sqlite",
        "datasets": ["sst2", "trec"],
        "shots": [1, 2],
        "seeds": [0, 1],
        "test_cap": 20,
        "block": [{"name": "decoders", "methods": ["zero-shot", "dect-logprobs", "dect"]},
                  {"name": "icl", "methods": ["icl"], "seeds": [0], "test_cap": 10}],
    }  # fmt: skip
    raw.update(top)
    return parse_config(raw, base=tmp_path)


# -- config --------------------------------------------------------------------
def test_the_shipped_grid_covers_every_bundled_dataset_method_and_shots_setting():
    config = load_config(ROOT / "benchmarks" / "grid.toml")
    rows = config.row_names()
    for method in ("icl", "linear-probe", "ytuning", "bdpl", "prompt-tuning", "dect",
                   "dect-logprobs", "dect+embeddings", "bdpl-paper", "prompt-tuning-paper"):  # fmt: skip
        assert method in rows
    decoders = config.blocks[0]
    assert decoders.datasets == tuple(datasets.available())
    assert decoders.shots == (1, 4, 16) and decoders.seeds == (0, 1, 2, 3, 4)
    assert config.output == ROOT / "benchmarks" / "results" / "grid"
    assert config.report_dir == ROOT / "docs" / "benchmarks.md"
    # Rows re-scored on a smaller test set for a like-for-like table are not plotted twice.
    assert "dect@200" in rows and "dect@200" not in config.plotted_rows()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"colour": "blue"}, "unknown key(s) ['colour']"),
        ({"block": []}, "at least one [[block]]"),
        ({"block": [{"methods": ["dekt"]}]}, "unknown method(s) ['dekt']"),
        ({"datasets": ["imdb"]}, "unknown dataset(s) ['imdb']"),
        ({"shots": [0]}, "integers >= 1"),
        ({"seeds": "0-4"}, "non-empty list"),
        ({"test_cap": -5}, "test_cap must be a positive integer"),
        ({"block": [{"methods": ["dect"]}, {"methods": ["dect"]}]}, "give one a suffix"),
        ({"block": [{"methods": ["dect"], "params": {"icl": {"demos_per_class": 2}}}]},
         "not in this block's methods"),
        ({"block": [{"methods": ["dect"], "params": {"dect": {"lambda": 1}}}]},
         "has no parameter 'lambda'"),
        ({"block": [{"methods": ["dect"], "provider": {"kind": "local", "embeddings": True}}]},
         'needs a provider of kind "serve" or "http"'),
        ({"block": [{"methods": ["dect"], "provider": {"kind": "http"}}]}, "needs base_url"),
        ({"block": [{"methods": ["dect"], "plot": "yes"}]}, "plot must be true or false"),
    ],
)  # fmt: skip
def test_a_bad_config_names_the_key_and_what_it_may_be(tmp_path, change, words):
    with pytest.raises(ConfigurationError) as err:
        _config(tmp_path, **change)
    assert words in str(err.value)


def test_a_missing_or_broken_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("shots = [1,\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(bad)


def test_blocks_inherit_the_grid_and_only_narrows_it(tmp_path):
    config = _config(tmp_path)
    decoders, icl = config.blocks
    assert decoders.seeds == (0, 1) and icl.seeds == (0,) and icl.test_cap == 10
    assert len(cells(config)) == 2 * 2 * 2 + 2 * 2 * 1
    narrow = config.only(datasets=["trec"], methods=["dect"])
    assert [b.methods for b in narrow.blocks] == [("dect",)]
    assert {c.dataset for c in cells(narrow)} == {"trec"}


def test_smaller_test_caps_take_a_subset_of_larger_ones():
    test = datasets.load("agnews", "test")
    small, large = subsample_test(test, 100), subsample_test(test, 1000)
    assert len(small) == 100 and len(large) == 1000
    assert {id(e) for e in small} <= {id(e) for e in large}


# -- the grid ------------------------------------------------------------------
def test_the_grid_writes_a_row_per_run_and_a_rerun_sends_nothing(tmp_path):
    config, fake = _config(tmp_path), FakeProvider()
    run = run_grid(config, pool=ProviderPool(local=fake), progress=False)
    rows = read_results(config.results_path)
    assert run.rows_written == len(rows) == 2 * 2 * 2 * 3 + 2 * 2 * 1
    assert run.queries_sent == len(fake.sent) > 0
    assert len(fake.sent) == len(set(fake.sent)), "a prompt was paid for twice"
    by_key = {(r["row"], r["dataset"], r["shots"], r["seed"]): r for r in rows}
    dect = by_key[("dect", "trec", 2, 1)]
    assert dect["n_test"] == 20 and dect["test_cap"] == 20 and 0 <= dect["accuracy"] <= 1
    # trec has 6 classes: 2 shots each to fit; the test set is the rest of the queries.
    assert dect["fit_queries"] == 12 and dect["queries_needed"] == 12 + 20
    icl = by_key[("icl", "sst2", 2, 0)]
    assert icl["fit_queries"] == 0 and icl["queries_needed"] == 10
    # ICL prompts carry demonstrations: far more tokens per query than a decoder's.
    assert icl["prompt_tokens_needed"] / 10 > 2 * dect["prompt_tokens_needed"] / 32

    sent = len(fake.sent)
    again = run_grid(config, pool=ProviderPool(local=fake), progress=False)
    assert (again.rows_written, again.queries_sent, again.cells_skipped) == (0, 0, again.cells)
    assert len(fake.sent) == sent


def test_an_interrupted_grid_resumes_where_it_stopped(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(ProviderError):
        run_grid(config, pool=ProviderPool(local=FakeProvider(fail_after=60)), progress=False)
    kept = read_results(config.results_path)
    assert 0 < len(kept) < 28
    # A crash while appending leaves a torn last line: it is skipped and run again.
    with config.results_path.open("a", encoding="utf-8") as f:
        f.write('{"row": "dect", "dataset"')
    fake = FakeProvider()
    run = run_grid(config, pool=ProviderPool(local=fake), progress=False)
    rows = read_results(config.results_path)
    assert len(rows) == 28 and run.rows_written == 28 - len(kept)
    # What the first run paid for is not paid for again.
    first_rows = {(r["dataset"], r["shots"], r["seed"]) for r in kept if r["block"] == "decoders"}
    assert run.cells_skipped >= len(first_rows) - 1


def test_a_spent_budget_stops_the_grid_and_keeps_the_rows(tmp_path):
    config = _config(tmp_path, max_queries=30)
    run = run_grid(config, pool=ProviderPool(local=FakeProvider()), progress=False)
    assert run.stopped_by_budget and "budget" in run.stopped_by_budget
    rows = read_results(config.results_path)
    assert len(rows) == run.rows_written > 0
    from maas_tune import QueryBudget

    assert QueryBudget("bench", store=config.cache).status().spent_queries <= 30


# -- the report ----------------------------------------------------------------
def test_the_report_has_a_table_per_dataset_and_the_plots(tmp_path):
    config = _config(tmp_path)
    run_grid(config, pool=ProviderPool(local=FakeProvider()), progress=False)
    paths = write_report(config)
    table = (config.output / "table.md").read_text(encoding="utf-8")
    assert paths[0] == config.output / "table.md"
    for heading in ("## sst2", "## trec", "## Accuracy at the largest number of shots"):
        assert heading in table
    assert " ± " in table and "**" in table and "≤ 10" in table
    for d in ("sst2", "trec"):
        png = config.output / "plots" / f"{d}.png"
        assert png in paths and png.read_bytes()[:8] == PNG_MAGIC
        assert f"(plots/{d}.png)" in table
    summaries = {
        (s.row, s.dataset, s.shots): s for s in summarize(read_results(config.results_path))
    }
    s = summaries[("dect", "sst2", 2)]
    rows = [r for r in read_results(config.results_path)
            if (r["row"], r["dataset"], r["shots"]) == ("dect", "sst2", 2)]  # fmt: skip
    assert s.seeds == 2 and s.accuracy_mean == pytest.approx(np.mean([r["accuracy"] for r in rows]))


def test_the_report_shows_macro_f1_and_ece_and_a_reliability_diagram(tmp_path):
    import json

    from maas_tune.bench.report import MISSING

    config = _config(tmp_path)
    run_grid(config, pool=ProviderPool(local=FakeProvider()), progress=False)
    rows = read_results(config.results_path)
    assert all(r["macro_f1"] is not None and r["ece"] is not None for r in rows)
    paths = write_report(config)
    table = (config.output / "table.md").read_text(encoding="utf-8")
    head = next(line for line in table.splitlines() if line.startswith("| method | 1-shot"))
    assert "| macro-F1 (2-shot) | ECE |" in head
    s = {(x.row, x.dataset, x.shots): x for x in summarize(rows)}[("dect", "trec", 2)]
    line = next(line for line in table.splitlines() if line.startswith("| dect |")
                and s.macro_f1 in line)  # fmt: skip
    assert f"| {s.macro_f1} | {s.ece} |" in line and " ± " in s.macro_f1
    for d in ("sst2", "trec"):
        png = config.output / "plots" / f"{d}-reliability.png"
        assert png in paths and png.read_bytes()[:8] == PNG_MAGIC
        assert f"(plots/{d}-reliability.png)" in table
    # Results written before these metrics existed still render, with a dash.
    old = [{k: v for k, v in r.items() if k not in ("macro_f1", "log_loss", "ece", "per_class",
            "confusion_matrix", "labels", "reliability")} for r in rows]  # fmt: skip
    config.results_path.write_text("".join(json.dumps(r) + "\n" for r in old))
    paths = write_report(config)
    table = (config.output / "table.md").read_text(encoding="utf-8")
    lines = [line for line in table.splitlines() if line.startswith("| dect |")]
    assert all(f"| {MISSING} | {MISSING} |" in line for line in lines if line.count("|") > 8)
    assert sum(line.count("|") > 8 for line in lines) == 2  # one per dataset table
    assert not any("reliability" in p.name for p in paths)


def test_the_shipped_results_render_without_the_new_metrics():
    from maas_tune.bench.report import render_markdown

    config = load_config(ROOT / "benchmarks" / "grid.toml")
    text = render_markdown(config, read_results(config.results_path))
    assert "macro-F1 (16-shot)" in text and "### trec" not in text  # level 1: "## trec"
    assert "## trec" in text


def test_the_report_is_dated_by_its_newest_run_so_the_same_results_render_the_same_text():
    from maas_tune.bench.report import render_markdown

    config = load_config(ROOT / "benchmarks" / "grid.toml")
    rows = read_results(config.results_path)
    newest = max(str(r["finished"])[:10] for r in rows)
    text = render_markdown(config, rows)
    assert f"Generated {newest} from {len(rows)} runs" in text
    assert render_markdown(config, rows) == text


def test_the_report_can_fill_a_docs_page_between_its_markers(tmp_path):
    from maas_tune.bench.report import BEGIN_MARKER, END_MARKER

    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    page.write_text(
        f"# Benchmarks\n\nintro\n\n{BEGIN_MARKER}\nSTALE TABLE\n{END_MARKER}\n\n## After\n"
    )
    config = _config(tmp_path, report="docs/benchmarks.md")
    run_grid(config, pool=ProviderPool(local=FakeProvider()), progress=False)
    for _ in range(2):  # idempotent: a second report replaces the first
        write_report(config)
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nintro") and text.endswith("## After\n")
    assert "STALE TABLE" not in text and text.count("## Benchmark grid") == 1 and "### trec" in text
    assert "(grid-plots/sst2.png)" in text
    assert (tmp_path / "docs" / "grid-plots" / "sst2.png").read_bytes()[:8] == PNG_MAGIC
    page.write_text("# Benchmarks\n")
    with pytest.raises(ConfigurationError, match="needs the lines"):
        write_report(config, plots=False)


def test_bench_report_from_the_cli(tmp_path, capsys):
    config = _config(tmp_path)
    run_grid(config, pool=ProviderPool(local=FakeProvider()), progress=False)
    toml = tmp_path / "grid.toml"
    toml.write_text(
        'output = "out"\ncache = "cache.sqlite"\ndatasets = ["sst2", "trec"]\nshots = [1, 2]\n'
        'seeds = [0, 1]\ntest_cap = 20\n[[block]]\nname = "decoders"\n'
        'methods = ["zero-shot", "dect-logprobs", "dect"]\n',
        encoding="utf-8",
    )
    assert main(["bench", "report", str(toml), "--no-plots"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert "## trec" in (tmp_path / "out" / "table.md").read_text(encoding="utf-8")
    assert main(["bench", "run", str(toml), "--dataset", "rte"]) == 1
    assert "no cell of" in capsys.readouterr().err


# -- DecT on log-probs only ----------------------------------------------------
def test_dect_logprobs_ignores_the_hidden_states_it_is_given(tmp_path):
    rng = np.random.default_rng(0)
    X = Scores(
        label_logprobs=rng.normal(size=(24, 2)).astype(np.float32),
        hidden=rng.normal(size=(24, 16)).astype(np.float32),
        cache_hit=np.zeros(24, dtype=bool),
        prompt_tokens=np.full(24, 10),
        labels=("negative", "positive"),
    )
    y = np.arange(24) % 2
    only_scores = DecT(use_hidden=False, random_state=0).fit(X, y)
    assert only_scores.uses_hidden_ is False
    no_hidden = dataclasses.replace(X, hidden=None)
    np.testing.assert_array_equal(only_scores.predict(X), only_scores.predict(no_hidden))
    assert DecT(random_state=0).fit(X, y).uses_hidden_ is True
    save_decoder(only_scores, tmp_path / "d")
    loaded, _meta = load_decoder(tmp_path / "d")
    assert loaded.use_hidden is False and loaded.uses_hidden_ is False
    np.testing.assert_array_equal(loaded.predict(X), only_scores.predict(X))


# -- the smoke slice of the real grid (CI) -------------------------------------
def test_a_slice_of_the_shipped_grid_on_the_real_model(gemma, tmp_path):
    """Every kind of block of benchmarks/grid.toml on Gemma: small, but end to end."""
    pytest.importorskip("matplotlib", reason="plots need the 'bench' extra")
    pytest.importorskip("uvicorn", reason="the serve block needs the 'server' extra")
    shipped = load_config(ROOT / "benchmarks" / "grid.toml")
    config = parse_config({
        "output": "out", "cache": "cache.sqlite", "datasets": ["sst2"], "shots": [1, 4],
        "seeds": [0, 1], "test_cap": 12,
        "block": [
            {"name": "decoders", "methods": ["zero-shot", "dect-logprobs", "dect"]},
            {"name": "embeddings", "methods": ["dect"], "suffix": "+embeddings",
             "provider": {"kind": "serve", "strategy": "top_logprobs", "embeddings": True},
             "shots": [4], "seeds": [0]},
            {"name": "prompt", "methods": ["icl", "bdpl", "prompt-tuning"], "seeds": [0],
             "shots": [1], "test_cap": 6,
             "params": {"bdpl": {"epochs": 1}, "prompt-tuning": {"epochs": 1}}},
        ],
    }, base=tmp_path)  # fmt: skip
    assert set(config.row_names()) <= set(shipped.row_names())
    with ProviderPool(local=gemma) as pool:
        run = run_grid(config, pool=pool, progress=False)
        assert run.rows_written == 2 * 2 * 3 + 1 + 3 and run.queries_sent > 0
        again = run_grid(config, pool=pool, progress=False)
    assert again.queries_sent == 0 and again.rows_written == 0
    rows = {(r["row"], r["shots"], r["seed"]): r for r in read_results(config.results_path)}
    emb = rows[("dect+embeddings", 4, 0)]
    # Top-5 log-probs and an embedding: at least two queries per test sample.
    assert emb["provider"] == "with-embeddings" and emb["queries_needed"] >= 2 * 12
    assert rows[("bdpl", 1, 0)]["fit_queries"] > 0
    assert rows[("prompt-tuning", 1, 0)]["queries_needed"] == 0
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["wall_seconds"] >= 0
    paths = write_report(config)
    assert (config.output / "plots" / "sst2.png").read_bytes()[:8] == PNG_MAGIC
    table = paths[0].read_text(encoding="utf-8")
    assert "prompt-tuning (white-box)" in table and "dect+embeddings" in table
