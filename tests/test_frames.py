"""Data in the shapes users have: pandas DataFrames, Hugging Face datasets, Parquet, records,
stdin; with SetFit-style column mappings, and clear refusals of everything else."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas_tune import Client, ScoreCache, Task
from maas_tune import cli as cli_module
from maas_tune import datasets as bundled
from maas_tune.data import Example, load_examples
from maas_tune.errors import ConfigurationError, DataError, MissingDependencyError
from maas_tune.frames import as_examples, resolve_columns

from .fakes import FakeProvider

pd = pytest.importorskip("pandas")
hf = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a gorgeous, witty movie", "dull and lifeless", "a triumph"]
LABELS = ["positive", "negative", "positive"]
EXPECTED = [Example(t, label) for t, label in zip(TEXTS, LABELS)]


@pytest.fixture
def task() -> Task:
    return bundled.load_task("sst2")


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(FakeProvider(), cache=ScoreCache(tmp_path / "cache.sqlite"), progress=False)


# -- Client.score ---------------------------------------------------------------------------
def test_score_dataframe_scores_its_rows_not_its_column_names(client: Client, task: Task) -> None:
    """Regression: iterating a DataFrame yields its column names, which used to be scored."""
    df = pd.DataFrame({"text": TEXTS, "label": LABELS})
    scores = client.score(task, df)
    assert scores.label_logprobs.shape == (3, 2)
    assert client.provider.sent == [task.render(Example(t)) for t in TEXTS]


def test_score_dataframe_dataset_and_records_agree(client: Client, task: Task) -> None:
    reference = client.score(task, EXPECTED).label_logprobs
    frame = pd.DataFrame({"review": TEXTS, "stars": LABELS})
    same = [
        as_examples(frame, column_mapping={"review": "text", "stars": "label"}),
        as_examples(frame, text="review", label="stars"),
        hf.Dataset.from_dict({"text": TEXTS}),
        [{"text": t, "label": label} for t, label in zip(TEXTS, LABELS)],
        np.array(TEXTS),
        pd.Series(TEXTS),
    ]
    for data in same:
        np.testing.assert_array_equal(client.score(task, data).label_logprobs, reference)
    assert client.usage.queries_sent == 3  # every other call was answered from the cache


def test_score_refuses_a_frame_without_a_text_column(client: Client, task: Task) -> None:
    frame = pd.DataFrame({"review": TEXTS, "stars": LABELS})
    with pytest.raises(DataError, match=re.escape(
        "the DataFrame has no column 'text' for the text (its columns: ['review', 'stars']); "
        "name it with text='COLUMN' or column_mapping={'COLUMN': 'text'}"
    )):  # fmt: skip
        client.score(task, frame)
    assert client.provider.sent == []


# -- conversions ----------------------------------------------------------------------------
def test_pairs_and_labels_from_a_mapped_frame() -> None:
    frame = pd.DataFrame({"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"],
                          "gold": ["entailment", None]})  # fmt: skip
    examples = as_examples(frame, text="premise", text_b="hypothesis", label="gold")
    assert examples == [Example("p1", "entailment", "h1"), Example("p2", None, "h2")]
    with pytest.raises(DataError, match=r"row 1: column 'gold' \(label\) is missing"):
        as_examples(frame, column_mapping={"premise": "text", "gold": "label"}, require_label=True)


def test_hf_dataset_class_labels_become_names() -> None:
    features = hf.Features({"sentence": hf.Value("string"),
                            "label": hf.ClassLabel(names=["negative", "positive"])})  # fmt: skip
    ds = hf.Dataset.from_dict({"sentence": TEXTS, "label": [1, 0, 1]}, features=features)
    assert as_examples(ds, text="sentence") == EXPECTED
    loaded = load_examples(ds, labels=["negative", "positive"], text="sentence")
    assert loaded == EXPECTED


def test_numeric_labels_and_missing_texts_are_refused_naming_the_row() -> None:
    with pytest.raises(
        DataError,
        match=r"row 0: column 'stars' \(label\) holds int 5, not a "
        r"str; map them to the task's label names",
    ):
        as_examples(pd.DataFrame({"text": ["x"], "stars": [5]}), label="stars")
    with pytest.raises(DataError, match=r"row 1: column 'text' \(text\) is missing or empty"):
        as_examples(pd.DataFrame({"text": ["x", np.nan]}))
    with pytest.raises(DataError, match=r"item 0: unknown label 'meh'"):
        as_examples([{"text": "x", "label": "meh"}], labels=["negative", "positive"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            "a gorgeous movie",
            (
                "got a single str, not a collection of rows; pass a pandas "
                "DataFrame, a datasets.Dataset, a list of dicts"
            ),
        ),
        ({"text": TEXTS}, "got a dict; pass a pandas DataFrame"),
        (np.arange(3), "got a numpy.ndarray of int64 with shape (3,); pass"),
        (np.array([TEXTS]), "got a numpy.ndarray of <U23 with shape (1, 3); pass"),
        (42, "got a value of type int, which holds no rows; pass a pandas DataFrame"),
        (
            [("a", "b")],
            ("item 0 is a tuple (('a', 'b')); each item must be a dict, a str or an Example"),
        ),
        (
            [{"review": "x"}],
            (
                "item 0: the record has no key 'text' (its keys: ['review']); name "
                "the text's key with text='KEY'"
            ),
        ),
    ],
)
def test_refusals_name_what_was_given_and_what_to_pass(data: Any, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        as_examples(data)


def test_a_dataset_dict_asks_for_one_split() -> None:
    splits = hf.DatasetDict({"train": hf.Dataset.from_dict({"text": TEXTS})})
    with pytest.raises(DataError, match=re.escape("of splits ['train']; pass one split, "
                                                  "e.g. data['train']")):  # fmt: skip
        as_examples(splits)


def test_column_mapping_is_checked() -> None:
    assert resolve_columns(column_mapping={"review": "text"}, label="stars") == (
        "review",
        "text_b",
        "stars",
        frozenset({"text", "label"}),
    )
    with pytest.raises(ConfigurationError, match="maps 'review' to 'txt', which is not a field"):
        resolve_columns(column_mapping={"review": "txt"})
    with pytest.raises(ConfigurationError, match="text='body' contradicts column_mapping"):
        resolve_columns(column_mapping={"review": "text"}, text="body")


# -- files ----------------------------------------------------------------------------------
def test_load_examples_reads_parquet_with_a_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    pd.DataFrame({"review": TEXTS, "stars": LABELS, "id": [1, 2, 3]}).to_parquet(path)
    mapping = {"review": "text", "stars": "label"}
    assert load_examples(path, column_mapping=mapping, labels=["negative", "positive"]) == EXPECTED
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read it as Parquet"):
        load_examples(tmp_path / "bad.parquet")


def test_parquet_without_pyarrow_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'maas-tune[frames]'")):
        load_examples(tmp_path / "train.parquet")


def test_load_examples_csv_and_jsonl_with_own_column_names(tmp_path: Path) -> None:
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("review,stars\n" + "".join(f'"{t}",{s}\n' for t, s in zip(TEXTS, LABELS)))
    assert load_examples(csv_path, text="review", label="stars") == EXPECTED
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"review": t, "stars": s}) + "\n"
                             for t, s in zip(TEXTS, LABELS)))  # fmt: skip
    assert load_examples(jsonl, column_mapping={"review": "text", "stars": "label"}) == EXPECTED
    with pytest.raises(DataError, match=r"has no 'body' column; check the column name"):
        load_examples(csv_path, text="body")
    with pytest.raises(DataError, match=r"line 1: missing field 'body' \(the text\)"):
        load_examples(jsonl, text="body")
    with pytest.raises(DataError, match="DataFrame: holds no rows"):
        load_examples(pd.DataFrame({"text": [], "label": []}))


# -- command line ---------------------------------------------------------------------------
@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's provider is the fast fake one (no model)."""
    monkeypatch.setattr("maas_tune.cli.commands._provider", lambda args, model=None: FakeProvider())


def test_cli_fits_on_parquet_and_predicts_jsonl_from_stdin(
    tmp_path: Path, fake_cli: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    train = tmp_path / "train.parquet"
    pd.DataFrame({"review": TEXTS * 2 + ["meh", "bad"],
                  "stars": LABELS * 2 + ["negative", "negative"]}).to_parquet(train)  # fmt: skip
    (tmp_path / "task.toml").write_text((ROOT / "maas_tune/datasets/sst2/task.toml").read_text())
    cache, out = str(tmp_path / "c.sqlite"), str(tmp_path / "dect")
    code = cli_module.main(["fit", "--train", str(train), "--task", str(tmp_path / "task.toml"),
                            "--text-column", "review", "--label-column", "stars", "--shots", "2",
                            "--cache", cache, "--out", out, "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    rows = "".join(json.dumps({"body": t}) + "\n" for t in ["lovely", "awful"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(rows.encode())))
    code = cli_module.main(["predict", "--decoder", out, "--input", "-", "--text-column", "body",
                            "--cache", cache, "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["text"] for row in lines] == ["lovely", "awful"]
    assert all(row["prediction"] in ("negative", "positive") for row in lines)


def test_cli_column_flags_with_a_bundled_dataset_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli_module.main(["eval", "--dataset", "sst2", "--text-column", "review"])
    assert code == 1
    assert "name the columns of --train/--test files" in capsys.readouterr().err


# -- docs -----------------------------------------------------------------------------------
def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemma: Any) -> None:
    """docs/data.md's example, with the real model (the session's ``gemma``)."""
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert "mt.TransformersProvider()" in block
    namespace: dict[str, Any] = {"gemma": gemma}
    code = compile(block.replace("mt.TransformersProvider()", "gemma"), "docs/data.md", "exec")
    exec(code, namespace)  # noqa: S102 - our own docs page
    assert len(namespace["shots"]) == 4
    assert set(namespace["predicted"]) <= {"negative", "positive"}
    assert namespace["pairs"][0] == Example("a gorgeous movie", "positive")
