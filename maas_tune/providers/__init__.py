"""Model providers: the contract (:mod:`.base`), its implementations, and what talking to a
model needs: the HTTP session (:mod:`.session`), rate limits (:mod:`.ratelimit`), chat
formats (:mod:`.chat_format`), tokenizers and label-word checks (:mod:`.tokenizers`).
"""

from __future__ import annotations

from ..scores import ProviderAnswer
from .base import Provider
from .tokenizers import load_tokenizer

__all__ = ["Provider", "ProviderAnswer", "load_tokenizer"]
