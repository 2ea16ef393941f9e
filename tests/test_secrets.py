"""Secrets: the API key reaches the provider and nowhere else, and saved files are private
and inert.

- A full CLI session (fit, predict, eval --json, and runs the provider fails in ways
  that echo the key back) with debug logging on, against a loopback server: the key is
  found in the server's Authorization headers, and 0 times in the cache/ledger database
  (and its -wal/-shm files), the saved decoder, the predictions, the eval (benchmark)
  rows, stdout, stderr, the debug log and the tracebacks.
- Cache and ledger files are created 0600 whatever the umask, and so are their -wal and
  -shm files.
- Saved decoders, task files and cached answers load with pickle and torch.load
  disabled, and a pickle smuggled into a decoder file is refused without running.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import stat
import traceback
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.decoders import LinearProbe
from maas_tune.errors import OfflineCacheMiss, SerializationError
from maas_tune.persistence import DECODER_JSON_NAME as JSON_NAME
from maas_tune.persistence import TENSORS_NAME, load_decoder, save_decoder
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.scores import ProviderAnswer
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from maas_tune.task import Task

from ._fault_server import FaultServer, malformed, status
from ._figures import report
from .decoders.test_decoders import make_scores

#: Not shaped like an OpenAI key, so that only exact-match redaction can catch it.
KEY = "mt-live-7d1f0c9e5b2a48c6a1e3f9d2b7c4e8a6"
MODEL = "fake-model"
TASK = {
    "name": "reviews",
    "template": "Review: {text} Sentiment:",
    "verbalizer": {"pos": ["positive"], "neg": ["negative"]},
}


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "task.json").write_text(json.dumps(TASK))
    rows = [
        {"text": f"{mood} film number {i}", "label": label}
        for i in range(6)
        for mood, label in (("a great", "pos"), ("a dull", "neg"))
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (tmp_path / "inputs.jsonl").write_text('{"text": "an odd film"}\n{"text": "a fine film"}\n')
    return tmp_path


@pytest.fixture()
def debug_log(tmp_path: Path) -> Iterator[Path]:
    """Every log record of the session, at DEBUG (httpx and httpcore included), in a file."""
    path = tmp_path / "debug.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(level)
    handler.close()


def _cli(argv: list[str], out: Path) -> int:
    """Run the CLI in process; stdout, stderr and any traceback go to ``out``.* files."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = main(argv)
        except Exception as exc:  # noqa: BLE001 - with --debug: keep the chained traceback
            stderr.write("".join(traceback.format_exception(exc)))
            code = 1
    out.with_suffix(".stdout").write_text(stdout.getvalue())
    out.with_suffix(".stderr").write_text(stderr.getvalue())
    return code


def _occurrences(root: Path, secret: str) -> dict[str, int]:
    """How often ``secret`` appears in each file under ``root`` (raw bytes, UTF-8 and UTF-16)."""
    needles = [secret.encode("utf-8"), secret.encode("utf-16-le")]
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found[str(path.relative_to(root))] = sum(data.count(n) for n in needles)
    return found


def test_the_api_key_never_leaves_the_request(
    workdir: Path, debug_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_TUNE_API_KEY", KEY)
    monkeypatch.chdir(workdir)
    common = [
        "--cache",
        "store.sqlite",
        "--base-url",
        "",
        "--api-model",
        MODEL,
        "--strategy",
        "extension",
        "--quiet",
        "--debug",
    ]
    with FaultServer() as server:
        common[3] = server.base_url
        data = ["--train", "train.jsonl", "--task", "task.json", "--shots", "3"]
        assert _cli(["fit", *common, *data, "--out", "decoder"], workdir / "fit") == 0
        assert (
            _cli(
                [
                    "predict",
                    *common,
                    "--decoder",
                    "decoder",
                    "--input",
                    "inputs.jsonl",
                    "--output",
                    "predictions.jsonl",
                ],
                workdir / "predict",
            )
            == 0
        )
        assert (
            _cli(
                [
                    "eval",
                    *common,
                    *data,
                    "--test",
                    "test.jsonl",
                    "--json",
                    "--method",
                    "zero-shot,dect",
                ],
                workdir / "eval",
            )
            == 0
        )
        # the provider echoes the key back in error bodies: 401, a 400, an HTML page
        echoed = {"error": {"message": f"invalid key {KEY} (Bearer {KEY})", "type": "auth"}}
        for name, fault in (
            ("e401", status(401, body=echoed)),
            ("e400", status(400, body={"error": f"bad request from {KEY}"})),
            ("html", malformed(f"<html>proxy says: token={KEY}</html>".encode())),
        ):
            server.script(fault, fault)  # one for the --debug run, one for the plain run
            argv = [
                "eval",
                *common,
                *data,
                "--test",
                "inputs-labelled.jsonl",
                "--json",
                "--method",
                "zero-shot",
            ]
            (workdir / "inputs-labelled.jsonl").write_text(
                json.dumps({"text": f"never scored before {name}", "label": "pos"}) + "\n"
            )
            assert _cli(argv, workdir / name) == 1
            assert name != "e401" or "HTTP 401" in (workdir / f"{name}.stderr").read_text()
            assert _cli([a for a in argv if a != "--debug"], workdir / f"{name}-plain") == 1
    assert server.authorizations and set(server.authorizations) == {f"Bearer {KEY}"}
    assert (workdir / "decoder" / JSON_NAME).is_file() and debug_log.stat().st_size > 0
    logged = debug_log.read_text()  # the requests were logged, so a leak there would show
    assert "DEBUG maas_tune.providers: POST" in logged or "DEBUG httpx" in logged
    found = _occurrences(workdir, KEY)
    assert {"store.sqlite", "predictions.jsonl", "eval.stdout", "e401.stderr"} <= set(found)
    leaks = {path: n for path, n in found.items() if n}
    report("api_key_occurrences", sum(found.values()), files_checked=len(found))
    assert leaks == {}


def test_a_key_inside_the_base_url_stays_out_of_the_cache_and_the_messages(
    tmp_path: Path,
) -> None:
    task = Task.from_dict(TASK)
    with FaultServer() as server:
        url = server.base_url.replace("http://", f"http://user:{KEY}@")
        with OpenAICompletionsProvider(url, MODEL, strategy="extension") as provider:
            Client(provider, cache=tmp_path / "store.sqlite", progress=False).score(task, ["a"])
            shown = [repr(provider), json.dumps(provider.fingerprint()), provider.base_url]
        with OpenAICompletionsProvider(url, MODEL) as offline:
            Client(offline, cache=tmp_path / "other.sqlite", offline=True)
            with pytest.raises(OfflineCacheMiss, match="probe of http://127.0.0.1") as info:
                offline.select_strategy()  # the probe would be sent: refused, naming the server
        shown.append(str(info.value))
    credentials = base64.b64encode(f"user:{KEY}".encode()).decode()
    assert server.authorizations == [f"Basic {credentials}"]  # the key did its job
    assert [text for text in shown if KEY in text] == []
    assert {path: n for path, n in _occurrences(tmp_path, KEY).items() if n} == {}


def test_cache_and_ledger_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive: anything created is as open as asked
    try:
        cache = ScoreCache(tmp_path / "cache" / "answers.sqlite")
        budget = QueryBudget("b", max_queries=10, store=tmp_path / "ledger.sqlite")
        answer = ProviderAnswer(np.array([-1.0], np.float32), None, 3)
        cache.put_many({"k": answer})
        budget.commit(budget.reserve(1))
        files = [tmp_path / "cache" / "answers.sqlite", tmp_path / "ledger.sqlite"]
        files += [f.with_name(f.name + s) for f in files for s in ("-wal", "-shm")]
        modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
        folder = stat.S_IMODE((tmp_path / "cache").stat().st_mode)
        cache.close()
        budget.close()
    finally:
        os.umask(old)
    assert modes == {name: 0o600 for name in modes}
    assert folder == 0o700


@pytest.fixture()
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of running pickled code fail loudly."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("unpickling attempted")

    for module, name in (
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (np, "load"),
    ):
        monkeypatch.setattr(module, name, refuse)


def test_saved_artefacts_load_with_unpickling_disabled(tmp_path: Path, no_unpickling: None) -> None:
    X, y = make_scores(4)
    saved = save_decoder(LinearProbe().fit(X, y), tmp_path / "decoder", metadata={"k": 1})
    decoder, meta = load_decoder(saved)
    assert meta == {"k": 1} and decoder.predict(X).shape == (len(y),)
    Task.from_dict(TASK).save(tmp_path / "task.json")
    assert Task.from_file(tmp_path / "task.json").name == TASK["name"]
    with Store(tmp_path / "s.sqlite") as store:
        cache = ScoreCache(store)
        cache.put_many({"k": ProviderAnswer(np.array([-1.0], np.float32), None, 3)})
        assert cache.get_many(["k"])["k"].logprobs.tolist() == [-1.0]


class _Payload:
    """Unpickling this would create ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


def test_a_pickle_smuggled_into_a_decoder_is_refused_without_running(tmp_path: Path) -> None:
    X, y = make_scores(4)
    saved = save_decoder(LinearProbe().fit(X, y), tmp_path / "decoder")
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_Payload(marker))
    for target in (TENSORS_NAME, JSON_NAME):
        original = (saved / target).read_bytes()
        (saved / target).write_bytes(payload)
        with pytest.raises(SerializationError, match="save the decoder again|not valid JSON"):
            load_decoder(saved)
        (saved / target).write_bytes(original)
    torch.save({"weights": _Payload(marker)}, saved / TENSORS_NAME)  # a torch checkpoint
    with pytest.raises(SerializationError, match="truncated or corrupt"):
        load_decoder(saved)
    assert not marker.exists()
