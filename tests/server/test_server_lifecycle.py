"""Server lifecycle: 503 while the model loads, body size limit, graceful shutdown under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="needs the 'server' extra")
uvicorn = pytest.importorskip("uvicorn", reason="needs the 'server' extra")
httpx = pytest.importorskip("httpx")

from .._servers import free_port, serve_in_thread, wait_until_up

MODEL = "gemma-3-270m"
PROMPT = "Review: a wonderful, moving film.\nSentiment:"
#: Long enough for any busy machine; a test that waits this long has failed.
GUARD_S = 60.0


def _extension_body(label_ids):
    return {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": 0,
        "maas_tune": {"label_token_ids": label_ids, "return_hidden": False},
    }


@pytest.mark.model
def test_routes_answer_503_while_the_model_loads_then_serve(gemma):
    from maas_tune.server import create_app
    from maas_tune.server.engine import Engine

    release = threading.Event()

    def load():
        assert release.wait(30)
        return Engine(gemma, MODEL)

    label_ids = gemma.label_token_ids(["positive", "negative"])
    with serve_in_thread(create_app(load)) as url:
        health = httpx.get(f"{url}/health")
        assert (health.status_code, health.json()) == (503, {"status": "loading"})
        busy = httpx.post(f"{url}/v1/completions", json=_extension_body(label_ids))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert busy.json()["error"]["code"] == "model_loading"
        release.set()
        wait_until_up(f"{url}/health", timeout=30)
        done = httpx.post(f"{url}/v1/completions", json=_extension_body(label_ids))
        assert done.status_code == 200
        assert len(done.json()["choices"][0]["maas_tune"]["label_logprobs"]) == 2


def test_a_failed_load_is_reported_and_handed_to_the_callback():
    from maas_tune.errors import ConfigurationError
    from maas_tune.server import create_app

    failures = []

    def load():
        raise ConfigurationError("no such model")

    with serve_in_thread(create_app(load, on_load_failure=failures.append)) as url:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/health").json() == {"status": "error"}
        models = httpx.get(f"{url}/v1/models")
        assert models.status_code == 503
        assert models.json()["error"]["code"] == "model_load_failed"
    assert [str(e) for e in failures] == ["no such model"]


def test_bodies_over_the_limit_get_413_declared_or_streamed():
    from maas_tune.server import create_app

    with serve_in_thread(create_app(lambda: None, max_body_bytes=1000)) as url:  # type: ignore[arg-type]
        big = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x" * 2000})
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        assert "1000 bytes" in big.json()["error"]["message"]

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(20):
                yield b" " * 100

        streamed = httpx.post(
            f"{url}/v1/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "request_too_large"
        small = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"})
        assert small.status_code == 503  # under the limit: reaches the (never loaded) model


def _wait_until_refused(port: int) -> None:
    """Wait until the server on ``port`` stops taking connections (it is shutting down)."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=GUARD_S)
        except httpx.TransportError:
            return
        time.sleep(0.01)
    pytest.fail(f"the server still took connections {GUARD_S:.0f} s after it was told to exit")


@pytest.mark.model
def test_shutdown_lets_in_flight_requests_finish(gemma):
    from maas_tune.server import create_app
    from maas_tune.server.engine import Engine

    label_ids = gemma.label_token_ids(["positive", "negative"])
    engine, gate = Engine(gemma, MODEL), threading.Event()
    score = engine.score

    def held(*args):  # the model answers once the server is shutting down
        assert gate.wait(GUARD_S)
        return score(*args)

    # Held, the eight wait however spread out they arrive: with a timed batch alone, those
    # later than its 1.5 s wait (a busy machine) were answered before the test looked.
    engine.score = held  # type: ignore[method-assign]
    app = create_app(engine, max_batch_size=64, max_wait_ms=1500)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until_up(f"http://127.0.0.1:{port}/health", timeout=30)
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(
                httpx.post,
                f"http://127.0.0.1:{port}/v1/completions",
                json=_extension_body(label_ids),
                timeout=60,
            )
            for _ in range(8)
        ]
        try:
            deadline = time.monotonic() + GUARD_S
            while app.state.batcher.pending < 8:  # all eight wait in the batcher
                assert time.monotonic() < deadline, "requests did not reach the batcher"
                time.sleep(0.01)
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            _wait_until_refused(port)
        finally:
            gate.set()
        statuses = [f.result().status_code for f in futures]
    thread.join(timeout=30)
    assert statuses == [200] * 8
    assert not thread.is_alive()


#: ``maas-tune serve`` (argv[2:]), touching argv[1] as a request reaches the batcher.
_SERVE_AND_SAY = """
import sys
from pathlib import Path
from maas_tune.cli import main
from maas_tune.server.batching import ScoreBatcher

submit = ScoreBatcher.submit

async def said(self, *args, **kwargs):
    Path(sys.argv[1]).touch()
    return await submit(self, *args, **kwargs)

ScoreBatcher.submit = said
raise SystemExit(main(sys.argv[2:]))
"""


def _wait_for(path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + GUARD_S
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no request reached the batcher"
        time.sleep(0.01)


@pytest.mark.model
def test_sigterm_stops_maas_tune_serve_cleanly_with_a_request_in_flight(gemma, tmp_path):
    label_ids = gemma.label_token_ids(["positive", "negative"])
    port, arrived = free_port(), tmp_path / "arrived"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVE_AND_SAY,
            str(arrived),
            "serve",
            "--port",
            str(port),
            "--max-wait-ms",
            "2000",
            "--max-batch-size",
            "64",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"http://127.0.0.1:{port}/v1/completions",
                json=_extension_body(label_ids),
                timeout=60,
            )
            # The request now waits up to 2 s in the batcher (a fixed 0.8 s sleep here let
            # the SIGTERM land first on a busy machine: the request was refused).
            _wait_for(arrived, proc)
            os.kill(proc.pid, signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200
        # uvicorn re-raises the signal once shut down, as servers conventionally do.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Finished server process" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_binding_beyond_loopback_without_a_key_warns(caplog):
    from maas_tune.server import warn_if_exposed

    assert not warn_if_exposed("127.0.0.1", None)
    assert not warn_if_exposed("0.0.0.0", "key")
    assert warn_if_exposed("0.0.0.0", None)
    assert "without an API key" in caplog.text
