"""The upstream HTTP/1.1 client (`providers.http1`) against scripted servers on loopback:
connection reuse, a connection the upstream closed while idle, bodies by length, by
chunks (gzip too) and to the close, lines split across reads, and timeouts."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from areion.providers.http1 import (
    ConnectError,
    DisconnectedError,
    Http1Pool,
    ReadTimeoutError,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
"""Answers one request (the connection's `n`th); False closes the connection."""


async def _request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """A request's head and body, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


class Upstream:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while (request := await _request(reader)) is not None:
                self.requests.append(request)
                n += 1
                if not await self.handler(reader, writer, n):
                    break
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def start(handler: Handler) -> Upstream:
        upstream = Upstream(handler)
        upstream.server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        assert upstream.server is not None
        upstream.server.close()


def _answer(body: bytes, *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n".encode() + extra + b"\r\n" + body


def _pool(read_timeout: float = 10.0) -> Http1Pool:
    return Http1Pool(asyncio.get_running_loop(), connect_timeout=5.0, read_timeout=read_timeout)


async def test_answers_reuse_one_connection(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(_answer(f"answer {n}".encode(), extra=b"x-n: %d\r\n" % n))
        return True

    upstream = await serve(handler)
    pool = _pool()
    bodies = []
    for _ in range(3):
        response = await pool.post(upstream.url, b'{"a": 1}', {"authorization": "Bearer k"})
        assert response.status == 200
        bodies.append(await response.read())
    pool.close()
    assert bodies == [b"answer 1", b"answer 2", b"answer 3"]
    assert upstream.connections == 1
    head, body = upstream.requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"authorization: Bearer k\r\n" in head
    assert b"content-length: 8\r\n" in head
    assert body == b'{"a": 1}'


async def test_a_connection_the_upstream_closed_while_idle_is_replaced(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(_answer(b"ok"))
        await writer.drain()
        return False  # closes the connection after each answer, without saying so

    upstream = await serve(handler)
    pool = _pool()
    for _ in range(3):
        response = await pool.post(upstream.url, b"{}", {})
        assert await response.read() == b"ok"
        await _idle_closed(pool)  # the close arrives before the next call takes it
    pool.close()
    assert upstream.connections == 3


async def test_a_request_the_upstream_read_and_left_unanswered_is_not_sent_again(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(_answer(b"ok"))
            return True
        return False  # read the second request (it may have acted on it), then closed

    upstream = await serve(handler)
    pool = _pool()
    response = await pool.post(upstream.url, b"{}", {})
    assert await response.read() == b"ok"
    with pytest.raises(DisconnectedError):
        await pool.post(upstream.url, b"{}", {})
    pool.close()
    assert (upstream.connections, len(upstream.requests)) == (1, 2)


async def _idle_closed(pool: Http1Pool) -> None:
    """Until every idle connection of `pool` has seen its close (a bounded wait for an
    event, not a timing: the close is already on its way)."""
    for _ in range(1000):
        idle = [conn for conns in pool._idle.values() for conn in conns]
        if all(conn.transport is None for conn in idle):
            return
        await asyncio.sleep(0.01)


async def test_chunked_gzip_and_read_to_close_bodies(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    packed = gzip.compress(b"hello, " * 100)

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n"
            )
            for start in range(0, len(packed), 50):
                part = packed[start : start + 50]
                writer.write(b"%x\r\n" % len(part) + part + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True
        writer.write(b"HTTP/1.1 503 Busy\r\nconnection: close\r\n\r\nno room")
        return False

    upstream = await serve(handler)
    pool = _pool()
    response = await pool.post(upstream.url, b"{}", {})
    assert await response.read() == b"hello, " * 100
    response = await pool.post(upstream.url, b"{}", {})
    assert response.status == 503
    assert await response.read() == b"no room"
    pool.close()


async def test_lines_arrive_whole_across_reads(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: one\n", b"\ndata: t", b"wo\n\nda", b"ta: [DONE]\n\n", b"tail"):
            writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        return True

    upstream = await serve(handler)
    pool = _pool()
    response = await pool.post(upstream.url, b"{}", {})
    lines = [line async for batch in response.lines() for line in batch]
    assert lines == [b"data: one", b"", b"data: two", b"", b"data: [DONE]", b"", b"tail"]
    # Read to its end, the connection is reused.
    response = await pool.post(upstream.url, b"{}", {})
    lines = [line async for batch in response.lines() for line in batch]
    assert lines[0] == b"data: one"
    pool.close()
    assert upstream.connections == 1


async def test_an_upstream_that_never_answers_times_out(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    async def handler(reader: asyncio.StreamReader, _: asyncio.StreamWriter, n: int) -> bool:
        await reader.read()  # until the client gives up
        return False

    upstream = await serve(handler)
    pool = _pool(read_timeout=0.2)
    with pytest.raises(ReadTimeoutError):
        await pool.post(upstream.url, b"{}", {})
    pool.close()


async def test_a_reused_connection_times_out_on_its_own_read_deadline(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    """The read timer of the first answer stays armed in the pool; the second answer's
    wait still ends at its own deadline, not never."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            return True
        await reader.read()  # the second request: no answer, until the client gives up
        return False

    upstream = await serve(handler)
    # 1 s, not 0.2: the first answer, which does come, must not race it on a busy machine.
    pool = _pool(read_timeout=1.0)
    response = await pool.post(upstream.url, b"{}", {})
    assert await response.read() == b"ok"
    with pytest.raises(ReadTimeoutError):
        await pool.post(upstream.url, b"{}", {})
    assert upstream.connections == 1  # the second request went on the pooled connection
    pool.close()


async def test_a_connection_cut_mid_answer_is_an_error(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        return False

    upstream = await serve(handler)
    pool = _pool()
    response = await pool.post(upstream.url, b"{}", {})
    with pytest.raises(DisconnectedError):
        await response.read()
    pool.close()


async def test_each_request_carries_its_own_headers_and_length(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    """A target's header lines are kept from one request to the next while its headers
    stay the same (a deployment's do), and made anew when they change, even in place."""

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(_answer(b"ok"))
        return True

    upstream = await serve(handler)
    pool = _pool()
    headers = {"authorization": "Bearer one", "content-type": "application/json"}
    sent = [
        (b'{"a": 1}', headers),
        (b"{}", headers),
        (b'{"b": 22}', {**headers, "traceparent": "00-abc-def-01"}),
        (b"{}", headers),
    ]
    for body, with_headers in sent:
        assert await (await pool.post(upstream.url, body, with_headers)).read() == b"ok"
    headers["authorization"] = "Bearer two"  # the same dict, changed
    assert await (await pool.post(upstream.url, b"[]", headers)).read() == b"ok"
    pool.close()

    def fields(head: bytes) -> dict[str, str]:
        lines = head.decode().split("\r\n")[1:]
        return dict(line.split(": ", 1) for line in lines if line)

    seen = [fields(head) for head, _ in upstream.requests]
    assert [(s["authorization"], s.get("traceparent")) for s in seen] == [
        ("Bearer one", None),
        ("Bearer one", None),
        ("Bearer one", "00-abc-def-01"),
        ("Bearer one", None),
        ("Bearer two", None),
    ]
    bodies = [body for _, body in upstream.requests]
    assert bodies == [b'{"a": 1}', b"{}", b'{"b": 22}', b"{}", b"[]"]
    assert [int(s["content-length"]) for s in seen] == [len(b) for b in bodies]


async def test_refused_connections_and_header_injection_are_errors(
    serve: Callable[[Handler], Awaitable[Upstream]],
) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(_answer(b"ok"))
        return True

    upstream = await serve(handler)
    pool = _pool()
    with pytest.raises(ValueError, match="line break"):
        await pool.post(upstream.url, b"{}", {"x-evil": "a\r\nx-injected: 1"})
    assert upstream.requests == []
    assert upstream.server is not None
    url = upstream.url
    upstream.server.close()
    await upstream.server.wait_closed()
    with pytest.raises(ConnectError):
        await pool.post(url, b"{}", {})
    pool.close()
