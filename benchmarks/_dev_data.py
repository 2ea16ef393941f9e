"""The dev protocol's data: pools drawn from the bundled train splits, scored through the client.

A pool is a seeded, class-balanced draw from ``maas_tune/datasets/<name>/train.jsonl``
(never the test split); it is checked, by normalised text, to share no input with
``test.jsonl``, and scored by the in-process model through :class:`maas_tune.Client`
with its answers cached in ``benchmarks/.cache/dev.sqlite``, so a rerun costs no
model time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import maas_tune as mt
from maas_tune.data import Example, labels_to_indices
from maas_tune.errors import DataError

#: Where the dev protocol keeps its answers (git-ignored, like the benchmarks' own cache).
DEV_STORE = Path(__file__).resolve().parent / ".cache" / "dev.sqlite"
#: Seed of the pool draw (fixed: every run sees the same pool).
POOL_SEED = 1234
#: Pool rows per class, and per dataset at most (the cost on a 2-core machine).
POOL_PER_CLASS = 100
POOL_MAX = 400

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower-cased text with runs of white space made one space, stripped."""
    return _SPACE.sub(" ", text.lower()).strip()


def _key(example: Example) -> str:
    return normalise(example.text) + "\x00" + normalise(example.text_b or "")


def check_disjoint(pool: Iterable[Example], test: Iterable[Example], dataset: str) -> None:
    """Raise if any pool input occurs in the test split (compared by normalised text).

    Raises
    ------
    DataError
        Naming the dataset, how many inputs overlap and one of them.
    """
    test_keys = {_key(e) for e in test}
    shared = sorted({_key(e) for e in pool} & test_keys)
    if shared:
        raise DataError(
            f"{dataset}: {len(shared)} dev-pool input(s) also occur in test.jsonl, e.g. "
            f"{shared[0][:60]!r}; draw the pool with draw_pool, which leaves them out"
        )


def draw_pool(
    train: Sequence[Example],
    test: Sequence[Example],
    labels: Sequence[str],
    *,
    per_class: int = POOL_PER_CLASS,
    limit: int = POOL_MAX,
    seed: int = POOL_SEED,
) -> list[Example]:
    """A class-balanced pool from ``train`` without any input that occurs in ``test``.

    ``min(per_class, limit // K)`` rows of each class (fewer where a class has fewer),
    deduplicated by normalised text; the result is checked with :func:`check_disjoint`.
    """
    test_keys = {_key(e) for e in test}
    seen: set[str] = set()
    usable = []
    for e in train:  # first occurrence of each input, none that the test split holds
        key = _key(e)
        if key not in test_keys and key not in seen:
            seen.add(key)
            usable.append(e)
    y = labels_to_indices(usable, labels)
    rng = np.random.default_rng(seed)
    take = min(per_class, limit // len(labels))
    picked = [rng.permutation(np.flatnonzero(y == c))[:take] for c in range(len(labels))]
    pool = [usable[i] for i in np.sort(np.concatenate(picked))]
    check_disjoint(pool, test, "pool")
    return pool


@dataclass(frozen=True)
class DevData:
    """One dataset's scored pool: what the dev protocol draws shots and dev rows from."""

    name: str
    labels: list[str]
    scores: mt.Scores
    y: np.ndarray  # (n,) class indices
    content_free: np.ndarray  # (K,) label log-probabilities of the content-free input


#: Token states per answer: what Y-Tuning attends over (the grid's ``ytuning`` block's).
TOKEN_FEATURES = 32


def build(names: Sequence[str], provider: object | None = None) -> dict[str, DevData]:
    """Score every dataset's pool (and its content-free input) through the cached client,
    with the last :data:`TOKEN_FEATURES` token states of each input (Y-Tuning's features)."""
    provider = provider or mt.TransformersProvider(batch_size=16, token_features=TOKEN_FEATURES)
    store = mt.Store(DEV_STORE)
    client = mt.Client(provider, cache=mt.ScoreCache(store), progress=False)  # type: ignore[arg-type]
    out = {}
    for name in names:
        task, data = mt.datasets.load_task(name), mt.datasets.load(name)
        pool = draw_pool(data.train, data.test, task.labels)
        check_disjoint(pool, data.test, name)  # the promise, checked where it is relied on
        scores = client.score(task, pool)
        out[name] = DevData(
            name=name,
            labels=list(task.labels),
            scores=scores,
            y=labels_to_indices(pool, task.labels),
            content_free=np.asarray(client.content_free(task)),
        )
    return out
