"""Y-Tuning: the label network's shapes and masking, fitting, determinism and persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maas_tune.decoders import YTuning
from maas_tune.decoders._label_attention import init_label_network, label_network_logits
from maas_tune.errors import ConfigurationError
from maas_tune.persistence import load_decoder, save_decoder
from maas_tune.scores import Scores

LABELS = ("a", "b", "c")


def _problem(n_per_class: int = 10, p: int | None = None, seed: int = 0, d: int = 12):
    """Three classes whose class signal sits in one token of p (or in the single token)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    centres = np.random.default_rng(99).normal(size=(3, d)) * 2.5
    signal = centres[y] + rng.normal(size=(len(y), d))  # (n, d)
    if p is None:
        hidden = signal[:, None, :]  # (n, 1, d): one token
    else:
        hidden = rng.normal(size=(len(y), p, d))  # noise positions
        hidden[np.arange(len(y)), rng.integers(0, p, len(y))] = signal  # signal somewhere
    lp = np.log(np.full((len(y), 3), 1 / 3))
    return Scores.from_arrays(lp, None, LABELS, token_features=hidden), y


def test_label_network_shapes_and_padding_is_ignored():
    gen = torch.Generator().manual_seed(0)
    params = init_label_network(d=6, m=8, k=3, n_layers=2, generator=gen)
    feats = torch.randn(4, 5, 6, generator=gen)
    mask = torch.ones(4, 5, dtype=torch.bool)
    logits = label_network_logits(params, feats, mask, n_layers=2, heads=2)
    assert logits.shape == (4, 3)
    padded = torch.cat([feats, torch.randn(4, 2, 6, generator=gen)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(4, 2, dtype=torch.bool)], dim=1)
    again = label_network_logits(params, padded, pad_mask, n_layers=2, heads=2)
    torch.testing.assert_close(again, logits)
    shuffled = label_network_logits(params, feats[:, [4, 2, 0, 1, 3]], mask, n_layers=2, heads=2)
    torch.testing.assert_close(shuffled, logits, atol=1e-5, rtol=1e-5)  # a set of positions


@pytest.mark.parametrize("positions", [None, 4], ids=["one-state", "four-positions"])
def test_ytuning_learns_separable_classes(positions):
    X, y = _problem(p=positions)
    X_test, y_test = _problem(p=positions, seed=1)
    # The mechanism, at the light weight decay this toy problem was sized for (the default,
    # chosen on real dev data, regularises harder: 26 of these 30 test rows, not 27).
    decoder = YTuning(random_state=0, epochs=150, weight_decay=0.01).fit(X, y)
    assert decoder.score(X_test, y_test) >= 0.9
    proba = decoder.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)


def test_ytuning_is_deterministic_and_round_trips_through_safetensors(tmp_path):
    X, y = _problem(p=3)
    a = YTuning(random_state=3, epochs=40, n_layers=2).fit(X, y)
    b = YTuning(random_state=3, epochs=40, n_layers=2).fit(X, y)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
    loaded, meta = load_decoder(save_decoder(a, tmp_path / "yt", metadata={"k": 1}))
    assert meta == {"k": 1} and isinstance(loaded, YTuning)
    np.testing.assert_array_equal(loaded.decision_function(X), a.decision_function(X))
    assert sorted(p.name for p in (tmp_path / "yt").iterdir()) == [
        "decoder.json",
        "tensors.safetensors",
    ]


def test_ytuning_refuses_bad_settings_and_missing_token_features():
    X, y = _problem()
    with pytest.raises(ConfigurationError, match="must divide"):
        YTuning(d_model=10, n_heads=4).fit(X, y)
    hidden_only = Scores.from_arrays(X.label_logprobs, X.token_features[:, 0], LABELS)
    with pytest.raises(ConfigurationError, match="token features"):
        YTuning().fit(hidden_only, y)
    fitted = YTuning(epochs=2).fit(X, y)
    other, _ = _problem(d=7)
    with pytest.raises(ConfigurationError, match="width 7"):
        fitted.predict(other)
