"""The lean HTTP/1.1 transport of the async hot path, against a raw loopback server.

Each test scripts what the server writes back, byte for byte, so the framing cases that
httpx's own transport handles (lengths, chunks, close-delimited bodies, interim answers,
idle connections the server closed, a bounded pool) are checked on this one too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from maas_tune.providers._wire import DirectSender, WireTransport, wire_applies

Reply = Callable[[bytes], bytes | None]  # request bytes -> raw answer (None: close)


class RawServer:
    """A loopback server answering each request with ``reply(request)``; counts connections."""

    def __init__(self, reply: Reply, *, close_after: bool = False) -> None:
        self.reply, self.close_after = reply, close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    break
                await asyncio.sleep(0.01)  # overlap concurrent requests
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> Reply:
    return lambda _request: (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


async def post(url: str, transport: WireTransport, timeout: float = 5.0) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        return await client.post(url + "/v1/x", json={"prompt": "hi"})


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_keep_alive_reuses_one_connection_and_sends_the_body():
    async def go() -> None:
        server = RawServer(ok())
        async with server as url, httpx.AsyncClient(transport=WireTransport(4)) as client:
            answers = [await client.post(url + "/v1/x", json={"i": i}) for i in range(5)]
        assert [a.json() for a in answers] == [{"ok": True}] * 5
        assert server.connections == 1
        assert all(b"POST /v1/x HTTP/1.1" in r for r in server.requests)
        assert server.requests[3].endswith(b'{"i":3}')

    run(go())


def test_chunked_and_close_delimited_bodies_and_interim_answers():
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n5;ext=1\r\n: 12}\r\n0\r\nTrailer: x\r\n\r\n'
    )
    delimited = b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"b": 3}'

    async def go() -> None:
        for raw, want in ((chunked, {"a": 12}), (delimited, {"b": 3})):
            async with RawServer(lambda _r, raw=raw: raw, close_after=True) as url:
                answer = await post(url, WireTransport(2))
            assert answer.status_code == 200 and answer.json() == want

    run(go())


def test_an_idle_connection_the_server_closed_is_not_reused():
    async def go() -> None:
        server = RawServer(ok(), close_after=True)
        async with server as url, httpx.AsyncClient(transport=WireTransport(2)) as client:
            for _ in range(3):
                answer = await client.post(url + "/v1/x", json={})
                assert answer.json() == {"ok": True}
                await asyncio.sleep(0.05)  # the server's FIN arrives while idle
        assert server.connections == 3 and len(server.requests) == 3

    run(go())


def test_connection_close_header_opens_a_fresh_connection():
    async def go() -> None:
        server = RawServer(ok(extra=b"Connection: close\r\n"))
        async with server as url, httpx.AsyncClient(transport=WireTransport(2)) as client:
            for _ in range(2):
                assert (await client.post(url + "/v1/x", json={})).status_code == 200
        assert server.connections == 2

    run(go())


def test_the_pool_bounds_connections_per_origin():
    async def go() -> None:
        server = RawServer(ok())
        async with server as url, httpx.AsyncClient(transport=WireTransport(2)) as client:
            answers = await asyncio.gather(
                *(client.post(url + "/v1/x", json={"i": i}) for i in range(8))
            )
        assert all(a.status_code == 200 for a in answers)
        assert server.most_open <= 2 and len(server.requests) == 8

    run(go())


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (None, httpx.RemoteProtocolError, "without sending a response"),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"cut',
            httpx.RemoteProtocolError,
            "peer closed connection without sending complete message body",
        ),
        (b"SMTP ready\r\n\r\n", httpx.RemoteProtocolError, "not an HTTP/1.x answer"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            httpx.RemoteProtocolError,
            "malformed number",
        ),
    ],
    ids=["closed-before-answer", "cut-body", "not-http", "bad-length"],
)
def test_broken_answers_raise_the_httpx_error_that_says_it_was_sent(answer, error, match):
    async def go() -> None:
        async with RawServer(lambda _r: answer, close_after=True) as url:
            with pytest.raises(error, match=match):
                await post(url, WireTransport(1))

    run(go())


def test_a_silent_server_is_a_read_timeout_and_a_closed_port_a_connect_error():
    async def go() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)
            await asyncio.sleep(5)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(httpx.ReadTimeout):
            await post(f"http://127.0.0.1:{port}", WireTransport(1), timeout=0.2)
        server.close()
        await server.wait_closed()
        with pytest.raises(httpx.ConnectError):
            await post(f"http://127.0.0.1:{port}", WireTransport(1))

    run(go())


def test_proxies_in_the_environment_leave_requests_to_httpx():
    assert wire_applies({})
    assert not wire_applies({"HTTPS_PROXY": "http://proxy:3128"})
    assert not wire_applies({"all_proxy": "socks5://proxy:1080"})


def test_the_direct_sender_sends_what_the_client_would():
    async def go() -> None:
        server = RawServer(ok())
        async with server as url:
            wire = WireTransport(2)
            async with httpx.AsyncClient(
                base_url=url + "/v1/",
                transport=wire,
                headers={"Authorization": "Bearer k"},
                params={"api-version": "2"},
            ) as client:
                direct = DirectSender(client, wire)
                for i in range(2):
                    answer = await direct.send("POST", "completions", json={"i": i})
                    assert answer.json() == {"ok": True}
                    assert answer.request.url == url + "/v1/completions?api-version=2"
                await client.post("completions", json={"i": 9})
        direct_sent, client_sent = server.requests[1], server.requests[2]
        assert direct_sent.startswith(b"POST /v1/completions?api-version=2 HTTP/1.1")
        assert direct_sent.endswith(b'{"i":1}') and b"Content-Length: 7" in direct_sent
        assert sorted(direct_sent.split(b"\r\n")[1:-2]) == sorted(client_sent.split(b"\r\n")[1:-2])

    run(go())


def test_a_dribbled_answer_is_cut_off_at_the_deadline_not_when_it_ends():
    async def go() -> None:
        async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):  # each byte well inside the read timeout
                writer.write(b" ")
                dribbled.append(1)
                await asyncio.sleep(0.05)

        dribbled: list[int] = []
        server = await asyncio.start_server(dribble, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        # A read timeout roomy next to each byte's 0.05 s: with 0.2 s, a stall of the process
        # over 0.15 s (a busy machine) made it a plain read timeout, not the deadline's.
        with pytest.raises(httpx.ReadTimeout, match="whole answer took longer than 3 x"):
            await post(f"http://127.0.0.1:{port}", WireTransport(1, deadline_factor=3), timeout=1.0)
        assert len(dribbled) < 100  # cut off mid-dribble, not when the body was complete
        server.close()

    run(go())
