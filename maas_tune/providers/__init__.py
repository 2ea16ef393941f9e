"""Model providers: the contract (:mod:`.base`) and its implementations."""

from __future__ import annotations

from ..scores import ProviderAnswer
from .base import Provider
from .tokenizers import load_tokenizer

__all__ = ["Provider", "ProviderAnswer", "load_tokenizer"]
