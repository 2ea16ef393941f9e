"""The dev protocol's pools (benchmarks/_dev_data.py): from train only, never a test input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from maas_tune import datasets
from maas_tune.data import Example
from maas_tune.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _dev_data


def test_check_disjoint_raises_on_a_test_input_by_normalised_text() -> None:
    pool = [Example("A  fine film", "positive"), Example("dull", "negative")]
    test = [Example("a fine\tfilm ", "positive")]
    with pytest.raises(DataError, match="sst2: 1 dev-pool input"):
        _dev_data.check_disjoint(pool, test, "sst2")
    _dev_data.check_disjoint(pool[1:], test, "sst2")  # disjoint: no error
    # pairs are compared as pairs
    pair = [Example("premise", "entailment", text_b="hypothesis")]
    _dev_data.check_disjoint(pair, [Example("premise", "entailment", text_b="other")], "rte")
    with pytest.raises(DataError):
        _dev_data.check_disjoint(pair, [Example("PREMISE", "entailment", "hypothesis ")], "rte")


def test_draw_pool_leaves_out_test_inputs_and_duplicates() -> None:
    labels = ("negative", "positive")
    train = [Example(f"t{i}", labels[i % 2]) for i in range(40)]
    train += [Example("T3 ", "positive"), Example("shared", "negative")]
    test = [Example("shared", "negative"), Example("t0", "negative")]
    pool = _dev_data.draw_pool(train, test, labels, per_class=30, limit=100)
    texts = [e.text for e in pool]
    assert "shared" not in texts and "t0" not in texts
    assert len({_dev_data.normalise(t) for t in texts}) == len(texts)  # "T3 " = "t3"
    assert sum(e.label == "negative" for e in pool) == 19  # 20 minus t0 ("shared" is out)


@pytest.mark.parametrize("name", datasets.available())
def test_bundled_pools_come_from_train_and_miss_test(name: str) -> None:
    task, data = datasets.load_task(name), datasets.load(name)
    pool = _dev_data.draw_pool(data.train, data.test, task.labels)
    assert len(pool) <= _dev_data.POOL_MAX
    assert set(pool) <= set(data.train)
    _dev_data.check_disjoint(pool, data.test, name)
    assert pool == _dev_data.draw_pool(data.train, data.test, task.labels)  # seeded
