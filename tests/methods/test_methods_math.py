"""The comparison methods' pure parts on tiny synthetic inputs: BDPL's numerics, vocabulary, ICL prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maas_tune.data import Example
from maas_tune.methods._policy import mode, policy_gradient, project_simplex, sample_prompts
from maas_tune.methods._prompts import (
    escape_template,
    fit_demonstrations,
    join_prompt,
    prefixed_task,
    render_demonstration,
    select_demonstrations,
)
from maas_tune.methods._vocab import candidate_vocabulary, words
from maas_tune.task import Task


def _bisection_projection(row: torch.Tensor) -> torch.Tensor:
    """The reference implementation's projection: bisection on the threshold."""
    lo, hi = float(row.min()) - 1.0, float(row.max())
    for _ in range(200):
        v = (lo + hi) / 2
        if float((row - v).clamp(min=0).sum()) > 1:
            lo = v
        else:
            hi = v
    return (row - (lo + hi) / 2).clamp(min=0)


def test_project_simplex_matches_bisection_and_lands_on_the_simplex():
    x = torch.randn(6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    p = project_simplex(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(6, dtype=torch.float64))
    expected = torch.stack([_bisection_projection(r) for r in x])
    torch.testing.assert_close(p, expected, atol=1e-9, rtol=0)


def test_project_simplex_keeps_points_of_the_simplex():
    p = torch.softmax(torch.randn(3, 5, generator=torch.Generator().manual_seed(1)), -1).double()
    torch.testing.assert_close(project_simplex(p), p)


def test_policy_gradient_is_unbiased_for_the_expected_loss():
    # One position, three candidates, a fixed loss per candidate: E[L] = p . f, and the
    # variance-reduced estimate has mean f - E[L] (the gradient up to a constant shift,
    # which the simplex projection removes).
    probs = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    f = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    total = torch.zeros_like(probs)
    rounds = 20000
    for _ in range(rounds):
        samples = sample_prompts(probs, 4, gen)  # (4, 1)
        total += policy_gradient(probs, samples, f[samples[:, 0]])
    estimate = total[0] / rounds
    expected = f - (probs[0] * f).sum()
    torch.testing.assert_close(estimate, expected, atol=0.06, rtol=0)


def test_policy_gradient_by_hand_and_needs_two_samples():
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    samples = torch.tensor([[0, 1], [1, 1]])
    losses = torch.tensor([1.0, 3.0])  # centred: -1, +1; divided by I - 1 = 1
    grad = policy_gradient(probs, samples, losses)
    expected = torch.tensor([[-1 / 0.5, 1 / 0.5], [0.0, -1 / 0.75 + 1 / 0.75]])
    torch.testing.assert_close(grad, expected)
    with pytest.raises(ValueError, match="at least 2"):
        policy_gradient(probs, samples[:1], losses[:1])


def test_sample_prompts_is_seeded_and_follows_the_distribution():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    a = sample_prompts(probs, 4000, torch.Generator().manual_seed(3))
    b = sample_prompts(probs, 4000, torch.Generator().manual_seed(3))
    assert a.shape == (4000, 2) and torch.equal(a, b)
    assert (a[:, 0] == 1).all()
    freq = torch.bincount(a[:, 1], minlength=3).double() / 4000
    torch.testing.assert_close(freq, probs[1].double(), atol=0.03, rtol=0)
    assert mode(probs).tolist() == [1, 2]


def test_candidate_vocabulary_merges_high_pmi_pairs_and_ranks_by_frequency():
    texts = [
        "I love New York in the spring.",
        "New York is big; the city never sleeps!",
        "the spring in New York",
        "the weather, the people",
    ]
    vocab = candidate_vocabulary(texts, 5)
    # "new york" (3 times, always together) and "the spring" (twice) are merged; "the"
    # is left 3 times on its own; equal counts are ordered alphabetically.
    assert vocab[:4] == ["new york", "the", "in", "the spring"]
    assert "new" not in vocab and "york" not in vocab
    assert len(vocab) == 5
    assert all("," not in v and "!" not in v for v in vocab)
    assert words("It's 2 o'clock.") == ["it's", "2", "o'clock"]


# -- ICL prompts ----------------------------------------------------------------
TASK = Task("t", "Q: {text}\nA:", {"neg": ["bad"], "pos": ["good"]})


def _count_words(prompts):
    return [len(p.split()) + 1 for p in prompts]  # +1: a BOS token


def test_select_demonstrations_is_balanced_seeded_and_shuffled():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    a = select_demonstrations(y, 3, 2, np.random.default_rng(5))
    b = select_demonstrations(y, 3, 2, np.random.default_rng(5))
    assert a.tolist() == b.tolist()
    assert sorted(np.bincount(y[a], minlength=3).tolist()) == [1, 2, 2]  # class 2 has one
    assert len(set(a.tolist())) == len(a)
    orders = {tuple(select_demonstrations(y, 3, 2, np.random.default_rng(s))) for s in range(8)}
    assert len(orders) > 1


def test_fit_demonstrations_drops_farthest_first_and_never_cuts_the_input():
    blocks = ["a " * 5, "b " * 5, "c " * 5]  # 5 words each (+ separator)
    tests = ["x", "y " * 8, "z " * 30]
    keep = fit_demonstrations(blocks, tests, "\n\n", _count_words, max_tokens=13)
    assert keep.tolist() == [2, 0, 0]  # 2 + 10 words fit; 9 + 5 do not; 31 alone is over
    prompt = join_prompt(blocks, 2, "\n\n", tests[0])
    assert prompt.startswith("b ") and prompt.endswith("x") and "a " not in prompt
    assert max(_count_words([prompt])) <= 13
    everything = fit_demonstrations(blocks, tests, "\n\n", _count_words, max_tokens=None)
    assert everything.tolist() == [3, 3, 3]


def test_demonstrations_render_with_the_template_and_escaped_prefix():
    demo = render_demonstration(TASK, Example("braces {text} here", "pos"), "pos")
    assert demo == "Q: braces {text} here\nA: good"
    task = prefixed_task(TASK, demo + "\n\n")
    assert task.render(Example("new")) == demo + "\n\nQ: new\nA:"
    assert escape_template("{a}") == "{{a}}"
