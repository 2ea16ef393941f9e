"""Shared fixtures: the real Gemma 3 270M model is loaded once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gemma():
    """The embedded default model, in process (converted once and cached in the user cache dir)."""
    pytest.importorskip("transformers", reason="needs the 'local' extra")
    from maas_tune.providers.local import TransformersProvider

    provider = TransformersProvider(batch_size=16)
    yield provider
    provider.close()


@pytest.fixture()
def db_path(tmp_path):
    """A fresh cache/budget database path (never the user's default store)."""
    return tmp_path / "store.sqlite"
