"""The ``answers`` table's rows: an answer checked and packed into little-endian blobs,
and read back (a damaged row is a :class:`~maas_tune.errors.CacheCorruptionError`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CacheCorruptionError, ConfigurationError, ProviderResponseError
from ..scores import ProviderAnswer

__all__ = ["COLUMNS", "INSERT", "SELECT", "CachedAnswer", "decode_row", "encode_row"]

#: On-disk layout of logprobs and hidden states: little-endian float32, whatever the host.
BLOB_DTYPE = np.dtype("<f4")
#: Bytes per stored value.
_ITEM_BYTES = BLOB_DTYPE.itemsize
#: On-disk layout of token features: little-endian float16 (they are inputs to a decoder
#: that standardises them; half the bytes of float32 for ~3 significant digits).
TOKENS_DTYPE = np.dtype("<f2")
_HALF_BYTES = TOKENS_DTYPE.itemsize
#: How many characters of a key an error message shows.
_KEY_EXCERPT = 12

# The columns :func:`decode_row` reads, in its order.
COLUMNS = (
    "key, prompt_tokens, created, n_logprobs, n_hidden, logprobs, hidden, floored, n_tokens, tokens"
)
SELECT = f"SELECT {COLUMNS} FROM answers WHERE key IN "
INSERT = (
    "INSERT INTO answers "
    "(key, model, prompt_tokens, created, n_logprobs, n_hidden, logprobs, hidden, floored, "
    "n_tokens, tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
    "model = excluded.model, prompt_tokens = excluded.prompt_tokens, created = excluded.created, "
    "n_logprobs = excluded.n_logprobs, n_hidden = excluded.n_hidden, "
    "logprobs = excluded.logprobs, hidden = excluded.hidden, floored = excluded.floored, "
    "n_tokens = excluded.n_tokens, tokens = excluded.tokens"
)


@dataclass(frozen=True)
class CachedAnswer:
    """One stored answer.

    Attributes
    ----------
    logprobs : np.ndarray, shape (t,), float32
        Log-probabilities of the requested tokens (read-only when read from the cache).
    hidden : np.ndarray of shape (d,), float32, or None
        Hidden state at the prediction position, where the provider gave one.
    prompt_tokens : int
        Prompt tokens the query cost when it was sent.
    created : float
        Unix time at which the answer was first stored.
    floored : int, default 0
        Label words given the top-k bound rather than read exactly (see
        :class:`~maas_tune.providers.base.ProviderAnswer`).
    token_features : np.ndarray of shape (m, d), float16, or None
        States of the prompt's last m tokens, where they were asked for.
    """

    logprobs: np.ndarray
    hidden: np.ndarray | None
    prompt_tokens: int
    created: float
    floored: int = 0
    token_features: np.ndarray | None = None


def _malformed(key: str, problem: str) -> ProviderResponseError:
    return ProviderResponseError(
        f"the answer for cache key {key[:_KEY_EXCERPT]}… was not cached: {problem}; the provider "
        "returned a malformed answer, retry the request or report it"
    )


def _as_blob(values: Any, what: str, key: str, *, allow_neg_inf: bool) -> tuple[int, bytes]:
    """Validate one array and return (length, little-endian float32 bytes)."""
    try:
        array = np.asarray(values, dtype=BLOB_DTYPE)
    except (TypeError, ValueError) as exc:
        raise _malformed(key, f"its {what} is not numeric ({exc})") from exc
    bad = np.isnan(array) | np.isposinf(array)
    if not allow_neg_inf:
        bad |= np.isneginf(array)
    if array.ndim != 1:
        raise _malformed(key, f"its {what} has shape {array.shape}, not one dimension")
    if bad.any():
        kinds = "NaN or +inf" if allow_neg_inf else "NaN or infinite"
        raise _malformed(key, f"its {what} holds {int(bad.sum())} {kinds} values")
    return array.size, array.tobytes()


def encode_row(
    key: str, answer: ProviderAnswer | CachedAnswer, model: str, now: float
) -> tuple[Any, ...]:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(
            f"cache keys must be non-empty strings, got {key!r}; build them with cache_key()"
        )
    # -inf is a legitimate log-probability (a token the model rules out); +inf and NaN are not.
    n_logprobs, logprobs = _as_blob(answer.logprobs, "logprobs", key, allow_neg_inf=True)
    n_hidden, hidden = (None, None)
    if answer.hidden is not None:
        n_hidden, hidden = _as_blob(answer.hidden, "hidden state", key, allow_neg_inf=False)
    tokens = answer.prompt_tokens
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 0:
        raise _malformed(key, f"prompt_tokens is {tokens!r}, not a non-negative integer")
    created = answer.created if isinstance(answer, CachedAnswer) else now
    floored = int(getattr(answer, "floored", 0) or 0)
    if not 0 <= floored <= n_logprobs:
        raise _malformed(key, f"floored is {floored!r}, not a count of its {n_logprobs} words")
    n_tokens, token_blob = _token_blob(getattr(answer, "token_features", None), key)
    return (
        key,
        model,
        int(tokens),
        float(created),
        n_logprobs,
        n_hidden,
        logprobs,
        hidden,
        floored,
        n_tokens,
        token_blob,
    )


def _token_blob(feats: Any, key: str) -> tuple[int | None, bytes | None]:
    """(tokens, little-endian float16 bytes) of an (m, d) array of token states."""
    if feats is None:
        return None, None
    array = np.asarray(feats)
    if array.ndim != 2 or not array.shape[0] or not array.shape[1]:
        raise _malformed(key, f"its token features have shape {array.shape}, not (tokens, width)")
    if not np.isfinite(array).all():
        raise _malformed(key, "its token features hold NaN or infinite values")
    return array.shape[0], np.ascontiguousarray(array, dtype=TOKENS_DTYPE).tobytes()


def _floats(blob: bytes) -> np.ndarray:
    # A read-only view of the row's bytes on little-endian hosts; a native copy elsewhere.
    return np.frombuffer(blob, BLOB_DTYPE).astype(np.float32, copy=False)


def decode_row(location: str, row: tuple[Any, ...]) -> CachedAnswer:
    key, prompt_tokens, created, n_logprobs, n_hidden, logprobs, hidden, floored = row[:8]
    n_tokens, tokens = row[8:10]
    if (
        len(logprobs) != n_logprobs * _ITEM_BYTES
        or (hidden is not None and (n_hidden is None or len(hidden) != n_hidden * _ITEM_BYTES))
        or (tokens is not None and (not n_tokens or len(tokens) % (n_tokens * _HALF_BYTES)))
    ):
        raise CacheCorruptionError(
            f"{location} is damaged: the entry {key[:_KEY_EXCERPT]}… has blobs of the wrong length; "
            "run `maas-tune cache clear` or delete the file (answers are fetched again)"
        )
    return CachedAnswer(
        logprobs=_floats(bytes(logprobs)),
        hidden=None if hidden is None else _floats(bytes(hidden)),
        prompt_tokens=prompt_tokens,
        created=created,
        floored=int(floored or 0),
        token_features=None if tokens is None else _halves(bytes(tokens), n_tokens),
    )


def _halves(blob: bytes, n_tokens: int) -> np.ndarray:
    """The (m, d) float16 token states of a blob (a read-only view on little-endian hosts)."""
    return np.frombuffer(blob, TOKENS_DTYPE).astype(np.float16, copy=False).reshape(n_tokens, -1)
