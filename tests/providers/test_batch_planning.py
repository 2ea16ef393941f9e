"""The server's pass planner: length-sorted passes that waste the least padding."""

from __future__ import annotations

import itertools
import random

import pytest

from maas_tune.server._planning import plan_passes


def _cost(lengths, passes, overhead):
    return sum(overhead + len(p) * max(lengths[i] for i in p) for p in passes)


def _brute_force(lengths, max_size, overhead):
    """Cheapest cost over every cut of the length-sorted order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n, best = len(order), float("inf")
    for mask in range(1 << max(0, n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        passes = [order[a:b] for a, b in itertools.pairwise(cuts)]
        if all(len(p) <= max_size for p in passes):
            best = min(best, _cost(lengths, passes, overhead))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_plan_is_optimal_among_sorted_cuts_and_covers_every_prompt(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 80) for _ in range(rng.randint(1, 11))]
    max_size, overhead = rng.randint(1, 6), rng.choice([0, 8, 48, 200])
    passes = plan_passes(lengths, max_pass_size=max_size, overhead_tokens=overhead)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    assert all(1 <= len(p) <= max_size for p in passes)
    assert _cost(lengths, passes, overhead) == _brute_force(lengths, max_size, overhead)


def test_mixed_lengths_are_split_to_save_padding():
    lengths = [60, 5, 6, 58, 5, 61, 7, 59]
    passes = plan_passes(lengths, max_pass_size=8, overhead_tokens=10)
    assert [sorted(lengths[i] for i in p) for p in passes] == [[5, 5, 6, 7], [58, 59, 60, 61]]


def test_equal_lengths_fill_passes_and_huge_overhead_never_splits():
    assert sorted(len(p) for p in plan_passes([20] * 10, max_pass_size=4)) == [2, 4, 4]
    assert len(plan_passes([3, 90, 4, 80], max_pass_size=16, overhead_tokens=1e9)) == 1


def test_empty_and_bad_arguments():
    assert plan_passes([], max_pass_size=4) == []
    with pytest.raises(ValueError, match="max_pass_size"):
        plan_passes([1], max_pass_size=0)
    with pytest.raises(ValueError, match="overhead_tokens"):
        plan_passes([1], max_pass_size=1, overhead_tokens=-1)


def test_batcher_scores_a_gathered_batch_in_length_sorted_passes():
    import asyncio

    import numpy as np

    from maas_tune.scores import ProviderAnswer
    from maas_tune.server.batching import ScoreBatcher

    calls: list[list[str]] = []

    def score(prompts, token_ids):
        calls.append(list(prompts))
        return [
            ProviderAnswer(np.asarray([float(len(p))], dtype=np.float32), None, len(p))
            for p in prompts
        ]

    prompts = ["long " * 12, "s", "long " * 13, "t", "long " * 11, "u"]

    async def main():
        batcher = ScoreBatcher(score, max_batch_size=8, max_wait_ms=20, pass_overhead_tokens=20)
        got = await asyncio.gather(*(batcher.submit([p], [7], [len(p)]) for p in prompts))
        await batcher.aclose()
        return got

    answers = asyncio.run(main())
    assert sorted(map(sorted, calls)) == sorted([sorted(prompts[1::2]), sorted(prompts[0::2])])
    assert [a.prompt_tokens for (a,) in answers] == [len(p) for p in prompts]


def test_packed_batcher_takes_the_oldest_prompts_that_fit_the_token_cap():
    import asyncio

    import numpy as np

    from maas_tune.scores import ProviderAnswer
    from maas_tune.server.batching import ScoreBatcher

    calls: list[list[str]] = []

    def score(prompts, token_ids):
        calls.append(list(prompts))
        return [ProviderAnswer(np.zeros(1, dtype=np.float32), None, 1) for _ in prompts]

    async def main():
        batcher = ScoreBatcher(
            score, max_batch_size=16, max_wait_ms=20, max_pass_size=3, max_pass_tokens=10
        )
        sizes = {"a": 4, "b": 4, "c": 4, "d": 1, "e": 9}
        await asyncio.gather(*(batcher.submit([p], [1], [n]) for p, n in sizes.items()))
        await batcher.aclose()

    asyncio.run(main())
    assert calls == [["a", "b"], ["c", "d"], ["e"]]
