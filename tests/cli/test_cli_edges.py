"""The CLI's sharp edges: confirmation without a terminal, numeric flags checked at the
edge, global flags, closed pipes, budget refusals that name their flag, help texts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maas_tune.cli import commands as _cli_commands
from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.errors import ConfigurationError
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache

from ..fakes import FakeProvider
from ..test_client import TASK

EVAL = ["eval", "--dataset", "sst2", "--shots", "4", "--seed", "0", "--test-limit", "24", "--quiet"]
HUGE = "99999999999999999999999"
INT64_MAX = str(2**63 - 1)


def _fill_cache(db_path: Path, n: int = 5) -> None:
    store = Store(db_path)
    Client(FakeProvider(), cache=ScoreCache(store), progress=False).score(
        TASK, [f"t{i}" for i in range(n)]
    )
    store.close()


def _entries(db_path: Path) -> int:
    store = Store(db_path)
    try:
        return ScoreCache(store).stats().entries
    finally:
        store.close()


# -- A. cache clear asks, and without a terminal refuses unless --yes ------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cache_clear_without_a_terminal_refuses_unless_yes(db_path, capsys, monkeypatch):
    _fill_cache(db_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))  # `echo n | maas-tune cache clear`
    assert main(["cache", "clear", "--cache", str(db_path)]) == 1
    captured = capsys.readouterr()
    assert "pass --yes" in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and "deleted" not in captured.out
    assert _entries(db_path) == 5
    assert main(["cache", "clear", "--yes", "--cache", str(db_path)]) == 0
    assert "deleted 5 entries" in capsys.readouterr().out and _entries(db_path) == 0


@pytest.mark.parametrize(("answer", "code", "left"), [("n\n", 1, 5), ("", 1, 5), ("y\n", 0, 0)])
def test_cache_clear_on_a_terminal_asks(answer, code, left, db_path, capsys, monkeypatch):
    _fill_cache(db_path)
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))  # "" is Ctrl-D: no answer
    assert main(["cache", "clear", "--cache", str(db_path)]) == code
    assert "delete cached answers" in capsys.readouterr().out
    assert _entries(db_path) == left


# -- B. every numeric flag is checked by argparse, naming the flag and the range --------
DECODER = ["--decoder", "d", "--input", "i.jsonl"]
BAD_NUMBERS = [
    (["eval", "--seed", "-1"], "--seed", "from 0 to 4294967295"),
    (["eval", "--seed", HUGE], "--seed", "from 0 to 4294967295"),
    (["fit", "--out", "d", "--seed", str(2**32)], "--seed", "from 0 to 4294967295"),
    (["bench", "run", "g.toml", "--seed", "-3"], "--seed", "from 0 to 4294967295"),
    (["eval", "--shots", HUGE], "--shots", f"from 1 to {INT64_MAX}"),
    (["bench", "run", "g.toml", "--shots", HUGE], "--shots", f"from 1 to {INT64_MAX}"),
    (["eval", "--test-limit", HUGE], "--test-limit", f"from 1 to {INT64_MAX}"),
    (["eval", "--max-queries", HUGE], "--max-queries", f"from 0 to {INT64_MAX}"),
    (["fit", "--out", "d", "--max-prompt-tokens", HUGE], "--max-prompt-tokens", "from 0 to"),
    (["eval", "--max-test-queries", HUGE], "--max-test-queries", f"from 0 to {INT64_MAX}"),
    (["eval", "--batch-size", HUGE], "--batch-size", f"from 1 to {INT64_MAX}"),
    (["eval", "--top-logprobs", HUGE], "--top-logprobs", f"from 1 to {INT64_MAX}"),
    (["predict", *DECODER, "--max-queries", HUGE], "--max-queries", f"from 0 to {INT64_MAX}"),
    (["predict", *DECODER, "--batch-size", "0"], "--batch-size", "must be >= 1, got 0"),
    (["budget", "set", "x", "--max-queries", HUGE], "--max-queries", f"from 0 to {INT64_MAX}"),
    (["budget", "set", "x", "--max-prompt-tokens", HUGE], "--max-prompt-tokens", "from 0 to"),
    (["eval", "--seed", "1.5"], "--seed", "invalid int value: '1.5'"),
    (["eval", "--seed", "9" * 5000], "--seed", "invalid int value: '99999"),
]


@pytest.mark.parametrize(("argv", "flag", "needle"), BAD_NUMBERS)
def test_numeric_flags_are_refused_before_anything_runs(
    argv, flag, needle, db_path, capsys, monkeypatch
):
    def no_provider(*args, **kwargs):
        pytest.fail("a provider was built: the flag was not checked at the edge")

    monkeypatch.setattr(_cli_commands, "_provider", no_provider)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--cache", str(db_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"argument {flag}: " in err and needle in err
    assert len(err.splitlines()[-1]) < 200  # a 5000-digit number is not echoed back in full
    assert not db_path.exists()


def test_numeric_flags_accept_their_bounds():
    from maas_tune.cli import build_parser

    args = build_parser().parse_args(
        ["eval", "--seed", "4294967295", "--max-queries", INT64_MAX, "--max-test-queries", "0"]
    )
    assert (args.seed, args.max_queries, args.max_test_queries) == (2**32 - 1, 2**63 - 1, 0)


def test_budget_caps_beyond_64_bits_are_a_configuration_error(db_path):
    with pytest.raises(ConfigurationError, match="max_queries must be at most 9223372036854775807"):
        QueryBudget("x", max_queries=10**30, store=db_path)
    budget = QueryBudget("x", max_queries=10, store=db_path)
    with pytest.raises(ConfigurationError, match="max_prompt_tokens must be at most"):
        budget.set_limits(max_prompt_tokens=2**63)
    with pytest.raises(ConfigurationError, match="queries must be at most"):
        budget.reserve(10**30)
    budget.set_limits(max_queries=2**63 - 1)  # the largest cap the ledger holds is fine
    assert budget.status().max_queries == 2**63 - 1
    budget.close()


# -- C. global flags, closed pipes, budget refusals, budget show, help ---------------------
def test_debug_and_quiet_before_the_subcommand(db_path, capsys):
    assert main(["--quiet", "budget", "show", "--cache", str(db_path)]) == 0
    assert "no budgets yet" in capsys.readouterr().out
    assert main(["budget", "reset", "nobody", "--cache", str(db_path)]) == 1  # one line ...
    capsys.readouterr()
    assert main(["--debug", "budget", "reset", "nobody", "--cache", str(db_path)]) == 1
    err = capsys.readouterr().err  # ... the traceback (with any API key masked)
    assert "Traceback" in err and "ConfigurationError: no budget named 'nobody'" in err


def _run_into_closed_pipe(argv: list[str], *, read_lines: int = 0) -> subprocess.CompletedProcess:
    """Run the console entry point with its stdout piped to a reader that goes away."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")
    if not read_lines:  # the reader is gone before the first write: deterministic EPIPE
        reader.close()
    with subprocess.Popen(
        [sys.executable, "-m", "maas_tune", *argv], stdout=write_fd, stderr=subprocess.PIPE
    ) as proc:
        os.close(write_fd)
        for _ in range(read_lines):  # as `| head -N`: read N lines, then close
            assert reader.readline()
        reader.close()
        err = proc.stderr.read().decode() if proc.stderr else ""
        code = proc.wait(timeout=300)
    return subprocess.CompletedProcess(argv, code, "", err)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["cache", "stats"], ["cache", "export"], ["budget", "show"], ["budget", "show", "--json"]],
)
def test_a_closed_pipe_ends_quietly(argv, db_path):
    _fill_cache(db_path)
    QueryBudget("b", max_queries=3, store=db_path).close()
    proc = _run_into_closed_pipe([*argv, "--cache", str(db_path)])
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""  # no traceback, no "Exception ignored", no "Broken pipe"


@pytest.mark.slow
def test_export_into_head_ends_quietly(db_path):
    _fill_cache(db_path, n=1500)  # some 400 kB: more than a pipe holds, so the writer blocks
    proc = _run_into_closed_pipe(["cache", "export", "--cache", str(db_path)], read_lines=3)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr == ""


@pytest.mark.slow
def test_datasets_and_help_into_a_closed_pipe_end_quietly():
    proc = _run_into_closed_pipe(["datasets"])
    assert proc.returncode == 141 and proc.stderr == ""
    proc = _run_into_closed_pipe(["eval", "--help"])  # argparse swallows the write's error
    assert proc.returncode in (0, 141) and proc.stderr == ""


@pytest.fixture()
def use_gemma(gemma, monkeypatch):
    """Make the CLI reuse the session's model instead of loading its own."""
    monkeypatch.setattr(_cli_commands, "_provider", lambda args, model=None: gemma)
    return gemma


@pytest.mark.model
@pytest.mark.parametrize(
    ("caps", "preset", "budget", "advice"),
    [
        (["--max-queries", "5"], None, "t", "rerun with a larger --max-queries"),
        (["--max-test-queries", "3"], None, "t:test", "rerun with a larger --max-test-queries"),
        (["--max-prompt-tokens", "20"], None, "t", "rerun with a larger --max-prompt-tokens"),
        ([], "t:test", "t:test", "maas-tune budget set t:test --max-prompt-tokens N"),
    ],
)
def test_a_budget_refusal_names_the_flag_that_raises_that_budget(
    caps, preset, budget, advice, use_gemma, db_path, capsys
):
    if preset:
        cap = ["budget", "set", preset, "--max-prompt-tokens", "7"]
        assert main([*cap, "--cache", str(db_path)]) == 0
    code = main([*EVAL, "--cache", str(db_path), "--budget", "t", *caps])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"budget {budget!r} would be exceeded" in err and advice in err
    assert "e.g. --max-queries" not in err


def test_budget_show_has_both_caps_and_their_units(db_path, capsys):
    store = Store(db_path)
    budget = QueryBudget("b1", max_queries=10, max_prompt_tokens=500, store=store)
    budget.commit(budget.reserve(2, 120))
    store.close()
    assert main(["budget", "show", "--cache", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "b1: 2 of 10 queries spent, 0 in flight; 120 of 500 prompt tokens spent" in out
    assert "a query is one request" in out
    assert main(["budget", "show", "b1", "--json", "--cache", str(db_path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["max_prompt_tokens"] == 500 and row["spent_prompt_tokens"] == 120
    assert row["remaining_queries"] == 8 and row["remaining_prompt_tokens"] == 380


@pytest.mark.parametrize("command", ["eval", "fit", "predict"])
def test_help_names_the_environment_variables(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for var in ("MAAS_TUNE_API_KEY", "OPENAI_API_KEY", "MAAS_TUNE_CACHE_DIR"):
        assert var in out
