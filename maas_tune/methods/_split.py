"""BDPL's prompt selection: a stratified dev split held out from the shots, the prompts tried."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import Example
from ..errors import ConfigurationError

__all__ = ["Split", "Tried", "dev_split", "split_examples"]

#: Examples and their class indices, shape (n,).
Split = tuple[list[Example], torch.Tensor]


@dataclass
class Tried:
    """Every scored prompt, to keep the best.

    ``train`` holds ``(partial, loss, prompt)`` of prompts scored on training rows
    (``partial``: not on all of them), ``dev`` ``(-accuracy, loss, prompt)`` of those
    scored on the dev split; once any prompt is scored on dev, only those compete.
    """

    train: list[tuple[bool, float, tuple[int, ...]]] = field(default_factory=list)
    dev: list[tuple[float, float, tuple[int, ...]]] = field(default_factory=list)

    def best(self) -> tuple[Any, float, tuple[int, ...]] | None:
        """The smallest entry of ``dev``, else of ``train``; None if nothing was scored."""
        if self.dev:
            return min(self.dev)
        return min(self.train) if self.train else None


def split_examples(
    examples: Sequence[Example], target: np.ndarray, fraction: float, seed: int | None
) -> tuple[Split, Split | None]:
    """The training split and the dev split (None when ``fraction`` is 0) of ``examples``."""
    if fraction == 0:
        return (list(examples), torch.as_tensor(target)), None
    fit_rows, dev_rows = dev_split(target, fraction, seed)
    fit = ([examples[i] for i in fit_rows], torch.as_tensor(target[fit_rows]))
    return fit, ([examples[i] for i in dev_rows], torch.as_tensor(target[dev_rows]))


def dev_split(
    target: np.ndarray, fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``floor(fraction * n_c)`` examples of each class ``c`` as a dev split.

    Parameters
    ----------
    target : np.ndarray of int, shape (n,)
        Class index of every example.
    fraction : float
        In ``(0, 1)``.
    seed : int or None
        Seed of the draw within each class.

    Returns
    -------
    train, dev : np.ndarray of int
        Sorted row indices, disjoint, together ``range(n)``; every class keeps at least
        one training row.

    Raises
    ------
    ConfigurationError
        If no class has enough examples to give one to the dev split.
    """
    rng = np.random.default_rng(None if seed is None else [int(seed), 1])
    dev: list[int] = []
    for c in np.unique(target):
        rows = rng.permutation(np.flatnonzero(target == c))
        take = min(int(np.floor(fraction * len(rows))), len(rows) - 1)
        dev.extend(int(i) for i in rows[:take])
    if not dev:
        raise ConfigurationError(
            f"dev_fraction={fraction} of {len(target)} examples leaves no dev example; "
            "pass more shots per class, or dev_fraction=0 (prompt chosen on the training loss)"
        )
    held = np.zeros(len(target), dtype=bool)
    held[dev] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
