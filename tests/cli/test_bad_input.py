"""Bad input: each kind a user can get wrong gives one maas-tune error that names the
problem and says what to do — never a traceback, a torch or csv error, or silence.

The catalogue below reads as the spec: templates, label words, task files, data files,
CLI flags, saved decoders, cache files, and the options of the budget and HTTP provider.
Each row names the error class, a fragment that names the problem and one that says
what to do; docs/reliability.md tabulates them. Deeper tests of single kinds live beside
the code (test_task.py, test_data.py, test_decoder_io.py, test_sqlite_store.py,
test_cli.py); property-based tests of the template renderer and the data loader are in
test_properties.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from maas_tune._constants import DB_SCHEMA_VERSION, DECODER_FORMAT_VERSION, MAX_RECORD_CHARS
from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.data import Example, load_examples, sample_k_shot
from maas_tune.decoders import LinearProbe
from maas_tune.errors import (
    CacheCorruptionError,
    CacheError,
    ConfigurationError,
    DataError,
    MaasTuneError,
    SerializationError,
    TaskError,
)
from maas_tune.persistence import DECODER_JSON_NAME as JSON_NAME
from maas_tune.persistence import TENSORS_NAME, load_decoder, save_decoder
from maas_tune.providers.openai import OpenAICompletionsProvider
from maas_tune.scores import Scores
from maas_tune.storage import Store
from maas_tune.storage import sqlite as _sqlite
from maas_tune.storage.budget import QueryBudget
from maas_tune.task import Task

from .._fault_server import FaultServer
from ..decoders.test_decoders import make_scores

WORDS = {"pos": ["positive"], "neg": ["negative"]}
LABELS = ["pos", "neg"]


@dataclass(frozen=True)
class Bad:
    """One kind of bad input: what triggers it and what the user must read."""

    kind: str
    trigger: Callable[[Path], object]
    error: type[MaasTuneError]
    problem: str
    fix: str


def _task(template: Any = "Review: {text}", words: Any = WORDS) -> Callable[[Path], object]:
    return lambda _tmp: Task("t", template, words)


def _file(name: str, content: str | bytes, read: Callable[[Path], object]) -> Callable[[Path], Any]:
    def trigger(tmp: Path) -> object:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return read(path)

    return trigger


def _data(name: str, content: str | bytes) -> Callable[[Path], object]:
    return _file(name, content, lambda path: load_examples(path, labels=LABELS))


def _task_file(name: str, content: str | bytes) -> Callable[[Path], object]:
    return _file(name, content, Task.from_file)


def _jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _multi_token_word(tmp: Path) -> object:
    """A two-token label word, through the real HTTP provider (its tokenizer endpoint)."""
    task = Task("t", "Review: {text}", {"pos": ["very positive"], "neg": ["negative"]})
    with (
        FaultServer() as server,
        OpenAICompletionsProvider(
            server.base_url, "fake-model", api_key="sk-x", strategy="extension"
        ) as provider,
    ):
        return Client(provider, cache=tmp / "c.sqlite", progress=False).score(task, ["fine"])


# -- saved decoders ------------------------------------------------------------------
def _saved(tmp: Path) -> Path:
    X, y = make_scores(4)
    return save_decoder(LinearProbe().fit(X, y), tmp / "decoder")


def _damaged(edit: Callable[[Path], None]) -> Callable[[Path], object]:
    def trigger(tmp: Path) -> object:
        path = _saved(tmp)
        edit(path)
        return load_decoder(path)

    return trigger


def _flip_byte(path: Path) -> None:
    blob = bytearray((path / TENSORS_NAME).read_bytes())
    blob[-3] ^= 0xFF
    (path / TENSORS_NAME).write_bytes(bytes(blob))


def _truncate(path: Path) -> None:
    blob = (path / TENSORS_NAME).read_bytes()
    (path / TENSORS_NAME).write_bytes(blob[: len(blob) // 2])


def _edit_json(**changes: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads((path / JSON_NAME).read_text())
        doc.update(changes)
        (path / JSON_NAME).write_text(json.dumps(doc))

    return edit


def _used_on(scores: Callable[[], Scores]) -> Callable[[Path], object]:
    def trigger(tmp: Path) -> object:
        decoder, _meta = load_decoder(_saved(tmp))
        return decoder.predict(scores())

    return trigger


def _other_task_scores() -> Scores:
    X, _ = make_scores(2)
    return Scores.from_arrays(X.label_logprobs, X.hidden, ["spam", "ham", "eggs"])


# -- cache files -----------------------------------------------------------------------
def _store_on(name: str, content: bytes) -> Callable[[Path], object]:
    return _file(name, content, Store)


def _foreign_sqlite(tmp: Path) -> object:
    with sqlite3.connect(tmp / "other.sqlite") as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    return Store(tmp / "other.sqlite")


def _newer_schema(tmp: Path) -> object:
    Store(tmp / "new.sqlite").close()
    with sqlite3.connect(tmp / "new.sqlite") as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(DB_SCHEMA_VERSION + 1),)
        )
    return Store(tmp / "new.sqlite")


def _locked(tmp: Path) -> object:
    """Another process holds the write lock past the busy timeout (shortened here)."""
    path = tmp / "locked.sqlite"
    QueryBudget("b", max_queries=10, store=path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        return QueryBudget("b", store=path).reserve(1)
    finally:
        holder.close()


def _http(**options: Any) -> Callable[[Path], object]:
    return lambda _tmp: OpenAICompletionsProvider(
        **{"base_url": "http://127.0.0.1:9/v1", "model": "m", **options}
    )


CATALOGUE = [
    # templates
    Bad(
        "template without {text}",
        _task("Review:"),
        TaskError,
        "has no '{text}' placeholder",
        "add '{text}' where the input goes",
    ),
    Bad(
        "unknown placeholder",
        _task("Review: {txt}"),
        TaskError,
        "unknown placeholder '{txt}'",
        "did you mean '{text}'?",
    ),
    Bad(
        "unbalanced '{'",
        _task("Review: {text"),
        TaskError,
        "unbalanced '{'",
        "write '{{' for a literal opening brace",
    ),
    Bad(
        "stray '}'",
        _task("Review: {text} }"),
        TaskError,
        "stray '}'",
        "write '}}' for a literal closing brace",
    ),
    Bad("empty template", _task("  "), TaskError, "template is empty", "write a prompt"),
    Bad(
        "template ending in whitespace",
        _task("Review: {text} "),
        TaskError,
        "ends with whitespace",
        "remove it",
    ),
    Bad(
        "template not a string",
        _task(42),
        TaskError,
        "template must be a string",
        "write the prompt as text",
    ),
    # label words
    Bad(
        "label without words",
        _task(words={"pos": [], "neg": ["negative"]}),
        TaskError,
        "has no label words",
        "give it at least one word",
    ),
    Bad(
        "empty label word",
        _task(words={"pos": [""], "neg": ["negative"]}),
        TaskError,
        "empty or whitespace-only label word",
        "remove it",
    ),
    Bad(
        "duplicate label word",
        _task(words={"pos": ["good"], "neg": ["good"]}),
        TaskError,
        "listed twice",
        "each word must belong to one label",
    ),
    Bad(
        "one label only",
        _task(words={"pos": ["good"]}),
        TaskError,
        "1 label(s)",
        "needs at least two",
    ),
    Bad(
        "label word with spaces around",
        _task(words={"pos": [" good"], "neg": ["bad"]}),
        TaskError,
        "leading or trailing whitespace",
        "write 'good'",
    ),
    Bad(
        "multi-token word, single-token strategy",
        _multi_token_word,
        TaskError,
        "'very positive' is 2 tokens",
        "choose a single-token word",
    ),
    # task files
    Bad(
        "duplicate label in a task file",
        _task_file(
            "dup.json",
            '{"name": "t", "template": "R: {text}", "verbalizer": {"pos": ["a"], "pos": ["b"]}}',
        ),
        TaskError,
        "appear twice",
        "keep one",
    ),
    Bad(
        "task file: invalid TOML",
        _task_file("bad.toml", 'name = "t"\ntemplate = "R: {text}\n'),
        TaskError,
        "invalid TOML",
        "fix the syntax",
    ),
    Bad(
        "task file: unknown key",
        _task_file(
            "unknown.json",
            '{"name": "t", "template": "R: {text}", "labels": 1, '
            '"verbalizer": {"pos": ["a"], "neg": ["b"]}}',
        ),
        TaskError,
        "unknown task key(s) ['labels']",
        "allowed keys are",
    ),
    Bad(
        "task file: missing key",
        _task_file("missing.json", '{"name": "t", "template": "{text}"}'),
        TaskError,
        "missing required key(s) ['verbalizer']",
        "a task needs name",
    ),
    Bad(
        "task file: not UTF-8",
        _task_file("latin.json", '{"name": "caf\xe9"}'.encode("latin-1")),
        TaskError,
        "not valid UTF-8",
        "save as UTF-8",
    ),
    Bad(
        "task file: wrong suffix",
        lambda tmp: Task.from_file(tmp / "task.yaml"),
        TaskError,
        "unsupported suffix '.yaml'",
        "use one of",
    ),
    Bad(
        "task file: missing",
        lambda tmp: Task.from_file(tmp / "nope.toml"),
        TaskError,
        "does not exist",
        "check the path",
    ),
    Bad(
        "task file: a directory",
        lambda tmp: Task.from_file(_mkdir(tmp / "task.json")),
        TaskError,
        "cannot read task file",
        "check the path and its permissions",
    ),
    # data files
    Bad(
        "data: missing text",
        _data("a.jsonl", _jsonl({"label": "pos"})),
        DataError,
        "line 1: missing field 'text'",
        "every record needs 'text'",
    ),
    Bad(
        "data: missing label",
        _data("b.jsonl", _jsonl({"text": "x"})),
        DataError,
        "missing field 'label'",
        "every record needs 'label'",
    ),
    Bad(
        "data: unknown label",
        _data("c.jsonl", _jsonl({"text": "x", "label": "maybe"})),
        DataError,
        "unknown label 'maybe'",
        "allowed labels are ['pos', 'neg']",
    ),
    Bad(
        "data: empty file",
        _data("d.jsonl", ""),
        DataError,
        "the file is empty",
        "add examples, one per line",
    ),
    Bad(
        "data: bad encoding",
        _data("e.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1")),
        DataError,
        "line 1: not valid UTF-8",
        "re-save the file as UTF-8",
    ),
    Bad(
        "data: huge line (JSON Lines)",
        _data("f.jsonl", _jsonl({"text": "x" * MAX_RECORD_CHARS, "label": "pos"})),
        DataError,
        "line 1: the record is",
        "shorten the text or split it",
    ),
    Bad(
        "data: huge field (CSV)",
        _data("f.csv", f'text,label\na,pos\n"{"x" * 200_000}",pos\n'),
        DataError,
        "line 3: a field is longer than the limit",
        "shorten the text or split it",
    ),
    Bad(
        "data: a JSON array",
        _data("g.jsonl", json.dumps([{"text": "x", "label": "pos"}])),
        DataError,
        "holds a JSON array",
        "write JSON Lines instead",
    ),
    Bad(
        "data: invalid JSON line",
        _data("h.jsonl", '{"text": "x", label: pos}\n'),
        DataError,
        "line 1: invalid JSON",
        "write one JSON object per line",
    ),
    Bad(
        "data: a number as text",
        _data("i.jsonl", _jsonl({"text": 5, "label": "pos"})),
        DataError,
        "field 'text' must be a string",
        "quote it",
    ),
    Bad(
        "data: CSV without a text column",
        _data("j.csv", "sentence,label\nx,pos\n"),
        DataError,
        "has no 'text' column",
        "name the columns",
    ),
    Bad(
        "data: wrong suffix",
        _data("k.txt", "x"),
        DataError,
        "unsupported file suffix '.txt'",
        "use one of",
    ),
    Bad(
        "data: missing file",
        lambda tmp: load_examples(tmp / "nope.jsonl"),
        DataError,
        "does not exist",
        "check the path",
    ),
    Bad(
        "data: a directory",
        lambda tmp: load_examples(_mkdir(tmp / "dir.jsonl")),
        DataError,
        "cannot read data file",
        "check the path and its permissions",
    ),
    Bad(
        "data: too few shots of a label",
        lambda _tmp: sample_k_shot(
            [Example("a", "pos"), Example("b", "neg")], 2, labels=LABELS, seed=0
        ),
        DataError,
        "'pos' has only 1 example(s) but k=2",
        "lower k or add examples",
    ),
    # saved decoders
    Bad(
        "decoder: corrupt (a flipped byte)",
        _damaged(_flip_byte),
        SerializationError,
        "does not match the checksum",
        "fit and save the decoder again",
    ),
    Bad(
        "decoder: truncated",
        _damaged(_truncate),
        SerializationError,
        "truncated or corrupt",
        "save the decoder again",
    ),
    Bad(
        "decoder: from a newer version",
        _damaged(_edit_json(format_version=DECODER_FORMAT_VERSION + 1)),
        SerializationError,
        f"format {DECODER_FORMAT_VERSION + 1}",
        "upgrade maas-tune",
    ),
    Bad(
        "decoder: unknown class",
        _damaged(_edit_json(**{"class": "os.system"})),
        SerializationError,
        "unknown decoder class 'os.system'",
        "register custom classes",
    ),
    Bad(
        "decoder: not a decoder file",
        _damaged(_edit_json(format="pickle")),
        SerializationError,
        "is not a maas-tune decoder file",
        "pass the directory that save_decoder",
    ),
    Bad(
        "decoder: missing",
        lambda tmp: load_decoder(tmp / "nowhere"),
        SerializationError,
        "is missing",
        "a saved decoder is a directory with",
    ),
    Bad(
        "decoder: from another task",
        _used_on(_other_task_scores),
        ConfigurationError,
        "but the decoder was fitted on",
        "score X with the same task",
    ),
    Bad(
        "decoder: from another model",
        _used_on(lambda: make_scores(2, d=8)[0]),
        ConfigurationError,
        "width 8 but this LinearProbe was fitted on width 16",
        "score X with the provider and task the decoder was fitted with",
    ),
    # cache files
    Bad(
        "cache: random bytes",
        _store_on("junk.sqlite", os.urandom(4096)),
        CacheCorruptionError,
        "is not a SQLite database or is damaged",
        "or pass another --cache path",
    ),
    Bad(
        "cache: a text file",
        _store_on("notes.sqlite", b"hello\n" * 100),
        CacheCorruptionError,
        "is not a SQLite database",
        "pass another --cache path",
    ),
    Bad(
        "cache: another program's SQLite",
        _foreign_sqlite,
        CacheCorruptionError,
        "not a maas-tune store",
        "pass another --cache path",
    ),
    Bad(
        "cache: a newer schema",
        _newer_schema,
        CacheError,
        f"has schema {DB_SCHEMA_VERSION + 1}",
        "upgrade maas-tune",
    ),
    Bad(
        "cache: a directory",
        lambda tmp: Store(tmp),
        CacheError,
        "cannot be opened",
        "check that its folder exists and is writable",
    ),
    Bad(
        "cache: locked by another process",
        _locked,
        CacheError,
        "is locked",
        "wait for the other maas-tune run to finish",
    ),
    # options of the library
    Bad(
        "budget: negative cap",
        lambda tmp: QueryBudget("b", -5, store=tmp / "s.sqlite"),
        ConfigurationError,
        "max_queries must be a non-negative integer",
        "got -5",
    ),
    Bad(
        "http: URL without scheme",
        _http(base_url="localhost:8000"),
        ConfigurationError,
        "must be an http:// or https:// URL",
        "e.g. 'http://127.0.0.1:8000/v1'",
    ),
    Bad(
        "http: unknown strategy",
        _http(strategy="fast"),
        ConfigurationError,
        "unknown strategy 'fast'",
        "use one of",
    ),
    Bad(
        "http: zero concurrency",
        _http(max_concurrency=0),
        ConfigurationError,
        "max_concurrency must be an integer >= 1",
        "got 0",
    ),
    Bad(
        "http: negative timeout",
        _http(timeout=-1),
        ConfigurationError,
        "timeout must be a positive number of seconds",
        "got -1",
    ),
]


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_the_catalogue_covers_at_least_30_kinds() -> None:
    assert len({bad.kind for bad in CATALOGUE}) == len(CATALOGUE) >= 30


@pytest.mark.parametrize("bad", CATALOGUE, ids=[bad.kind for bad in CATALOGUE])
def test_bad_input_gives_one_clear_error(
    bad: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "SQLITE_BUSY_TIMEOUT_S", 0.2)  # the lock test waits this long
    with pytest.raises(MaasTuneError) as info:
        bad.trigger(tmp_path)
    assert type(info.value) is bad.error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert bad.problem in message, message
    assert bad.fix in message, message


# -- CLI flags --------------------------------------------------------------------------
CLI = [
    ("unknown dataset", ["eval", "--dataset", "nope"], 1, "unknown dataset 'nope'"),
    (
        "unknown method",
        ["eval", "--dataset", "sst2", "--method", "magic"],
        1,
        "unknown method 'magic'; choose one of",
    ),
    ("no data", ["eval"], 1, "say what to train on: --dataset NAME"),
    ("dataset and files", ["eval", "--train", "x.jsonl", "--dataset", "sst2"], 1, "not both"),
    ("--train without --task", ["eval", "--train", "x.jsonl"], 1, "--train FILE and --task FILE"),
    (
        "--embeddings without --base-url",
        ["eval", "--dataset", "sst2", "--embeddings"],
        1,
        "--embeddings needs --base-url",
    ),
    (
        "--base-url without scheme",
        ["eval", "--dataset", "sst2", "--base-url", "localhost:8000"],
        1,
        "must be an http:// or https:// URL",
    ),
    ("--shots not a number", ["eval", "--shots", "many"], 2, "--shots: invalid int value: 'many'"),
    ("--shots 0", ["eval", "--shots", "0"], 2, "--shots: must be >= 1, got 0"),
    (
        "negative --max-queries",
        ["eval", "--max-queries", "-5"],
        2,
        "--max-queries: must be >= 0, got -5",
    ),
    ("--test-limit 0", ["eval", "--test-limit", "0"], 2, "--test-limit: must be >= 1"),
    ("unknown --strategy", ["eval", "--strategy", "fast"], 2, "--strategy: invalid choice"),
    (
        "serve --api-key-env unset",
        ["serve", "--api-key-env", "MAAS_TUNE_NO_SUCH_VARIABLE"],
        1,
        "that environment variable is empty or unset",
    ),
    ("budget set without a cap", ["budget", "set", "x"], 1, "needs --max-queries"),
    (
        "budget reset of an unknown name",
        ["budget", "reset", "nobody"],
        1,
        "no budget named 'nobody'",
    ),
    (
        "predict with no decoder",
        ["predict", "--decoder", "nowhere", "--input", "x.jsonl"],
        1,
        "a saved decoder is a directory with",
    ),
]


@pytest.mark.parametrize(
    ("argv", "code", "needle"), [row[1:] for row in CLI], ids=[row[0] for row in CLI]
)
def test_bad_cli_flags_exit_with_one_clear_line(
    argv: list[str], code: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache", str(tmp_path / "s.sqlite")] if argv[0] != "serve" else []
    if code == 2:  # argparse: the usage, then "error: argument ...: ..."
        with pytest.raises(SystemExit) as info:
            main(argv + cache)
        assert info.value.code == 2
    else:
        assert main(argv + cache) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].count("error:") == 1
