"""Tests of maas_tune.data: file loaders, their errors, the k-shot sampler and label indices."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from maas_tune.data import (
    Dataset,
    Example,
    labels_to_indices,
    load_examples,
    parse_examples,
    sample_k_shot,
)
from maas_tune.errors import ConfigurationError, DataError

LABELS = ("negative", "positive")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_load_jsonl(tmp_path: Path, suffix: str) -> None:
    content = jsonl(
        {"text": "good {x}", "label": "positive", "id": 7},
        {"text": "p", "text_b": "h", "label": "negative"},
    )
    path = write(tmp_path, "d" + suffix, content + "\n\n")  # blank lines are skipped
    assert load_examples(path, labels=LABELS) == [
        Example("good {x}", "positive"),
        Example("p", "negative", "h"),
    ]


def test_jsonl_with_raw_line_separators_in_strings(tmp_path: Path) -> None:
    records = [{"text": "a\u2028b\x85c\x0cd", "label": "positive"}, {"text": "x", "label": 3}]
    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path = write(tmp_path, "d.jsonl", content)
    check_error(path, ["line 2", "'label'"])  # not thrown off by U+2028 / U+0085 / form feed
    path = write(tmp_path, "e.jsonl", json.dumps(records[0], ensure_ascii=False))
    assert load_examples(path) == [Example("a\u2028b\x85c\x0cd", "positive")]


def test_load_csv(tmp_path: Path) -> None:
    content = 'text,text_b,label\n"a, quoted ""x""",,positive\nfirst,"second\nline",negative\n'
    path = write(tmp_path, "d.csv", content)
    assert load_examples(path, labels=LABELS) == [
        Example('a, quoted "x"', "positive"),
        Example("first", "negative", "second\nline"),
    ]


def test_load_csv_without_pair_column_and_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "\ufefflabel,text\npositive,caf\u00e9\n")
    assert load_examples(path) == [Example("caf\u00e9", "positive")]


def test_unlabelled_data(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"text": "a"}, {"text": "b", "label": "positive"}))
    assert load_examples(path, require_label=False) == [
        Example("a", None),
        Example("b", "positive"),
    ]
    csv_path = write(tmp_path, "d.csv", "text,label\na,\n")
    assert load_examples(csv_path, require_label=False) == [Example("a", None)]


def check_error(path: Path, fragments: list[str], **kwargs: object) -> None:
    with pytest.raises(DataError) as info:
        load_examples(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    for fragment in [str(path), *fragments]:
        assert fragment in message, message


def test_missing_field(tmp_path: Path) -> None:
    path = write(
        tmp_path, "d.jsonl", jsonl({"text": "a", "label": "positive"}, {"label": "negative"})
    )
    check_error(path, ["line 2", "missing field 'text'"])
    path = write(tmp_path, "e.jsonl", jsonl({"text": "a", "label": "positive"}, {"text": "b"}))
    check_error(path, ["line 2", "missing field 'label'"])


def test_non_string_field(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"text": "a", "label": 1}))
    check_error(path, ["line 1", "'label'", "string", "int"])
    path = write(
        tmp_path,
        "e.jsonl",
        jsonl({"text": "a", "label": "positive"}, {"text": ["a"], "label": "positive"}),
    )
    check_error(path, ["line 2", "'text'", "list"])


def test_unknown_label_lists_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonl",
        jsonl({"text": "a", "label": "positive"}, {"text": "b", "label": "neutral"}),
    )
    check_error(path, ["line 2", "'neutral'", "['negative', 'positive']"], labels=LABELS)


def test_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"text": "a", "label": "positive"}) + "\n{not json}\n")
    check_error(path, ["line 3", "invalid JSON"])
    path = write(tmp_path, "e.jsonl", jsonl({"text": "a", "label": "positive"}, ["text"]))
    check_error(path, ["line 2", "JSON object"])
    path = write(tmp_path, "f.json", json.dumps([{"text": "a", "label": "positive"}]))
    check_error(path, ["JSON array", "JSON Lines"])


@pytest.mark.parametrize(
    ("name", "content"), [("d.jsonl", ""), ("e.jsonl", "\n  \n"), ("f.csv", "text,label\n")]
)
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    check_error(write(tmp_path, name, content), ["empty"])


def test_invalid_utf8(tmp_path: Path) -> None:
    content = (
        jsonl({"text": "a", "label": "positive"}).encode()
        + b'{"text": "caf\xe9", "label": "positive"}\n'
    )
    check_error(write(tmp_path, "d.jsonl", content), ["line 2", "UTF-8"])


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    check_error(write(tmp_path, "d.tsv", "text\tlabel\n"), ["'.tsv'", ".jsonl"])
    check_error(tmp_path / "missing.jsonl", ["does not exist"])


def test_csv_errors(tmp_path: Path) -> None:
    check_error(write(tmp_path, "d.csv", "txt,label\na,positive\n"), ["line 1", "'text'"])
    check_error(
        write(tmp_path, "e.csv", "text,label\na,positive\nb\n"), ["line 3", "missing field 'label'"]
    )
    check_error(
        write(tmp_path, "f.csv", "text,label\na,positive\nb,other\n"),
        ["line 3", "'other'"],
        labels=LABELS,
    )


def test_parse_examples_from_bytes() -> None:
    raw = jsonl({"text": "a", "label": "positive"}).encode()
    assert parse_examples(raw, fmt="jsonl") == [Example("a", "positive")]
    with pytest.raises(DataError, match=r"mem\.jsonl, line 1"):
        parse_examples(raw, fmt="jsonl", source="mem.jsonl", labels=["x", "y"])
    with pytest.raises(ConfigurationError, match="'xml'"):
        parse_examples(raw, fmt="xml")


# --- sampling ------------------------------------------------------------------------------


def pool(counts: dict[str, int]) -> list[Example]:
    return [Example(f"{label} {i}", label) for label, n in counts.items() for i in range(n)]


POOL = pool({"negative": 20, "positive": 30})


def test_sample_is_balanced_without_replacement() -> None:
    sample = sample_k_shot(POOL, 8, labels=LABELS, seed=0)
    assert len(sample) == 16
    assert Counter(e.label for e in sample) == {"negative": 8, "positive": 8}
    assert len(set(sample)) == 16
    assert all(e in POOL for e in sample)


def test_sample_is_deterministic_and_seed_dependent() -> None:
    first = sample_k_shot(POOL, 4, labels=LABELS, seed=1)
    assert sample_k_shot(POOL, 4, labels=LABELS, seed=1) == first
    assert sample_k_shot(POOL, 4, labels=LABELS, seed=2) != first


def test_sample_order_is_shuffled() -> None:
    grouped = ["negative"] * 5 + ["positive"] * 5
    orders = [[e.label for e in sample_k_shot(POOL, 5, labels=LABELS, seed=s)] for s in range(5)]
    assert any(order != grouped for order in orders)


def test_sample_all_when_k_equals_class_size() -> None:
    sample = sample_k_shot(POOL, 20, labels=LABELS, seed=0)
    assert {e for e in sample if e.label == "negative"} == {
        e for e in POOL if e.label == "negative"
    }


def test_sample_not_enough_examples_names_label() -> None:
    with pytest.raises(DataError) as info:
        sample_k_shot(POOL, 25, labels=LABELS, seed=0)
    assert "'negative'" in str(info.value) and "20" in str(info.value)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_sample_bad_k(k: object) -> None:
    with pytest.raises(ConfigurationError, match="k must be"):
        sample_k_shot(POOL, k, labels=LABELS, seed=0)  # type: ignore[arg-type]


def test_sample_rejects_unknown_or_missing_labels() -> None:
    with pytest.raises(DataError, match="'neutral'"):
        sample_k_shot([*POOL, Example("x", "neutral")], 2, labels=LABELS, seed=0)
    with pytest.raises(DataError, match="no label"):
        sample_k_shot([*POOL, Example("x")], 2, labels=LABELS, seed=0)
    with pytest.raises(ConfigurationError, match="more than once"):
        sample_k_shot(POOL, 2, labels=["negative", "negative"], seed=0)


# --- indices and Dataset -------------------------------------------------------------------


def test_labels_to_indices() -> None:
    examples = [Example("a", "positive"), Example("b", "negative"), Example("c", "positive")]
    indices = labels_to_indices(examples, LABELS)
    assert indices.dtype == np.int64 and indices.shape == (3,)
    assert indices.tolist() == [1, 0, 1]
    assert labels_to_indices([], LABELS).shape == (0,)
    with pytest.raises(DataError, match="'neutral'"):
        labels_to_indices([Example("a", "neutral")], LABELS)


def test_example_is_frozen_and_dataset_repr_is_short() -> None:
    example = Example("a", "positive")
    with pytest.raises(AttributeError):
        example.text = "b"  # type: ignore[misc]
    dataset = Dataset("toy", LABELS, train=POOL, test=[example])
    assert repr(dataset) == "Dataset(name='toy', labels=('negative', 'positive'), train=50, test=1)"
