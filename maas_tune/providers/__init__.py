"""Model providers: the contract (:mod:`.base`), its implementations, the plain-data
:class:`~.spec.ProviderSpec` every caller builds one from, and what talking to a model
needs: the HTTP session (:mod:`.session`), rate limits (:mod:`.ratelimit`), chat formats
(:mod:`.chat_format`), tokenizers and label-word checks (:mod:`.tokenizers`).
"""

from __future__ import annotations

from ..scores import ProviderAnswer
from .base import Provider
from .options import HTTPOptions
from .spec import ProviderSpec
from .tokenizers import load_tokenizer

__all__ = ["HTTPOptions", "Provider", "ProviderAnswer", "ProviderSpec", "load_tokenizer"]
