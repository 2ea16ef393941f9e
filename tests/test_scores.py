"""Scores as a container: joining parts keeps every optional array (Ray's workers return
their rows as parts)."""

from __future__ import annotations

import numpy as np
import pytest

from maas_tune.scores import Scores


def _part(n: int, start: int, *, features: bool = True) -> Scores:
    rng = np.random.default_rng(start)
    return Scores(
        label_logprobs=rng.normal(size=(n, 2)).astype(np.float32),
        hidden=rng.normal(size=(n, 3)).astype(np.float32),
        cache_hit=np.arange(n) % 2 == 0,
        prompt_tokens=np.arange(start, start + n, dtype=np.int64),
        labels=("a", "b"),
        floored=np.arange(n, dtype=np.int64),
        token_features=rng.normal(size=(n, 4, 3)).astype(np.float16) if features else None,
        token_mask=np.ones((n, 4), dtype=bool) if features else None,
    )


def test_concat_keeps_every_array_in_order():
    """Ray's join dropped floored counts and token features (Y-Tuning then refused)."""
    first, second = _part(3, 0), _part(2, 10)
    joined = Scores.concat([first, second])
    assert len(joined) == 5
    for name in (
        "label_logprobs",
        "hidden",
        "cache_hit",
        "prompt_tokens",
        "floored",
        "token_features",
        "token_mask",
    ):
        want = np.concatenate([getattr(first, name), getattr(second, name)])
        np.testing.assert_array_equal(getattr(joined, name), want)
    np.testing.assert_array_equal(joined[[3, 4]].token_features, second.token_features)


def test_concat_drops_an_optional_array_that_a_part_lacks_and_refuses_mixed_labels():
    joined = Scores.concat([_part(2, 0), _part(2, 5, features=False)])
    assert joined.token_features is None and joined.token_mask is None
    assert joined.hidden is not None
    other = _part(1, 7)
    other = Scores(
        other.label_logprobs, other.hidden, other.cache_hit, other.prompt_tokens, ("x", "y")
    )
    with pytest.raises(ValueError, match="different labels"):
        Scores.concat([_part(1, 0), other])
    with pytest.raises(ValueError, match="at least one"):
        Scores.concat([])
