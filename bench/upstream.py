"""A minimal OpenAI-compatible chat-completions server for the benchmarks.

It does as little as possible per request so that, on a small machine, the
benchmark measures the client side and not this process: a raw ASGI app under
uvicorn (uvloop and httptools when installed), answers built once per model name
and cached as bytes, and `asyncio.sleep` to stand in for model latency.

    python bench/upstream.py --port 9100 --latency-ms 20

Routes: `POST /v1/chat/completions` (and `/chat/completions`), `GET /healthz`.
A streamed answer (`"stream": true`) is a role chunk, `--chunks` content chunks,
a finish chunk, a usage chunk when `stream_options.include_usage` is set, then
`[DONE]`. The first chunk is sent after `--latency-ms` (plus or minus up to
`--latency-jitter-ms`, uniformly); content chunks follow every `--chunk-interval-ms`
(0: back to back).

`--raw` serves the same routes and answers from a plain `asyncio.Protocol` with
httptools' parser on uvloop instead (keep-alive, Content-Length; a stream chunked, its
events back to back), the latency a `loop.call_later`: about a third of the CPU per
call of uvicorn's ASGI cycle (measured once, under wrk), for the saturation runs where
the server under test, not the upstream, must be what runs out of CPU
(`bench/workers.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TEXT = (
    "The quick brown fox jumps over the lazy dog while the benchmark keeps counting "
    "every millisecond that passes between the request and its answer"
)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_PROMPT_TOKENS = 24


class Answers:
    """Pre-encoded response bodies, one set per model name."""

    def __init__(self, chunks: int) -> None:
        self.chunks = max(1, chunks)
        self.created = int(time.time())
        self._complete: dict[str, bytes] = {}
        self._stream: dict[tuple[str, bool], list[bytes]] = {}

    def _pieces(self) -> list[str]:
        words = _TEXT.split(" ")
        per_chunk = max(1, len(words) // self.chunks)
        pieces = []
        for index in range(self.chunks):
            piece = words[index * per_chunk : (index + 1) * per_chunk] or words[:per_chunk]
            pieces.append(" ".join(piece) + " ")
        return pieces

    def _usage(self) -> dict[str, int]:
        completion = self.chunks * 2
        return {
            "prompt_tokens": _PROMPT_TOKENS,
            "completion_tokens": completion,
            "total_tokens": _PROMPT_TOKENS + completion,
        }

    def complete(self, model: str) -> bytes:
        body = self._complete.get(model)
        if body is None:
            body = orjson.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": self.created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(self._pieces())},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": self._usage(),
                }
            )
            self._complete[model] = body
        return body

    def stream(self, model: str, include_usage: bool) -> list[bytes]:
        """The SSE events: index 0 is the role chunk, the rest follow it."""
        key = (model, include_usage)
        events = self._stream.get(key)
        if events is None:
            common = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": model,
            }

            def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                return {**common, "choices": [choice]}

            payloads: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
            payloads += [chunk({"content": piece}) for piece in self._pieces()]
            payloads.append(chunk({}, "stop"))
            if include_usage:
                payloads.append({**common, "choices": [], "usage": self._usage()})
            events = [b"data: " + orjson.dumps(payload) + b"\n\n" for payload in payloads]
            events.append(b"data: [DONE]\n\n")
            self._stream[key] = events
        return events


def create_app(
    *, latency_ms: float, chunks: int, chunk_interval_ms: float, jitter_ms: float = 0.0
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app."""
    answers = Answers(chunks)
    latency = latency_ms / 1000.0
    jitter = min(jitter_ms, latency_ms) / 1000.0
    rng = random.Random(0)
    interval = chunk_interval_ms / 1000.0

    async def respond(send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await respond(send, 200, b'{"status":"ok"}')
            return
        if scope["method"] != "POST" or not path.endswith("/chat/completions"):
            await respond(send, 404, b'{"error":{"message":"not found","type":"not_found"}}')
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = orjson.loads(body)
            model = str(request["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await respond(send, 400, b'{"error":{"message":"bad request","type":"invalid"}}')
            return
        if latency:
            await asyncio.sleep(latency + rng.uniform(-jitter, jitter) if jitter else latency)
        if not request.get("stream"):
            await respond(send, 200, answers.complete(model))
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = answers.stream(model, include_usage)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for position, event in enumerate(events):
            if interval and 0 < position <= answers.chunks:
                await asyncio.sleep(interval)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


# ---------------------------------------------------------------- --raw


def _http_response(status: bytes, body: bytes, headers: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n" + headers + b"\r\n" + body
    )  # fmt: skip


_RAW_OK = _http_response(b"200 OK", b'{"status":"ok"}')
_RAW_NOT_FOUND = _http_response(
    b"404 Not Found", b'{"error":{"message":"not found","type":"not_found"}}'
)
_RAW_BAD = _http_response(
    b"400 Bad Request", b'{"error":{"message":"bad request","type":"invalid"}}'
)
_RAW_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


class RawAnswers:
    """Whole HTTP responses, pre-encoded, and the latency to wait before each answer."""

    def __init__(self, *, latency_ms: float, chunks: int, jitter_ms: float) -> None:
        self.answers = Answers(chunks)
        self.latency = latency_ms / 1000.0
        self.jitter = min(jitter_ms, latency_ms) / 1000.0
        self.rng = random.Random(0)
        self._complete: dict[str, bytes] = {}
        self._stream: dict[tuple[str, bool], bytes] = {}

    def respond(self, method: bytes, url: bytes, body: bytes) -> tuple[bytes, float]:
        """The response to one request, and how long to hold it back (seconds)."""
        path = url.split(b"?", 1)[0]
        if path == b"/healthz":
            return _RAW_OK, 0.0
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            return _RAW_NOT_FOUND, 0.0
        try:
            request = orjson.loads(body)
            model = str(request["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _RAW_BAD, 0.0
        delay = self.latency
        if self.jitter:
            delay += self.rng.uniform(-self.jitter, self.jitter)
        if not request.get("stream"):
            response = self._complete.get(model)
            if response is None:
                response = _http_response(b"200 OK", self.answers.complete(model))
                self._complete[model] = response
            return response, delay
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        key = (model, include_usage)
        streamed = self._stream.get(key)
        if streamed is None:
            events = self.answers.stream(model, include_usage)
            chunked = b"".join(b"%x\r\n%b\r\n" % (len(event), event) for event in events)
            streamed = _RAW_SSE_HEAD + chunked + b"0\r\n\r\n"
            self._stream[key] = streamed
        return streamed, delay


class RawConnection(asyncio.Protocol):
    """One client connection: requests parsed by httptools, answered in the order they
    came (a pipelined request waits for the one before it)."""

    def __init__(self, answers: RawAnswers) -> None:
        import httptools

        self.answers = answers
        self.parser = httptools.HttpRequestParser(self)
        self.parse_error: type[Exception] = httptools.HttpParserError
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.url = b""
        self.body: list[bytes] = []
        # Each request's slot: [response or None until its latency is over, keep-alive].
        self.pending: deque[list[Any]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.parse_error:
            if self.transport is not None:
                self.transport.write(_RAW_BAD)
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        response, delay = self.answers.respond(
            self.parser.get_method(), self.url, b"".join(self.body)
        )
        self.url, self.body = b"", []
        slot: list[Any] = [None, self.parser.should_keep_alive()]
        self.pending.append(slot)
        if delay > 0:
            self.loop.call_later(delay, self._ready, slot, response)
        else:
            self._ready(slot, response)

    def _ready(self, slot: list[Any], response: bytes) -> None:
        slot[0] = response
        while self.pending and self.pending[0][0] is not None and self.transport is not None:
            response, keep_alive = self.pending.popleft()
            self.transport.write(response)
            if not keep_alive:
                self.transport.close()


async def serve_raw(host: str, port: int, answers: RawAnswers) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawConnection(answers), host, port, backlog=4096)
    await server.serve_forever()


def main_raw(args: argparse.Namespace) -> None:
    for module in ("httptools", "uvloop"):
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"--raw needs {module}: pip install {module}")
    if args.chunk_interval_ms:
        raise SystemExit("--raw sends a stream's events back to back: drop --chunk-interval-ms")
    import uvloop

    answers = RawAnswers(
        latency_ms=args.latency_ms, chunks=args.chunks, jitter_ms=args.latency_jitter_ms
    )
    uvloop.run(serve_raw(args.host, args.port, answers))


def main() -> None:
    parser = argparse.ArgumentParser(description="Minimal OpenAI-compatible benchmark upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=20.0,
        help="simulated model latency before the answer (or first chunk)",
    )
    parser.add_argument(
        "--latency-jitter-ms",
        type=float,
        default=0.0,
        help="spread latency uniformly by +/- this much (de-synchronizes closed-loop clients)",
    )
    parser.add_argument("--chunks", type=int, default=8, help="content chunks in a stream")
    parser.add_argument(
        "--chunk-interval-ms", type=float, default=0.0, help="pause between streamed content chunks"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="a plain asyncio.Protocol with httptools on uvloop instead of uvicorn (less CPU)",
    )
    args = parser.parse_args()
    if args.raw:
        main_raw(args)
        return
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    has_httptools = importlib.util.find_spec("httptools") is not None
    uvicorn.run(
        create_app(
            latency_ms=args.latency_ms,
            chunks=args.chunks,
            chunk_interval_ms=args.chunk_interval_ms,
            jitter_ms=args.latency_jitter_ms,
        ),
        host=args.host,
        port=args.port,
        loop="uvloop" if has_uvloop else "asyncio",
        http="httptools" if has_httptools else "h11",
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
