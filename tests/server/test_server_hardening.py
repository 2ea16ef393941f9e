"""Server hardening: ``maas-tune serve`` under hostile or careless clients.

The spec, one test each (a cheap fake engine, so floods and fuzzing take seconds):

- it binds 127.0.0.1 by default (warning when bound wider without a key:
  ``test_server_lifecycle.py::test_binding_beyond_loopback_without_a_key_warns``);
- the API key is compared in constant time, and never echoed;
- request bodies and prompts have limits (bodies: ``test_server_lifecycle.py::
  test_bodies_over_the_limit_get_413_declared_or_streamed``), checked before any work;
- a flood of concurrent requests gets 429s with ``Retry-After``, never a crash, and
  the memory it can hold is bounded by the queue;
- a client that hangs up mid-request does not break the batch for the others;
- schemathesis, fuzzing every route of the server's own OpenAPI schema, finds no 5xx.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the 'server' extra")
pytest.importorskip("uvicorn", reason="needs the 'server' extra")
httpx = pytest.importorskip("httpx")

from maas_tune.cli import build_parser
from maas_tune.server import _middleware as middleware
from maas_tune.server import create_app, run

from .._fake_engine import MODEL, FakeEngine, expected_logprobs
from .._figures import report
from .._servers import serve_in_thread

KEY = "sk-hardening-0123456789"
LABEL_IDS = [11, 22]
#: Examples schemathesis generates against the fake engine (all routes, positive and negative).
FUZZ_EXAMPLES = 300
#: ... and against the real model (scoring routes only; generation is capped at a few tokens).
FUZZ_EXAMPLES_REAL = 15


def extension(prompt: str | list[str], ids: list[int] = LABEL_IDS) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 0,
        "maas_tune": {"label_token_ids": ids, "return_hidden": False},
    }


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def url(engine: FakeEngine) -> Iterator[str]:
    with serve_in_thread(create_app(engine)) as running:
        yield running


# -- binding and the key ------------------------------------------------------------
def test_serve_binds_loopback_by_default() -> None:
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert inspect.signature(run).parameters["host"].default == "127.0.0.1"


def test_the_api_key_is_compared_in_constant_time_and_never_echoed(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = middleware.hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    wrong = [
        "",
        "Bearer",
        f"Bearer {KEY[:-1]}",
        f"Bearer {KEY}x",
        f"bearer {KEY}",
        f"Bearer {KEY[:-1]}X",
        f"Basic {KEY}",
    ]
    with serve_in_thread(create_app(engine, api_key=KEY)) as url:
        for header in wrong:
            denied = httpx.get(f"{url}/v1/models", headers={"Authorization": header})
            assert denied.status_code == 401, header
            assert denied.json()["error"]["code"] == "invalid_api_key"
            assert KEY not in denied.text and KEY[:-1] not in denied.text
        good = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # liveness needs no key
    # every check went through hmac.compare_digest, against the one expected value
    assert [given.decode() for given, _ in compared] == [*wrong, f"Bearer {KEY}"]
    assert {expected for _, expected in compared} == {f"Bearer {KEY}".encode()}


# -- limits ---------------------------------------------------------------------------
def test_prompts_past_the_context_are_refused_before_any_work(url: str, engine: FakeEngine) -> None:
    long_prompt = " word" * engine.context_length  # + BOS: one token too many
    batch = httpx.post(f"{url}/v1/completions", json=extension(["short", "fine", long_prompt]))
    assert batch.status_code == 400
    error = batch.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    assert f"context of {engine.context_length} tokens; shorten the prompt" in error["message"]
    generate = httpx.post(
        f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 10**9}
    )
    assert generate.json()["error"]["code"] == "context_length_exceeded"
    embed = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": [long_prompt]})
    assert embed.json()["error"]["code"] == "context_length_exceeded"
    assert engine.passes == []  # not even the short prompts were scored


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"logit_bias": {"\u00b2": 5}}, "logit_bias"),  # '²'.isdigit(), but int('²') fails
        ({"logit_bias": {"1" * 5000: 5}}, "logit_bias"),  # past int()'s digit limit
        ({"logit_bias": {"12": float("inf")}}, "logit_bias"),  # Infinity: Python reads it
        ({"seed": 2**70}, "seed"),  # past what a torch generator takes
        ({"seed": -(2**70)}, "seed"),
        ({"maas_tune": {"label_token_ids": [10**30]}}, "maas_tune.label_token_ids"),
        ({"prompt": []}, "prompt"),
        ({"max_tokens": -1}, "max_tokens"),
    ],
)
def test_hostile_values_get_a_400_that_names_the_field(
    url: str, change: dict[str, Any], param: str | None
) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1, **change}
    content = json.dumps(body, allow_nan=True).encode()
    response = httpx.post(
        f"{url}/v1/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param or (param is None and "not valid JSON" in error["message"])


# -- floods and hang-ups ----------------------------------------------------------------
async def _flood(
    url: str, bodies: list[dict[str, Any]], refused: threading.Event
) -> list[httpx.Response]:
    """Send ``bodies`` at once; set ``refused`` as the first 429 comes back."""
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def post(body: dict[str, Any]) -> httpx.Response:
            response = await client.post(f"{url}/v1/completions", json=body)
            if response.status_code == 429:
                refused.set()
            return response

        return list(await asyncio.gather(*(post(body) for body in bodies)))


def _held(engine: FakeEngine, until: threading.Event, late: list[str]) -> None:
    """Make ``engine`` score and generate nothing before ``until`` is set (a minute at
    most: then each call that waited in vain is noted in ``late``)."""
    for name in ("score", "complete"):
        run = getattr(engine, name)

        def held(*args: Any, run: Any = run, name: str = name) -> Any:
            if not until.wait(60):
                late.append(name)
            return run(*args)

        setattr(engine, name, held)


@pytest.mark.parametrize("kind", ["scoring", "generation"])
def test_a_flood_gets_429s_not_a_crash_and_memory_stays_bounded(kind: str) -> None:
    n_requests, max_queue = 300, 24
    # The model answers nothing until the server has refused a request, so the flood
    # outruns it however slowly a busy machine sends (eight prompts a 0.05 s pass kept up
    # with a slow enough sender: nothing was refused). Held generations once took every
    # thread of asyncio's default executor, and the requests behind them, waiting for one
    # to tokenize, reached neither the model nor the queue bound: nothing was refused.
    engine, refused, late = FakeEngine(delay_s=0.05), threading.Event(), []
    _held(engine, refused, late)
    app = create_app(engine, max_batch_size=8, max_wait_ms=1, max_queue=max_queue)
    if kind == "scoring":
        bodies = [extension(f"flood {i}") for i in range(n_requests)]
    else:
        bodies = [
            {"model": MODEL, "prompt": f"flood {i}", "max_tokens": 2} for i in range(n_requests)
        ]
    batcher, peak, stop = app.state.batcher, [0], threading.Event()

    def watch() -> None:  # the prompts the server holds, waiting for the model
        while not stop.is_set():
            peak[0] = max(peak[0], batcher.queued, batcher.generating)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    with serve_in_thread(app) as url:
        watcher.start()
        try:
            responses = asyncio.run(_flood(url, bodies, refused))
        finally:
            refused.set()
            stop.set()
            watcher.join()
        after = httpx.post(f"{url}/v1/completions", json=bodies[0])
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    statuses = Counter(r.status_code for r in responses)
    assert not late, "the held model was let go by its one-minute guard, not by a 429"
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0 and statuses[200] > 0, statuses
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200
    assert 0 < peak[0] <= max_queue, peak[0]
    report(
        f"flood_{kind}_429",
        statuses[429],
        requests=n_requests,
        ok=statuses[200],
        peak_waiting=peak[0],
        max_queue=max_queue,
    )


def test_a_request_past_the_queue_is_refused_while_admitted_generations_wait() -> None:
    # More admitted generations than asyncio's default executor has threads (at most 32):
    # they once took them all, and the next request waited for a thread to be tokenized
    # in, until a generation ended, instead of getting its 429.
    max_queue = 40
    engine, gate, late = FakeEngine(), threading.Event(), []
    _held(engine, gate, late)
    app = create_app(engine, max_queue=max_queue)
    body = {"model": MODEL, "prompt": "held", "max_tokens": 1}
    with serve_in_thread(app) as url, ThreadPoolExecutor(max_queue) as pool:
        try:
            admitted = [
                pool.submit(httpx.post, f"{url}/v1/completions", json=body, timeout=120)
                for _ in range(max_queue)
            ]
            deadline = time.monotonic() + 60
            while app.state.batcher.generating < max_queue:
                assert time.monotonic() < deadline, "the requests were not admitted"
                time.sleep(0.01)
            extra = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        finally:
            gate.set()
        statuses = [f.result().status_code for f in admitted]
    assert extra.status_code == 429, extra.text
    assert statuses == [200] * max_queue and not late


def test_a_client_that_hangs_up_does_not_break_the_batch_for_others() -> None:
    engine = FakeEngine(delay_s=0.3)
    app = create_app(engine, max_batch_size=16, max_wait_ms=1000)  # all eight in one batch
    prompts = [f"Review: film {i} was fine. Sentiment:" for i in range(8)]
    with serve_in_thread(app) as url, httpx.Client(limits=httpx.Limits(max_connections=16)) as http:

        def post(prompt: str, timeout: float) -> httpx.Response:
            return http.post(f"{url}/v1/completions", json=extension(prompt), timeout=timeout)

        with ThreadPoolExecutor(len(prompts)) as pool:
            quitters = [pool.submit(post, p, 0.1) for p in prompts[:3]]  # gone mid-batch
            stayers = [pool.submit(post, p, 30) for p in prompts[3:]]
            _hang_up_mid_body(url)
            for future in quitters:
                with pytest.raises(httpx.TimeoutException):
                    future.result()
            answers = [future.result() for future in stayers]
        after = post("one more", 30)
    for prompt, answer in zip(prompts[3:], answers):
        assert answer.status_code == 200, answer.text
        got = answer.json()["choices"][0]["maas_tune"]["label_logprobs"]
        np.testing.assert_allclose(got, expected_logprobs(prompt, LABEL_IDS), rtol=1e-6)
    assert after.status_code == 200
    assert sum(engine.passes) >= len(prompts) - 3 and max(engine.passes) > 1  # batched


def _hang_up_mid_body(url: str) -> None:
    """Promise a 1000-byte body, send 10 bytes of it, and close the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"model": '
        )


# -- fuzzing ---------------------------------------------------------------------------
def _fuzz(
    url: str,
    max_examples: int,
    *,
    operations: tuple[str, ...] | None = None,
    cap_generation: bool = False,
) -> Counter[int]:
    """Run schemathesis against the server's own /openapi.json; return the status counts."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())
    if operations is not None:
        schema = schema.include(path=list(operations))
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    @given(case=schema.as_strategy())
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        if isinstance(case.body, dict):
            # Most bodies name the served model, or nearly all would stop at a 404.
            if isinstance(case.body.get("model"), str) and sum(statuses.values()) % 4:
                case.body["model"] = MODEL
            if cap_generation:
                _cap(case.body)
        response = case.call(base_url=url, timeout=60)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.path} {case.body!r} -> "
                f"{response.status_code} {response.text[:200]}"
            )

    fuzz()
    assert failures == [], "\n".join(failures[:10])
    return statuses


def _cap(body: dict[str, Any]) -> None:
    """Keep one real-model request to a few short forward passes (CPU time, not coverage)."""
    if "prompt" in body and (
        body.get("max_tokens") is None
        or (isinstance(body["max_tokens"], int) and body["max_tokens"] > 2)
    ):
        body["max_tokens"] = 2  # unset means 16
    if isinstance(body.get("logprobs"), int) and body["logprobs"] > 5:
        body["logprobs"] = 5
    for field in ("prompt", "input"):
        if isinstance(body.get(field), list):
            body[field] = [p[:60] if isinstance(p, str) else p for p in body[field][:2]]
        if isinstance(body.get(field), str):
            body[field] = body[field][:60]


def test_schemathesis_finds_no_5xx(url: str) -> None:
    statuses = _fuzz(url, FUZZ_EXAMPLES)
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    report(
        "schemathesis_5xx",
        server_errors,
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        engine="fake",
    )
    assert server_errors == 0
    assert statuses[200] > 0 and sum(n for code, n in statuses.items() if code >= 400) > 0


@pytest.mark.model
@pytest.mark.slow
def test_schemathesis_finds_no_5xx_with_the_real_model(gemma: Any) -> None:
    from maas_tune.server.engine import Engine

    with serve_in_thread(create_app(Engine(gemma, MODEL))) as url:
        statuses = _fuzz(
            url,
            FUZZ_EXAMPLES_REAL,
            cap_generation=True,
            operations=("/v1/completions", "/v1/embeddings", "/extras/tokenize"),
        )
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    report(
        "schemathesis_5xx",
        server_errors,
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        engine="gemma-3-270m",
    )
    assert server_errors == 0
