"""A deterministic in-memory provider for unit tests of the client (no model needed)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from maas_tune.errors import ProviderError
from maas_tune.providers.base import Provider
from maas_tune.scores import ProviderAnswer


class FakeProvider(Provider):
    """Answers pseudo-random but deterministic logprobs; counts every prompt it is sent."""

    returns_hidden = True

    def __init__(
        self, dim: int = 8, fail_after: int | None = None, token_features: int | None = None
    ) -> None:
        self.dim = dim
        self.fail_after = fail_after
        self.token_features = token_features
        self.sent: list[str] = []
        self._lock = threading.Lock()

    def fingerprint(self) -> dict[str, Any]:
        found: dict[str, Any] = {"provider": "fake", "model": "fake-model", "dim": self.dim}
        if self.token_features:
            found["token_features"] = self.token_features
        return found

    def label_token_ids(self, words: Sequence[str]) -> list[int]:
        return [int(hashlib.sha256(w.encode()).hexdigest()[:6], 16) for w in words]

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        return [len(p.split()) + 1 for p in prompts]

    def score(self, prompts: Sequence[str], labels: Sequence[str]) -> list[ProviderAnswer]:
        with self._lock:
            if self.fail_after is not None and len(self.sent) + len(prompts) > self.fail_after:
                raise ProviderError("fake provider: scripted failure")
            self.sent.extend(prompts)
        out = []
        for p, n in zip(prompts, self.count_tokens(prompts)):
            seed = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            lp = -rng.uniform(0.1, 8.0, size=len(labels)).astype(np.float32)
            h = rng.normal(size=self.dim).astype(np.float32)
            tokens = None
            if self.token_features:  # the last row is the prediction position's state
                rows = rng.normal(size=(min(n, self.token_features) - 1, self.dim))
                tokens = np.vstack([rows, h[None]]).astype(np.float16)
            out.append(
                ProviderAnswer(logprobs=lp, hidden=h, prompt_tokens=n, token_features=tokens)
            )
        return out
