"""A scriptable OpenAI-compatible loopback server that misbehaves on cue, for provider fault tests.

It speaks raw HTTP/1.1 over a socket (one request per connection), so that it can do what
a well-behaved framework cannot: reset the connection, cut a body short, stall halfway
through one, or dribble it out. ``POST /v1/completions`` answers in the maas-tune extension
format or the ``top_logprobs`` format from a deterministic fake model; ``POST
/extras/tokenize`` always answers. Each completions request consumes the next
:class:`Action` of the script (an exhausted script answers correctly)::

    with FaultServer() as server:
        server.script(status(429, headers={"Retry-After": "2"}), reset(), ok())
        ...  # point an OpenAICompletionsProvider at server.base_url
        assert server.received == 3 and server.completed == 1
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, final

__all__ = [
    "Action",
    "FaultServer",
    "drop_field",
    "malformed",
    "next_token_logprobs",
    "ok",
    "reset",
    "set_field",
    "slow_body",
    "stall",
    "stall_mid_body",
    "status",
    "token_id",
    "top_without",
    "truncated",
]

JSON = dict[str, Any]
#: Edits a correct answer in place before it is sent.
Mutation = Callable[[JSON], None]

#: Hidden-state width of the fake model.
HIDDEN_SIZE = 4
#: Most top log-probs the fake returns (hosted APIs allow 5).
MAX_TOP = 5
# The fake model's next-token weights; " positive" grows with the prompt (see below).
_WEIGHTS = {
    " the": 8.0,
    " positive": 4.0,
    " a": 3.0,
    " negative": 2.0,
    " it": 1.5,
    " very": 1.0,
    " so": 0.5,
    " ok": 0.25,
}
_VOCAB = {token: 10 + i for i, token in enumerate(_WEIGHTS)}
_PIECE = re.compile(r"\s?\S+")
# How often the accept loop checks for shutdown (the default 0.5 s slows every teardown).
_POLL_S = 0.05
# Upper bound on a request head or body we are willing to read (tests send tiny ones).
_MAX_LINE = 65536


def token_id(piece: str) -> int:
    """The fake tokenizer's id of one piece (a word with its leading space)."""
    return _VOCAB.get(piece, 1000 + zlib.crc32(piece.encode("utf-8")) % 100_000)


def next_token_logprobs(prompt: str) -> dict[str, float]:
    """The fake model's log-probabilities of the token after ``prompt`` (deterministic)."""
    weights = dict(_WEIGHTS)
    weights[" positive"] *= 1 + len(prompt) % 3  # answers differ between prompts
    total = sum(weights.values())
    return {token: math.log(w / total) for token, w in weights.items()}


@dataclass(frozen=True)
class Action:
    """What the server does with one ``/v1/completions`` request.

    Attributes
    ----------
    kind : str
        ``ok`` (the correct answer, after ``mutate``), ``status`` (``status`` with
        ``headers`` and ``body``), ``raw`` (200 with ``body`` as is), ``reset`` (TCP RST
        instead of an answer), ``stall`` (silence for ``seconds``, then the answer),
        ``stall_body`` (half the body, silence for ``seconds``, the rest), ``slow_body``
        (the body in four pieces, ``seconds`` apart) or ``truncated`` (a Content-Length
        for the whole body, half of it, then close).
    """

    kind: str
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    seconds: float = 0.0
    mutate: Mutation | None = None


def ok(mutate: Mutation | None = None) -> Action:
    """Answer correctly, or with ``mutate`` applied to the correct answer's JSON."""
    return Action("ok", mutate=mutate)


def status(code: int, *, headers: dict[str, str] | None = None, body: Any = None) -> Action:
    """Answer HTTP ``code``; ``body`` defaults to an OpenAI-style error object."""
    if body is None:
        body = {"error": {"message": f"scripted {code}", "type": "server_error", "code": None}}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Action("status", status=code, headers=tuple((headers or {}).items()), body=raw)


def malformed(body: bytes = b'{"choices": [{"text": "x", ') -> Action:
    """Answer 200 with a body that is not valid JSON."""
    return Action("raw", body=body)


def reset() -> Action:
    """Read the request, then reset the connection (RST) without answering."""
    return Action("reset")


def stall(seconds: float) -> Action:
    """Send nothing for ``seconds`` (past the client's read timeout), then the answer."""
    return Action("stall", seconds=seconds)


def stall_mid_body(seconds: float) -> Action:
    """Send the head and half the body, then nothing for ``seconds``, then the rest."""
    return Action("stall_body", seconds=seconds)


def slow_body(pause: float) -> Action:
    """Send the correct answer in four pieces, ``pause`` seconds apart."""
    return Action("slow_body", seconds=pause)


def truncated() -> Action:
    """Promise the whole body in Content-Length, send half of it, and close."""
    return Action("truncated")


def _walk(answer: JSON, path: str) -> tuple[Any, str | int]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = answer
    for part in parents:
        node = node[part]
    return node, last


def set_field(path: str, value: Any) -> Mutation:
    """A mutation setting the dotted ``path`` (e.g. ``choices.0.maas_tune.hidden``) to ``value``."""

    def mutate(answer: JSON) -> None:
        node, last = _walk(answer, path)
        node[last] = value

    return mutate


def drop_field(path: str) -> Mutation:
    """A mutation removing the dotted ``path`` from the answer."""

    def mutate(answer: JSON) -> None:
        node, last = _walk(answer, path)
        del node[last]

    return mutate


def top_without(piece: str) -> Mutation:
    """A mutation cutting the top log-probs just above ``piece``, so that it is missing.

    What remains is still the true head of the distribution, so the value a forced
    request reports for ``piece`` lies below every entry shown (as it must).
    """

    def mutate(answer: JSON) -> None:
        top = answer["choices"][0]["logprobs"]["top_logprobs"][0]
        threshold = top[piece]
        for token in [t for t, lp in top.items() if lp <= threshold]:
            del top[token]

    return mutate


def _completion(body: JSON) -> JSON:
    """The correct answer of the fake model to one completions request."""
    prompt = str(body.get("prompt", ""))
    logprobs = next_token_logprobs(prompt)
    n_tokens = len(_PIECE.findall(prompt))
    choice: JSON = {"index": 0, "text": " the", "logprobs": None, "finish_reason": "length"}
    extension = body.get("maas_tune")
    if isinstance(extension, dict):
        by_id = {token_id(t): lp for t, lp in logprobs.items()}
        hidden = struct.pack(f"<{HIDDEN_SIZE}f", len(prompt), 1.0, -1.0, 0.5)
        choice["maas_tune"] = {
            "label_logprobs": [by_id.get(int(i), -30.0) for i in extension["label_token_ids"]],
            "hidden": base64.b64encode(hidden).decode("ascii"),
            "prompt_tokens": n_tokens,
        }
    elif body.get("logprobs"):
        k = min(int(body["logprobs"]), MAX_TOP)
        top = dict(sorted(logprobs.items(), key=lambda kv: -kv[1])[:k])
        token = " the"
        bias = body.get("logit_bias")
        if bias:  # logprobs are reported before the bias, as OpenAI and llama.cpp do
            forced = int(next(iter(bias)))
            token = next((t for t in logprobs if token_id(t) == forced), token)
        choice["text"] = token
        choice["logprobs"] = {
            "tokens": [token],
            "token_logprobs": [logprobs[token]],
            "top_logprobs": [top],
            "text_offset": [len(prompt)],
        }
    return {
        "id": f"cmpl-{zlib.crc32(prompt.encode('utf-8')):08x}",
        "object": "text_completion",
        "created": 0,
        "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": n_tokens, "completion_tokens": 1, "total_tokens": n_tokens + 1},
    }


def _head(code: int, length: int, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [
        f"HTTP/1.1 {code} {HTTPStatus(code).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_request(sock: socket.socket) -> tuple[str, dict[str, str], JSON] | None:
    """Read one request; return its path, headers (lower-case names) and JSON body
    (None if the client hung up)."""
    with sock.makefile("rb") as reader:
        first = reader.readline(_MAX_LINE)
        if not first:
            return None
        path = first.decode("latin-1").split(" ")[1]
        headers: dict[str, str] = {}
        while (line := reader.readline(_MAX_LINE)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        raw = reader.read(length) if length else b""
    return path, headers, json.loads(raw) if raw else {}


class _Server(socketserver.ThreadingTCPServer):
    # The default backlog (5) drops connections when many clients connect at once.
    request_queue_size = 128


@final
class FaultServer:
    """An OpenAI-compatible server on ``127.0.0.1`` (a free port) that follows a fault script.

    Attributes
    ----------
    base_url : str
        ``http://127.0.0.1:<port>/v1``, for the provider.
    received : int
        ``/v1/completions`` requests read in full (each may have been billed).
    completed : int
        200 answers sent in full and in time (``ok``, mutated or not, and ``slow_body``);
        counted as their last bytes are sent.
    requests : list of dict
        The JSON body of each completions request, in arrival order.
    arrivals : list of float
        ``time.monotonic()`` at each completions request's arrival.
    authorizations : list of str
        The ``Authorization`` header of each completions request ("" when absent).
    """

    def __init__(self) -> None:
        self._script: deque[Action] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()  # cuts stalls short when the server stops
        self.received = 0
        self.completed = 0
        self.requests: list[JSON] = []
        self.arrivals: list[float] = []
        self.authorizations: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._handle(self.request)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": _POLL_S}, daemon=True
        )
        port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def script(self, *actions: Action) -> None:
        """Queue ``actions`` for the next completions requests, one each, in order."""
        with self._lock:
            self._script.extend(actions)

    @property
    def pending(self) -> int:
        """Scripted actions not used yet."""
        with self._lock:
            return len(self._script)

    # -- one connection ----------------------------------------------------------------
    def _handle(self, sock: socket.socket) -> None:
        request = _read_request(sock)
        if request is None:
            return
        path, headers, body = request
        if path == "/extras/tokenize":
            tokens = [token_id(p) for p in _PIECE.findall(str(body.get("input", "")))]
            self._send(sock, 200, json.dumps({"tokens": tokens}).encode())
            return
        if path != "/v1/completions":
            self._send(sock, 404, b'{"error": {"message": "not found"}}')
            return
        with self._lock:
            self.received += 1
            self.requests.append(body)
            self.arrivals.append(time.monotonic())
            self.authorizations.append(headers.get("authorization", ""))
            action = self._script.popleft() if self._script else ok()
        try:
            self._act(sock, action, body)
        except OSError:  # the client gave up first (it timed out): nothing to do
            pass

    def _act(self, sock: socket.socket, action: Action, body: JSON) -> None:
        if action.kind == "status":
            self._send(sock, action.status, action.body, action.headers)
            return
        if action.kind == "raw":
            self._send(sock, 200, action.body)
            return
        if action.kind == "reset":
            # SO_LINGER with a zero timeout turns close() into a TCP RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        answer = _completion(body)
        if action.mutate is not None:
            action.mutate(answer)
        payload = json.dumps(answer).encode()  # NaN and -Infinity pass as Python writes them
        head, half = _head(200, len(payload)), len(payload) // 2
        if action.kind == "stall":
            self._stop.wait(action.seconds)
            sock.sendall(head + payload)
        elif action.kind == "stall_body":
            sock.sendall(head + payload[:half])
            self._stop.wait(action.seconds)
            sock.sendall(payload[half:])
        elif action.kind == "truncated":
            sock.sendall(head + payload[:half])
        elif action.kind == "slow_body":
            sock.sendall(head)
            step = math.ceil(len(payload) / 4)
            for start in range(0, len(payload), step):
                self._stop.wait(action.seconds)
                last = start + step >= len(payload)
                self._send_counted(sock, payload[start : start + step], count=last)
        else:
            self._send_counted(sock, head + payload)

    def _send_counted(self, sock: socket.socket, data: bytes, *, count: bool = True) -> None:
        # Counted before the last bytes go out: once they arrive, the client may check at once.
        if count:
            with self._lock:
                self.completed += 1
        sock.sendall(data)

    @staticmethod
    def _send(
        sock: socket.socket, code: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        sock.sendall(_head(code, len(body), headers) + body)
