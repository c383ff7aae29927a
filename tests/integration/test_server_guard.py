"""Slow, stalled, oversized and too many clients, over real sockets on loopback.

The deadlines are set short (0.5 s); a test waits for the server to close a socket
within a generous bound and never asserts that anything took at least some time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from areion import Runtime
from areion.config import ServerConfig, parse_config
from areion.server import create_app
from areion.server.guard import guarded_protocol
from tests.support import serve_app

BOUND_S = 10.0  # far past any deadline below: reaching it means the server never acted
# Only the deadline a test is about is short: a test never races the others.
LONG = {"header_timeout_s": 30, "body_timeout_s": 30, "idle_timeout_s": 30}
CHAT = "/v1/chat/completions"


@contextlib.contextmanager
def _serve(**server: Any) -> Iterator[tuple[str, int]]:
    """Areion on the protocol `areion serve` runs, with `server:` settings `server`."""
    config = parse_config(
        {
            "models": [
                {"name": "fast", "provider": "sim", "model": "sim-fast", "time_scale": 0.001}
            ],
            "store": "sqlite:///:memory:",
            "server": server,
        }
    )
    app = create_app(Runtime(config))
    with serve_app(app, http=guarded_protocol(config.server)) as url:
        yield url, urlsplit(url).port or 0


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(BOUND_S)
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the socket (within BOUND_S)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _error_of(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return int(head.split()[1]), error


def _chat_body(content: str = "hi") -> bytes:
    return json.dumps(
        {"model": "fast", "messages": [{"role": "user", "content": content}]}
    ).encode()


# --- timeouts ------------------------------------------------------------------------


def test_a_connection_that_never_sends_is_closed() -> None:
    with _serve(**{**LONG, "idle_timeout_s": 0.5}) as (_, port), _connect(port) as sock:
        assert _until_closed(sock) == b""


def test_a_connection_idle_after_its_answers_is_closed() -> None:
    """The idle timer armed when the connection opened is moved, not left to close it
    mid-use, and still closes it once it is idle past its answers. (2 s, not 0.5: the
    second request must not race the deadline on a busy machine.)"""
    request = b"GET /healthz HTTP/1.1\r\nhost: areion\r\n\r\n"
    with _serve(**{**LONG, "idle_timeout_s": 2.0}) as (_, port), _connect(port) as sock:
        for _ in range(2):
            sock.sendall(request)
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, f"the server closed the connection mid-use after {reply!r}"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 ")
        assert _until_closed(sock) == b""


def test_unfinished_headers_are_answered_408_and_closed() -> None:
    with _serve(**{**LONG, "header_timeout_s": 0.5}) as (_, port), _connect(port) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: areion\r\n")
        status, error = _error_of(_until_closed(sock))
    assert status == 408 and "server.header_timeout_s" in error["message"]


def test_headers_sent_a_byte_at_a_time_still_time_out() -> None:
    """The deadline is for the whole of the headers: trickling bytes does not extend it."""
    request = b"GET /healthz HTTP/1.1\r\nhost: areion\r\nx-slow: " + b"a" * 10_000
    with _serve(**{**LONG, "header_timeout_s": 0.5}) as (_, port), _connect(port) as sock:
        deadline = time.monotonic() + BOUND_S
        for byte in request:
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable or time.monotonic() > deadline:
                break
            sock.sendall(bytes([byte]))
        status, _ = _error_of(_until_closed(sock))
    assert status == 408


def test_a_half_sent_body_is_answered_408_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    body = _chat_body()
    head = f"POST {CHAT} HTTP/1.1\r\nhost: areion\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n\r\n"
    with _serve(**{**LONG, "body_timeout_s": 0.5}) as (_, port), _connect(port) as sock:
        sock.sendall(head.encode() + body[:10])
        status, error = _error_of(_until_closed(sock))
    assert status == 408 and "server.body_timeout_s" in error["message"]
    # The handler waiting for the body learns the client is gone: not a server error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_requests_in_time_share_one_connection() -> None:
    with _serve(**LONG) as (_, port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND_S)
        for _ in range(3):
            connection.request("POST", CHAT, body=_chat_body())
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["choices"]
            assert not response.will_close
        connection.close()


# --- the connection cap ------------------------------------------------------------


def test_a_connection_past_the_cap_is_answered_503_and_closed() -> None:
    with _serve(**LONG, max_connections=2) as (_, port):
        first, second = _connect(port), _connect(port)
        with first, second, _connect(port) as third:
            status, error = _error_of(_until_closed(third))
            assert status == 503 and error["code"] == "too_many_connections"
            first.sendall(b"GET /healthz HTTP/1.1\r\nhost: areion\r\n\r\n")
            assert first.recv(65536).startswith(b"HTTP/1.1 200")


# --- the body cap ----------------------------------------------------------------------


def test_a_10_mb_prompt_is_413_by_default() -> None:
    with _serve() as (url, _):
        response = httpx.post(url + CHAT, content=_chat_body("x" * 10_000_000), timeout=BOUND_S)
    assert response.status_code == 413, response.text[:200]
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert "server.max_body_bytes" in error["message"] and str(8 * 1024 * 1024) in error["message"]


def test_a_chunked_body_past_the_cap_is_413() -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: the server must count
        yield b'{"model": "fast", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    with _serve(max_body_bytes=2000) as (url, _):
        response = httpx.post(url + CHAT, content=chunks(), timeout=BOUND_S)
        assert response.status_code == 413, response.text
        assert "server.max_body_bytes" in response.json()["error"]["message"]
        assert httpx.post(url + CHAT, content=_chat_body(), timeout=BOUND_S).status_code == 200


def test_the_connection_stays_usable_after_a_413() -> None:
    with _serve(max_body_bytes=2000) as (_, port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND_S)
        connection.request("POST", CHAT, body=_chat_body("x" * 100_000))
        response = connection.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"]["message"]
        sock = connection.sock
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200 and connection.sock is sock
        connection.close()


# --- fewer writes ------------------------------------------------------------------------


async def _until(event: threading.Event) -> bytes:
    """b"" once `event` is set; b"late" if it is not within BOUND_S (the client never
    got what it waited for), which then goes in the body and fails the test."""
    deadline = time.monotonic() + BOUND_S
    while not event.is_set():
        if time.monotonic() > deadline:
            return b"late"
        await asyncio.sleep(0.005)
    return b""


def _raw_app(seen: dict[str, threading.Event]) -> Any:
    """A bare ASGI app: `/burst` writes its head, waits until the client has it, writes
    two parts of a chunked body in one turn of the loop, then waits until the client
    has both before it writes the last; other paths answer a small fixed body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] != "/burst":
            body = scope["path"].encode()
            headers = [(b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        late = await _until(seen["head"])
        await send({"type": "http.response.body", "body": late + b"one.", "more_body": True})
        await send({"type": "http.response.body", "body": b"two.", "more_body": True})
        late = await _until(seen["both"])
        await send({"type": "http.response.body", "body": late + b"three.", "more_body": False})

    return app


def test_writes_held_for_a_turn_of_the_loop_still_leave_without_a_later_write() -> None:
    # The head and the parts written in one turn are held to go out together; nothing
    # may wait for a write that only comes once the client has read what was held.
    seen = {"head": threading.Event(), "both": threading.Event()}
    config = parse_config({"models": [{"name": "m", "provider": "sim"}]})
    with serve_app(_raw_app(seen), http=guarded_protocol(config.server)) as url:
        sock = _connect(urlsplit(url).port or 0)
        with sock:
            sock.sendall(b"GET /burst HTTP/1.1\r\nhost: x\r\n\r\n")
            received = b""
            for part, until in ((b"\r\n\r\n", "head"), (b"two.\r\n", "both")):
                while part not in received:
                    chunk = sock.recv(65536)
                    assert chunk, received
                    received += chunk
                seen[until].set()
            while not received.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"4\r\none.\r\n4\r\ntwo.\r\n6\r\nthree.\r\n0\r\n\r\n"


def test_pipelined_answers_keep_their_order_and_bytes() -> None:
    config = parse_config({"models": [{"name": "m", "provider": "sim"}]})
    events = {"head": threading.Event(), "both": threading.Event()}
    with serve_app(_raw_app(events), http=guarded_protocol(config.server)) as url:
        sock = _connect(urlsplit(url).port or 0)
        with sock:
            sock.sendall(b"".join(f"GET /{n} HTTP/1.1\r\nhost: x\r\n\r\n".encode() for n in "abc"))
            received = b""
            while received.count(b"HTTP/1.1 200") < 3 or not received.endswith(b"/c"):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
    answers = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert [answer.rpartition(b"\r\n\r\n")[2] for answer in answers] == [b"/a", b"/b", b"/c"]


def test_a_streamed_chat_answer_arrives_whole_on_the_guarded_protocol() -> None:
    with _serve(**LONG) as (url, _):
        body = json.dumps(
            {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        )
        with httpx.Client(base_url=url, timeout=BOUND_S) as client:
            response = client.post(CHAT, content=body)
            plain = client.post(CHAT, content=_chat_body())
    assert response.status_code == 200
    events = [line for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1]
        for choice in json.loads(event[6:])["choices"]
    )
    assert text
    assert plain.status_code == 200
    assert plain.json()["choices"][0]["message"]["content"]


# --- a chat answer written whole (no middleware between it and the connection) ---------


def _answers(received: bytes) -> list[tuple[dict[bytes, bytes], bytes]]:
    """The answers in `received`, each its headers by lower-case name and its body, as
    their content-length frames them."""
    answers = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        assert status == b"HTTP/1.1 200 OK", head
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        length = int(headers[b"content-length"])
        answers.append((headers, rest[:length]))
        received = rest[length:]
    return answers


def test_pipelined_chat_answers_written_whole_keep_order_and_framing() -> None:
    """Without an access log, a chat answer leaves in one write past uvicorn's messages:
    each still framed by its length, dated, in the order asked, on a connection kept
    open until the client's `connection: close`, which the last answer repeats."""
    body = _chat_body()
    requests = [
        f"POST {CHAT} HTTP/1.1\r\nhost: areion\r\ncontent-type: application/json\r\n"
        f"x-request-id: {name}\r\n{close}content-length: {len(body)}\r\n\r\n".encode()
        + body
        for name, close in (("a", ""), ("b", ""), ("c", "connection: close\r\n"))
    ]
    with _serve(**LONG, access_log=False) as (_, port), _connect(port) as sock:
        sock.sendall(b"".join(requests))
        answers = _answers(_until_closed(sock))
    assert [headers[b"x-client-request-id"] for headers, _ in answers] == [b"a", b"b", b"c"]
    for headers, content in answers:
        assert headers[b"content-type"] == b"application/json" and b"date" in headers
        assert json.loads(content)["choices"][0]["message"]["content"]
    assert [headers.get(b"connection") for headers, _ in answers] == [None, None, b"close"]


def test_an_http_1_0_chat_answer_written_whole_closes_the_connection() -> None:
    body = _chat_body()
    request = (
        f"POST {CHAT} HTTP/1.0\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    with _serve(**LONG, access_log=False) as (_, port), _connect(port) as sock:
        sock.sendall(request)
        [(headers, content)] = _answers(_until_closed(sock))
    assert headers[b"connection"] == b"close"
    assert json.loads(content)["object"] == "chat.completion"


def _chat_request(body: bytes, *headers: str) -> bytes:
    lines = "".join(f"{header}\r\n" for header in headers)
    return (
        f"POST {CHAT} HTTP/1.1\r\nhost: areion\r\ncontent-type: application/json\r\n"
        f"{lines}content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _read_answers(sock: socket.socket, count: int) -> list[tuple[dict[bytes, bytes], bytes]]:
    """The next `count` answers on `sock`, each taken once its whole head and the body
    its content-length frames have arrived, however the bytes come in."""
    answers: list[tuple[dict[bytes, bytes], bytes]] = []
    received = b""
    while len(answers) < count:
        head, found, rest = received.partition(b"\r\n\r\n")
        if found:
            [(headers, _)] = _answers(head + found)
            length = int(headers[b"content-length"])
            if len(rest) >= length:
                answers.append((headers, rest[:length]))
                received = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        received += chunk
    return answers


def test_a_chat_body_arriving_in_pieces_is_read_whole() -> None:
    body = _chat_body("pieces")
    request = _chat_request(body, "x-request-id: pieces")
    with _serve(**LONG, access_log=False) as (_, port), _connect(port) as sock:
        sock.sendall(request[:-20])
        time.sleep(0.2)  # the call's task is waiting for the rest (or not: either way)
        sock.sendall(request[-20:])
        [(headers, content)] = _read_answers(sock, 1)
    assert headers[b"x-client-request-id"] == b"pieces"
    assert json.loads(content)["object"] == "chat.completion"


def test_a_body_past_the_read_buffer_then_a_pipelined_call_are_both_answered() -> None:
    """A body past uvicorn's 64 KiB read buffer, whole when its call reads it, with a
    request pipelined behind it: both are read whole and answered in order."""
    big, small = _chat_body("x" * 100_000), _chat_body("after")
    with _serve(**LONG, access_log=False) as (_, port), _connect(port) as sock:
        sock.sendall(
            _chat_request(big, "x-request-id: big") + _chat_request(small, "x-request-id: small")
        )
        answers = _read_answers(sock, 2)
    assert [headers[b"x-client-request-id"] for headers, _ in answers] == [b"big", b"small"]


def test_a_client_expecting_100_continue_is_told_to_send_its_body() -> None:
    body = _chat_body()
    request = _chat_request(body, "expect: 100-continue  ", "x-request-id: trailing \t")
    head, _, _ = request.partition(b"\r\n\r\n")
    with _serve(**LONG, access_log=False) as (_, port), _connect(port) as sock:
        sock.sendall(head + b"\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        [(headers, content)] = _read_answers(sock, 1)
    # A header value's trailing whitespace is not part of it (RFC 9110, 5.5).
    assert headers[b"x-client-request-id"] == b"trailing"
    assert json.loads(content)["object"] == "chat.completion"


async def _addresses(scope: Any, receive: Any, send: Any) -> None:
    """An app answering a request's `client` and `server`, as its scope gives them."""
    if scope["type"] != "http":
        return
    body = json.dumps({"client": scope["client"], "server": scope["server"]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_request_knows_its_client_and_server_addresses(host: str) -> None:
    settings = ServerConfig.model_validate(LONG)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with serve_app(_addresses, host=host, http=guarded_protocol(settings)) as url:
        port = urlsplit(url).port
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(BOUND_S)
            sock.connect((host, port))
            sock.sendall(b"GET / HTTP/1.1\r\nhost: areion\r\nconnection: close\r\n\r\n")
            reply = _until_closed(sock)
            mine = sock.getsockname()
    seen = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert seen == {"client": [host, mine[1]], "server": [host, port]}


def test_a_guarded_connection_starts_with_every_attribute_uvicorns_has() -> None:
    """The guarded protocol's constructor stands in for uvicorn's: it sets every
    attribute uvicorn's own sets, to the same values (a uvicorn that adds one fails
    here, not in a connection)."""

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        config = uvicorn.Config(_addresses, lifespan="off")
        config.load()
        state = ServerState()
        settings = ServerConfig.model_validate(LONG)
        theirs = HttpToolsProtocol(config=config, server_state=state, app_state={"a": 1})
        ours = guarded_protocol(settings)(config=config, server_state=state, app_state={"a": 1})
        return vars(theirs), vars(ours)

    theirs, ours = asyncio.run(both())
    assert set(theirs) <= set(ours)
    for name, value in theirs.items():
        if name == "parser":
            assert type(ours[name]) is type(value)
        elif name == "timeout_keep_alive":
            assert ours[name] == LONG["idle_timeout_s"]  # the guard's idle timeout
        else:
            assert ours[name] == value, name
