"""Shared fixtures: the real Gemma 3 270M model is loaded once per test session; stores on
both backends (a throwaway PostgreSQL server is started once per session when needed);
loopback servers (maas-tune serve with the real model or the fake engine) and the strict
hosted-API simulator in front of them."""

from __future__ import annotations

import contextlib
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


#: The model name ``real_server`` serves.
REAL_MODEL = "gemma-3-270m"


@pytest.fixture(scope="session")
def real_server(gemma):
    """``maas-tune serve``'s app with the real model on 127.0.0.1, once per session.

    Yields its root URL (``http://127.0.0.1:PORT``; the API is under ``/v1``), serving
    :data:`REAL_MODEL` with the server's defaults (top log-probs up to 20, log-probs
    reported before ``logit_bias``, ``/extras/tokenize``, chat and embeddings).
    """
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import create_app
    from maas_tune.server.background import serve_in_thread
    from maas_tune.server.engine import Engine

    with serve_in_thread(create_app(Engine(gemma, REAL_MODEL), max_wait_ms=5)) as url:
        yield url


@pytest.fixture(scope="session")
def fake_server():
    """``maas-tune serve``'s app with the fake engine (:mod:`tests._fake_engine`) on
    127.0.0.1, once per session: every route in microseconds. Yields its root URL."""
    pytest.importorskip("fastapi", reason="needs the 'server' extra")
    from maas_tune.server import create_app
    from maas_tune.server.background import serve_in_thread

    from ._fake_engine import FakeEngine

    with serve_in_thread(create_app(FakeEngine(), max_wait_ms=1)) as url:
        yield url


@pytest.fixture()
def hosted_api(request):
    """Factory of strict hosted-API simulators (:mod:`tests._hosted_api`), stopped after the test.

    ``hosted_api(config=None, upstream=None)`` starts a :class:`~tests._hosted_api.HostedAPI`
    with ``config`` (a :class:`~tests._hosted_api.HostedConfig`) in front of ``upstream`` (a
    root or ``/v1`` URL; None: the session's ``fake_server``) and returns it.
    """
    pytest.importorskip("starlette", reason="needs the 'server' extra")
    from ._hosted_api import HostedAPI

    with contextlib.ExitStack() as stack:

        def make(config=None, upstream=None):
            if upstream is None:
                upstream = request.getfixturevalue("fake_server")
            return stack.enter_context(HostedAPI(upstream, config))

        yield make


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
