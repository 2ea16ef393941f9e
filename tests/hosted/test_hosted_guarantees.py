"""Issue 15's table, row by row: what a new user met through a strict hosted API.

Each test drives the real client (and, where the row was about it, the real CLI) through
the strict hosted-API simulator (:mod:`tests._hosted_api`) in front of ``maas-tune serve``
with the real model, and checks the guarantee the row broke: one query per sample, a
budget never passed, exactly what was billed is charged, no key ever printed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.errors import (
    BudgetExceeded,
    ConfigurationError,
    ProviderResponseError,
    ProviderStatusError,
)
from maas_tune.providers._probe import clear_probe_cache
from maas_tune.providers.chat import OpenAIChatProvider
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.task import Task

from .._hosted_api import HostedConfig

pytestmark = pytest.mark.model

KEY = "sk-test-hosted-guarantees-0123456789"
TASK = Task(
    "sst2-like", "Review: {text}\nSentiment:", {"negative": ["negative"], "positive": ["positive"]}
)
TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "dull and lifeless",
    "the plot is a mess.",
    "a delight from start to finish.",
    "I walked out.",
    "moving and funny",
]
#: A strict hosted API: key, top-5, no tokenizer, no extension (fields stripped), echo on.
STRICT = HostedConfig(api_key=KEY, top_k_cap=5, tokenizer=False, embeddings=False)
ROOT = Path(__file__).resolve().parents[2]
#: ``python -m maas_tune`` with Ctrl-C handled as in a terminal. A job started in the
#: background of a non-interactive shell (CI often is one) inherits SIGINT *ignored*, and
#: Python then leaves it ignored: the SIGINT this test sends would do nothing at all.
AS_FROM_A_TERMINAL = [
    sys.executable,
    "-c",
    (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('maas_tune', run_name='__main__')"
    ),
]


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    clear_probe_cache()
    yield
    clear_probe_cache()


def completions(api, **kwargs) -> OpenAICompletionsProvider:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("sleep", lambda s: None)
    return OpenAICompletionsProvider(api.base_url, api.config.model, **kwargs)


def client_for(provider, db_path, **budget) -> tuple[Client, QueryBudget]:
    store = Store(db_path)
    b = QueryBudget("hosted", store=store, **(budget or {"max_queries": 10_000}))
    return Client(provider, cache=store, budget=b, progress=False), b


def eval_argv(api, db_path, *extra: str) -> list[str]:
    return [
        "eval",
        "--dataset",
        "sst2",
        "--shots",
        "2",
        "--test-limit",
        "6",
        "--seed",
        "0",
        "--method",
        "zero-shot,dect",
        "--base-url",
        api.base_url,
        "--api-model",
        api.config.model,
        "--cache",
        str(db_path),
        "--quiet",
        "--json",
        *extra,
    ]


# -- auto, and its cost ------------------------------------------------------------------
def test_cli_defaults_succeed_through_a_strict_api_and_charge_what_was_billed(
    real_server, hosted_api, db_path, capsys, monkeypatch
):
    """Rows 1-2: auto picked top_logprobs, failed on the first batch, charged 48 for 6."""
    api = hosted_api(STRICT, upstream=real_server)
    monkeypatch.setenv("MAAS_TUNE_API_KEY", KEY)
    assert main(eval_argv(api, db_path)) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["method"] for r in rows} == {"zero-shot", "dect"}
    train = QueryBudget("default", store=db_path).status().spent_queries
    test = QueryBudget("default:test", store=db_path).status().spent_queries
    assert train + test == api.billable == rows[0]["queries_sent"]
    assert rows[0]["probe_queries"] >= 1 and api.duplicates() == 0
    before = api.billable
    assert main(eval_argv(api, db_path)) == 0  # the rerun sends nothing
    assert api.billable == before
    assert json.loads(capsys.readouterr().out.splitlines()[0])["queries_sent"] == 0


def test_a_failing_choice_is_never_kept(real_server, hosted_api, db_path):
    """Row 1: the failing choice was stored, so every rerun failed the same way."""
    api = hosted_api(HostedConfig(api_key=KEY, tokenizer=False, echo=False), upstream=real_server)
    client, _ = client_for(completions(api), db_path)
    with pytest.raises(ConfigurationError, match="pass --tokenizer"):
        client.score(TASK, TEXTS)
    clear_probe_cache()
    gemma_dir = _gemma_tokenizer_dir()
    from maas_tune.providers.tokenizers import load_tokenizer

    fixed, _ = client_for(completions(api, tokenizer=load_tokenizer(str(gemma_dir))), db_path)
    assert fixed.score(TASK, TEXTS).label_logprobs.shape == (len(TEXTS), 2)  # re-decided


def _gemma_tokenizer_dir() -> Path:
    from maas_tune._constants import DEFAULT_MODEL_NAME
    from maas_tune.providers._model_files import resolve_model

    return resolve_model(DEFAULT_MODEL_NAME).directory


def test_a_run_through_30_percent_503s_resumes_paying_nothing_twice(
    real_server, hosted_api, db_path
):
    """Row 4: one request out of retries threw away 30 answered requests, paid again."""
    api = hosted_api(
        STRICT.__class__(**{**STRICT.__dict__, "fail_503_rate": 0.3, "seed": 7}),
        upstream=real_server,
    )
    texts = [f"{t} ({i})" for i in range(3) for t in TEXTS]
    failures = 0
    for _ in range(30):  # each try is a fresh process's worth of objects (a rerun)
        clear_probe_cache()
        client, budget = client_for(completions(api, max_retries=1), db_path)
        try:
            scores = client.score(TASK, texts)
            break
        except ProviderStatusError as exc:
            assert exc.status == 503
            failures += 1
    else:
        pytest.fail("30 reruns did not get through 30% of 503s")
    assert failures > 0, "no request ran out of retries: the test proves nothing"
    assert api.duplicates() == 0  # no request the API answered was sent again
    assert budget.status().spent_queries == api.billable  # every billed request, once
    assert np.isfinite(scores.label_logprobs).all()


def test_the_probe_is_charged_to_the_budget_and_itemised(real_server, hosted_api, db_path):
    """Row 7: the probe's 1-3 requests were billable on a hosted API, never in the budget."""
    api = hosted_api(STRICT, upstream=real_server)
    client, budget = client_for(completions(api), db_path)
    client.score(TASK, TEXTS[:2])
    assert client.usage.probe_queries >= 1
    assert budget.status().spent_queries == api.billable == client.usage.queries_sent


def test_a_probe_is_never_sent_past_the_cap(real_server, hosted_api, db_path):
    api = hosted_api(STRICT, upstream=real_server)
    client, budget = client_for(completions(api), db_path, max_queries=2)
    with pytest.raises(BudgetExceeded):
        client.score(TASK, TEXTS)  # the probe may take up to 4: it is not even started
    assert api.forwarded == 0 and budget.status().spent_queries == 0


# -- Ctrl-C ----------------------------------------------------------------------------
def test_ctrl_c_keeps_what_was_answered_charges_what_was_sent_and_exits_at_once(
    real_server, hosted_api, tmp_path
):
    """Row 8: the chunk's reservation was released although its requests reached the API,
    nothing was cached, and worker threads kept retrying for minutes."""
    api = hosted_api(STRICT, upstream=real_server)
    db = tmp_path / "store.sqlite"
    # faulthandler: a run that does not end gets its threads' stacks into the failure
    env = {
        **os.environ,
        "MAAS_TUNE_API_KEY": KEY,
        "PYTHONPATH": str(ROOT),
        "PYTHONFAULTHANDLER": "1",
    }
    argv = [*AS_FROM_A_TERMINAL, *eval_argv(api, db)]
    argv[argv.index("--test-limit") + 1] = "400"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: api.billable >= 30 or proc.poll() is not None, timeout=300)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        err = _stderr_or_stacks(proc, timeout=60)  # a hang guard, not a timing goal
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"cached" in err and b"Traceback" not in err
    sent = api.forwarded
    time.sleep(1.0)
    assert api.forwarded == sent  # nothing was sent, or retried, after the interrupt
    spent = sum(
        QueryBudget(n, store=db).status().spent_queries for n in ("default", "default:test")
    )
    # Every answered request is charged; requests in flight at the interrupt are counted
    # as spent too (they may have been billed): at most one per request slot more.
    assert api.billable <= spent <= api.billable + 4
    assert len(_cache(db)) > 0  # what was answered is kept


def _stderr_or_stacks(proc: subprocess.Popen, timeout: float) -> bytes:
    """The process's stderr once it ends; if it does not end within ``timeout``, fail
    with the stacks of its threads (SIGABRT makes faulthandler print them)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        err = proc.communicate(timeout=30)[1].decode(errors="replace")
        pytest.fail(f"still running {timeout} s after SIGINT; its threads:\n{err[-8000:]}")


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s")
        time.sleep(0.05)


def _cache(db):
    from maas_tune.storage.cache import ScoreCache

    return ScoreCache(db)


# -- cache identity ------------------------------------------------------------------------
def test_two_servers_on_one_host_never_share_answers(real_server, hosted_api, db_path):
    """Row 9: the fingerprint had no port, so the second server was answered from the
    first one's cache."""
    first, second = (
        hosted_api(STRICT, upstream=real_server),
        hosted_api(STRICT, upstream=real_server),
    )
    assert first.base_url != second.base_url
    a, b = completions(first), completions(second)
    client_for(a, db_path)[0].score(TASK, TEXTS[:2])
    client_for(b, db_path)[0].score(TASK, TEXTS[:2])
    assert first.billable > 0 and second.billable > 0
    assert a.fingerprint()["origin"] != b.fingerprint()["origin"]
    assert a.fingerprint()["served_model"] == STRICT.model


# -- secrets ---------------------------------------------------------------------------
def test_a_key_with_a_trailing_crlf_is_stripped_and_never_printed(
    real_server, hosted_api, db_path, caplog
):
    """Row 10: the key was printed 7 times with --debug, and its tail without."""
    api = hosted_api(STRICT, upstream=real_server)
    caplog.set_level(logging.DEBUG)
    provider = completions(api, api_key=KEY + "\r\n")
    client_for(provider, db_path)[0].score(TASK, TEXTS[:1])
    assert api.billable > 0  # the stripped key was accepted
    assert KEY not in caplog.text


@pytest.mark.parametrize("bad", [KEY[:10] + "\n" + KEY[10:], KEY + "\u00e9"])
def test_a_key_a_header_cannot_carry_is_refused_without_showing_it(
    bad, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("OPENAI_API_KEY", bad)
    monkeypatch.delenv("MAAS_TUNE_API_KEY", raising=False)
    argv = [
        "--debug",
        "eval",
        "--dataset",
        "sst2",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--cache",
        str(tmp_path / "c.sqlite"),
        "--quiet",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "$OPENAI_API_KEY" in err and "position" in err
    assert KEY[:10] not in err and KEY[10:] not in err  # neither part of the key


# -- broken answers ------------------------------------------------------------------------
def test_a_deeply_nested_200_is_charged_and_reported_not_a_traceback(
    real_server, hosted_api, db_path
):
    """Row 11: RecursionError traceback; the ledger said 0 spent while 6 were answered."""
    api = hosted_api(STRICT, upstream=real_server)
    client, budget = client_for(completions(api), db_path)
    client.score(TASK, TEXTS[:1])  # probe and one sample
    api.inject_deep_json(1)
    with pytest.raises(ProviderResponseError, match="nested too deeply"):
        client.score(TASK, TEXTS[1:3])
    # The nested answer was a 2xx: billed from the client's side (the simulator made it
    # up itself, so it does not count it as forwarded).
    assert budget.status().spent_queries == api.billable + api.deep_json


# -- prompt-token caps ----------------------------------------------------------------------
def test_a_prompt_token_cap_is_never_passed_with_cjk_prompts(real_server, hosted_api, db_path):
    """Row 12: the estimate len // 3 + 1 let a 400-token cap be spent to 652."""
    api = hosted_api(STRICT, upstream=real_server)
    cjk = [
        "这部电影非常精彩，演员的表演令人难忘。" * 3,
        "剧情拖沓，令人失望。" * 4,
        "画面很美，但故事平淡。" * 3,
        "我会再看一遍！" * 5,
    ]
    client, budget = client_for(completions(api), db_path, max_prompt_tokens=400)
    try:
        client.score(TASK, cjk)
    except BudgetExceeded:
        pass  # refused before sending what could pass the cap: allowed
    status = budget.status()
    assert status.spent_prompt_tokens <= 400 and status.reserved_prompt_tokens == 0


# -- errors users can act on ----------------------------------------------------------------
def test_a_wrong_model_name_shows_the_servers_message(real_server, hosted_api, db_path):
    """Row 13: the server's 404 'model does not exist' was hidden behind a generic error."""
    api = hosted_api(STRICT, upstream=real_server)
    provider = OpenAICompletionsProvider(
        api.base_url, "no-such-model", api_key=KEY, sleep=lambda s: None
    )
    with pytest.raises(ProviderStatusError, match="does not exist"):
        client_for(provider, db_path)[0].score(TASK, TEXTS[:1])
    chat = OpenAIChatProvider(
        api.base_url, "no-such-model", api_key=KEY, sleep=lambda s: None, tokenizer=lambda t: [1]
    )
    with pytest.raises(ProviderStatusError, match="does not exist") as info:
        chat.select_strategy()
    assert "lower top_logprobs" not in str(info.value)


def test_a_base_url_without_v1_says_so(real_server, hosted_api, db_path):
    api = hosted_api(STRICT, upstream=real_server)
    root = api.base_url.removesuffix("/v1")
    provider = OpenAICompletionsProvider(root, STRICT.model, api_key=KEY, sleep=lambda s: None)
    with pytest.raises(ProviderStatusError, match="does not end in a version such as /v1"):
        client_for(provider, db_path)[0].score(TASK, TEXTS[:1])


def test_a_missing_key_names_the_environment_variables(
    real_server, hosted_api, db_path, monkeypatch
):
    for name in ("MAAS_TUNE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    api = hosted_api(STRICT, upstream=real_server)
    provider = OpenAICompletionsProvider(api.base_url, STRICT.model, sleep=lambda s: None)
    with pytest.raises(ProviderStatusError, match="MAAS_TUNE_API_KEY or OPENAI_API_KEY"):
        client_for(provider, db_path)[0].score(TASK, TEXTS[:1])


def test_retries_and_429s_show_in_the_summary(
    real_server, hosted_api, db_path, capsys, monkeypatch
):
    """Row 15: 93 x 503 and 9 x 429 were retried invisibly."""
    config = HostedConfig(api_key=KEY, tokenizer=False, embeddings=False, fail_503_first_n=2)
    api = hosted_api(config, upstream=real_server)
    monkeypatch.setenv("MAAS_TUNE_API_KEY", KEY)
    monkeypatch.setattr("maas_tune.providers.session.time.sleep", lambda s: None)
    argv = [a for a in eval_argv(api, db_path) if a != "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "retried: 2 attempts" in out


# -- chat from the CLI ------------------------------------------------------------------------
def test_hosted_chat_from_the_cli_with_a_local_tokenizer(
    real_server, hosted_api, db_path, capsys, monkeypatch
):
    """Rows 5-6: chat scored at chance with floored words; --strategy force had no way to
    get a tokenizer from the CLI."""
    api = hosted_api(STRICT, upstream=real_server)
    monkeypatch.setenv("MAAS_TUNE_API_KEY", KEY)
    argv = eval_argv(api, db_path, "--api", "chat")
    assert main(argv) == 1  # auto without a tokenizer refuses, before spending
    assert "pass --tokenizer" in capsys.readouterr().err and api.billable == 0
    assert main([*argv, "--tokenizer", str(_gemma_tokenizer_dir())]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["strategy"] == "force" and row["floored_share"] == 0.0


def test_mostly_floored_training_answers_stop_before_the_test_set(
    real_server, hosted_api, db_path, capsys, monkeypatch
):
    api = hosted_api(STRICT, upstream=real_server)
    monkeypatch.setenv("MAAS_TUNE_API_KEY", KEY)
    argv = eval_argv(api, db_path, "--api", "chat", "--strategy", "top_logprobs")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "top-k bound" in err and "stopped before scoring the test set" in err
    assert "--tokenizer" in err
    assert QueryBudget("default:test", store=db_path).status().spent_queries == 0


def test_an_unreachable_api_is_named_by_the_url_given():
    """Row 13: the error named our /extras/tokenize, not the URL the user gave."""
    from maas_tune.errors import ProviderConnectionError

    provider = OpenAICompletionsProvider("http://127.0.0.1:9/v1", "m", api_key=KEY, max_retries=0)
    with pytest.raises(ProviderConnectionError) as info:
        provider.label_token_ids(["positive"])
    assert "the API at http://127.0.0.1:9/v1" in str(info.value)
    assert "extras/tokenize" not in str(info.value)
