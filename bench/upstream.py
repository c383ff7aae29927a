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
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import time
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
    args = parser.parse_args()
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
