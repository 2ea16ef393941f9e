"""The ``maas-tune`` CLI end to end on the real model, and its error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from maas_tune.cli import commands as _cli_commands
from maas_tune.cli import main

EVAL = ["eval", "--dataset", "sst2", "--shots", "4", "--seed", "0", "--test-limit", "24", "--quiet"]


@pytest.fixture()
def use_gemma(gemma, monkeypatch):
    """Make the CLI reuse the session's model instead of loading its own."""
    monkeypatch.setattr(_cli_commands, "_provider", lambda args, model=None: gemma)
    return gemma


def run_json(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.model
def test_eval_json_then_rerun_sends_nothing_then_offline(use_gemma, capsys, db_path):
    argv = EVAL + [
        "--method",
        "zero-shot,calibrated,dect",
        "--cache",
        str(db_path),
        "--budget",
        "t",
        "--max-queries",
        "64",
        "--json",
    ]
    first = run_json(capsys, argv)
    assert [r["method"] for r in first] == ["zero-shot", "calibrated", "dect"]
    for key in (
        "method",
        "dataset",
        "shots",
        "seed",
        "accuracy",
        "n_test",
        "queries_sent",
        "cache_hits",
        "budget_limit",
        "budget_spent",
        "fit_seconds",
    ):
        assert key in first[0]
    r = first[0]
    assert r["n_test"] == 24 and r["budget_limit"] == 64
    assert r["queries_sent"] == 8 + 1 + 24  # shots, content-free, test
    assert r["budget_spent"] == 9 and 0.0 <= r["accuracy"] <= 1.0
    second = run_json(capsys, argv)
    assert second[0]["queries_sent"] == 0 and second[0]["cache_hits"] == 33
    assert [x["accuracy"] for x in second] == [x["accuracy"] for x in first]
    offline = run_json(capsys, argv + ["--offline"])
    assert offline[0]["queries_sent"] == 0


@pytest.mark.model
def test_offline_with_cold_cache_fails_clearly(use_gemma, capsys, db_path):
    code = main(EVAL + ["--cache", str(db_path), "--offline"])
    err = capsys.readouterr().err
    assert code == 1
    assert "offline mode" in err and "8 of 8 samples are not in the cache" in err
    assert "Traceback" not in err


@pytest.mark.model
def test_budget_too_small_is_refused_before_sending(use_gemma, capsys, db_path):
    code = main(EVAL + ["--cache", str(db_path), "--budget", "tiny", "--max-queries", "5"])
    err = capsys.readouterr().err
    assert code == 1 and "budget 'tiny' would be exceeded" in err
    assert main(["budget", "show", "tiny", "--cache", str(db_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["spent_queries"] == 0 and row["max_queries"] == 5


@pytest.mark.model
def test_fit_save_then_predict(use_gemma, capsys, db_path, tmp_path):
    out_dir = tmp_path / "decoder"
    assert (
        main(
            [
                "fit",
                "--dataset",
                "sst2",
                "--shots",
                "4",
                "--cache",
                str(db_path),
                "--out",
                str(out_dir),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a joyous, moving film"}\n{"text": "tedious and ugly"}\n')
    assert (
        main(
            [
                "predict",
                "--decoder",
                str(out_dir),
                "--input",
                str(inputs),
                "--cache",
                str(db_path),
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [set(r) for r in rows] == [{"text", "prediction", "probabilities"}] * 2
    assert all(r["prediction"] in ("negative", "positive") for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", "--dataset", "nope"], "unknown dataset"),
        (["eval", "--dataset", "sst2", "--method", "magic"], "unknown method 'magic'"),
        (["eval"], "--dataset NAME"),
        (["eval", "--train", "x.jsonl", "--dataset", "sst2"], "not both"),
        (["budget", "reset"], "needs a budget name"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_1(argv, needle, capsys, db_path):
    code = main(argv + ["--cache", str(db_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert needle in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--shots", "many"])
    assert exc.value.code == 2


def test_cache_stats_and_budget_show_on_empty_store(capsys, db_path):
    assert main(["cache", "stats", "--cache", str(db_path)]) == 0
    assert "entries: 0" in capsys.readouterr().out
    assert main(["budget", "show", "--cache", str(db_path)]) == 0
    assert "no budgets yet" in capsys.readouterr().out


def test_datasets_lists_every_bundled_dataset(capsys):
    assert main(["datasets", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert {"sst2", "agnews", "trec", "rte", "subj"} <= names


@pytest.mark.model
@pytest.mark.slow
def test_console_script_end_to_end_in_a_subprocess(gemma, db_path):
    """The real entry point, its own process and model load, as a user runs it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = [
        sys.executable,
        "-m",
        "maas_tune",
        *EVAL,
        "--method",
        "dect",
        "--json",
        "--cache",
        str(db_path),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(x) for x in proc.stdout.splitlines()]
    assert row["method"] == "dect" and row["n_test"] == 24 and row["queries_sent"] == 32


def _fill_cache(db_path, n=5):
    from maas_tune.client import Client
    from maas_tune.storage import Store
    from maas_tune.storage.cache import ScoreCache

    from ..fakes import FakeProvider
    from ..test_client import TASK

    Client(FakeProvider(), cache=ScoreCache(Store(db_path)), progress=False).score(
        TASK, [f"t{i}" for i in range(n)]
    )


def test_cache_export_then_clear(capsys, db_path, tmp_path):
    _fill_cache(db_path)
    out = tmp_path / "export.jsonl"
    assert main(["cache", "export", "--output", str(out), "--cache", str(db_path)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and {"key", "logprobs", "hidden", "prompt_tokens"} <= set(rows[0])
    assert main(["cache", "stats", "--cache", str(db_path)]) == 0
    assert "entries: 5" in capsys.readouterr().out
    assert main(["cache", "clear", "--yes", "--cache", str(db_path)]) == 0
    assert "deleted 5 entries" in capsys.readouterr().out
    assert main(["cache", "stats", "--cache", str(db_path)]) == 0
    assert "entries: 0" in capsys.readouterr().out


def test_budget_set_show_reset(capsys, db_path):
    assert main(["budget", "set", "b1", "--max-queries", "10", "--cache", str(db_path)]) == 0
    assert "max queries 10" in capsys.readouterr().out
    assert main(["budget", "show", "--cache", str(db_path)]) == 0
    assert "b1: 0 of 10 queries spent" in capsys.readouterr().out
    assert main(["budget", "reset", "b1", "--cache", str(db_path)]) == 0
    assert main(["budget", "set", "b1", "--cache", str(db_path)]) == 1
    assert "needs --max-queries" in capsys.readouterr().err
