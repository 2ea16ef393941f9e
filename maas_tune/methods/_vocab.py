"""BDPL's candidate prompt vocabulary: frequent PMI-merged n-grams of the training texts."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise

from ..errors import ConfigurationError

__all__ = ["candidate_vocabulary", "prompt_vocabulary", "words"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` (punctuation dropped)."""
    return _WORD.findall(text.lower())


def _segments(sentence: list[str], strong: set[tuple[str, str]], max_n: int) -> Iterable[str]:
    """Split a sentence into runs joined by strong pairs; yield runs of at most max_n words."""
    run = sentence[:1]
    for prev, word in pairwise(sentence):
        if (prev, word) in strong:
            run.append(word)
            continue
        if len(run) <= max_n:
            yield " ".join(run)
        run = [word]
    if run and len(run) <= max_n:
        yield " ".join(run)


def candidate_vocabulary(
    texts: Sequence[str], size: int, *, max_n: int = 3, min_pmi: float = 1.0, min_count: int = 2
) -> list[str]:
    """The ``size`` most frequent n-grams of ``texts`` after merging high-PMI word pairs.

    BDPL (Diao et al., 2023) builds its prompt vocabulary this way (its ``pmi_ngram.py``):
    adjacent words whose pointwise mutual information ``log(N c(a,b) / (c(a) c(b)))`` is
    at least ``min_pmi`` (and that co-occur at least ``min_count`` times) are merged into
    one n-gram; the n-grams of at most ``max_n`` words are ranked by frequency.

    Parameters
    ----------
    texts : sequence of str
    size : int
        How many candidates to return (fewer when the texts hold fewer distinct n-grams).
    max_n, min_pmi, min_count
        See above.

    Returns
    -------
    list of str
        Distinct n-grams, most frequent first (ties broken alphabetically).
    """
    sentences = [w for w in (words(t) for t in texts) if w]
    unigrams = Counter(w for s in sentences for w in s)
    pairs = Counter(p for s in sentences for p in pairwise(s))
    total = max(sum(pairs.values()), 1)
    strong = {
        (a, b)
        for (a, b), c in pairs.items()
        if c >= min_count and math.log(total * c / (unigrams[a] * unigrams[b])) >= min_pmi
    }
    grams = Counter(g for s in sentences for g in _segments(s, strong, max_n))
    ranked = sorted(grams.items(), key=lambda kv: (-kv[1], kv[0]))
    return [gram for gram, _ in ranked[:size]]


def prompt_vocabulary(
    texts: Sequence[str] | None, size: int, *, max_n: int, min_count: int
) -> list[str]:
    """:func:`candidate_vocabulary` of ``texts`` for BDPL, or a ConfigurationError saying why not.

    ``texts`` is None when BDPL mines the unlabelled training texts and ``fit`` got none.
    """
    if texts is None:
        raise ConfigurationError(
            "BDPL(vocabulary='corpus') mines its prompt vocabulary from the task's unlabelled "
            "training texts: pass them as fit(..., corpus=texts), or use vocabulary='shots'"
        )
    found = candidate_vocabulary(list(texts), size, max_n=max_n, min_count=min_count)
    if len(found) < 2:
        raise ConfigurationError(
            f"the texts give {len(found)} candidate n-gram(s); BDPL needs at least 2: "
            "pass more examples or a corpus"
        )
    return found
