"""Labelled examples: loading JSON Lines / CSV / Parquet files (or in-memory tables, through
:mod:`maas_tune.frames`) and class-balanced k-shot sampling."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .._files import file_errors
from ..errors import ConfigurationError, DataError
from ._records import LABEL_FIELD, PAIR_FIELD, TEXT_FIELD, records_csv, records_jsonl

if TYPE_CHECKING:
    from ..frames import Columns

__all__ = [
    "Dataset",
    "Example",
    "labels_to_indices",
    "load_examples",
    "parse_examples",
    "sample_k_shot",
]

#: File suffix -> format understood by :func:`load_examples`.
DATA_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
#: A lone UTF-16 surrogate: what a JSON escape like "\ud800" decodes to.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Example:
    """One input: its text, an optional second text (pair tasks) and its label.

    ``label`` is ``None`` for unlabelled data (e.g. inputs to predict).
    """

    text: str
    label: str | None = None
    text_b: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A named dataset: label names in class order and its train / test examples."""

    name: str
    labels: tuple[str, ...]
    train: list[Example] = field(repr=False)
    test: list[Example] = field(repr=False)

    def __repr__(self) -> str:
        sizes = f"train={len(self.train)}, test={len(self.test)}"
        return f"Dataset(name={self.name!r}, labels={self.labels!r}, {sizes})"


def _string_field(record: dict[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field {key!r}; every record needs {key!r}")
        return None
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {key!r} must be a string, "
            f"got {type(value).__name__} {value!r}; quote it"
        )
    surrogate = _SURROGATE.search(value)
    if surrogate is not None:
        # Only a JSON escape can put one here (a strict UTF-8 decode never yields one); it is
        # not a character, and tokenizers, the cache and any UTF-8 output fail on it later.
        escape = f"\\u{ord(surrogate.group()):04x}"
        raise DataError(
            f"{where}: field {key!r} holds a lone UTF-16 surrogate {escape} at character "
            f"{surrogate.start()}, which is not a character; fix the escape (a surrogate pair "
            "such as \\ud83d\\ude00 is fine) or remove it"
        )
    return value


def _to_example(
    record: dict[str, Any], where: str, labels: Sequence[str] | None, require_label: bool
) -> Example:
    text = _string_field(record, TEXT_FIELD, where, required=True)
    text_b = _string_field(record, PAIR_FIELD, where, required=False)
    label = _string_field(record, LABEL_FIELD, where, required=require_label)
    if label is not None and labels is not None and label not in labels:
        raise DataError(f"{where}: unknown label {label!r}; allowed labels are {list(labels)}")
    return Example(text=cast(str, text), label=label, text_b=text_b)


def parse_examples(
    raw: bytes,
    *,
    fmt: str,
    source: str = "<bytes>",
    labels: Sequence[str] | None = None,
    require_label: bool = True,
    columns: Columns | None = None,
) -> list[Example]:
    """Parse UTF-8 ``jsonl`` or ``csv`` content into examples.

    Parameters
    ----------
    raw : bytes
        File content, UTF-8 (a byte-order mark is tolerated).
    fmt : {"jsonl", "csv"}
        Content format.
    source : str
        Name used in error messages (usually the file path).
    labels, require_label
        See :func:`load_examples`.
    columns : Columns, optional
        The record key of each field (:func:`maas_tune.frames.resolve_columns`); default
        ``text``, ``text_b`` and ``label``.

    Raises
    ------
    DataError
        With the source and line number of the first bad record.
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{source}, line {line}: not valid UTF-8 ({exc.reason}); re-save the file as UTF-8"
        ) from exc
    if fmt not in ("jsonl", "csv"):
        raise ConfigurationError(f"unknown data format {fmt!r}; use 'jsonl' or 'csv'")
    text_column = columns.text if columns is not None else TEXT_FIELD
    records = (
        records_jsonl(text, source) if fmt == "jsonl" else records_csv(text, source, text_column)
    )
    examples = [
        _to_example(columns.renamed(record, f"{source}, line {number}") if columns else record,
                    f"{source}, line {number}", labels, require_label)
        for number, record in records
    ]  # fmt: skip
    if not examples:
        raise DataError(f"{source}: the file is empty (no records); add examples, one per line")
    return examples


def load_examples(
    path: Any,
    *,
    labels: Sequence[str] | None = None,
    require_label: bool = True,
    text: str | None = None,
    text_b: str | None = None,
    label: str | None = None,
    column_mapping: dict[str, str] | None = None,
) -> list[Example]:
    """Read examples from a ``.jsonl`` / ``.json`` (JSON Lines), ``.csv`` or ``.parquet`` file,
    or from an in-memory table (see :func:`maas_tune.frames.as_examples`).

    Each record has ``text``, optionally ``text_b`` (second text of a pair) and
    ``label``; other fields are ignored. A CSV file needs a header row. Reading Parquet
    needs pyarrow (``pip install 'maas-tune[frames]'``).

    Parameters
    ----------
    path : str, Path, pandas.DataFrame, datasets.Dataset or list of dict
        File to read (UTF-8), or the rows themselves.
    text, text_b, label : str, optional
        The column holding each field, when not named ``text``, ``text_b``, ``label``.
    column_mapping : dict of str to str, optional
        The same, spelled as in SetFit: data column -> field, e.g. ``{"review": "text"}``.
    labels : sequence of str, optional
        Allowed label names; a record with another label is an error.
    require_label : bool, default True
        Whether every record must have a label (``False`` for data to predict;
        its missing labels become ``None``).

    Returns
    -------
    list of Example
        In file order.

    Raises
    ------
    DataError
        Naming the file and line: missing or non-string field, unknown label,
        invalid JSON, invalid UTF-8, empty file, unsupported suffix.
    """
    from ..frames import load_table, resolve_columns

    names: dict[str, Any] = {
        "text": text,
        "text_b": text_b,
        "label": label,
        "column_mapping": column_mapping,
    }
    if not isinstance(path, (str, Path)) or Path(path).suffix.lower() == ".parquet":
        return load_table(path, labels=labels, require_label=require_label, **names)
    columns = resolve_columns(**names)
    path = Path(path)
    fmt = DATA_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{str(path)!r}: unsupported file suffix {path.suffix!r}; "
            f"use one of {sorted(DATA_FORMATS)}"
        )
    with file_errors(path, "data", DataError):
        raw = path.read_bytes()
    return parse_examples(
        raw, fmt=fmt, source=str(path), labels=labels, require_label=require_label,
        columns=columns,
    )  # fmt: skip


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = list(labels)
    if not labels:
        raise ConfigurationError("labels is empty; pass the label names in class order")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigurationError(
            f"labels {duplicates} are listed more than once; list each label once"
        )
    return labels


def labels_to_indices(examples: Sequence[Example], labels: Sequence[str]) -> np.ndarray:
    """Class index of each example's label.

    Returns
    -------
    np.ndarray of int64, shape (n,)
        ``labels.index(example.label)`` for each example.

    Raises
    ------
    DataError
        If an example has no label or a label not in ``labels``.
    """
    index = {label: k for k, label in enumerate(_check_labels(labels))}
    out = np.empty(len(examples), dtype=np.int64)
    for i, example in enumerate(examples):
        if example.label is None:
            raise DataError(
                f"example {i} has no label; only labelled examples can be converted to indices"
            )
        if example.label not in index:
            raise DataError(
                f"example {i} has unknown label {example.label!r}; allowed labels are {list(index)}"
            )
        out[i] = index[example.label]
    return out


def sample_k_shot(
    examples: Sequence[Example], k: int, *, labels: Sequence[str], seed: int
) -> list[Example]:
    """Draw exactly ``k`` examples of every label, without replacement.

    Parameters
    ----------
    examples : sequence of Example
        The pool, all labelled with names from ``labels``.
    k : int
        Examples per label (shots), at least 1.
    labels : sequence of str
        Label names; the sample has ``k * len(labels)`` examples.
    seed : int
        Seed of ``numpy.random.default_rng``; the same pool and seed give the same sample.

    Returns
    -------
    list of Example
        ``k * len(labels)`` examples in a seeded random order (classes interleaved).

    Raises
    ------
    DataError
        If a label has fewer than ``k`` examples (the message names it), or an
        example is unlabelled or has a label outside ``labels``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigurationError(f"k must be a positive integer (examples per label), got {k!r}")
    classes = labels_to_indices(examples, labels)  # (n,), validates every label
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for c, label in enumerate(_check_labels(labels)):
        pool = np.flatnonzero(classes == c)  # (n_c,)
        if len(pool) < k:
            raise DataError(
                f"label {label!r} has only {len(pool)} example(s) but k={k} were requested; "
                "lower k or add examples of that label"
            )
        chosen.append(rng.choice(pool, size=k, replace=False))
    order = rng.permutation(np.concatenate(chosen))  # (k * K,)
    return [examples[i] for i in order]
