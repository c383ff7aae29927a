"""What keeps clients from taking the server down.

- `LimitBody`, an ASGI middleware in every app `create_app` builds: a request body
  past `server.max_body_bytes` is answered 413, whether or not it declares its length.
- `guarded_protocol`, the HTTP protocol `areion serve` runs: uvicorn's httptools
  protocol with deadlines for a request's headers and body, an idle timeout from the
  moment a connection opens, and a cap on open connections. uvicorn alone only times
  out a connection idle after a response: a socket that never sends a byte, or never
  finishes its headers or body, would stay open for good. It also writes less often
  (`_Corked`): a response's head with its first body bytes, and a stream's events
  written in one turn of the event loop, each in one send.
- `send_whole`: a whole answer (a chat call's JSON) written at once on such a
  connection, past uvicorn's two ASGI messages and their per-header work.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections import deque
from typing import Any, ClassVar, Literal
from urllib.parse import unquote

import httptools
import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl, service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from areion.config import ServerConfig
from areion.errors import RequestError
from areion.server.schema import error_body

__all__ = ["BodyTooLargeError", "LimitBody", "guarded_protocol", "send_whole"]


_ERROR_LOG = logging.getLogger("uvicorn.error")
_ACCESS_LOG = logging.getLogger("uvicorn.access")


class BodyTooLargeError(RequestError):
    """The request body is larger than `server.max_body_bytes`."""

    status = 413
    code = "request_too_large"


def _content_length(scope: Scope) -> int | None:
    """The body's declared length, if it declares one that reads as a number (if not,
    its bytes are counted all the same)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return _length(value)
    return None


def _length(value: bytes | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


class LimitBody:
    """Refuses a body past `max_bytes` as the handler reads it: at its first read when
    its content-length says so, else as soon as the bytes read pass the limit (a
    chunked body declares no length). The refusal is an error the handler raises, so
    it leaves as every error does, OpenAI-shaped."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, paths: dict[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths or {}
        """Paths with a cap of their own, and the setting that names it (file uploads)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        read = 0
        cap, setting = self.paths.get(scope["path"], (self.max_bytes, "server.max_body_bytes"))

        async def capped() -> Message:
            nonlocal read
            if declared is not None and declared > cap:
                raise _too_large(cap, setting)
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > cap:
                    raise _too_large(cap, setting)
            return message

        await self.app(scope, capped, send)


async def capped_body(headers: dict[bytes, bytes], receive: Receive, cap: int) -> bytes:
    """The request's body, refused as `LimitBody` refuses it past `cap`
    (`server.max_body_bytes`): for the chat route, which reads its body without the
    middleware. A body that has arrived whole is taken from uvicorn's cycle
    (`_whole_body`), any other read from `receive`. `headers`: the request's, by
    lower-case name, the first of a repeated one (`calls.request_headers`)."""
    declared = _length(headers.get(b"content-length"))
    if declared is not None and declared > cap:
        raise _too_large(cap, "server.max_body_bytes")
    whole = _whole_body(receive)
    if whole is not None:
        if len(whole) > cap:
            raise _too_large(cap, "server.max_body_bytes")
        return whole
    parts: list[bytes] = []
    read = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        part = message.get("body", b"")
        read += len(part)
        if read > cap:
            raise _too_large(cap, "server.max_body_bytes")
        parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _whole_body(receive: Receive) -> bytes | None:
    """The body, when `receive` is uvicorn's own and the whole body has arrived: what
    its first `receive()` would return, taken as that call takes it, without the
    coroutine and the message. None, having done nothing, in any other case (a body
    still arriving, a client waiting for `100 Continue`, another `receive`)."""
    cycle = getattr(receive, "__self__", None)
    if (
        type(cycle) is not RequestResponseCycle
        or cycle.more_body
        or cycle.waiting_for_100_continue
        or cycle.disconnected
        or cycle.response_complete
        or not cycle.message_event.is_set()
    ):
        return None
    body = bytes(cycle.body)
    cycle.body = bytearray()
    cycle.flow.resume_reading()  # as `receive` does: a large body paused the socket
    cycle.message_event.clear()
    return body


def _too_large(cap: int, setting: str) -> BodyTooLargeError:
    return BodyTooLargeError(
        f"the request body is larger than this server takes ({cap} bytes, {setting})"
    )


def guarded_protocol(settings: ServerConfig) -> type[asyncio.Protocol]:
    """The HTTP protocol class, for uvicorn's `http=`, that applies `settings`' timeouts
    and connection cap."""
    seconds = {"headers": settings.header_timeout_s, "body": settings.body_timeout_s}
    return type("GuardedHttpProtocol", (_Guarded,), {"settings": settings, "_seconds": seconds})


class _Guarded(HttpToolsProtocol):
    """One connection: a deadline armed at each request's first byte for its headers,
    then for its body; the idle timer from the moment it opens."""

    settings: ClassVar[ServerConfig]
    _seconds: ClassVar[dict[str, float]]  # each deadline's time (`settings`), by part

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's (the same attributes: a test holds them to it), but for its two
        # loggers, looked up here once for every connection: `logging.getLogger` takes
        # logging's module lock, twice a connection.
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = _ERROR_LOG
        self.access_logger = _ACCESS_LOG
        self.access_log = _ACCESS_LOG.hasHandlers()
        self.parser = httptools.HttpRequestParser(self)
        # As uvicorn asks of httptools: a request that asks to close the connection is
        # still answered when bytes follow it. httptools before 0.6.3 has no leniencies.
        with contextlib.suppress(AttributeError):
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.ws_protocol_class = config.ws_protocol_class
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.limit_concurrency = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task = None
        # uvicorn types it an int; it only ever reaches loop.call_at.
        self.timeout_keep_alive = self.settings.idle_timeout_s  # type: ignore[assignment]
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.transport = None  # type: ignore[assignment]
        self.flow = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None
        self.pipeline = deque()
        self.scope = None  # type: ignore[assignment]
        self.headers = None  # type: ignore[assignment]
        self.expect_100_continue = False
        self.cycle = None  # type: ignore[assignment]
        self._deadline: asyncio.TimerHandle | None = None
        # The deadline in force (loop time) and what it is for; None: none. The timer
        # is moved only when it would fire late: a request's deadlines cost no timer
        # operation while one armed earlier is still due before them.
        self._due = 0.0
        self._part: Literal["headers", "body"] | None = None
        # Since when the connection is idle (loop time); None: a request is under way.
        # The idle timer (uvicorn's `timeout_keep_alive_task`) is likewise left armed
        # when a request comes and moved when it fires early, not made anew for every
        # response and cancelled by the next request's first bytes, as uvicorn does.
        self._idle_since: float | None = None
        self._upgrading = False  # the request being read asks for a WebSocket

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's, with the addresses the transport has already: uvicorn asks its
        # socket for them, which under uvloop makes two socket objects and five system
        # calls a connection.
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        # As uvicorn's: (host, port) of an IP socket, (path, None) of a Unix one here,
        # and no client address for a Unix socket's peer.
        self.server = (
            (str(sockname[0]), int(sockname[1]))
            if isinstance(sockname, tuple | list)
            else (sockname, None)
            if isinstance(sockname, str)
            else None
        )
        self.client = (
            (str(peername[0]), int(peername[1])) if isinstance(peername, tuple | list) else None
        )
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            client = self.client
            prefix = f"{client[0]}:{client[1]} - " if client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self._corked = _Corked(transport, self.loop)
        if len(self.connections) > self.settings.max_connections:
            self._reply(503, "the server has too many open connections; retry later")
            return
        # uvicorn starts its idle timer only once a response is sent.
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn's: on every read, and when a response completes.
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn's, but for the idle timer (`_idle`).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:  # the next request, read while this one was answered
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle()

    def _idle(self) -> None:
        """The connection is idle from now: closed if it stays so `idle_timeout_s`."""
        self._idle_since = now = self.loop.time()
        if self.timeout_keep_alive_task is None:  # else it fires sooner, and moves then
            self.timeout_keep_alive_task = self.loop.call_at(
                now + self.timeout_keep_alive, self._check_idle
            )

    def _check_idle(self) -> None:
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None:
            return  # busy: armed again when the connection is next idle
        due = since + self.timeout_keep_alive
        if self.loop.time() < due:
            self.timeout_keep_alive_task = self.loop.call_at(due, self._check_idle)
            return
        self.timeout_keep_alive_handler()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm("headers")

    # The parser's callbacks below are uvicorn's with the guard's work folded in, each in
    # one frame rather than uvicorn's under a super() call: they run for every request
    # (`on_header` for every header of it).

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.rstrip(b" \t").lower() == b"100-continue":
            self.expect_100_continue = True
        # llhttp keeps a value's trailing whitespace, which RFC 9110 (5.5) excludes.
        self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        self._upgrading = parser.should_upgrade() and self._should_upgrade()
        if self._upgrading:
            return  # the WebSocket protocol takes the connection (`data_received`)
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        root_path = self.root_path
        scope["path"] = root_path + path
        scope["raw_path"] = root_path.encode("ascii") + raw_path if root_path else raw_path
        scope["query_string"] = url.query or b""
        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        previous = self.cycle
        self.cycle = cycle = RequestResponseCycle(
            scope=scope,
            transport=self._corked,  # type: ignore[arg-type]
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: answered once the requests before it are
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))
        self._arm("body")

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if self._upgrading or cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._part = None  # its timer, if still set, finds no deadline when it fires
        cycle = self.cycle
        if self._upgrading or cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the socket is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def _arm(self, part: Literal["headers", "body"]) -> None:
        self._due = due = self.loop.time() + self._seconds[part]
        self._part = part
        deadline = self._deadline
        if deadline is None or deadline.when() > due:
            self._move(due)

    def _move(self, due: float) -> None:
        """The deadline's timer, set to fire at `due` (loop time)."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_at(due, self._check)

    def _disarm(self) -> None:
        self._part = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check(self) -> None:
        """The timer fired: the deadline in force has passed, or was moved later."""
        self._deadline = None
        part = self._part
        if part is None:
            return
        if self.loop.time() < self._due:
            self._deadline = self.loop.call_at(self._due, self._check)
            return
        self._part = None
        self._late(part)

    def _late(self, part: Literal["headers", "body"]) -> None:
        if self.transport.is_closing():
            return
        if part == "body" and self.pipeline:
            # Queued behind a request still being answered, the body is not being
            # read: the server is late, not the client. Its time starts again.
            self._arm("body")
            return
        # Late headers: the cycle is the request before, which may still be answering.
        # A late body: it is this request's, which may have been answered already.
        cycle = self.cycle
        if part == "headers":
            answering = cycle is not None and not cycle.response_complete
        else:
            answering = cycle is not None and cycle.response_started
        if answering:  # a status line now would corrupt or follow an answer
            self.transport.close()
            return
        setting = "server.header_timeout_s" if part == "headers" else "server.body_timeout_s"
        self._reply(408, f"the request's {part} took too long to arrive ({setting})")

    def _reply(self, status: int, message: str) -> None:
        """Answers `status` straight on the socket, outside any request, and closes it."""
        kind = "server_error" if status >= 500 else "invalid_request_error"
        code = "too_many_connections" if status == 503 else "request_timeout"
        body = orjson.dumps(error_body(message, type=kind, code=code))
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def send_whole(send: Send, status: int, lines: bytes, body: bytes) -> bool:
    """Answer `status` with the header `lines` (each `name: value\\r\\n`, lowercase
    names, the content length among them; values the caller has checked for the bytes
    uvicorn refuses in a header) and all of `body` in one write, as uvicorn's cycle writes
    the two messages of a response, when `send` is the cycle's own on a guarded
    connection (no middleware between); False, having done nothing, for any other
    `send`, or a connection uvicorn would wait on.

    uvicorn's `send` takes each header apart (case, framing, two searches for bytes a
    header may not hold), and its connection then writes the head and the body in two
    system calls, or holds the head for the turn's end (`_Corked`). Here the head is
    the cycle's default headers and `lines`, and the answer leaves at once."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return False
    corked: object = cycle.transport  # the guarded protocol's `_Corked`, typed a Transport
    if (
        type(corked) is not _Corked
        or cycle.response_started
        or cycle.flow.write_paused
        or cycle.scope["method"] == "HEAD"
    ):
        return False  # uvicorn's path: its errors, its wait for the client to read, HEAD
    if cycle.disconnected:
        return True  # as uvicorn's send: nobody to write to
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    head = [STATUS_LINE[status], _default_lines(cycle.default_headers), lines]
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    head += (b"\r\n", body)
    corked.write_whole(b"".join(head))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        corked.close()
    cycle.on_response()
    return True


def _default_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (the date, and any configured) as header lines: made
    again only when uvicorn's server replaces the list, once a second for the date."""
    global _defaults
    cached = _defaults  # read once: servers on other threads may replace it
    if cached[0] is headers:
        return cached[1]
    lines = b"".join(b"%b: %b\r\n" % header for header in headers)
    _defaults = (headers, lines)
    return lines


_defaults: tuple[object, bytes] = (None, b"")


class _Corked:
    """A connection's transport as its requests' cycles see it, writing less often:

    - a response's head (its status line and headers, one write) waits for the body's
      first write and leaves with it, in one send; uvicorn writes them apart: two
      system calls per answer, and two segments the client wakes up for;
    - after a send, what else is written in the same turn of the event loop (the
      events of a stream whose upstream sent them together) waits for the turn's end
      and leaves in one send, instead of one system call an event.

    Nothing waits past the loop's next turn: a head whose body is late (a stream's
    first event still on its way) leaves then on its own."""

    __slots__ = ("_buffer", "_head", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] | None = None
        """What waits for the turn's end; None: a write now goes out at once."""
        self._head: bytes | None = None
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if self._buffer is not None:
            self._buffer.append(data)
            return
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data
            self._schedule()
            return
        else:
            self._transport.write(data)
        self._buffer = []  # the rest of this turn's writes wait for its end
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        buffer, head = self._buffer, self._head
        self._buffer = self._head = None
        if head is not None:
            self._transport.write(head)
        if buffer:
            self._transport.write(b"".join(buffer))

    def write_whole(self, data: bytes) -> None:
        """A whole response: out now, unless writes of this turn wait (then after them)."""
        if self._buffer is None and self._head is None:
            self._transport.write(data)
        else:
            self.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
