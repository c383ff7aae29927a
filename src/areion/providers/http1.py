"""A small HTTP/1.1 client for the upstream calls: keep-alive connections (plain or
TLS) on asyncio's transports, answers parsed by httptools (uvicorn's parser, which
`uvicorn[standard]` installs).

It does what a deployment's calls need and nothing else: POST a body, read the
answer whole or line by line, reuse the connection. No proxies (as aiohttp's
default, which it replaces here), no cookies, no redirects (an upstream's 3xx is an
error like any status but 200). Measured in `bench/` at 64 concurrent calls, aiohttp
spent about 100 us of CPU a call in its own bookkeeping, a quarter of the server's;
this client spends about a third of that.

Timeouts are those of `ModelConfig`: `connect_timeout` for a new connection,
`read_timeout` for each wait for bytes (the answer's first byte, and every stall
between a stream's chunks); one timer a call, moved only when it fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from areion._version import __version__

__all__ = [
    "ConnectError",
    "ConnectTimeoutError",
    "DisconnectedError",
    "Http1Pool",
    "ReadTimeoutError",
    "Response",
]

# An idle connection older than this is not reused: under the 5 s after which uvicorn
# and Node close an idle keep-alive connection, so a request is rarely written into a
# connection the upstream is closing (which now fails the call rather than resend it).
_KEEPALIVE_S = 4.0
_HIGH_WATER = 1 << 20  # a stream's unread bytes past which the socket is not read
_USER_AGENT = f"areion/{__version__}"


class ConnectError(ConnectionError):
    """The connection could not be made (refused, unreachable, TLS failed)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


class ConnectTimeoutError(TimeoutError):
    """The connection was not made within the connect timeout."""


class ReadTimeoutError(TimeoutError):
    """No byte of the answer arrived within the read timeout."""


class DisconnectedError(ConnectionError):
    """The connection broke, or the upstream closed it, before the answer was whole."""


class Response:
    """An answer whose status line and headers have arrived."""

    __slots__ = ("_conn", "_sent", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], conn: _Connection) -> None:
        self.status = status
        self.headers = headers
        """By lower-case name (the last of a repeated one)."""
        self._conn = conn
        self._sent = conn.sent  # which of the connection's requests this answers

    async def read(self) -> bytes:
        """The whole body."""
        return await self._conn.read_all()

    def close(self) -> None:
        """Done with the answer: a connection whose answer was not read to its end is
        closed, not reused."""
        if self._conn.sent == self._sent:  # not since reused for another request
            self._conn.abandon()

    async def lines(self) -> AsyncIterator[list[bytes]]:
        """The body's lines as they arrive, split at b"\\n" (which they lose; a b"\\r"
        before it stays), the complete lines of each read together: a stream's consumer
        takes an event's lines (an SSE event is two or more) in one step, not one each.
        The last line may have had no b"\\n"."""
        conn = self._conn
        rest = b""
        while True:
            data = await conn.read_some()
            if not data:
                break
            if rest:
                data = rest + data
            lines = data.split(b"\n")
            rest = lines.pop()  # after the last b"\n": part of a line still to come
            if lines:
                yield lines
        if rest:
            yield [rest]


class _Connection(asyncio.Protocol):
    """One connection, one answer at a time."""

    def __init__(self, pool: Http1Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed: BaseException | None = None
        self.pooled = False
        """Back in the pool: the answer was read whole."""
        self.sent = 0
        """Requests sent on it so far."""
        self.idle_since = 0.0
        # The current answer.
        self._waiter: asyncio.Future[None] | None = None
        self._headers: dict[str, str] = {}
        self._head_done = False
        self._done = False
        self._keep_alive = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._decoder: Any = None
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- protocol callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(DisconnectedError(f"the answer is not valid HTTP/1.1 ({error})"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._done:
            self.closed = exc or DisconnectedError("closed")
            return
        if self._head_done and exc is None and self._reads_to_close():
            self.closed = DisconnectedError("closed")
            self._done = True  # an answer with neither length nor chunks ends here
            self._wake()
            return
        # A connection closed before a byte of the answer is not tried again: the
        # upstream may have read the request and acted on it (a call billed twice). One
        # it closed while idle is found closed when taken, before a request is written.
        if exc is not None:
            error: BaseException = DisconnectedError(f"the connection broke: {exc}")
        elif not self._head_done:
            error = DisconnectedError(
                "the upstream closed the connection before answering (the request is not"
                " sent again: the upstream may have acted on it)"
            )
        else:
            error = DisconnectedError("the upstream closed the connection mid-answer")
        self.closed = error
        self._fail(error)

    # -- parser callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._head_done = True
        encoding = self._headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: a gzip or zlib stream, whichever it is; deflate may come raw.
            self._decoder = _Inflate(raw_ok=encoding == "deflate")
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.feed(body)
            except zlib.error as error:
                self._fail(DisconnectedError(f"the answer's body does not decompress: {error}"))
                self._close()
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._done = True
        self._keep_alive = self.parser.should_keep_alive()
        if self._decoder is not None:
            with contextlib.suppress(zlib.error):
                tail = self._decoder.flush()
                if tail:
                    self._chunks.append(tail)
        self._wake()

    # -- the caller's side ------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.pooled = False
        self.sent += 1
        self._headers = {}
        self._head_done = self._done = self._keep_alive = False
        self._chunks = []
        self._buffered = 0
        self._decoder = None
        self._last_data = self.loop.time()
        self.transport.write(head + body)

    async def head(self) -> Response:
        while not self._head_done:
            await self._wait()
        return Response(self.parser.get_status_code(), self._headers, self)

    async def read_all(self) -> bytes:
        while not self._done:
            await self._wait()
        self._finished()
        chunks = self._chunks
        self._chunks = []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read_some(self) -> bytes:
        """What has arrived of the body since the last call; b"" at its end."""
        while not self._chunks and not self._done:
            await self._wait()
        if self._chunks:
            chunks = self._chunks
            self._chunks = []
            self._buffered = 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._finished()
        return b""

    def _finished(self) -> None:
        """The answer is whole: the connection goes back to the pool if it may. Its read
        timer stays armed there (`abandon` cancels it): the next answer's wait finds it
        due sooner than its own deadline and it moves then, rather than a timer made
        and cancelled for every call."""
        self.pool.release(self)

    def reusable(self) -> bool:
        return (
            self._done
            and self.transport is not None
            and not self.transport.is_closing()
            and self._keep_alive
        )

    def abandon(self) -> None:
        """The caller stopped before the answer was whole: the connection cannot be
        reused (nothing happens to one already back in the pool)."""
        if self.pooled:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close()

    async def _wait(self) -> None:
        if self.closed is not None and not self._done:
            raise self.closed
        waiter = self._waiter = self.loop.create_future()
        if self._timer is None:
            self._timer = self.loop.call_at(
                self._last_data + self.pool.read_timeout, self._check_timeout
            )
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_timeout(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # nobody waits: the next wait arms it again
        due = self._last_data + self.pool.read_timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check_timeout)
            return
        self._fail(ReadTimeoutError("no bytes within the read timeout"))
        self._close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self.closed = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _reads_to_close(self) -> bool:
        return "content-length" not in self._headers and "chunked" not in self._headers.get(
            "transfer-encoding", ""
        )

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _Inflate:
    """A body's gzip or deflate decoding, chunk by chunk."""

    def __init__(self, *, raw_ok: bool) -> None:
        self._raw_ok = raw_ok
        self._decoder = zlib.decompressobj(47)
        self._started = False

    def feed(self, data: bytes) -> bytes:
        if not self._started and self._raw_ok:
            self._started = True
            try:
                return self._decoder.decompress(data)
            except zlib.error:
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
        self._started = True
        return self._decoder.decompress(data)

    def flush(self) -> bytes:
        return self._decoder.flush()


class _Target:
    """A URL, taken apart once, and the header lines last sent to it (`head`)."""

    __slots__ = ("headers", "key", "lines", "prefix", "ssl")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        self.key = (scheme, host, port)
        self.ssl = scheme == "https"
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port == default else f"{shown}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.prefix = (
            f"POST {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: {_USER_AGENT}\r\n"
            "accept: */*\r\n"
        ).encode("latin-1")
        # The header lines last sent to it, and the headers they were made of: a
        # deployment sends the same ones on every call.
        self.headers: dict[str, str] = {}
        self.lines = b""

    def head(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        """The request's head: the request line, `headers` and the length of `body`."""
        if headers != self.headers:
            self.lines = _lines(headers)
            self.headers = dict(headers)
        return b"%bcontent-length: %d\r\n%b\r\n" % (self.prefix, len(body), self.lines)


_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


class Http1Pool:
    """Keep-alive connections to any number of hosts, for one event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_s: float = _KEEPALIVE_S,
    ) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self.closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST `body` to `url`; the answer once its headers have arrived. Read it
        whole (`read`) or by lines (`lines`), or the connection is not reused."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target(url)
        head = target.head(body, headers)
        conn = self._take(target.key) or await self._connect(target)
        conn.send(head, body)
        try:
            return await conn.head()
        except BaseException:
            conn.abandon()
            raise

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.transport is None or conn.transport.is_closing():
                continue
            conn.pooled = False
            if now - conn.idle_since > self.keepalive_s:
                conn.abandon()
                continue
            return conn
        return None

    async def _connect(self, target: _Target) -> _Connection:
        _, host, port = target.key
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, protocol = await self.loop.create_connection(
                    lambda: _Connection(self, target.key),
                    host,
                    port,
                    ssl=_ssl_context() if target.ssl else None,
                    server_hostname=host if target.ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeoutError(f"connecting to {host}:{port} timed out") from None
        except OSError as error:  # refused, unreachable, name not found, TLS
            raise ConnectError(error) from None
        assert isinstance(protocol, _Connection)
        if protocol.transport is None and protocol.closed is None:
            protocol.transport = transport  # uvloop may call connection_made later
        return protocol

    def release(self, conn: _Connection) -> None:
        if self.closed or not conn.reusable():
            conn.abandon()
            return
        conn.idle_since = self.loop.time()
        conn.pooled = True
        self._idle.setdefault(conn.key, []).append(conn)

    def close(self) -> None:
        """Close every idle connection; those in use close as their answers end."""
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.pooled = False
                conn.abandon()
        self._idle.clear()


def _lines(headers: Mapping[str, str]) -> bytes:
    parts = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} has a line break")
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(parts)
