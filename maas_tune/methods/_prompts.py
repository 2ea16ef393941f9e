"""Building prompts around a task's template: escaping, demonstrations, context-length fitting."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .._constants import LABEL_WORD_PREFIX
from ..data import Example
from ..task import Task

__all__ = [
    "escape_template",
    "fit_demonstrations",
    "join_prompt",
    "prefixed_task",
    "render_demonstration",
    "select_demonstrations",
]

#: Counts the prompt tokens of each prompt (``Provider.count_tokens``).
CountTokens = Callable[[Sequence[str]], list[int]]


def escape_template(text: str) -> str:
    """``text`` as literal template text: braces doubled so they are never placeholders."""
    return text.replace("{", "{{").replace("}", "}}")


def prefixed_task(task: Task, prefix: str) -> Task:
    """A copy of ``task`` whose prompts start with the literal text ``prefix``."""
    return task.with_template(escape_template(prefix) + task.template) if prefix else task


def render_demonstration(task: Task, example: Example, label: str) -> str:
    """One solved example: the rendered prompt followed by the class's first label word."""
    return task.render(example) + LABEL_WORD_PREFIX + task.verbalizer[label][0]


def select_demonstrations(
    y: np.ndarray, n_classes: int, per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Seeded choice of ``per_class`` examples of every class, in a seeded random order.

    Parameters
    ----------
    y : np.ndarray, shape (n,), int
        Class index of each candidate.
    n_classes : int
    per_class : int
        Demonstrations per class; a class with fewer candidates gives all it has.
    rng : numpy Generator
        Draws, per class in class order, the chosen indices, then one permutation of
        all of them: the prompt order.

    Returns
    -------
    np.ndarray, shape (m,), int64
        Indices into ``y``, in prompt order (first = farthest from the test input).
    """
    chosen = []
    for c in range(n_classes):
        pool = np.flatnonzero(y == c)  # (n_c,)
        chosen.append(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
    picked = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
    return picked[rng.permutation(len(picked))]  # (m,)


def fit_demonstrations(
    blocks: Sequence[str],
    tests: Sequence[str],
    separator: str,
    count_tokens: CountTokens,
    max_tokens: int | None,
) -> np.ndarray:
    """How many demonstrations each prompt keeps so that it fits ``max_tokens``.

    The prompt for test text ``t`` keeping ``j`` demonstrations is
    ``separator.join(blocks[-j:]) + separator + t``: demonstrations are dropped from the
    front (the ones farthest from the test input) and the test input is never cut. An
    additive token estimate picks ``j``; the exact count of the chosen prompt confirms it
    (one demonstration more is dropped while it does not fit).

    Parameters
    ----------
    blocks : sequence of str, length m
        Rendered demonstrations in prompt order.
    tests : sequence of str, length n
        Rendered test prompts.
    separator : str
    count_tokens : callable
        Prompt tokens of each prompt (special tokens such as BOS included).
    max_tokens : int or None
        Context budget per prompt; None keeps every demonstration.

    Returns
    -------
    np.ndarray, shape (n,), int64
        Demonstrations kept per test prompt; 0 with a test prompt that alone exceeds
        ``max_tokens`` (the caller reports it; the prompt is still sent whole).
    """
    m, n = len(blocks), len(tests)
    if max_tokens is None or m == 0:
        return np.full(n, m, dtype=np.int64)
    base = count_tokens([""])[0]  # special tokens every count includes
    sizes = np.array(count_tokens([b + separator for b in blocks]), dtype=np.int64) - base  # (m,)
    tail = np.concatenate([[0], np.cumsum(sizes[::-1])])  # (m+1,) tokens of the last j blocks
    own = np.array(count_tokens(list(tests)), dtype=np.int64)  # (n,)
    keep = np.array([np.searchsorted(tail, max_tokens - t, side="right") - 1 for t in own])
    keep = np.clip(keep, 0, m).astype(np.int64)  # (n,)
    todo = np.flatnonzero(keep > 0)
    while todo.size:  # confirm with exact counts; tokenisation is not exactly additive
        prompts = [join_prompt(blocks, int(keep[i]), separator, tests[i]) for i in todo.tolist()]
        over = np.array(count_tokens(prompts)) > max_tokens
        keep[todo[over]] -= 1
        todo = todo[over & (keep[todo] > 0)]
    return keep


def join_prompt(blocks: Sequence[str], keep: int, separator: str, test: str) -> str:
    """The last ``keep`` demonstrations, then the test prompt."""
    return separator.join([*blocks[len(blocks) - keep :], test]) if keep else test
