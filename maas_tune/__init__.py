"""maas-tune: adapt a hosted language model you can only reach through an inference API.

Render labelled examples through a :class:`Task`, score them once each through a
:class:`Provider` (answers kept in a :class:`ScoreCache`, spend capped by a
:class:`QueryBudget`), and train a small decoder such as :class:`DecT` locally.
"""

from __future__ import annotations

import importlib

from . import datasets
from ._version import __version__
from .budget import BudgetStatus, QueryBudget
from .cache import ScoreCache, cache_key
from .chat_format import ChatFormat
from .client import AsyncClient, Client
from .data import Dataset, Example, load_examples, sample_k_shot
from .decoders import (
    BaseDecoder,
    ContextualCalibration,
    DecT,
    LinearProbe,
    ScoreLogisticRegression,
    YTuning,
    ZeroShot,
    load_decoder,
    save_decoder,
)
from .errors import (
    BudgetExceeded,
    CacheError,
    ConfigurationError,
    DataError,
    MaasTuneError,
    NotFittedError,
    OfflineCacheMiss,
    ProviderError,
    SerializationError,
    TaskError,
)
from .providers.base import Provider, ProviderAnswer
from .scores import Scores
from .storage import Store
from .task import Task

#: Public names imported on first use (module relative to this package).
_LAZY = {
    "OpenAIChatProvider": ".providers.chat",
    "OpenAICompletionsProvider": ".providers.openai",
    "OpenAIEmbeddingsProvider": ".providers.embeddings",
    "TransformersProvider": ".providers.local",
    "WithEmbeddings": ".providers.with_embeddings",
}


def __getattr__(name: str) -> object:
    # Providers pull in transformers / httpx machinery: import them only when asked for.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'maas_tune' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "BaseDecoder",
    "BudgetExceeded",
    "BudgetStatus",
    "CacheError",
    "ChatFormat",
    "Client",
    "ConfigurationError",
    "ContextualCalibration",
    "DataError",
    "Dataset",
    "DecT",
    "Example",
    "LinearProbe",
    "MaasTuneError",
    "NotFittedError",
    "OfflineCacheMiss",
    "OpenAIChatProvider",
    "OpenAICompletionsProvider",
    "OpenAIEmbeddingsProvider",
    "Provider",
    "ProviderAnswer",
    "ProviderError",
    "QueryBudget",
    "ScoreCache",
    "ScoreLogisticRegression",
    "Scores",
    "SerializationError",
    "Store",
    "Task",
    "TaskError",
    "TransformersProvider",
    "WithEmbeddings",
    "YTuning",
    "ZeroShot",
    "__version__",
    "cache_key",
    "datasets",
    "load_decoder",
    "load_examples",
    "sample_k_shot",
    "save_decoder",
]
