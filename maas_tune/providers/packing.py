"""Cut a sequence of prompts into forward passes by prompt count and token count (pure)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pack_runs"]


def pack_runs(lengths: Sequence[int], max_prompts: int, max_tokens: int) -> list[list[int]]:
    """Cut prompts, in order, into runs of at most ``max_prompts`` prompts and ``max_tokens``
    tokens (a longer prompt runs alone)."""
    runs: list[list[int]] = []
    tokens = 0
    for i, n in enumerate(lengths):
        if not runs or len(runs[-1]) >= max_prompts or tokens + n > max_tokens:
            runs.append([])
            tokens = 0
        runs[-1].append(i)
        tokens += n
    return runs
