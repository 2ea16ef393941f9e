"""maas_tune.metrics against scikit-learn's own metrics, on random and edge-case inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from maas_tune import metrics

# scikit-learn warns when only one label occurs; those cases are the point here.
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")

EPS = np.finfo(np.float64).eps


@st.composite
def predictions(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(y_true (n,), y_pred (n,), proba (n, K), K): random labels, some classes absent."""
    k = draw(st.integers(1, 6))
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Draw labels from a random subset of the classes, so some never occur.
    true_pool = rng.choice(k, size=draw(st.integers(1, k)), replace=False)
    pred_pool = rng.choice(k, size=draw(st.integers(1, k)), replace=False)
    y_true, y_pred = rng.choice(true_pool, n), rng.choice(pred_pool, n)
    logits = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 5.0, 40.0])), size=(n, k))
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y_true, y_pred, proba / proba.sum(axis=1, keepdims=True), k


def _sk_per_class(y_true, y_pred, k):
    return skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), zero_division=0
    )


def _check_all(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, k: int) -> None:
    labels = list(range(k))
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y_true, y_pred, k),
        skm.confusion_matrix(y_true, y_pred, labels=labels),
    )
    ours = metrics.per_class(y_true, y_pred, k)
    for mine, theirs in zip(ours, _sk_per_class(y_true, y_pred, k)):
        np.testing.assert_allclose(mine, theirs)
    assert metrics.macro_f1(y_true, y_pred, k) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    if k > 1:  # scikit-learn's log_loss refuses a single class
        assert metrics.log_loss(y_true, proba) == pytest.approx(
            skm.log_loss(y_true, proba, labels=labels)
        )


@settings(max_examples=150, deadline=None)
@given(predictions())
def test_every_metric_matches_scikit_learn_on_random_inputs(case):
    _check_all(*case)


@settings(max_examples=100, deadline=None)
@given(predictions())
def test_reliability_bins_match_scikit_learns_calibration_curve(case):
    y_true, _, proba, _ = case
    bins = metrics.reliability_bins(y_true, proba)
    correct = (proba.argmax(axis=1) == y_true).astype(int)
    confidence = proba.max(axis=1)
    # calibration_curve bins a binary outcome's probability the same way (uniform,
    # right-closed) and returns the non-empty bins only.
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=metrics.ECE_BINS)
    full = bins.counts > 0
    np.testing.assert_allclose(bins.accuracy[full], prob_true)
    np.testing.assert_allclose(bins.confidence[full], prob_pred)
    assert bins.counts.sum() == len(y_true) and np.isnan(bins.accuracy[~full]).all()
    # ECE by its definition, one prediction at a time.
    lo, hi = bins.edges[:-1], bins.edges[1:]
    expected = 0.0
    for b in range(metrics.ECE_BINS):
        inside = (confidence > lo[b]) | ((b == 0) & (confidence >= 0))
        inside &= confidence <= hi[b]
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            expected += inside.sum() / len(y_true) * gap
    assert metrics.expected_calibration_error(y_true, proba) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "k"),
    [
        pytest.param([0, 1, 2, 0], [0, 0, 0, 0], 3, id="classes-never-predicted"),
        pytest.param([0, 0, 1, 1], [0, 2, 1, 2], 3, id="class-absent-from-y_true"),
        pytest.param([1, 1, 1], [1, 1, 1], 4, id="only-one-class-occurs"),
        pytest.param([0, 0, 0], [0, 0, 0], 1, id="one-class-task"),
        pytest.param([0, 1, 2, 3], [0, 1, 2, 3], 4, id="perfect"),
        pytest.param([0, 1, 2, 3], [1, 2, 3, 0], 4, id="all-wrong"),
    ],
)
def test_edge_cases_match_scikit_learn(y_true, y_pred, k):
    y_true, y_pred = np.array(y_true), np.array(y_pred)
    proba = np.full((len(y_true), k), 1.0 / k)
    _check_all(y_true, y_pred, proba, k)


def test_perfect_and_worst_probabilities():
    y = np.array([0, 1, 2, 1])
    perfect = np.eye(3)[y]  # (4, 3): probability 1 on the true class
    worst = np.eye(3)[(y + 1) % 3]  # probability 1 on a wrong class
    labels = [0, 1, 2]
    assert metrics.log_loss(y, perfect) == pytest.approx(skm.log_loss(y, perfect, labels=labels))
    assert metrics.log_loss(y, worst) == pytest.approx(skm.log_loss(y, worst, labels=labels))
    assert metrics.log_loss(y, worst) == pytest.approx(-math.log(EPS))  # clipped, not inf
    assert metrics.log_loss(y, np.full((4, 3), 1 / 3)) == pytest.approx(math.log(3))
    assert metrics.expected_calibration_error(y, perfect) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(y, worst) == pytest.approx(1.0)
    # A one-class task: certain and right.
    assert metrics.log_loss(np.zeros(3, int), np.ones((3, 1))) == pytest.approx(-math.log(1 - EPS))
    assert metrics.expected_calibration_error(np.zeros(3, int), np.ones((3, 1))) == 0.0


def test_a_well_calibrated_forecaster_has_a_small_ece_and_an_overconfident_one_a_large():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, size=20_000)
    right = rng.uniform(size=confidence.size) < confidence  # right as often as it claims
    y_pred = np.zeros(confidence.size, int)
    y_true = np.where(right, 0, 1)
    calibrated = np.stack([confidence, 1 - confidence], axis=1)
    assert metrics.expected_calibration_error(y_true, calibrated) < 0.02
    overconfident = np.stack([np.full_like(confidence, 0.99), np.full_like(confidence, 0.01)], 1)
    ece = metrics.expected_calibration_error(y_true, overconfident)
    assert ece == pytest.approx(0.99 - right.mean(), abs=1e-9) and ece > 0.2
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(right.mean())


def test_bins_are_right_closed_and_the_first_includes_its_lower_edge():
    edges = np.linspace(0, 1, metrics.ECE_BINS + 1)
    uniform = np.full((1, 15), 1 / 15)  # confidence exactly 1/15, the first bin's upper edge
    assert metrics.reliability_bins(np.zeros(1, int), uniform).counts[0] == 1
    certain = metrics.reliability_bins(np.zeros(1, int), np.array([[1.0, 0.0]]))
    assert certain.counts[-1] == 1  # confidence 1.0: the last bin, (14/15, 1]
    above = np.nextafter(edges[8], 1.0)  # just above 8/15: the ninth bin
    assert metrics.reliability_bins(np.zeros(1, int), np.array([[above, 1 - above]])).counts[8] == 1
    at = metrics.reliability_bins(np.zeros(1, int), np.array([[edges[8], 1 - edges[8]]]))
    assert at.counts[7] == 1  # exactly 8/15: the eighth bin, (7/15, 8/15]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: metrics.per_class(np.array([0, 1]), np.array([0]), 2), "of one length"),
        (lambda: metrics.per_class(np.array([0, 3]), np.array([0, 1]), 2), "in [0, 2)"),
        (lambda: metrics.per_class(np.array([0.5]), np.array([0]), 2), "class indices"),
        (lambda: metrics.macro_f1(np.array([], int), np.array([], int), 2), "non-empty"),
        (lambda: metrics.log_loss(np.array([0, 1]), np.ones((3, 2)) / 2), "shape (n, n_classes)"),
        (lambda: metrics.reliability_bins(np.array([0]), np.ones((1, 1)), 0), "n_bins"),
    ],
)
def test_bad_inputs_are_refused_with_what_was_wrong(call, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):  # fmt: skip
        call()


def test_classification_metrics_are_json_ready_and_keyed_by_label():
    y_true, y_pred = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    proba = np.array([[0.9, 0.05, 0.05], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    out = metrics.classification_metrics(y_true, y_pred, proba, ["neg", "pos", "neutral"])
    json.dumps(out, allow_nan=False)  # no NaN: empty bins are None
    assert out["labels"] == ["neg", "pos", "neutral"]
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert out["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                           "support": 1}  # fmt: skip
    assert out["per_class"]["pos"]["precision"] == pytest.approx(1 / 3)
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert out["log_loss"] == pytest.approx(skm.log_loss(y_true, proba))
    assert sum(out["reliability"]["count"]) == 4 and None in out["reliability"]["accuracy"]
    without = metrics.classification_metrics(y_true, y_pred, None, ["neg", "pos", "neutral"])
    assert without["log_loss"] is None and without["ece"] is None
    assert without["reliability"] is None and without["macro_f1"] == out["macro_f1"]


# -- wired into evaluate ------------------------------------------------------------
def test_evaluate_reports_every_metric_for_decoders_and_prompt_methods(db_path):
    from maas_tune import datasets
    from maas_tune.client import Client
    from maas_tune.data import labels_to_indices
    from maas_tune.decoders import ZeroShot
    from maas_tune.experiment import evaluate
    from maas_tune.storage import Store
    from maas_tune.storage.budget import QueryBudget
    from maas_tune.storage.cache import ScoreCache

    from .fakes import FakeProvider

    store, fake = Store(db_path), FakeProvider()
    ds, task = datasets.load("trec"), datasets.load_task("trec")
    test = ds.test[:30]
    results = evaluate(
        provider=fake, task=task, dataset="trec", train_pool=ds.train, test=test,
        methods=["zero-shot", "lr", "icl"], shots=1, seed=0, cache=ScoreCache(store),
        budget=QueryBudget("train", store=store), progress=False,
    )  # fmt: skip
    y_test = labels_to_indices(test, task.labels)
    for r in results:
        row = json.loads(json.dumps(r.to_dict(), allow_nan=False))
        assert row["labels"] == list(task.labels)
        cm = np.array(row["confusion_matrix"])
        assert cm.shape == (6, 6) and cm.sum() == 30
        assert np.trace(cm) / 30 == pytest.approx(row["accuracy"])  # same predictions
        assert [row["per_class"][c]["support"] for c in task.labels] == np.bincount(
            y_test, minlength=6).tolist()  # fmt: skip
        assert 0 <= row["macro_f1"] <= 1 and row["log_loss"] > 0 and 0 <= row["ece"] <= 1
        assert sum(row["reliability"]["count"]) == 30, r.method
    # Zero-shot's numbers, recomputed from its own probabilities with scikit-learn.
    scores = Client(fake, cache=ScoreCache(store), progress=False).score(task, test)
    zero = ZeroShot().fit(scores, y_test)
    proba, y_pred = zero.predict_proba(scores), zero.predict(scores)
    pred_idx = np.array([task.labels.index(p) for p in y_pred])
    r = results[0]
    assert r.macro_f1 == pytest.approx(skm.f1_score(y_test, pred_idx, average="macro"))
    assert r.log_loss == pytest.approx(skm.log_loss(y_test, proba, labels=list(range(6))))
    assert r.confusion_matrix == skm.confusion_matrix(y_test, pred_idx, labels=range(6)).tolist()


def test_eval_prints_macro_f1_log_loss_and_ece_and_json_carries_all(db_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    from maas_tune.cli import commands as _cli_commands
    from maas_tune.cli import main

    from .fakes import FakeProvider

    fake = FakeProvider()
    monkeypatch.setattr(_cli_commands, "_provider", lambda args, model=None: fake)
    argv = ["eval", "--dataset", "trec", "--shots", "1", "--test-limit", "30", "--quiet",
            "--method", "zero-shot,icl", "--cache", str(db_path)]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(line for line in lines if "method" in line)
    for column in ("accuracy", "macro-F1", "log-loss", "ECE", "lowest recall"):
        assert column in head
    assert "15 equal-width confidence bins" in "\n".join(lines)
    assert main([*argv, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row in rows:
        assert {"macro_f1", "log_loss", "ece", "per_class", "confusion_matrix", "labels",
                "reliability"} <= set(row)  # fmt: skip
        table_row = next(line for line in lines if line.split()[:1] == [row["method"]])
        assert f"{row['macro_f1']:.4f}" in table_row and f"{row['ece']:.3f}" in table_row


def test_the_docs_metrics_example_runs_and_prints_what_the_page_says(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text("utf-8")
    section = text[text.index("## Metrics") : text.index("## DecT")]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    shown = re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/concepts.md", "exec"), namespace)  # noqa: S102 - the example is the test
    assert capsys.readouterr().out == shown
    y_true, y_pred = namespace["y_true"], namespace["y_pred"]
    assert f"{skm.f1_score(y_true, y_pred, average='macro'):.3f}" in shown
    assert f"{skm.log_loss(y_true, namespace['proba']):.3f}" in shown
