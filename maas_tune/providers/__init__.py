"""Model providers: the contract (:mod:`.base`) and its implementations."""

from __future__ import annotations

from .base import Provider, ProviderAnswer

__all__ = ["Provider", "ProviderAnswer"]
