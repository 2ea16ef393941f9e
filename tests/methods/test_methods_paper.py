"""BDPL.paper() and PromptTuning.paper(): the published settings, and that a fit takes the
paper's path (vocabulary from the unlabelled texts, a dev split, Adafactor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maas_tune import datasets
from maas_tune.client import Client
from maas_tune.data import Example, sample_k_shot
from maas_tune.errors import ConfigurationError
from maas_tune.experiment import evaluate
from maas_tune.methods import BDPL, PromptTuning
from maas_tune.methods._split import dev_split
from maas_tune.methods._vocab import words
from maas_tune.methods.base import fit_kwargs
from maas_tune.registry import METHODS, make_decoder
from maas_tune.storage import Store
from maas_tune.storage.budget import QueryBudget
from maas_tune.storage.cache import ScoreCache
from tests.fakes import FakeProvider

#: The paper preset's sampling, vocabulary and selection, at a size a test can pay for.
TINY = {"prompt_length": 2, "sample_size": 2, "epochs": 2}

#: A corpus whose frequent n-grams appear in no SST-2 shot.
CORPUS = ["zebra crossing lights blink", "quantum walrus orbit"] * 6


def _sst2(shots: int) -> tuple[object, list[Example]]:
    ds, task = datasets.load("sst2"), datasets.load_task("sst2")
    return task, sample_k_shot(ds.train, shots, labels=task.labels, seed=0)


def test_bdpl_paper_has_the_published_settings_and_the_default_stays_cheap():
    paper = BDPL.paper(random_state=3).get_params()
    assert {k: paper[k] for k in ("prompt_length", "n_candidates", "sample_size")} == {
        "prompt_length": 20, "n_candidates": 50, "sample_size": 20,
    }  # fmt: skip
    assert (paper["batch_size"], paper["epochs"], paper["learning_rate"]) == (4, 10, 2e-4)
    assert (paper["vocabulary"], paper["max_n"], paper["min_count"]) == ("corpus", 5, 6)
    assert paper["dev_fraction"] == 0.5 and paper["random_state"] == 3
    cheap = BDPL().get_params()
    assert (cheap["prompt_length"], cheap["sample_size"], cheap["learning_rate"]) == (5, 4, 0.02)
    assert (cheap["vocabulary"], cheap["max_n"], cheap["dev_fraction"]) == ("shots", 3, 0.0)


def test_prompt_tuning_paper_has_the_published_settings_and_the_default_stays_cheap():
    paper = PromptTuning.paper(random_state=1).get_params()
    assert (paper["optimizer"], paper["learning_rate"], paper["weight_decay"]) == (
        "adafactor", 0.3, 1e-5,
    )  # fmt: skip
    assert (paper["n_tokens"], paper["batch_size"], paper["epochs"]) == (20, 32, 30)
    cheap = PromptTuning().get_params()
    assert (cheap["optimizer"], cheap["n_tokens"], cheap["learning_rate"]) == ("adam", 8, 0.03)


@pytest.mark.parametrize(
    ("name", "preset"),
    [("bdpl-paper", BDPL.paper), ("prompt-tuning-paper", PromptTuning.paper)],
)
def test_the_grid_registry_names_the_presets(name, preset):
    assert name in METHODS
    made = make_decoder(name, shots=16, random_state=2)
    assert made.get_params() == preset(random_state=2).get_params()


def test_dev_split_is_stratified_disjoint_and_keeps_a_training_row_per_class():
    target = np.array([0] * 16 + [1] * 16 + [2] * 3)
    train, dev = dev_split(target, 0.5, seed=0)
    assert sorted(np.concatenate([train, dev]).tolist()) == list(range(len(target)))
    assert np.bincount(target[dev]).tolist() == [8, 8, 1]
    assert np.bincount(target[train]).tolist() == [8, 8, 2]
    assert dev_split(target, 0.5, seed=0)[1].tolist() == dev.tolist()  # seeded
    with pytest.raises(ConfigurationError, match="no dev example"):
        dev_split(np.array([0, 1]), 0.5, seed=0)  # one shot per class


def test_bdpl_paper_refuses_to_fit_without_the_unlabelled_texts(db_path):
    task, shots = _sst2(2)
    fake = FakeProvider()
    client = Client(fake, cache=db_path, progress=False)
    with pytest.raises(ConfigurationError, match=r"corpus=texts"):
        BDPL.paper(random_state=0, progress=False).fit(client, task, shots)
    assert fake.sent == []  # refused before any query


def test_fit_kwargs_give_the_pool_texts_only_to_a_method_that_mines_them():
    pool = [Example("a b", "x"), Example("c", "y", text_b="d e")]
    assert fit_kwargs(BDPL.paper(), pool) == {"corpus": ["a b", "c d e"]}
    assert fit_kwargs(BDPL(), pool) == {} and fit_kwargs(PromptTuning.paper(), pool) == {}


def test_evaluate_passes_the_training_pool_to_bdpl_paper(db_path, monkeypatch):
    store = Store(db_path)
    ds, task = datasets.load("sst2"), datasets.load_task("sst2")
    seen: list[list[str]] = []
    fit = BDPL.fit

    def spy(self, client, task, examples, y=None, *, corpus=None):
        seen.append(list(corpus or []))
        return fit(self, client, task, examples, y, corpus=corpus)

    monkeypatch.setattr(BDPL, "fit", spy)
    pool = ds.train[:400]
    (result,) = evaluate(
        provider=FakeProvider(), task=task, dataset="sst2", train_pool=pool,
        test=ds.test[:4], methods=["bdpl-paper"], shots=2, seed=0, cache=ScoreCache(store),
        budget=QueryBudget("train", store=store), progress=False,
        params={"bdpl-paper": TINY},
    )  # fmt: skip
    assert seen == [[e.text for e in pool]]
    # 2 training rows (the other half of the 4 shots is dev), one batch per epoch:
    # epochs * (sample_size * 2 + 2 dev) queries at most, then the 4 test inputs.
    assert result.queries_sent <= 2 * (2 * 2 + 2) + 4


@pytest.mark.model
def test_bdpl_paper_learns_from_the_corpus_vocabulary_and_picks_on_dev(gemma, db_path):
    task, shots = _sst2(2)  # 2 per class: 1 trains, 1 is dev
    client = Client(gemma, cache=db_path, progress=False)
    bdpl = BDPL.paper(random_state=0, progress=False).set_params(**TINY)
    bdpl.fit(client, task, shots, corpus=CORPUS)
    assert set(bdpl.candidates_) >= {"zebra crossing lights blink", "quantum walrus orbit"}
    corpus_words = {w for t in CORPUS for w in words(t)}
    assert {w for c in bdpl.candidates_ for w in c.split()} <= corpus_words
    assert set(bdpl.prompt_.split(" ")) <= corpus_words and len(bdpl.prompt_indices_) == 2
    dev = [h for h in bdpl.history_ if "dev_accuracy" in h]
    assert [h["epoch"] for h in dev] == [0, 1]
    best = min(dev, key=lambda h: (-h["dev_accuracy"], h["dev_loss"], h["epoch"]))
    assert bdpl.best_loss_ == pytest.approx(best["dev_loss"])
    steps = [h for h in bdpl.history_ if "mean_loss" in h]
    assert len(steps) == 2  # one batch of the 2 training rows per epoch
    assert bdpl.fit_usage_.queries_sent <= 2 * (2 * 2 + 2)


@pytest.mark.model
def test_prompt_tuning_paper_trains_with_adafactor_on_the_real_model(gemma, db_path, monkeypatch):
    built: list[dict[str, float]] = []

    class Spy(torch.optim.Adafactor):
        def __init__(self, params, **kwargs):
            built.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adafactor", Spy)
    ds, task = datasets.load("sst2"), datasets.load_task("sst2")
    short = sorted(ds.train[:200], key=lambda e: len(e.text))
    shots = [next(e for e in short if e.label == label) for label in task.labels]
    client = Client(gemma, cache=db_path, progress=False)
    tuned = PromptTuning.paper(random_state=0, progress=False).set_params(n_tokens=2, epochs=2)
    start = None

    def keep_start(model, label_ids, text_ids, n, generator):
        nonlocal start
        soft = original(model, label_ids, text_ids, n, generator)
        start = soft.detach().clone()
        return soft

    from maas_tune.methods import prompt_tuning

    original = prompt_tuning.initial_prompt
    monkeypatch.setattr(prompt_tuning, "initial_prompt", keep_start)
    tuned.fit(client, task, shots)
    assert built == [{"lr": 0.3, "beta2_decay": -0.8, "weight_decay": 1e-5}]
    assert tuned.soft_prompt_.shape == (2, 640) and len(tuned.loss_history_) == 2
    assert not torch.equal(tuned.soft_prompt_, start)  # the optimizer moved the prompt
    assert client.usage.queries_sent == 0


def test_prompt_tuning_refuses_an_unknown_optimizer(db_path):
    client = Client(FakeProvider(), cache=db_path, progress=False)
    task, shots = _sst2(1)
    with pytest.raises(ConfigurationError, match="optimizer must be one of adam, adafactor"):
        PromptTuning(optimizer="sgd").fit(client, task, shots)
