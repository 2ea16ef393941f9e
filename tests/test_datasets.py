"""Tests of maas_tune.datasets: every bundled dataset and its default task are complete."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from maas_tune import datasets
from maas_tune.data import Dataset, Example
from maas_tune.errors import ConfigurationError
from maas_tune.task import Task

EXPECTED = ["agnews", "rte", "sst2", "subj", "trec"]
PAIR_DATASETS = {"rte"}


def test_available_lists_every_bundled_folder() -> None:
    assert datasets.available() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_every_folder_has_provenance(name: str) -> None:
    provenance = resources.files("maas_tune.datasets").joinpath(name).joinpath("PROVENANCE.md")
    assert provenance.read_text(encoding="utf-8").startswith(f"# {name}")


@pytest.mark.parametrize("name", EXPECTED)
def test_dataset_loads(name: str) -> None:
    dataset = datasets.load(name)
    assert isinstance(dataset, Dataset) and dataset.name == name
    labels = json.loads(
        resources.files("maas_tune.datasets")
        .joinpath(name)
        .joinpath("labels.json")
        .read_text("utf-8")
    )
    assert dataset.labels == tuple(labels)
    assert dataset.train and dataset.test
    for example in [*dataset.train, *dataset.test]:
        assert isinstance(example, Example) and example.text
        assert example.label in dataset.labels
        assert (example.text_b is not None) == (name in PAIR_DATASETS)
    assert {e.label for e in dataset.test} == set(dataset.labels)


@pytest.mark.parametrize("name", EXPECTED)
def test_default_task_matches_dataset(name: str) -> None:
    task = datasets.load_task(name)
    assert isinstance(task, Task) and task.name == name and task.description
    assert task.labels == datasets.load(name).labels
    assert task.is_pair == (name in PAIR_DATASETS)
    assert all(word == word.strip() and " " not in word for word in task.label_words)
    prompt = task.render(datasets.load(name, "test")[0])
    assert prompt and not prompt[-1].isspace()


def test_sst2_and_agnews_tasks_are_as_specified() -> None:
    sst2 = datasets.load_task("sst2")
    assert sst2.template == "Review: {text}\nSentiment:"
    assert dict(sst2.verbalizer) == {"negative": ("negative",), "positive": ("positive",)}
    agnews = datasets.load_task("agnews")
    assert agnews.template == "{text} The topic of this news is"
    assert dict(agnews.verbalizer) == {
        "world": ("politics",),
        "sports": ("sports",),
        "business": ("business",),
        "technology": ("technology",),
    }


def test_known_sizes() -> None:
    sizes = {
        name: (len(datasets.load(name, "train")), len(datasets.load(name, "test")))
        for name in EXPECTED
    }
    assert sizes == {
        "agnews": (8000, 7600),
        "rte": (2490, 277),
        "sst2": (8000, 872),
        "subj": (2000, 2000),
        "trec": (5452, 500),
    }


def test_split_is_the_same_as_the_dataset_field() -> None:
    assert datasets.load("sst2", "train") == datasets.load("sst2").train
    assert datasets.load("sst2", "test") == datasets.load("sst2").test


def test_loading_is_cached_and_returns_fresh_lists() -> None:
    first = datasets.load("agnews")
    # The same Example objects come back: the file was parsed once, not re-read.
    assert datasets.load("agnews").train[0] is first.train[0]
    assert datasets.load("agnews", "test")[0] is first.test[0]
    first.train.clear()
    assert len(datasets.load("agnews").train) == 8000
    assert datasets.load_task("agnews") is datasets.load_task("agnews")


def test_unknown_name_lists_available() -> None:
    for call in (datasets.load, datasets.load_task):
        with pytest.raises(ConfigurationError) as info:
            call("sst-2")
        assert (
            "'sst-2'" in str(info.value)
            and "sst2" in str(info.value)
            and "agnews" in str(info.value)
        )


def test_unknown_split() -> None:
    with pytest.raises(ConfigurationError, match=r"'validation'.*train"):
        datasets.load("sst2", "validation")
