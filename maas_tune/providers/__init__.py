"""Model providers: the contract (:mod:`.base`), its implementations, and the plain-data
:class:`~.spec.ProviderSpec` every caller builds one from."""

from __future__ import annotations

from .base import Provider, ProviderAnswer
from .spec import HTTPOptions, ProviderSpec
from .tokenizers import load_tokenizer

__all__ = ["HTTPOptions", "Provider", "ProviderAnswer", "ProviderSpec", "load_tokenizer"]
