"""Cost in money: prices, the cost cap's guarantee (reserved before sending, never passed
under contention or crashes), the schema step that stores them, and the CLI surfaces.

Tests that take the ``store`` fixture run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import math
import random
import re
import sqlite3
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from maas_tune._constants import DB_SCHEMA_VERSION
from maas_tune._money import exact, format_usd
from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.errors import BudgetExceeded, ConfigurationError
from maas_tune.pricing import PRICES, PRICES_AS_OF, Price, price_for
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget, list_budgets
from maas_tune.storage.cache import ScoreCache
from maas_tune.storage.migrations import STEPS
from maas_tune.storage.url import backend_of, sqlite_path
from maas_tune.task import Task

from ._concurrency import run_at_once
from ._fault_server import _PIECE, FaultServer
from .cli.test_cli_edges import EVAL
from .storage.test_budget import SUBPROCESS_TIMEOUT_S, _python, _wait_for_file

#: A price that makes every token count: $0.001 per input token, $0.0005 per query.
DEAR = Price(1000.0, 500.0)


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as opened:
        yield opened


# -- arithmetic ------------------------------------------------------------------------
def test_cost_is_exact_and_counts_one_output_token_per_query() -> None:
    price = Price(0.15, 0.60)
    assert price.cost(1_000_000, 1_000_000) == 0.75
    assert price.exact_cost(1, 0) == Decimal("0.00000015")
    # 3 × 0.1 / 1e6 in floats is 3.0000000000000004e-07; the ledger's arithmetic is exact
    assert Price(0.1, 0).exact_cost(3) == Decimal("0.0000003")
    assert price.query_cost(queries=10, prompt_tokens=2_000) == price.cost(2_000, 10)
    assert price.cost(0, 0) == 0.0
    assert exact(0.15) == Decimal("0.15")


def test_prices_are_validated_and_parsed() -> None:
    assert Price.parse(" 0.15 , 0.6 ") == Price(0.15, 0.60)
    assert Price(1, 2) == Price(1.0, 2.0) and isinstance(Price(1, 2).output_per_million, float)
    for bad in (-1.0, math.nan, math.inf, True, "1"):
        with pytest.raises(ConfigurationError, match="input_per_million must be a finite number"):
            Price(bad, 1.0)  # type: ignore[arg-type]
    for text in ("0.15", "0.15,0.6,1", "a,b", ""):
        with pytest.raises(ConfigurationError, match="INPUT,OUTPUT in US dollars per million"):
            Price.parse(text)


def test_the_price_table_is_dated_and_overridable() -> None:
    assert PRICES_AS_OF[:4].isdigit()
    assert price_for("gpt-4o-mini") == Price(0.15, 0.60)
    assert price_for("GPT-4o-mini") == price_for("openai/gpt-4o-mini") == price_for("gpt-4o-mini")
    assert price_for("gpt-4o-2024-05-13") is None  # a snapshot may cost something else
    assert price_for("my-llama") is None
    mine = {**PRICES, "my-llama": Price(0.2, 0.2), "gpt-4o-mini": Price(0.3, 1.2)}
    assert price_for("my-llama", mine) == Price(0.2, 0.2)
    assert price_for("gpt-4o-mini", mine) == Price(0.3, 1.2)
    with pytest.raises(TypeError):
        PRICES["x"] = Price(1, 1)  # type: ignore[index]


def test_money_is_shown_in_cents_or_finer() -> None:
    assert [format_usd(x) for x in (4, 0.0012, 1.5e-7, 0, Decimal("12.5"))] == [
        "$4.00", "$0.0012", "$0.00000015", "$0.00", "$12.50",
    ]  # fmt: skip


# -- the cap ------------------------------------------------------------------------------
def test_the_cost_cap_refuses_before_anything_is_reserved(store: Store) -> None:
    cap = float(DEAR.exact_cost(100, 10))  # 10 queries of 10 tokens: $0.105
    budget = QueryBudget("money", max_cost=cap, price=DEAR, store=store)
    budget.commit(budget.reserve(5, 50))
    held = budget.reserve(4, 40)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(1, 11)  # one token more than the cap holds
    err = info.value
    assert (err.unit, err.limit, err.requested) == ("cost", cap, pytest.approx(0.0115))
    assert err.spent == pytest.approx(float(DEAR.exact_cost(90, 9)))
    assert "cost" in str(err) and "--max-cost" in str(err) and "$0.0115 more cost" in str(err)
    status = budget.status()
    assert (status.reserved_queries, status.reserved_prompt_tokens) == (4, 40)  # nothing added
    assert status.remaining_cost == pytest.approx(0.0105)
    budget.reserve(1, 10)  # landing exactly on the cap is allowed
    with pytest.raises(BudgetExceeded):
        budget.reserve(0, 1)
    budget.release(held)
    status = budget.status()
    assert (status.spent_cost, status.reserved_cost) == pytest.approx((0.0525, 0.0105))


def test_a_cost_cap_needs_a_price_and_both_persist(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="needs a price") as info:
        QueryBudget("b", max_cost=1.0, store=store)
    assert "--price INPUT,OUTPUT" in str(info.value)
    budget = QueryBudget("b", store=store)  # the refused cap was rolled back
    with pytest.raises(ConfigurationError, match="needs a price"):
        budget.set_limits(max_cost=2.0)
    assert budget.status().max_cost is None
    budget.set_price(Price(0.15, 0.6))
    budget.set_limits(max_cost=2.0)
    with pytest.raises(ConfigurationError, match="needs a price"):
        budget.set_price(None)  # the cap would be left without a price
    for bad in (-0.01, math.nan, math.inf, "4"):
        with pytest.raises(ConfigurationError, match="max_cost must be a finite number"):
            budget.set_limits(max_cost=bad)  # type: ignore[arg-type]
    with Store(store.url) as again:  # another process's view
        status = QueryBudget("b", store=again).status()
        assert (status.max_cost, status.price) == (2.0, Price(0.15, 0.6))
    budget.set_limits(max_cost=None)
    budget.set_price(None)
    assert (budget.status().max_cost, budget.status().spent_cost) == (None, None)


def test_racing_threads_never_pass_the_cost_cap(store: Store) -> None:
    cap = 0.75  # $0.001 a token, $0.0005 a query: some 60 requests of up to 20 tokens
    QueryBudget("race", max_cost=cap, price=DEAR, store=store)
    committed: list[tuple[int, int]] = []

    def spend(go: Callable[[], object]) -> None:
        rng = random.Random(threading.get_ident())
        budget = QueryBudget("race", store=store)
        go()
        for _ in range(200):  # bounded; the cap ends it long before
            queries, tokens = rng.randint(1, 2), rng.randint(0, 20)
            try:
                reservation = budget.reserve(queries, tokens)
            except BudgetExceeded:
                return
            budget.commit(reservation)
            committed.append((queries, tokens))

    assert run_at_once([spend] * 8) == []
    status = QueryBudget("race", store=store).status()
    assert (status.spent_queries, status.spent_prompt_tokens) == tuple(map(sum, zip(*committed)))
    spent = status.cost_of(status.spent_queries, status.spent_prompt_tokens)
    assert spent is not None and spent <= exact(cap)  # never passed
    assert spent > exact(cap) - DEAR.exact_cost(20, 2)  # and spent up to the last request


_TASK = Task("race", "Review: {text} Sentiment:", {"pos": ["positive"], "neg": ["negative"]})


def test_clients_in_threads_never_pass_the_cost_cap_and_the_ledger_is_the_bill(
    store: Store,
) -> None:
    """End to end: the client reserves queries and tokens per chunk, and so their cost."""
    cap = 0.5
    QueryBudget("bill", max_cost=cap, price=DEAR, store=store)
    refused: list[int] = []
    with FaultServer() as server:
        provider = OpenAICompletionsProvider(
            server.base_url, "fake-model", api_key="sk-money", strategy="extension", timeout=60
        )

        def score(go: Callable[[], object]) -> None:
            client = Client(provider, cache=ScoreCache(store),
                            budget=QueryBudget("bill", store=store), progress=False,
                            chunk_size=3)  # fmt: skip
            me = threading.get_ident()
            go()
            for r in range(8):
                try:
                    client.score(_TASK, [f"t{me} r{r} #{j}" for j in range(1 + r % 5)])
                except BudgetExceeded:
                    refused.append(r)

        assert run_at_once([score] * 6) == []
        bills = [len(_PIECE.findall(str(body["prompt"]))) for body in server.requests]
    status = QueryBudget("bill", store=store).status()
    assert refused  # demand passed the cap: the cap, not the workload, ended it
    assert (status.spent_queries, status.spent_prompt_tokens) == (len(bills), sum(bills))
    assert status.reserved_queries == 0
    billed = DEAR.exact_cost(sum(bills), len(bills))  # what the server would charge
    assert billed <= exact(cap)
    assert status.spent_cost is not None and status.spent_cost <= cap


_RESERVE_AND_HANG = """
import sys, time
from pathlib import Path
from maas_tune.storage.budget import QueryBudget
QueryBudget(sys.argv[2], store=sys.argv[1]).reserve(5, 50)
Path(sys.argv[3]).touch()
time.sleep(120)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="liveness checks need POSIX")
def test_a_crashed_holders_reservation_is_spent_money(store: Store, tmp_path: Path) -> None:
    budget = QueryBudget("crash", max_cost=0.06, price=DEAR, store=store)
    ready = tmp_path / "ready"
    proc = _python(_RESERVE_AND_HANG, store.url, "crash", str(ready))
    try:
        _wait_for_file(ready, [proc])
        assert budget.status().reserved_cost == pytest.approx(0.0525)
        with pytest.raises(BudgetExceeded):  # the live holder's reservation counts
            budget.reserve(1, 10)
    finally:
        proc.kill()
        proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    (status,) = [s for s in list_budgets(store) if s.name == "crash"]
    assert (status.spent_cost, status.reserved_cost) == (pytest.approx(0.0525), 0.0)
    with pytest.raises(BudgetExceeded, match="cost"):  # it may have been billed: still spent
        budget.reserve(1, 10)
    budget.reserve(1, 7)  # what is left of the cap ($0.0075)


# -- schema step 4 ----------------------------------------------------------------------
_V3_DATA = (
    "INSERT INTO meta VALUES ('application', 'maas-tune'), ('schema_version', '3')",
    "INSERT INTO budgets (name, max_queries, spent_queries, spent_prompt_tokens, created, "
    + "updated) VALUES ('old', 50, 4, 400, 0, 0)",
)


def _write_v3(url: str) -> None:
    """A store as maas-tune wrote it at schema 3 (steps are never edited once released)."""
    dialect = backend_of(url)
    statements = [sql for step in STEPS[:3] for sql in step.sql(dialect)] + list(_V3_DATA)
    if dialect == "sqlite":
        with sqlite3.connect(sqlite_path(url)) as conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_a_schema_3_store_gets_the_cost_columns(store_url: str) -> None:
    _write_v3(store_url)
    assert STEPS[3].version == 4 and [step.version for step in STEPS][-1] == DB_SCHEMA_VERSION
    with Store(store_url) as store:
        with store.read() as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            assert version.fetchone()[0] == str(DB_SCHEMA_VERSION)
        old = QueryBudget("old", store=store)
        status = old.status()
        counters = (status.max_queries, status.spent_queries, status.spent_prompt_tokens)
        assert counters == (50, 4, 400)
        assert (status.max_cost, status.price, status.spent_cost) == (None, None, None)
        old.set_price(DEAR)  # the old counters are costed at the new price
        old.set_limits(max_cost=0.5)
        assert old.status().spent_cost == pytest.approx(0.402)
        with pytest.raises(BudgetExceeded, match="cost"):
            old.reserve(1, 98)


# -- the command line ---------------------------------------------------------------------
def test_budget_set_and_show_cost(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ["--cache", str(db_path)]
    assert main(["budget", "set", "b", "--max-cost", "4", *cache]) == 1
    assert "--price INPUT,OUTPUT" in capsys.readouterr().err
    assert main(["budget", "set", "b", "--max-cost", "4", "--price", "1000,500", *cache]) == 0
    assert "max cost $4.00, price $1000.00/$500.00 per million" in capsys.readouterr().out
    with Store(db_path) as store:
        budget = QueryBudget("b", store=store)
        budget.commit(budget.reserve(2, 100))
    assert main(["budget", "show", *cache]) == 0
    out = capsys.readouterr().out
    assert "; $0.101 of $4.00 spent, $0.00 in flight, at $1000.00/$500.00 per million" in out
    assert main(["budget", "show", "b", "--json", *cache]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["max_cost"], row["price_input"], row["price_output"]) == (4.0, 1000.0, 500.0)
    assert row["spent_cost"] == pytest.approx(0.101) and row["reserved_cost"] == 0.0
    assert row["remaining_cost"] == pytest.approx(3.899)


def test_a_cost_cap_without_a_price_stops_eval_before_anything_runs(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*EVAL, "--cache", str(db_path), "--max-cost", "1"])  # the local model: no price
    err = capsys.readouterr().err
    assert code == 1 and "needs a price" in err and "--price INPUT,OUTPUT" in err


@pytest.fixture()
def use_gemma(gemma, monkeypatch):
    """Make the CLI reuse the session's model instead of loading its own."""
    from maas_tune.cli import commands as _cli_commands

    monkeypatch.setattr(_cli_commands, "_provider", lambda args, model=None: gemma)
    return gemma


@pytest.mark.model
@pytest.mark.parametrize(
    ("caps", "budget", "flag"),
    [(["--max-cost", "0.01"], "t", "--max-cost"),
     (["--max-test-cost", "0.01"], "t:test", "--max-test-cost")],
)  # fmt: skip
def test_a_cost_refusal_names_the_flag(
    caps: list[str], budget: str, flag: str, use_gemma, db_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    code = main([*EVAL, "--cache", str(db_path), "--budget", "t", "--price", "1000,0", *caps])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"budget {budget!r} would be exceeded: $" in err and "more cost requested" in err
    assert f"rerun with a larger {flag} USD" in err
    with Store(db_path) as store:
        status = QueryBudget(budget, store=store).status()
    assert status.spent_queries == 0 and status.reserved_queries == 0  # refused before sending


@pytest.mark.model
def test_eval_json_and_summary_show_cost(
    use_gemma, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = [*EVAL, "--cache", str(db_path), "--budget", "t", "--price", "1000,500"]
    assert main([*run, "--max-cost", "5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["price_input_per_million"], row["price_output_per_million"]) == (1000.0, 500.0)
    expected = DEAR.query_cost(row["queries_sent"], row["prompt_tokens_sent"])
    assert row["cost_sent"] == pytest.approx(expected) and row["cost_sent"] > 0
    assert row["budget_cost_limit"] == 5.0 and row["test_budget_name"] == "t:test"
    assert row["budget_cost_spent"] + row["test_budget_cost_spent"] == pytest.approx(expected)
    assert main(run) == 0  # all cached now
    out = capsys.readouterr().out
    assert "cost this run: $0.00 at $1000.00/$500.00 per million" in out
    assert "(cost cap $5.00)" in out
    test_cost = format_usd(row["test_budget_cost_spent"])
    assert f"test budget 't:test': 24 queries spent in total; {test_cost} spent" in out


def test_eval_over_http_prices_an_api_model_from_the_table(
    db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_TUNE_API_KEY", "sk-money")
    with FaultServer() as server:
        http = [*EVAL, "--test-limit", "6", "--cache", str(db_path), "--budget", "t",
                "--base-url", server.base_url, "--strategy", "extension"]  # fmt: skip
        assert main([*http, "--api-model", "gpt-4o-mini", "--json"]) == 0
        row = json.loads(capsys.readouterr().out)
        assert (row["price_input_per_million"], row["price_output_per_million"]) == (0.15, 0.6)
        assert row["cost_sent"] == pytest.approx(
            PRICES["gpt-4o-mini"].query_cost(row["queries_sent"], row["prompt_tokens_sent"])
        )
        # a stored price is kept over the table's default, with a warning
        assert main([*http, "--api-model", "gpt-4o", "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["price_input_per_million"] == 0.15
        assert "keeps its stored price" in captured.err and "pass --price" in captured.err


def test_the_concepts_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (Path(__file__).parents[1] / "docs" / "concepts.md").read_text(encoding="utf-8")
    found = re.search(r"### Cost in money.*?```python\n(.*?)```", text, re.DOTALL)
    assert found, "docs/concepts.md lost its cost example"
    monkeypatch.chdir(tmp_path)
    exec(compile(found.group(1), "docs/concepts.md", "exec"), {})  # noqa: S102 - the test
    assert capsys.readouterr().out.splitlines() == ["$0.00027960 of $0.01", "cost"]
    assert (tmp_path / "runs.sqlite").is_file()
