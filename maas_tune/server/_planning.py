"""Split a gathered batch into length-sorted forward passes that waste the least padding.

Pure arithmetic: no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DEFAULT_PASS_OVERHEAD_TOKENS", "pass_waste", "plan_passes"]

#: Fixed cost of one forward pass, in padded-token equivalents. On 2 CPU cores Gemma 3
#: 270M costs ~63 ms + 1.08 ms per padded token (least squares over batch 1-32 x
#: length 16-64; see docs/benchmarks.md), i.e. ~58 tokens.
DEFAULT_PASS_OVERHEAD_TOKENS = 60


def pass_waste(lengths: Sequence[int], overhead_tokens: float) -> float:
    """Padding plus overhead per prompt of one pass, in token equivalents."""
    return (overhead_tokens + len(lengths) * max(lengths) - sum(lengths)) / len(lengths)


def plan_passes(
    lengths: Sequence[int],
    *,
    max_pass_size: int,
    overhead_tokens: float = DEFAULT_PASS_OVERHEAD_TOKENS,
) -> list[list[int]]:
    """Group prompts into forward passes minimising padded tokens plus per-pass overhead.

    Each pass is left-padded to its longest prompt, so it costs
    ``overhead_tokens + size * max_length``. Prompts are sorted by length and cut into
    contiguous runs by dynamic programming (optimal for this cost among length-sorted
    groupings; O(n * max_pass_size)).

    Parameters
    ----------
    lengths : sequence of int
        Token count of each prompt.
    max_pass_size : int
        Most prompts per pass (>= 1).
    overhead_tokens : float
        Fixed cost of a pass in token equivalents (>= 0).

    Returns
    -------
    list of list of int
        Indices into ``lengths``, one list per pass, shortest prompts first; every
        index appears exactly once.
    """
    if max_pass_size < 1:
        raise ValueError(f"max_pass_size must be >= 1, got {max_pass_size}")
    if overhead_tokens < 0:
        raise ValueError(f"overhead_tokens must be >= 0, got {overhead_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted prompts
    cut = [0] * (n + 1)  # cut[j]: start of the last pass in that optimum
    for end in range(1, n + 1):
        longest = lengths[order[end - 1]]  # sorted: the last prompt of a run is its longest
        for start in range(max(0, end - max_pass_size), end):
            cost = best[start] + overhead_tokens + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    passes: list[list[int]] = []
    end = n
    while end > 0:
        passes.append(order[cut[end] : end])
        end = cut[end]
    return passes[::-1]
