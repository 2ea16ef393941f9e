"""Hidden states from an OpenAI-style ``/embeddings`` API."""

from __future__ import annotations

import base64
import binascii
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import numpy as np

from .._constants import MAX_RETRIES
from ..errors import ConfigurationError, ProviderResponseError
from ._script import Script
from .http import public_url
from .options import DEFAULT_TIMEOUT_S, HTTPOptions
from .ratelimit import RateLimit, RateLimiter
from .session import CHARS_PER_TOKEN_ESTIMATE, APISession

if TYPE_CHECKING:
    from typing_extensions import Self


__all__ = ["OpenAIEmbeddingsProvider"]

#: Default number of inputs sent in one ``/embeddings`` request.
DEFAULT_EMBEDDINGS_BATCH_SIZE = 16
#: Encodings an ``/embeddings`` reply may be asked for.
ENCODING_FORMATS = ("float", "base64")


class OpenAIEmbeddingsProvider:
    """Embed texts through an OpenAI-compatible ``/embeddings`` API.

    Parameters
    ----------
    base_url : str or None
        None reads ``$MAAS_TUNE_BASE_URL``, else ``$OPENAI_BASE_URL`` (as openai-python
        does). API root including the version, e.g. ``"http://127.0.0.1:8000/v1"``; requests go
        to ``{base_url}/embeddings``.
    model : str
        Embedding model name sent with every request.
    api_key : str, optional
        Sent as ``Authorization: Bearer``; defaults to ``$MAAS_TUNE_API_KEY`` or
        ``$OPENAI_API_KEY``. Never appears in the fingerprint, repr, logs or errors.
    encoding_format : {"float", "base64"}, default "float"
        Asked of the server; replies in either encoding are accepted whatever was asked.
    batch_size : int, default 16
        Inputs per request.
    max_concurrency : int or None, default None
        Requests in flight at most (all chunks together). None: 4, or 256 with a
        ``rate_limit`` (the limiter paces requests, so ``rate x latency`` are in flight).
        Requests in flight at once.
    timeout : float, default 30.0
        Per-request timeout in seconds.
    max_retries : int, default 4
        Retries of a failed request (connect errors, timeouts, 408/409/429/5xx), with
        the completions provider's policy (``Retry-After`` honoured).
    transport : httpx.BaseTransport, optional
        Replaces the network (tests inject ``httpx.MockTransport``).
    sleep : callable, default time.sleep
        Called with each retry delay in seconds.
    rate_limit : RateLimit, RateLimiter or None, default None
        Client-side requests/tokens-per-minute limit, waited for before each request
        (see :class:`~maas_tune.providers.session.APISession`); share one among
        processes with :func:`maas_tune.ray.shared_rate_limiter`.
    default_headers : Mapping[str, str], optional
        Headers sent with every request (openai-python's ``default_headers``): Azure's
        ``api-key``, OpenRouter's ``HTTP-Referer``, ``OpenAI-Organization``. Values of
        credential-like names are masked in logs; not part of the cache identity.
    default_query : Mapping[str, str], optional
        Query parameters added to every request (openai-python's ``default_query``),
        e.g. Azure's ``{"api-version": "2024-10-21"}``; not part of the cache identity.

    Notes
    -----
    Every reply is checked before it is used: one vector per input, indices a
    permutation of the inputs (vectors are put back in input order), finite values,
    and one dimension across all replies of this provider.
    """

    def __init__(
        self,
        base_url: str | None,
        model: str,
        *,
        api_key: str | None = None,
        encoding_format: str = "float",
        batch_size: int = DEFAULT_EMBEDDINGS_BATCH_SIZE,
        max_concurrency: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rate_limit: RateLimit | RateLimiter | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, str] | None = None,
    ) -> None:
        base_url, http = HTTPOptions.for_api(
            base_url, model, timeout, max_retries, rate_limit, max_concurrency,
            default_headers, default_query,
        )  # fmt: skip
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if encoding_format not in ENCODING_FORMATS:
            raise ConfigurationError(
                f"encoding_format must be one of {list(ENCODING_FORMATS)}, got {encoding_format!r}"
            )
        self.base_url = public_url(base_url)  # shown and kept in the cache: no credentials
        self.model = model
        self.encoding_format = encoding_format
        self.batch_size = batch_size
        self.max_concurrency = int(http.max_concurrency or 0)
        self._dim: int | None = None  # learnt from the first reply; later replies must match
        self._lock = threading.Lock()
        self._session = APISession(
            base_url, api_key=api_key, http=http, transport=transport, sleep=sleep
        )

    def __repr__(self) -> str:
        return f"OpenAIEmbeddingsProvider(base_url={self.base_url!r}, model={self.model!r})"

    def fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable identity (kind, endpoint, model); never contains credentials."""
        return {"provider": "openai-embeddings", "origin": self.base_url, "model": self.model}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embedding of each text.

        Parameters
        ----------
        texts : sequence of str, length n

        Returns
        -------
        np.ndarray, shape (n, d), float32
            In the order of ``texts``.

        Raises
        ------
        ProviderResponseError
            A reply is malformed, names another model, has the wrong number of
            vectors, repeats or skips an index, holds a non-finite value, or changes
            the dimension.
        ProviderError
            The request failed (see :func:`~maas_tune.providers.http.request_json`).
        """
        return self.embed_with_usage(texts)[0]

    def embed_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and the prompt tokens each input was billed.

        Returns
        -------
        vectors : np.ndarray, shape (n, d), float32
        prompt_tokens : np.ndarray, shape (n,), int64
            A request's ``usage.prompt_tokens`` shared out over its inputs in
            proportion to their length (exact for one input per request); estimated
            as ``len(text) // 3 + 1`` where the server reports no usage.

        Raises
        ------
        ProviderError
            As :meth:`embed`; ``request_sent`` is True once any request was answered.
        """
        texts = list(texts)
        if not texts:
            return self._joined([])
        # The session refuses a reply naming another model and marks a failure as paid
        # for once any request of this call was answered.
        return self._joined(
            self._session.map(self._script, self._batches(texts), "embeddings", model=self.model)
        )

    async def aembed_with_usage(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed_with_usage` for an event loop (the requests overlap the caller's)."""
        texts = list(texts)
        if not texts:
            return self._joined([])
        return self._joined(
            await self._session.amap(
                self._script, self._batches(texts), "embeddings", model=self.model
            )
        )

    def _batches(self, texts: list[str]) -> list[list[str]]:
        return [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    def _joined(
        self, parts: Sequence[tuple[np.ndarray, list[int]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The requests' vectors (n, d) and per-input prompt tokens (n,), in input order."""
        if not parts:
            return np.zeros((0, self._dim or 0), np.float32), np.zeros(0, np.int64)
        vectors = np.concatenate([v for v, _ in parts])  # (n, d)
        tokens = np.asarray([t for _, ts in parts for t in ts], dtype=np.int64)  # (n,)
        return vectors, tokens

    def _script(self, batch: list[str]) -> Script[tuple[np.ndarray, list[int]]]:
        """One request of inputs: its vectors and each input's prompt tokens."""
        return self._parse((yield self._payload(batch)), batch)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------
    def _payload(self, batch: list[str]) -> dict[str, Any]:
        return {"model": self.model, "input": batch, "encoding_format": self.encoding_format}

    def _parse(self, body: dict[str, Any], batch: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors in input order, shape (b, d), and each input's prompt tokens."""
        data = body.get("data")
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            _fail(f"the reply has no list of embedding objects under 'data' (got {_kind(data)})")
        if len(data) != len(batch):
            _fail(f"the reply holds {len(data)} embeddings for {len(batch)} inputs")
        order = [item.get("index", i) for i, item in enumerate(data)]  # OpenAI sends indices
        by_index = {i: item for i, item in zip(order, data) if type(i) is int}
        if sorted(by_index) != list(range(len(batch))):
            _fail(f"the reply's indices {order} are not each of 0..{len(batch) - 1} exactly once")
        rows = [_vector(by_index[i].get("embedding"), i) for i in range(len(batch))]
        dims = {row.size for row in rows}
        with self._lock:
            expected = self._dim if self._dim is not None else rows[0].size
            if dims != {expected}:
                _fail(
                    f"the reply's embeddings have dimension(s) {sorted(dims)}, expected {expected} "
                    "(one model must answer every request)"
                )
            self._dim = expected
        return np.stack(rows), _share_usage(body.get("usage"), batch)


def _fail(problem: str) -> NoReturn:
    err = ProviderResponseError(
        f"POST /embeddings: {problem}; check that the base URL and model point at an "
        "OpenAI-compatible embeddings API"
    )
    err.request_sent = True  # a 2xx reply: the provider did (and billed) the work
    raise err


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a JSON {type(value).__name__}"


def _vector(value: object, index: int) -> np.ndarray:
    """One embedding, shape (d,), from a list of numbers or base64 of float32 LE."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            _fail(f"embedding {index} is a string but not valid base64 ({exc})")
        if len(raw) % 4:
            _fail(f"embedding {index} has {len(raw)} bytes, not a whole number of float32 values")
        row = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif isinstance(value, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        try:
            row = np.asarray(value, dtype=np.float64)
        except OverflowError:  # an integer beyond any float
            row = np.full(1, np.inf)
    else:
        _fail(f"embedding {index} is {_kind(value)}, not a list of numbers or a base64 string")
    if row.size == 0:
        _fail(f"embedding {index} is empty")
    # Checked in float64, so that a value beyond float32's range is refused, not made inf.
    if not (np.isfinite(row).all() and np.abs(row).max() <= np.finfo(np.float32).max):
        _fail(f"embedding {index} holds non-finite values (NaN, infinity or beyond float32)")
    return row.astype(np.float32)  # (d,)


def _share_usage(usage: object, batch: list[str]) -> list[int]:
    """Split a request's ``usage.prompt_tokens`` over its inputs (largest remainder)."""
    total = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        return [len(t) // CHARS_PER_TOKEN_ESTIMATE + 1 for t in batch]
    weights = [len(t) + 1 for t in batch]
    exact = [total * w / sum(weights) for w in weights]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(batch)), key=lambda i: shares[i] - exact[i])
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares
