"""What a model answered, as plain values: one prompt's :class:`ProviderAnswer` and a
batch's :class:`Scores` (per-class label scores, hidden states and usage).

The lowest layer of the package: the storage, the providers and the client all use
these types, so they live where none of them has to import another."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ProviderAnswer", "Scores", "pad_token_features"]


@dataclass(frozen=True)
class ProviderAnswer:
    """One prompt's answer.

    Attributes
    ----------
    logprobs : np.ndarray, shape (t,)
        Log-probabilities of the requested tokens at the next-token position,
        normalised over the full vocabulary, in the order they were requested.
    hidden : np.ndarray of shape (d,) or None
        Last-layer hidden state at the prediction position, where the provider
        exposes one.
    prompt_tokens : int
        Number of prompt tokens the provider processed (usage).
    queries : int, default 1
        Requests this answer cost (a strategy may need more than one per prompt,
        e.g. one per label word); the budget is charged this many.
    floored : int, default 0
        Label words the API did not rank in its top-k and that could not be read
        exactly: their ``logprobs`` entry is the top-k bound, not the model's value.
    token_features : np.ndarray of shape (m, d), float16, or None
        Last-layer hidden states of the prompt's last ``m <= N`` tokens, oldest first
        (the last row is the prediction position), where they were asked for
        (``token_features=N``) and the provider can give them; None otherwise.
    """

    logprobs: np.ndarray
    hidden: np.ndarray | None
    prompt_tokens: int
    queries: int = 1
    floored: int = 0
    token_features: np.ndarray | None = None


@dataclass(frozen=True)
class Scores:
    """What the client returns for n examples of a K-class task.

    Attributes
    ----------
    label_logprobs : np.ndarray, shape (n, K), float32
        Log-probability of each class: the log of the summed probabilities of the
        class's label words, normalised over the full vocabulary.
    hidden : np.ndarray of shape (n, d), float32, or None
        Last-layer hidden state at the prediction position (None where the
        provider gives none).
    cache_hit : np.ndarray, shape (n,), bool
        True where the answer came from the cache (cost nothing).
    prompt_tokens : np.ndarray, shape (n,), int64
        Prompt tokens of each example's query (also for cache hits: what it cost once).
    labels : tuple of str, length K
        Class names, in column order.
    floored : np.ndarray, shape (n,), int64, or None
        Label words per example that the API did not rank in its top-k and that got
        the top-k bound instead of the model's value (chat ``top_logprobs``); None
        when unknown (scores built from arrays).
    token_features : np.ndarray of shape (n, N, d), float16, or None
        Last-layer hidden states of each prompt's last ``N`` tokens (oldest first),
        padded with zeros after a prompt's real tokens when it has fewer; None unless
        asked for (``token_features=N`` on the provider) and given by every answer.
    token_mask : np.ndarray of shape (n, N), bool, or None
        True on the real rows of ``token_features`` (None exactly when it is None).
    """

    label_logprobs: np.ndarray
    hidden: np.ndarray | None
    cache_hit: np.ndarray
    prompt_tokens: np.ndarray
    labels: tuple[str, ...]
    floored: np.ndarray | None = None
    token_features: np.ndarray | None = None
    token_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, k = self.label_logprobs.shape
        if k != len(self.labels):
            raise ValueError(
                f"label_logprobs has {k} columns but {len(self.labels)} labels were given"
            )
        for name, arr in (("cache_hit", self.cache_hit), ("prompt_tokens", self.prompt_tokens)):
            if arr.shape != (n,):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")
        if self.hidden is not None and self.hidden.shape[0] != n:
            raise ValueError(f"hidden has {self.hidden.shape[0]} rows, expected {n}")
        _check_tokens(self.token_features, self.token_mask, n)

    def __len__(self) -> int:
        return int(self.label_logprobs.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, K)``: examples and classes (scikit-learn counts samples by ``shape[0]``)."""
        n, k = self.label_logprobs.shape
        return int(n), int(k)

    def __getitem__(self, index: Any) -> Scores:
        """The rows ``index`` as Scores: a slice, an array of row numbers or a boolean mask.

        This is what scikit-learn's splitters need (``cross_val_score``, ``GridSearchCV``),
        and it passes rows as ``scores[rows, ...]``, which is accepted too. A single row
        is ``scores[[i]]``; ``scores[i]`` is refused because it would not keep the
        ``(n, ...)`` shapes of the arrays.

        Raises
        ------
        TypeError
            If ``index`` is one integer or selects columns.
        """
        if isinstance(index, tuple):
            if len(index) != 2 or index[1] is not Ellipsis:
                raise TypeError(
                    "Scores are indexed by rows only: scores[rows] with a slice, "
                    "row numbers or a boolean mask"
                )
            index = index[0]
        if isinstance(index, (int, np.integer)):
            raise TypeError(
                f"scores[{index}] would drop the row axis; use scores[[{index}]] for one row"
            )
        return self.subset(index)

    @property
    def n_cache_hits(self) -> int:
        """How many examples were answered from the cache."""
        return int(self.cache_hit.sum())

    @property
    def n_queries_sent(self) -> int:
        """How many examples cost a query to the provider in this call."""
        return len(self) - self.n_cache_hits

    def subset(self, index: Sequence[int] | np.ndarray | slice) -> Scores:
        """The rows ``index``: row numbers, a boolean mask or a slice."""
        idx = index if isinstance(index, slice) else np.asarray(index)
        if isinstance(idx, np.ndarray) and (idx.ndim != 1 or idx.dtype.kind not in "iub"):
            if idx.size:
                raise TypeError(
                    "index Scores rows with a slice, 1-D integer row numbers or a "
                    f"boolean mask; got an array of dtype {idx.dtype} and shape {idx.shape}"
                )
            idx = idx.astype(np.int64).reshape(0)  # [] is float64 to numpy
        return Scores(
            label_logprobs=self.label_logprobs[idx],
            hidden=None if self.hidden is None else self.hidden[idx],
            cache_hit=self.cache_hit[idx],
            prompt_tokens=self.prompt_tokens[idx],
            labels=self.labels,
            floored=None if self.floored is None else self.floored[idx],
            token_features=None if self.token_features is None else self.token_features[idx],
            token_mask=None if self.token_mask is None else self.token_mask[idx],
        )

    @classmethod
    def concat(cls, parts: Sequence[Scores]) -> Scores:
        """The rows of ``parts`` one after the other (same labels); an optional array
        (hidden states, floored counts, token features) is kept where every part has it.

        Raises
        ------
        ValueError
            If ``parts`` is empty or their labels differ.
        """
        if not parts:
            raise ValueError("Scores.concat needs at least one part")
        labels = parts[0].labels
        if any(p.labels != labels for p in parts):
            raise ValueError("Scores.concat: the parts have different labels")

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        features, mask = joined("token_features"), joined("token_mask")
        if features is None or mask is None:
            features = mask = None
        return cls(
            label_logprobs=np.concatenate([p.label_logprobs for p in parts]),
            hidden=joined("hidden"),
            cache_hit=np.concatenate([p.cache_hit for p in parts]),
            prompt_tokens=np.concatenate([p.prompt_tokens for p in parts]),
            labels=labels,
            floored=joined("floored"),
            token_features=features,
            token_mask=mask,
        )

    @classmethod
    def from_arrays(
        cls,
        label_logprobs: np.ndarray,
        hidden: np.ndarray | None = None,
        labels: Sequence[str] | None = None,
        token_features: np.ndarray | None = None,
        token_mask: np.ndarray | None = None,
    ) -> Scores:
        """Build scores from plain arrays (e.g. features computed elsewhere); no usage info.

        ``token_features`` is (n, N, d); ``token_mask`` (n, N) defaults to all True.
        """
        lp = np.asarray(label_logprobs, dtype=np.float32)
        if lp.ndim != 2:
            raise ValueError(f"label_logprobs must be 2-D (n, K), got shape {lp.shape}")
        n, k = lp.shape
        names = tuple(labels) if labels is not None else tuple(str(i) for i in range(k))
        h = None if hidden is None else np.asarray(hidden, dtype=np.float32)
        feats, mask = None, None
        if token_features is not None:
            feats = np.asarray(token_features, dtype=np.float16)
            shape = feats.shape[:2] if feats.ndim == 3 else (n, 0)
            mask = np.ones(shape, bool) if token_mask is None else np.asarray(token_mask, bool)
        return cls(
            lp,
            h,
            np.zeros(n, dtype=bool),
            np.zeros(n, dtype=np.int64),
            names,
            token_features=feats,
            token_mask=mask,
        )


def pad_token_features(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-answer token states of different lengths into one padded array.

    Parameters
    ----------
    rows : sequence of np.ndarray, each of shape (m_i, d)

    Returns
    -------
    token_features : np.ndarray, shape (n, N, d), float16
        ``N = max m_i``; row i holds its ``m_i`` states first, zeros after.
    token_mask : np.ndarray, shape (n, N), bool
    """
    width = max((len(r) for r in rows), default=0)
    d = rows[0].shape[1] if rows else 0
    feats = np.zeros((len(rows), width, d), np.float16)  # (n, N, d)
    mask = np.zeros((len(rows), width), bool)  # (n, N)
    for i, r in enumerate(rows):
        feats[i, : len(r)] = r
        mask[i, : len(r)] = True
    return feats, mask


def _check_tokens(feats: np.ndarray | None, mask: np.ndarray | None, n: int) -> None:
    if (feats is None) != (mask is None):
        raise ValueError("token_features and token_mask go together: give both or neither")
    if feats is None or mask is None:
        return
    if feats.ndim != 3 or feats.shape[0] != n:
        raise ValueError(f"token_features has shape {feats.shape}, expected ({n}, N, d)")
    if mask.shape != feats.shape[:2]:
        raise ValueError(f"token_mask has shape {mask.shape}, expected {feats.shape[:2]}")
