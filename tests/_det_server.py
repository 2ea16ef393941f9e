"""A fast deterministic OpenAI-compatible loopback server that counts what it is asked, for scale-out.

``POST /v1/completions`` answers after a configured latency from the fake model of
:mod:`tests._fault_server` (``top_logprobs`` format; the ``maas_tune`` extension too when
the tokenizer is on), and counts requests per prompt, so duplicates can be told apart;
``GET /stats`` reports the counts as JSON. An optional server-side rate limit answers
429 with ``Retry-After`` when requests come faster than the provider would allow.

It is one asyncio loop speaking HTTP/1.1 with keep-alive (no framework, so it is not
the bottleneck on two cores). Run it in a thread for tests::

    with DetServer(latency=0.01) as server:
        ...  # OpenAICompletionsProvider(server.base_url, "det")
        assert server.duplicates() == 0

or as its own process for benchmarks (``python tests/_det_server.py --latency 0.05``
prints the base URL on its first line).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, final

try:  # imported as tests._det_server, or run as a script from the repository root
    from ._fault_server import MAX_TOP, next_token_logprobs, token_id
except ImportError:  # pragma: no cover - script mode
    from _fault_server import MAX_TOP, next_token_logprobs, token_id  # type: ignore[no-redef]

__all__ = ["PROBE_PROMPT", "DetServer", "client_ports", "completion"]

JSON = dict[str, Any]
#: The prompt of the provider's capability probe (not a sample: never a duplicate).
PROBE_PROMPT = "The sky is"
#: Width of the fake hidden state returned by the extension.
HIDDEN_SIZE = 4
_PIECE = re.compile(r"\s?\S+")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}


def completion(body: JSON, *, extension: bool) -> JSON:
    """The fake model's answer to one completions request (deterministic in the prompt)."""
    prompt = str(body.get("prompt", ""))
    logprobs = next_token_logprobs(prompt)
    n_tokens = len(_PIECE.findall(prompt))
    choice: JSON = {"index": 0, "text": " the", "logprobs": None, "finish_reason": "length"}
    ask = body.get("maas_tune")
    if extension and isinstance(ask, dict):
        by_id = {token_id(t): lp for t, lp in logprobs.items()}
        hidden = struct.pack(f"<{HIDDEN_SIZE}f", len(prompt) % 7, 1.0, -1.0, n_tokens / 10)
        choice["maas_tune"] = {
            "label_logprobs": [by_id.get(int(i), -30.0) for i in ask["label_token_ids"]],
            "hidden": base64.b64encode(hidden).decode("ascii"),
            "prompt_tokens": n_tokens,
        }
    elif body.get("logprobs"):
        k = min(int(body["logprobs"]), MAX_TOP)
        top = dict(sorted(logprobs.items(), key=lambda kv: -kv[1])[:k])
        choice["logprobs"] = {
            "tokens": [" the"],
            "token_logprobs": [logprobs[" the"]],
            "top_logprobs": [top],
            "text_offset": [len(prompt)],
        }
    return {
        "id": "cmpl-det",
        "object": "text_completion",
        "created": 0,
        "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": n_tokens, "completion_tokens": 1, "total_tokens": n_tokens + 1},
    }


def client_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets process ``pid`` holds open (Linux ``/proc``).

    Read while a worker runs and once more after stopping it, they name its connections
    to the server, so that :meth:`DetServer.duplicates_by_first_port` can say which
    duplicates were its requests sent again by whoever took over. Empty once the process
    is gone.
    """
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # no such process (any more)
        return set()
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@final
class DetServer:
    """The server on ``127.0.0.1`` (a free port, or ``port``), run in a thread by ``with``.

    Parameters
    ----------
    latency : float
        Seconds each completions request waits before its answer (a model's latency).
    tokenizer : bool
        Answer ``/extras/tokenize`` and the ``maas_tune`` extension (exact scores and
        hidden states); else both are refused, as a hosted API does, and clients fall
        back to ``top_logprobs``.
    requests_per_minute : float or None
        Server-side limit: requests past it get 429 with ``Retry-After: 1``.
    port : int
        0 picks a free port.
    hold_after : int or None
        Once this many completions were answered, hold every further answer until
        :meth:`release` (a test that must act mid-run, e.g. kill a worker, then lets it go).

    ``GET /stats`` answers :meth:`stats`, ``GET /duplicates``
    :meth:`duplicates_by_first_port`; ``POST /reset`` calls :meth:`reset`.

    Attributes
    ----------
    base_url : str
        ``http://127.0.0.1:<port>/v1`` (set once started).
    per_prompt : Counter
        Completions requests per prompt (the probe prompt included).
    arrivals : list of float
        ``time.monotonic()`` of each answered completions request's arrival.
    first_port : dict
        Per prompt, the client's TCP port of its first request: who sent a duplicate's
        first copy (``GET /duplicates`` counts them per port).
    rejected : int
        Requests answered 429 by the server-side limit.
    """

    def __init__(
        self,
        latency: float = 0.0,
        *,
        tokenizer: bool = True,
        requests_per_minute: float | None = None,
        port: int = 0,
        hold_after: int | None = None,
    ) -> None:
        self.latency = latency
        self.hold_after = hold_after
        self._released = threading.Event()
        self.tokenizer = tokenizer
        self.rpm = requests_per_minute
        self.port = port
        self.base_url = ""
        self.per_prompt: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self.first_port: dict[str, int] = {}
        self.rejected = 0
        self._level = 0.0 if requests_per_minute is None else requests_per_minute / 60.0
        self._since = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- counts ------------------------------------------------------------------------
    @property
    def received(self) -> int:
        """Completions requests answered 200 (the probe included)."""
        return sum(self.per_prompt.values())

    def duplicates(self) -> int:
        """Requests for a sample prompt beyond its first (the probe prompt is not a sample)."""
        return sum(self.duplicates_by_first_port().values())

    def stats(self) -> JSON:
        """The counts as plain JSON (what ``GET /stats`` answers)."""
        samples = {p: n for p, n in self.per_prompt.items() if p != PROBE_PROMPT}
        span = max(self.arrivals) - min(self.arrivals) if len(self.arrivals) > 1 else 0.0
        return {
            "received": self.received,
            "distinct": len(samples),
            "duplicates": self.duplicates(),
            "probe": self.per_prompt[PROBE_PROMPT],
            "rejected": self.rejected,
            "span_s": span,
        }

    def duplicates_by_first_port(self) -> dict[int, int]:
        """Duplicate requests counted by the client port that sent their prompt first.

        A worker that dies with requests in flight loses their answers; whoever retries
        sends them again. The first copies then come from the dead worker's connections,
        which tells re-sends after a crash apart from two live workers racing.
        """
        counts: Counter[int] = Counter()
        for prompt, n in self.per_prompt.items():
            if n > 1 and prompt != PROBE_PROMPT:
                counts[self.first_port[prompt]] += n - 1
        return dict(counts)

    def release(self) -> None:
        """Answer the requests held by ``hold_after`` (and every later one)."""
        self._released.set()

    def reset(self) -> None:
        """Forget the counts (between benchmark runs)."""
        self.per_prompt.clear()
        self.arrivals.clear()
        self.first_port.clear()
        self.rejected = 0

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> DetServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the deterministic server did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.run(self._serve_until_stopped())

    async def _serve_until_stopped(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await self.start()
        self._ready.set()
        await self._stop.wait()
        server.close()
        for writer in list(self._writers):  # idle keep-alive connections: their reads end
            writer.close()
        current = asyncio.current_task()
        await asyncio.gather(
            *(t for t in asyncio.all_tasks() if t is not current), return_exceptions=True
        )

    async def start(self) -> asyncio.AbstractServer:
        """Start listening on the running loop; sets :attr:`base_url`."""
        server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, backlog=512)
        self.port = server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        return server

    # -- HTTP --------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        port = int(peer[1]) if peer else 0
        try:
            while True:  # keep-alive: one request after another on this connection
                line = await reader.readline()
                if not line:
                    break
                method, path = line.decode("latin-1").split(" ")[:2]
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                raw = await reader.readexactly(length) if length else b""
                code, body, extra = await self._answer(method, path, json.loads(raw or b"{}"), port)
                payload = json.dumps(body).encode()
                head = (
                    f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(payload)}\r\n{extra}\r\n"
                )
                writer.write(head.encode("latin-1") + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, method: str, path: str, body: JSON, port: int) -> tuple[int, JSON, str]:
        if method == "GET" and path == "/stats":
            return 200, self.stats(), ""
        if method == "GET" and path == "/duplicates":
            return 200, {str(p): n for p, n in self.duplicates_by_first_port().items()}, ""
        if method == "POST" and path == "/reset":
            self.reset()
            return 200, {}, ""
        if path == "/extras/tokenize" and self.tokenizer:
            return (
                200,
                {"tokens": [token_id(p) for p in _PIECE.findall(str(body.get("input")))]},
                "",
            )
        if path != "/v1/completions":
            return 404, {"error": {"message": f"no route {path}"}}, ""
        if "maas_tune" in body and not self.tokenizer:  # a strict hosted schema
            return 400, {"error": {"message": "unknown field maas_tune"}}, ""
        if not self._allow():
            self.rejected += 1
            return (
                429,
                {"error": {"message": "rate limit", "type": "rate_limit"}},
                "Retry-After: 1\r\n",
            )
        arrival = time.monotonic()
        if self.latency:
            await asyncio.sleep(self.latency)
        while (
            self.hold_after is not None
            and self.received >= self.hold_after
            and (not self._released.is_set())
        ):
            await asyncio.sleep(0.01)
        self.arrivals.append(arrival)
        prompt = str(body.get("prompt", ""))
        self.per_prompt[prompt] += 1
        self.first_port.setdefault(prompt, port)
        return 200, completion(body, extension=self.tokenizer), ""

    def _allow(self) -> bool:
        """The server-side bucket: a one-second burst, refilled at ``requests_per_minute``."""
        if self.rpm is None:
            return True
        rate, now = self.rpm / 60.0, time.monotonic()
        self._level = min(rate, self._level + (now - self._since) * rate)
        self._since = now
        if self._level < 1.0 - 1e-9:
            return False
        self._level -= 1.0
        return True


def main(argv: list[str] | None = None) -> None:
    """Serve until killed; print the base URL first (for a parent process to read)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rpm", type=float, default=None, help="server-side request limit")
    parser.add_argument("--no-tokenizer", action="store_true")
    args = parser.parse_args(argv)
    server = DetServer(
        args.latency, tokenizer=not args.no_tokenizer, requests_per_minute=args.rpm, port=args.port
    )

    async def serve() -> None:
        listening = await server.start()
        print(server.base_url, flush=True)
        async with listening:
            await listening.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
