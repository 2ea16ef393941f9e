"""One provider as plain data: what to build (kind, URL, model, strategy, HTTP options), and
the one :meth:`ProviderSpec.build` that the CLI, Ray and the benchmark build it with.

A spec never holds a key: it names where the key is read (``api_key_env``, else
:data:`~maas_tune.providers.options.API_KEY_ENV`), in the process that builds the
provider. A spec that carries a credential anyway (``user:key@`` or ``?key=`` in the base
URL, a credential-like header, as the CLI may) shows the URL without it and refuses to be
pickled, so it never reaches Ray's object store or a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from .._constants import DEFAULT_MODEL_NAME, DEFAULT_TOP_LOGPROBS, LOCAL_BATCH_SIZE
from ..errors import ConfigurationError
from .base import Provider
from .http import public_url
from .options import API_KEY_ENV, HTTPOptions, Pairs
from .ratelimit import RateLimit, RateLimiter, as_limiter

__all__ = ["HTTP_KINDS", "KINDS", "HTTPOptions", "ProviderSpec", "pairs"]
#: Kinds of provider reached over HTTP: legacy completions or chat completions.
HTTP_KINDS = ("completions", "chat")
#: Every kind a spec builds: the model in process, or an OpenAI-compatible API.
KINDS = ("local", *HTTP_KINDS)


@dataclass(frozen=True)
class ProviderSpec:
    """A provider as plain, picklable data; :meth:`build` makes it.

    Attributes
    ----------
    kind : {"local", "completions", "chat"}
        The model in process, or an OpenAI-compatible API's ``/completions`` or
        ``/chat/completions``.
    base_url : str or None
        The API root (HTTP kinds; None reads ``$MAAS_TUNE_BASE_URL``, else
        ``$OPENAI_BASE_URL``).
    model : str or None
        The local model (None: the embedded default), or the model to ask the API for.
    strategy : str
        How label scores are read over HTTP (``auto`` probes the API, as an explicit step
        of the client: :meth:`~maas_tune.client.Client.prepare`).
    top_logprobs : int
        Top log-probs asked per request over HTTP.
    tokenizer : str or None
        The served model's tokenizer (:func:`~maas_tune.providers.load_tokenizer`'s spec).
    embeddings : bool
        Take hidden states from the API's ``/embeddings`` (one more query per sample), of
        ``embeddings_model`` (None: ``model``).
    token_features : int or None
        States of each prompt's last this-many tokens (local, or completions' extension).
    batch_size, device, dtype
        Where and how the local model runs (local only).
    http : HTTPOptions
        How requests are sent (HTTP kinds).
    """

    kind: str = "local"
    base_url: str | None = None
    model: str | None = None
    strategy: str = "auto"
    top_logprobs: int = DEFAULT_TOP_LOGPROBS
    tokenizer: str | None = None
    embeddings: bool = False
    embeddings_model: str | None = None
    token_features: int | None = None
    batch_size: int = LOCAL_BATCH_SIZE
    device: str | None = None
    dtype: str | None = None
    http: HTTPOptions = field(default_factory=HTTPOptions)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigurationError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "local" and (self.base_url or self.embeddings or self.tokenizer):
            raise ConfigurationError(
                "a local provider takes no base_url, embeddings or tokenizer (the model in "
                "process has its own); use kind='completions' or 'chat' for an API"
            )

    def __repr__(self) -> str:
        url = public_url(self.base_url) if self.base_url else None
        return (
            f"{type(self).__name__}(kind={self.kind!r}, base_url={url!r}, model={self.model!r}, "
            f"strategy={self.strategy!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        if self.carries_credentials():
            raise ConfigurationError(
                "this provider spec carries a credential (in the base URL or a header), which "
                "must not be pickled; pass the bare API root and put the key in the "
                f"environment ({' or '.join(API_KEY_ENV)}, or the variable named by "
                "api_key_env)"
            )
        return dict(self.__dict__)

    def carries_credentials(self) -> bool:
        """Whether the base URL or an HTTP option holds what may be a credential."""
        url = self.base_url
        return bool(url and public_url(url) != url.rstrip("/")) or self.http.carries_credentials()

    def build(self, rate_limit: RateLimit | RateLimiter | None = None) -> Provider:
        """The provider, with the key read from this process's environment.

        Nothing is sent: an ``auto`` strategy is chosen by the client's explicit
        :meth:`~maas_tune.client.Client.prepare` step (its probe charged to the budget).

        Parameters
        ----------
        rate_limit : RateLimit, RateLimiter or None
            Overrides ``http.rate_limit`` (e.g. Ray's shared limiter); the scorer and
            the embedder share one limiter.

        Raises
        ------
        ConfigurationError
            An option is invalid, or ``http.api_key_env`` is not set here.
        """
        if self.kind == "local":
            return self._local()
        limiter = as_limiter(rate_limit if rate_limit is not None else self.http.rate_limit)
        scorer = self._scorer(limiter)
        if not self.embeddings:
            return scorer
        from .embeddings import OpenAIEmbeddingsProvider
        from .with_embeddings import WithEmbeddings

        model = self.embeddings_model or self._api_model()
        embedder = OpenAIEmbeddingsProvider(self.base_url, model, **self.http.keywords(limiter))
        return WithEmbeddings(scorer, embedder)

    def _api_model(self) -> str:
        return cast(str, self.model)  # None: the provider refuses it, naming the option

    def _local(self) -> Provider:
        from .local import TransformersProvider

        options: dict[str, Any] = {
            "batch_size": self.batch_size,
            "token_features": self.token_features,
        }
        options.update({k: v for k, v in (("device", self.device), ("dtype", self.dtype)) if v})
        return TransformersProvider(self.model or DEFAULT_MODEL_NAME, **options)

    def _scorer(self, limiter: RateLimiter | None) -> Provider:
        options: dict[str, Any] = {
            "strategy": self.strategy,
            "top_logprobs": self.top_logprobs,
            **self.http.keywords(limiter),
        }
        if self.tokenizer:
            from .tokenizers import load_tokenizer

            options["tokenizer"] = load_tokenizer(self.tokenizer)
        if self.kind == "chat":
            from .chat import OpenAIChatProvider

            return OpenAIChatProvider(self.base_url, self._api_model(), **options)
        from .openai import OpenAICompletionsProvider

        return OpenAICompletionsProvider(
            self.base_url, self._api_model(), token_features=self.token_features, **options
        )


def pairs(mapping: Mapping[str, str] | None) -> Pairs:
    """``mapping`` as the ``(name, value)`` pairs an :class:`HTTPOptions` holds, in order."""
    return tuple((mapping or {}).items())
