"""maas-tune: adapt a hosted language model you can only reach through an inference API.

Render labelled examples through a :class:`Task`, score them once each through a
:class:`Provider` (answers kept in a :class:`ScoreCache`, spend capped by a
:class:`QueryBudget`), and train a small decoder such as :class:`DecT` locally.
"""

# No ``from __future__ import annotations`` here: it would bind ``maas_tune.annotations``
# (test_exported_members).
import typing as _typing

from . import datasets
from ._lazy import lazy_attributes as _lazy_attributes
from ._version import __version__
from .client import AsyncClient, Client
from .data import Dataset, Example, load_examples, sample_k_shot
from .decoders import __all__ as _DECODERS  # the names only: the package itself is lazy
from .errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExceeded,
    CacheError,
    ConfigurationError,
    ConflictError,
    DataError,
    InternalServerError,
    MaasTuneError,
    NotFittedError,
    NotFoundError,
    OfflineCacheMiss,
    PermissionDeniedError,
    ProviderError,
    ProviderStatusError,
    RateLimitError,
    SerializationError,
    TaskError,
    UnprocessableEntityError,
)
from .frames import as_examples
from .pricing import Price, price_for
from .providers.base import Provider
from .providers.chat_format import ChatFormat
from .providers.tokenizers import load_tokenizer
from .scores import ProviderAnswer, Scores
from .storage import Store
from .storage.budget import BudgetStatus, QueryBudget
from .storage.cache import ScoreCache, cache_key
from .task import Task

if _typing.TYPE_CHECKING:  # type checkers and IDEs see the lazy names as ordinary imports
    from .decoders import (
        BaseDecoder,
        ContextualCalibration,
        DecT,
        LinearProbe,
        ScoreLogisticRegression,
        YTuning,
        ZeroShot,
    )
    from .persistence import load_decoder, save_decoder
    from .providers.chat import OpenAIChatProvider
    from .providers.embeddings import OpenAIEmbeddingsProvider
    from .providers.local import TransformersProvider
    from .providers.openai import OpenAICompletionsProvider
    from .providers.with_embeddings import WithEmbeddings

#: Public names imported on first use (module relative to this package). The decoders
#: need torch (about 1.5 s to import), which the cache, the budget and the HTTP
#: providers do not: ``import maas_tune`` stays light until a decoder is asked for.
_LAZY = {
    **dict.fromkeys(_DECODERS, ".decoders"),  # every decoder class, as decoders lists them
    "load_decoder": ".persistence",
    "save_decoder": ".persistence",
    "OpenAIChatProvider": ".providers.chat",
    "OpenAICompletionsProvider": ".providers.openai",
    "OpenAIEmbeddingsProvider": ".providers.embeddings",
    "TransformersProvider": ".providers.local",
    "WithEmbeddings": ".providers.with_embeddings",
}


# PEP 562: decoders (torch) and providers (transformers) load only when asked for.
__getattr__, __dir__ = _lazy_attributes(globals(), _LAZY)


__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BaseDecoder",
    "BudgetExceeded",
    "BudgetStatus",
    "CacheError",
    "ChatFormat",
    "Client",
    "ConfigurationError",
    "ConflictError",
    "ContextualCalibration",
    "DataError",
    "Dataset",
    "DecT",
    "Example",
    "InternalServerError",
    "LinearProbe",
    "MaasTuneError",
    "NotFittedError",
    "NotFoundError",
    "OfflineCacheMiss",
    "OpenAIChatProvider",
    "OpenAICompletionsProvider",
    "OpenAIEmbeddingsProvider",
    "PermissionDeniedError",
    "Price",
    "Provider",
    "ProviderAnswer",
    "ProviderError",
    "ProviderStatusError",
    "QueryBudget",
    "RateLimitError",
    "ScoreCache",
    "ScoreLogisticRegression",
    "Scores",
    "SerializationError",
    "Store",
    "Task",
    "TaskError",
    "TransformersProvider",
    "UnprocessableEntityError",
    "WithEmbeddings",
    "YTuning",
    "ZeroShot",
    "__version__",
    "as_examples",
    "cache_key",
    "datasets",
    "load_decoder",
    "load_examples",
    "load_tokenizer",
    "price_for",
    "sample_k_shot",
    "save_decoder",
]
