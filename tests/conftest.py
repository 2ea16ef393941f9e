"""Shared fixtures: the real Gemma 3 270M model is loaded once per test session; stores on
both backends (a throwaway PostgreSQL server is started once per session when needed)."""

from __future__ import annotations

import os

import pytest

from ._postgres import ENV_REQUIRE, PostgresServer

#: The backends storage tests run on, through the same test cases.
BACKENDS = ["sqlite", "postgres"]


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


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on 127.0.0.1 for the session; skipped if PostgreSQL or psycopg is
    missing, unless ``MAAS_TUNE_REQUIRE_POSTGRES=1`` (then the test fails)."""
    required = os.environ.get(ENV_REQUIRE, "").strip() == "1"
    try:
        import psycopg  # noqa: F401

        server = PostgresServer().start()
    except (ImportError, FileNotFoundError) as exc:
        if required:
            pytest.fail(f"{ENV_REQUIRE}=1 but PostgreSQL cannot be used: {exc}")
        pytest.skip(
            f"PostgreSQL backend not tested: {exc} (install the 'postgres' extra and "
            f"Debian's postgresql package; {ENV_REQUIRE}=1 makes this a failure)"
        )
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> str:
    """A URL of a fresh, empty store: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "store.sqlite").lstrip("/")
    return request.getfixturevalue("postgres_server").create_database()
