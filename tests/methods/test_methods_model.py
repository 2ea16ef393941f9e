"""ICL, BDPL and prompt tuning on the real Gemma 3 270M, on small slices, and from the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import maas_tune
from maas_tune import datasets, registry
from maas_tune._constants import DEFAULT_TOKEN_FEATURES
from maas_tune.cli import commands as _cli_commands
from maas_tune.cli import main
from maas_tune.client import Client
from maas_tune.data import Example, sample_k_shot
from maas_tune.methods import BDPL, InContextLearning, PromptTuning
from maas_tune.persistence import load_method, save_method
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]


def _data(name: str, shots: int, n_test: int):
    ds, task = datasets.load(name), datasets.load_task(name)
    return task, sample_k_shot(ds.train, shots, labels=task.labels, seed=0), ds.test[:n_test]


def _short(name: str, shots: int, n_test: int):
    """The shortest examples of each class (backpropagation on 2 cores costs per token)."""
    ds, task = datasets.load(name), datasets.load_task(name)

    def size(e: Example) -> int:
        return len(e.text) + len(e.text_b or "")

    pool = sorted(ds.train[:300], key=size)
    train = [e for label in task.labels for e in [x for x in pool if x.label == label][:shots]]
    return task, train, sorted(ds.test[:50], key=size)[:n_test]


def test_icl_on_a_pair_task_keeps_order_and_truncates_explicitly(gemma, db_path):
    client = Client(gemma, cache=db_path, progress=False)
    task, train, test = _data("rte", shots=2, n_test=3)
    icl = InContextLearning(demos_per_class=1, random_state=0).fit(client, task, train)
    prompts, keep = icl.build_prompts(client, test)
    first = prompts[0].index(icl.demonstrations_[0]["text_b"])
    second = prompts[0].index(icl.demonstrations_[1]["text_b"])
    assert first < second < prompts[0].index(task.render(test[0]))
    assert keep.tolist() == [2, 2, 2] and icl.truncation_.truncated == 0
    proba = icl.predict_proba(client, test)
    assert proba.shape == (3, 2) and np.allclose(proba.sum(1), 1)
    assert client.usage.queries_sent == 3
    assert client.usage.prompt_tokens_sent == sum(gemma.count_tokens(prompts))

    own = gemma.count_tokens([task.render(test[0])])[0]
    tight = InContextLearning(demos_per_class=1, random_state=0, max_prompt_tokens=own + 5)
    tight.fit(client, task, train)
    with pytest.warns(UserWarning, match="dropped"):
        cut, kept = tight.build_prompts(client, test[:1])
    assert kept.tolist() == [0] and cut[0] == task.render(test[0])  # input whole, demos gone


def test_bdpl_stops_at_a_tiny_budget_with_its_best_prompt(gemma, db_path):
    store = Store(db_path)
    budget = QueryBudget("bdpl", max_queries=14, store=store)
    client = Client(gemma, cache=ScoreCache(store), budget=budget, progress=False)
    task, train, test = _data("sst2", shots=2, n_test=4)  # 4 training examples
    params = {"prompt_length": 2, "n_candidates": 8, "sample_size": 2, "batch_size": 4}
    bdpl = BDPL(random_state=0, progress=False, epochs=5, **params).fit(client, task, train)
    assert bdpl.stopped_by_budget_
    assert budget.status().spent_queries == bdpl.fit_usage_.queries_sent <= 14
    scored = [h.get("min_loss", h.get("mode_loss")) for h in bdpl.history_]
    assert bdpl.best_loss_ == pytest.approx(min(scored))  # every batch is the whole set
    assert all(w in bdpl.candidates_ for w in bdpl.prompt_.split(" "))
    free = Client(gemma, cache=ScoreCache(store), progress=False)
    assert set(bdpl.predict(free, test)) <= set(task.labels)


def test_prompt_tuning_lowers_the_training_loss_and_round_trips(gemma, db_path, tmp_path):
    client = Client(gemma, cache=db_path, progress=False)
    task, train, test = _short("sst2", shots=2, n_test=2)
    tuned = PromptTuning(n_tokens=4, epochs=2, batch_size=4, random_state=0, progress=False)
    tuned.fit(client, task, train)
    assert tuned.loss_history_[-1] < tuned.loss_history_[0]
    assert tuned.fit_usage_.queries_sent == 0 and tuned.soft_prompt_.shape == (4, 640)
    loaded, _ = load_method(save_method(tuned, tmp_path / "pt"))
    np.testing.assert_allclose(
        loaded.predict_proba(client, test), tuned.predict_proba(client, test), atol=1e-6
    )
    assert client.usage.queries_sent == 0  # white-box: nothing goes through the client


@pytest.mark.parametrize("name", datasets.available())
def test_prompt_tuning_runs_on_every_dataset(gemma, db_path, name):
    client = Client(gemma, cache=db_path, progress=False)
    task, train, test = _short(name, shots=1, n_test=1)
    tuned = PromptTuning(n_tokens=1, epochs=1, random_state=0, progress=False)
    assert set(tuned.fit(client, task, train).predict(client, test)) <= set(task.labels)


def test_cli_eval_runs_every_comparison_method(gemma, monkeypatch, capsys, db_path):
    monkeypatch.setattr(gemma, "token_features", None)  # restored after the test

    def provider(args, model=None):  # what _provider builds: the model asked for Y-Tuning's keys
        assert args.token_features == DEFAULT_TOKEN_FEATURES
        gemma.token_features = args.token_features
        return gemma

    monkeypatch.setattr(_cli_commands, "_provider", provider)
    small = {  # the wiring is under test, not the defaults: keep the model work small
        "bdpl": lambda shots, seed: BDPL(
            random_state=seed, epochs=1, sample_size=2, prompt_length=2
        ),
        "prompt-tuning": lambda shots, seed: PromptTuning(random_state=seed, n_tokens=2, epochs=1),
    }
    monkeypatch.setattr(registry, "METHODS", {**registry.METHODS, **small})
    argv = ["eval", "--dataset", "sst2", "--shots", "1", "--test-limit", "4", "--quiet"]
    argv += ["--method", "icl,ytuning,bdpl,prompt-tuning", "--cache", str(db_path), "--json"]
    assert main(argv) == 0
    rows = {r["method"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert list(rows) == ["icl", "ytuning", "bdpl", "prompt-tuning"]
    assert rows["icl"]["queries_sent"] == 4 and rows["icl"]["prompt_tokens_sent"] > 0
    assert rows["bdpl"]["queries_sent"] > rows["icl"]["queries_sent"]
    assert rows["prompt-tuning"]["queries_sent"] == 0
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n_test"] == 4 for r in rows.values())


def test_methods_doc_example_runs(gemma, tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(maas_tune, "TransformersProvider", lambda *a, **k: gemma, raising=False)
    exec(compile(block, "docs/methods.md", "exec"), {})  # noqa: S102 - the example is the test
    assert (tmp_path / "my-bdpl" / "method.json").is_file()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and "TruncationReport(prompts=4" in printed[0]


def test_cli_fit_then_predict_with_a_prompt_method(gemma, monkeypatch, capsys, db_path, tmp_path):
    monkeypatch.setattr(_cli_commands, "_provider", lambda args, model=None: gemma)
    out = tmp_path / "icl"
    common = ["--cache", str(db_path), "--quiet"]
    fit = ["fit", "--dataset", "agnews", "--method", "icl", "--shots", "1", "--out", str(out)]
    assert main(fit + common) == 0
    assert sorted(p.name for p in out.iterdir()) == ["method.json", "tensors.safetensors"]
    texts = ["Stocks fell sharply on Wall Street.", "The striker scored twice in the final."]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--decoder", str(out), "--input", str(inputs), *common]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    labels = list(datasets.load_task("agnews").labels)
    assert [r["text"] for r in rows] == texts
    assert all(list(r["probabilities"]) == labels and r["prediction"] in labels for r in rows)
