"""ICL, BDPL and the evaluation seam through a fake provider: cost, budget, persistence, datasets."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from maas_tune import datasets
from maas_tune.client import Client
from maas_tune.data import sample_k_shot
from maas_tune.errors import ConfigurationError, NotFittedError, SerializationError
from maas_tune.experiment import evaluate
from maas_tune.methods import (
    BDPL,
    InContextLearning,
    PromptTuning,
    TruncationWarning,
)
from maas_tune.persistence import load_method, save_method
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from tests.fakes import FakeProvider

SMALL_BDPL = {"prompt_length": 2, "n_candidates": 6, "sample_size": 2, "epochs": 2, "batch_size": 4}


@pytest.fixture()
def client(db_path):
    return Client(FakeProvider(), cache=db_path, progress=False)


def _data(name: str, shots: int = 2, n_test: int = 5):
    ds = datasets.load(name)
    task = datasets.load_task(name)
    return task, sample_k_shot(ds.train, shots, labels=task.labels, seed=0), ds.test[:n_test]


@pytest.mark.parametrize("name", datasets.available())
def test_icl_and_bdpl_fit_predict_and_round_trip_on_every_dataset(name, client, tmp_path):
    task, train, test = _data(name)
    for method in (
        InContextLearning(demos_per_class=1, random_state=0),
        BDPL(random_state=0, progress=False, **SMALL_BDPL),
    ):
        method.fit(client, task, train)
        predicted = method.predict(client, test)
        assert predicted.shape == (len(test),) and set(predicted) <= set(task.labels)
        sent = client.usage.queries_sent
        loaded, meta = load_method(save_method(method, tmp_path / name, metadata={"d": name}))
        assert meta == {"d": name}
        np.testing.assert_allclose(
            loaded.predict_proba(client, test), method.predict_proba(client, test)
        )
        assert client.usage.queries_sent == sent  # the reloaded method asks the cached prompts
    assert not list(tmp_path.rglob("*.pkl"))


def test_icl_prompts_hold_the_demonstrations_in_the_documented_order(client):
    task, train, test = _data("rte", shots=3)
    icl = InContextLearning(demos_per_class=2, random_state=7).fit(client, task, train)
    y = np.array([task.labels.index(e.label) for e in train])
    rng = np.random.default_rng(7)
    expected = [train[i] for i in _select(y, len(task.labels), 2, rng)]
    assert [d["text"] for d in icl.demonstrations_] == [e.text for e in expected]
    prompts, keep = icl.build_prompts(client, test[:2])
    blocks = [task.render(e) + " " + task.verbalizer[e.label][0] for e in expected]
    assert prompts[0] == "\n\n".join([*blocks, task.render(test[0])])
    assert test[0].text_b in prompts[0] and keep.tolist() == [4, 4]
    assert icl.fit_usage_.queries_sent == 0


def _select(y, k, per_class, rng):
    chosen = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(k)]
    )
    return chosen[rng.permutation(len(chosen))]


def test_icl_truncation_is_counted_and_warned(client):
    task, train, test = _data("sst2", shots=4)
    icl = InContextLearning(demos_per_class=4, max_prompt_tokens=40, random_state=0)
    icl.fit(client, task, train)
    with pytest.warns(TruncationWarning, match="demonstrations were dropped"):
        prompts, keep = icl.build_prompts(client, test)
    report = icl.truncation_
    assert report.prompts == len(test) and report.truncated == int((keep < 8).sum()) > 0
    assert report.demonstrations_dropped == int((8 - keep).sum())
    for prompt, example in zip(prompts, test):
        assert prompt.endswith(task.render(example))  # the test input is never cut
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InContextLearning(random_state=0, max_prompt_tokens=None).fit(client, task, train).predict(
            client, test
        )


def test_bdpl_stops_at_the_budget_and_keeps_the_best_prompt_so_far(db_path):
    store = Store(db_path)
    budget = QueryBudget("bdpl", max_queries=30, store=store)
    client = Client(FakeProvider(), cache=ScoreCache(store), budget=budget, progress=False)
    task, train, _ = _data("sst2", shots=4)  # 8 examples
    bdpl = BDPL(random_state=0, progress=False, **{**SMALL_BDPL, "epochs": 50})
    bdpl.fit(client, task, train)
    assert bdpl.stopped_by_budget_
    assert budget.status().spent_queries == bdpl.fit_usage_.queries_sent <= 30
    probs = bdpl.probs_.numpy()  # the distributions as trained up to the stop
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert not np.allclose(probs, 1 / probs.shape[1])
    assert set(bdpl.prompt_.split(" ")) <= {w for c in bdpl.candidates_ for w in c.split()}
    # batches of 4 of the 8 examples: the best is the best prompt scored on all 8 (the modes)
    full = [h["mode_loss"] for h in bdpl.history_ if "mode_loss" in h]
    assert full and bdpl.best_loss_ == min(full)


def test_bdpl_cost_is_bounded_and_a_rerun_is_free(client):
    task, train, _ = _data("agnews", shots=2)  # 8 examples
    params = {**SMALL_BDPL, "epochs": 3}
    first = BDPL(random_state=1, progress=False, **params).fit(client, task, train)
    n, p = len(train), params
    assert 0 < first.fit_usage_.queries_sent <= p["epochs"] * (p["sample_size"] * n + n)
    again = BDPL(random_state=1, progress=False, **params).fit(client, task, train)
    assert again.fit_usage_.queries_sent == 0 and again.prompt_ == first.prompt_
    assert not np.array_equal(first.probs_.numpy(), np.full_like(first.probs_.numpy(), 1 / 6))


def test_bdpl_with_no_budget_at_all_returns_the_initial_mode(db_path):
    store = Store(db_path)
    budget = QueryBudget("none", max_queries=0, store=store)
    client = Client(FakeProvider(), cache=ScoreCache(store), budget=budget, progress=False)
    task, train, _ = _data("sst2")
    bdpl = BDPL(random_state=0, progress=False, **SMALL_BDPL).fit(client, task, train)
    assert bdpl.stopped_by_budget_ and bdpl.best_loss_ is None
    assert bdpl.prompt_indices_.tolist() == [0, 0]


def test_prompt_method_contract(client):
    bdpl = BDPL(sample_size=3)
    assert repr(bdpl) == "BDPL(sample_size=3)"
    assert BDPL(**bdpl.get_params()).get_params() == bdpl.get_params()
    with pytest.raises(ConfigurationError, match="no parameter"):
        bdpl.set_params(nope=1)
    with pytest.raises(NotFittedError):
        bdpl.predict(client, [])
    task, train, _ = _data("sst2")
    with pytest.raises(ConfigurationError, match="sample_size"):
        BDPL(sample_size=1).fit(client, task, train)
    with pytest.raises(ConfigurationError, match="white-box"):
        PromptTuning().fit(client, task, train)


def test_load_method_refuses_tampered_or_foreign_files(client, tmp_path):
    task, train, _ = _data("sst2")
    path = save_method(BDPL(progress=False, **SMALL_BDPL).fit(client, task, train), tmp_path / "m")
    blob = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(SerializationError, match="checksum"):
        load_method(path)
    (path / "method.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SerializationError, match="not a maas-tune method file"):
        load_method(path)


def test_evaluate_runs_prompt_methods_and_reports_their_own_cost(db_path):
    store = Store(db_path)
    fake = FakeProvider(token_features=4)  # Y-Tuning's keys
    ds, task = datasets.load("trec"), datasets.load_task("trec")
    kwargs = {
        "provider": fake,
        "task": task,
        "dataset": "trec",
        "train_pool": ds.train,
        "test": ds.test[:6],
        "shots": 1,
        "seed": 0,
        "cache": ScoreCache(store),
        "budget": QueryBudget("train", store=store),
        "test_budget": QueryBudget("train:test", store=store),
        "progress": False,
    }
    with pytest.raises(ConfigurationError, match="white-box"):
        evaluate(methods=["dect", "prompt-tuning"], **kwargs)
    assert fake.sent == []  # refused before paying for anything
    results = {r.method: r for r in evaluate(methods=["ytuning", "icl", "bdpl"], **kwargs)}
    assert results["icl"].queries_sent == 6  # one long prompt per test input
    assert results["icl"].prompt_tokens_sent > results["ytuning"].prompt_tokens_sent / 2
    assert results["bdpl"].queries_sent > results["icl"].queries_sent
    assert results["ytuning"].queries_sent == 6 + 6  # shared scoring of 6 shots and 6 tests
    assert sum(r.queries_sent for r in results.values()) == len(fake.sent)
