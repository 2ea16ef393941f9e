"""Bundled text-classification datasets (sst2, agnews, trec, rte, subj) and their default tasks.

Each dataset is a folder of this package holding ``train.jsonl``, ``test.jsonl``,
``labels.json`` (label names in class order), ``task.toml`` (the default
:class:`~maas_tune.task.Task`) and ``PROVENANCE.md`` (source, licence, sampling).
Files are read with :mod:`importlib.resources`, so they work from an installed wheel,
and parsed once per process.
"""

from __future__ import annotations

import functools
import json
import sys
from importlib import resources
from typing import TYPE_CHECKING, overload

from ..data import Dataset, Example, parse_examples
from ..errors import ConfigurationError, DataError
from ..task import Task

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["available", "load", "load_task"]

#: The splits every bundled dataset has.
SPLITS = ("train", "test")
#: Files that make a dataset folder complete.
REQUIRED_FILES = ("train.jsonl", "test.jsonl", "labels.json", "task.toml")


def _root() -> Traversable:
    return resources.files(__name__)


@functools.lru_cache(maxsize=1)
def _available() -> tuple[str, ...]:
    names = [
        entry.name
        for entry in _root().iterdir()
        if entry.is_dir() and all(entry.joinpath(f).is_file() for f in REQUIRED_FILES)
    ]
    return tuple(sorted(names))


def available() -> list[str]:
    """Names of the bundled datasets, sorted (folders with every required file)."""
    return list(_available())


def _folder(name: str) -> Traversable:
    if name not in _available():
        raise ConfigurationError(
            f"unknown dataset {name!r}; available datasets are {list(_available())}"
        )
    return _root().joinpath(name)


@functools.cache
def _labels(name: str) -> tuple[str, ...]:
    path = _folder(name).joinpath("labels.json")
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise DataError(
            f"bundled {name}/labels.json is not a JSON list of strings; reinstall maas-tune"
        )
    return tuple(labels)


@functools.cache
def _split(name: str, split: str) -> tuple[Example, ...]:
    if split not in SPLITS:
        raise ConfigurationError(
            f"unknown split {split!r} of dataset {name!r}; use one of {list(SPLITS)}"
        )
    raw = _folder(name).joinpath(f"{split}.jsonl").read_bytes()
    return tuple(
        parse_examples(raw, fmt="jsonl", source=f"{name}/{split}.jsonl", labels=_labels(name))
    )


@overload
def load(name: str, split: None = None) -> Dataset: ...
@overload
def load(name: str, split: str) -> list[Example]: ...
def load(name: str, split: str | None = None) -> Dataset | list[Example]:
    """Load a bundled dataset, or one split of it.

    Parameters
    ----------
    name : str
        One of :func:`available`, e.g. ``"sst2"``.
    split : {"train", "test"}, optional
        Return only this split's examples.

    Returns
    -------
    Dataset or list of Example
        The whole :class:`~maas_tune.data.Dataset` when ``split`` is None, else the
        split's examples in file order. Lists are fresh copies: changing them does
        not change what the next call returns.

    Raises
    ------
    ConfigurationError
        For an unknown dataset name (the message lists the available ones) or split.
    """
    if split is not None:
        return list(_split(name, split))
    train, test = (list(_split(name, s)) for s in SPLITS)
    return Dataset(name=name, labels=_labels(name), train=train, test=test)


@functools.cache
def load_task(name: str) -> Task:
    """The default task (template and verbalizer) of a bundled dataset.

    Raises
    ------
    ConfigurationError
        For an unknown dataset name (the message lists the available ones).
    """
    text = _folder(name).joinpath("task.toml").read_text(encoding="utf-8")
    return Task.from_text(text, fmt="toml", source=f"{name}/task.toml")
