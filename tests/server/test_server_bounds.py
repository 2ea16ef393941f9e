"""What one request may cost ``maas-tune serve`` (issue 16): memory, model time, the event
loop, bad text, prompts per request, and connections.

Behaviour, not wall clock: orderings and counters are asserted; the few timeouts are
hang guards only. Peak memory is a benchmark (``benchmarks/server_memory.py``).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="needs the 'server' extra")
pytest.importorskip("uvicorn", reason="needs the 'server' extra")
httpx = pytest.importorskip("httpx")

from maas_tune.cli import build_parser
from maas_tune.server import LOOPBACK_HOSTS, create_app, served_hosts
from maas_tune.server.engine import ECHO_CHUNK_POSITIONS, Engine

from .._fake_engine import MODEL, FakeEngine
from .._servers import serve_in_thread

#: Hang guard (seconds) for waits that end at once when the code is right.
GUARD_S = 30
EOS_IDS = (1, 106)  # Gemma 3's <eos> and <end_of_turn>


def post_json(url: str, body: dict[str, Any], timeout: float = GUARD_S) -> httpx.Response:
    """POST ``body`` as JSON with non-ASCII escaped (a lone surrogate stays a valid escape)."""
    return httpx.post(
        url,
        content=json.dumps(body).encode(),
        timeout=timeout,
        headers={"content-type": "application/json"},
    )


@pytest.fixture()
def fake_url() -> Iterator[str]:
    with serve_in_thread(create_app(FakeEngine(), max_generated_tokens=8)) as url:
        yield url


# -- 1. memory: echo never holds (positions x vocabulary) ----------------------------
def test_echo_logprobs_go_through_the_lm_head_a_chunk_at_a_time(gemma: Any) -> None:
    import torch

    engine = Engine(gemma, MODEL)
    prompt = "The film was long, and the ending was " * 18  # ~160 tokens: 3 chunks
    ids = engine.encode_prompt(prompt)
    assert len(ids) > 2 * ECHO_CHUNK_POSITIONS
    rows: list[int] = []
    head = gemma.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, inp, _o: rows.append(inp[0].numel() // 640))
    with serve_in_thread(create_app(engine)) as url:
        try:
            answer = post_json(
                f"{url}/v1/completions",
                {"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 2},
            )
        finally:
            hook.remove()
    assert answer.status_code == 200, answer.text
    assert 0 < max(rows) <= ECHO_CHUNK_POSITIONS, rows
    got = answer.json()["choices"][0]["logprobs"]
    with torch.inference_mode():  # the reference: every position at once (small here)
        full = torch.log_softmax(gemma.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    want = [None] + [float(full[i - 1, ids[i]]) for i in range(2, len(ids))]
    assert got["token_logprobs"][0] is None and len(got["token_logprobs"]) == len(want)
    assert got["token_logprobs"][1:] == pytest.approx(want[1:], abs=1e-4)
    top = got["top_logprobs"][-1]
    assert max(top.values()) == pytest.approx(float(full[-2].max()), abs=1e-4)


def test_a_request_past_the_server_token_limit_is_a_400_naming_the_flag(gemma: Any) -> None:
    engine = Engine(gemma, MODEL, max_context_tokens=32)
    with serve_in_thread(create_app(engine)) as url:
        long = " the" * 40
        echo = post_json(
            f"{url}/v1/completions",
            {"model": MODEL, "prompt": long, "max_tokens": 0, "echo": True, "logprobs": 0},
        )
        score = post_json(
            f"{url}/v1/completions",
            {
                "model": MODEL,
                "prompt": long,
                "max_tokens": 0,
                "maas_tune": {"label_token_ids": [1]},
            },
        )
        fits = post_json(
            f"{url}/v1/completions",
            {"model": MODEL, "prompt": " the" * 20, "max_tokens": 0, "echo": True, "logprobs": 0},
        )
    for refused in (echo, score):
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "limit of 32 tokens per request (--max-context-tokens" in error["message"]
    assert fits.status_code == 200


# -- 2. time: a cap on generated tokens, and scoring between generated tokens ----------
@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 9}),
        ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 5}),  # 10 in all
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9},
        ),
    ],
)
def test_generating_more_than_the_cap_is_a_400_naming_the_flag(
    fake_url: str, route: str, body: dict[str, Any]
) -> None:
    refused = post_json(f"{fake_url}{route}", {"model": MODEL, **body})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "max_tokens_exceeded" and error["param"] == "max_tokens"
    assert "limit of 8 per request (--max-generated-tokens)" in error["message"]


def test_the_cap_allows_up_to_it_and_bounds_the_chat_default(fake_url: str) -> None:
    one = post_json(f"{fake_url}/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 8})
    two = post_json(
        f"{fake_url}/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 4}
    )
    chat = post_json(
        f"{fake_url}/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert [r.status_code for r in (one, two, chat)] == [200, 200, 200]
    assert one.json()["usage"]["completion_tokens"] == 8
    assert chat.json()["usage"]["completion_tokens"] == 8  # default 256, capped at 8


def test_scoring_runs_between_the_tokens_of_a_long_generation(gemma: Any) -> None:
    passes: list[tuple[str, int]] = []  # (thread, tokens in) of every forward pass
    two_steps = threading.Event()

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        passes.append((threading.current_thread().name, int(kwargs["input_ids"].shape[1])))
        if sum(1 for _, n in passes if n == 1) >= 2:
            two_steps.set()

    hook = gemma.model.model.register_forward_pre_hook(record, with_kwargs=True)
    generate = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 40,
        "temperature": 0,
        "logit_bias": {str(i): -100 for i in EOS_IDS},
    }
    score = {
        "model": MODEL,
        "prompt": "Review: great film. Sentiment:",
        "max_tokens": 0,
        "maas_tune": {"label_token_ids": [1, 2]},
    }
    try:
        with (
            serve_in_thread(create_app(Engine(gemma, MODEL), max_wait_ms=0)) as url,
            ThreadPoolExecutor(1) as pool,
        ):
            generation = pool.submit(post_json, f"{url}/v1/completions", generate, 120)
            assert two_steps.wait(GUARD_S)  # the generation holds the model, token by token
            scored = post_json(f"{url}/v1/completions", score, 120)
            generated = generation.result()
    finally:
        hook.remove()
    assert scored.status_code == 200 and generated.status_code == 200
    assert generated.json()["usage"]["completion_tokens"] == 40
    scoring = [i for i, (thread, _) in enumerate(passes) if thread.startswith("maas-tune-score")]
    steps = [i for i, (_, n) in enumerate(passes) if n == 1]
    assert len(scoring) == 1 and len(steps) == 39  # the last token needs no pass
    # the scoring pass went in between generated tokens, not after the whole generation
    assert sum(1 for i in steps if i > scoring[0]) > 0, passes


# -- 3. the event loop: tokenizing runs off it ----------------------------------------
class BlockingTokenizer(FakeEngine):
    """Tokenizing text that contains ``BLOCK`` waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def tokenize(self, text: str) -> list[int]:
        if "BLOCK" in text and not self.release.is_set():
            self.entered.set()
            self.release.wait(GUARD_S)
        return super().tokenize(text)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/extras/tokenize", {"input": "BLOCK"}),
        ("/v1/completions", {"prompt": "BLOCK", "max_tokens": 1}),
        ("/v1/embeddings", {"input": ["BLOCK"]}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "BLOCK"}], "max_tokens": 1},
        ),
    ],
)
def test_health_is_answered_while_a_request_is_being_tokenized(
    route: str, body: dict[str, Any]
) -> None:
    engine = BlockingTokenizer()
    with serve_in_thread(create_app(engine)) as url, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post_json, f"{url}{route}", {"model": MODEL, **body})
        assert engine.entered.wait(GUARD_S)
        try:
            health = httpx.get(f"{url}/health", timeout=GUARD_S - 10)
            still_tokenizing = not engine.release.is_set() and not pending.done()
        finally:
            engine.release.set()
        assert health.json() == {"status": "ok"} and still_tokenizing
        assert pending.result().status_code == 200


# -- 4. lone surrogates: a 400 at validation, on every route ----------------------------
@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"prompt": "bad \ud800 text", "max_tokens": 1}, "prompt"),
        ("/v1/completions", {"prompt": ["fine", "\udfff"], "max_tokens": 1}, "prompt.1"),
        ("/v1/completions", {"prompt": "hi", "stop": "\ud800", "max_tokens": 1}, "stop"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "\ud800"}]},
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\ud800"}]}]},
            "messages.0.content.0.text",
        ),
        ("/extras/tokenize", {"input": "\ud800"}, "input"),
        ("/v1/embeddings", {"input": ["\ud800"]}, "input.0"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(
    fake_url: str, route: str, body: dict[str, Any], param: str
) -> None:
    refused = post_json(f"{fake_url}{route}", {"model": MODEL, **body})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == param
    assert "lone surrogate" in error["message"] and "valid Unicode" in error["message"]


def test_a_lone_surrogate_never_reaches_the_real_tokenizer(gemma: Any) -> None:
    with serve_in_thread(create_app(Engine(gemma, MODEL))) as url:
        answers = [
            post_json(f"{url}/extras/tokenize", {"input": "x\ud800"}),
            post_json(
                f"{url}/v1/completions",
                {
                    "model": MODEL,
                    "prompt": "\ud800",
                    "max_tokens": 0,
                    "maas_tune": {"label_token_ids": [1]},
                },
            ),
        ]
    assert [a.status_code for a in answers] == [400, 400], [a.text for a in answers]


# -- 5. more prompts than the queue holds: a 400, not a 429 -----------------------------
@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/completions", {"max_tokens": 0, "maas_tune": {"label_token_ids": [3]}}),
        ("/v1/completions", {"max_tokens": 0, "echo": True, "logprobs": 0}),  # forward passes
        ("/v1/embeddings", {}),
    ],
)
def test_more_prompts_than_the_queue_holds_is_a_400(
    fake_url: str, route: str, body: dict[str, Any]
) -> None:
    prompts = [f"p{i}" for i in range(257)]
    field = "input" if route == "/v1/embeddings" else "prompt"
    refused = post_json(f"{fake_url}{route}", {"model": MODEL, field: prompts, **body})
    assert refused.status_code == 400, refused.text
    assert "retry-after" not in refused.headers
    error = refused.json()["error"]
    assert error["code"] == "too_many_prompts"
    assert "send at most 256 prompts per request" in error["message"]
    fits = post_json(f"{fake_url}{route}", {"model": MODEL, field: prompts[:256], **body})
    assert fits.status_code == 200


# -- 6. connections: read deadlines, a connection cap, the Host allow-list -------------
def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _closed_while_trickling(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` a byte every 0.1 s until the server closes; what it answered."""
    sock.settimeout(0.1)
    got = b""
    for i in range(GUARD_S * 10):  # hang guard: the server should close long before
        try:
            sock.sendall(data[i % len(data) : i % len(data) + 1])
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:  # reset: closed
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError("the server kept the trickling connection open")


def test_trickled_headers_and_bodies_are_cut_off_at_the_read_timeout() -> None:
    with serve_in_thread(create_app(FakeEngine()), read_timeout_s=0.5) as url:
        address = _address(url)
        headers = [socket.create_connection(address) for _ in range(3)]
        with socket.create_connection(address) as body:
            for sock in headers:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            body.sendall(
                b"POST /extras/tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            answers = [_closed_while_trickling(s, b"X-Slow: 1\r\n") for s in headers]
            answered = _closed_while_trickling(body, b" ")
        for sock in headers:
            sock.close()
        after = httpx.get(f"{url}/health", timeout=GUARD_S)
    assert answers == [b"", b"", b""]  # closed without a word
    assert answered.startswith(b"HTTP/1.1 408 ")
    assert b"--read-timeout" in answered and b"request_timeout" in answered
    assert after.status_code == 200


def test_requests_past_the_connection_cap_get_503() -> None:
    with serve_in_thread(create_app(FakeEngine()), max_connections=2) as url:
        address = _address(url)
        held = [socket.create_connection(address) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(b"GET /health HTTP/1.1\r\n")  # headers never finished
            over = httpx.get(f"{url}/health", timeout=GUARD_S)
        finally:
            for sock in held:
                sock.close()
        for _ in range(GUARD_S * 10):  # the server notices the closes on its own time
            again = httpx.get(f"{url}/health", timeout=GUARD_S)
            if again.status_code == 200:
                break
            threading.Event().wait(0.1)
    assert over.status_code == 503
    assert again.status_code == 200


@pytest.mark.parametrize(
    ("allowed", "host", "status"),
    [
        (None, "127.0.0.1:{port}", 200),
        (None, "localhost:{port}", 200),
        (None, "[::1]:{port}", 200),
        (None, "LOCALHOST", 200),
        (None, "evil.example:{port}", 421),
        (None, "127.0.0.1.evil.example", 421),
        (None, "", 421),
        (["api.example"], "api.example:{port}", 200),
        (["api.example"], "evil.example", 421),
        (["*"], "anything.example", 200),
    ],
)
def test_the_host_header_must_be_allowed(allowed: list[str] | None, host: str, status: int) -> None:
    options = {} if allowed is None else {"allowed_hosts": [*LOOPBACK_HOSTS, *allowed]}
    with serve_in_thread(create_app(FakeEngine(), **options)) as url:
        header = host.format(port=_address(url)[1])
        answer = httpx.get(f"{url}/v1/models", headers={"Host": header}, timeout=GUARD_S)
    assert answer.status_code == status, answer.text
    if status == 421:
        error = answer.json()["error"]
        assert error["code"] == "host_not_allowed" and "--allowed-host" in error["message"]


def test_serve_flags_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from maas_tune import server
    from maas_tune.cli import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "run", lambda *a, **kw: calls.append(kw))
    assert (
        main(
            [
                "serve",
                "--allowed-host",
                "a.example",
                "--allowed-host",
                "b.example",
                "--max-generated-tokens",
                "64",
                "--max-context-tokens",
                "1024",
                "--read-timeout",
                "2.5",
                "--max-connections",
                "8",
            ]
        )
        == 0
    )
    assert {
        k: calls[0][k]
        for k in (
            "allowed_hosts",
            "max_generated_tokens",
            "max_context_tokens",
            "read_timeout_s",
            "max_connections",
        )
    } == {
        "allowed_hosts": ["a.example", "b.example"],
        "max_generated_tokens": 64,
        "max_context_tokens": 1024,
        "read_timeout_s": 2.5,
        "max_connections": 8,
    }
    defaults = build_parser().parse_args(["serve"])
    assert (defaults.max_generated_tokens, defaults.max_context_tokens) == (256, 4096)
    # the bind address is an allowed Host when it names one address, not when a wildcard
    assert served_hosts("0.0.0.0", [], LOOPBACK_HOSTS) == LOOPBACK_HOSTS
    assert served_hosts("10.1.2.3", ["x.example"], LOOPBACK_HOSTS) == {
        *LOOPBACK_HOSTS,
        "10.1.2.3",
        "x.example",
    }
