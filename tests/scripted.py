"""A scripted OpenAI-compatible upstream, for tests that need exact control.

Each request takes the next scripted behaviour (or the default one) and the
upstream records what it received, so a test can assert both sides. Chat
completions and embeddings share the script and the record.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Behaviour:
    status: int = 200
    text: str = "Hello from upstream."
    delay: float = 0.0
    retry_after: str | None = None
    usage: dict[str, Any] | None = field(
        default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    )
    tool_calls: list[dict[str, Any]] | None = None
    # streaming: break the connection after this many content chunks
    break_after: int | None = None
    # ...once this is set (by the test, when it has read them), so the chunks sent
    # before the break reach the client before the broken connection does
    break_gate: threading.Event | None = None
    # set when a request takes this behaviour: the test knows the call is in flight
    arrived: threading.Event | None = None
    chunk_delay: float = 0.0
    # Hold the answer until the test sets this: requests in flight, for as long as the
    # test needs, without guessing a delay.
    hold: threading.Event | None = None


EMBEDDING_DIMENSIONS = 8
"""The length of the scripted upstream's vectors when the request sets no dimensions."""


def scripted_vector(
    item: str | list[int], dimensions: int, *, salt: str = "upstream"
) -> list[float]:
    """The unit vector the scripted upstream named `salt` gives an input: a function of
    the input (so a test can compute it), in float64 as a JSON upstream sends it."""
    seed = hashlib.sha256(orjson.dumps([salt, item])).digest()
    values = [(seed[i % len(seed)] - 127.5) * (1 + i) for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


class ScriptedUpstream:
    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.default = Behaviour()
        self.script: deque[Behaviour] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        # Called as each request arrives: a test can advance its manual clock here, so
        # a "slow" answer takes exactly as long as it says, without sleeping.
        self.on_request: Callable[[], None] = lambda: None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )

    def then(self, *behaviours: Behaviour) -> ScriptedUpstream:
        self.script.extend(behaviours)
        return self

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def _take(self, request: Request) -> tuple[dict[str, Any], Behaviour, Response | None]:
        """Record a request and play its behaviour: the body, the behaviour, and the error
        response it calls for (None: answer)."""
        body = orjson.loads(await request.body())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.times.append(time.monotonic())
        self.on_request()
        behaviour = self.script.popleft() if self.script else self.default
        if behaviour.arrived is not None:
            behaviour.arrived.set()
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.hold is not None:
            await asyncio.to_thread(behaviour.hold.wait, 60)
        if behaviour.status == 200:
            return body, behaviour, None
        headers = {"retry-after": behaviour.retry_after} if behaviour.retry_after else {}
        error = {
            "error": {
                "message": f"{self.name} says {behaviour.status}",
                "type": "server_error",
                "code": None,
            }
        }
        refusal = Response(
            orjson.dumps(error),
            status_code=behaviour.status,
            headers=headers,
            media_type="application/json",
        )
        return body, behaviour, refusal

    async def _embeddings(self, request: Request) -> Response:
        body, behaviour, refusal = await self._take(request)
        if refusal is not None:
            return refusal
        raw = body["input"]
        inputs = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else raw
        dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
        data = []
        for index, item in enumerate(inputs):
            vector = scripted_vector(item, dimensions, salt=self.name)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        # Backwards: a client must put them in order by `index`, as OpenAI's API allows.
        answer: dict[str, Any] = {"object": "list", "data": data[::-1], "model": body["model"]}
        if behaviour.usage is not None:  # one token a word, as far as this upstream counts
            tokens = sum(len(i) if isinstance(i, list) else len(i.split()) for i in inputs)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _chat(self, request: Request) -> Response:
        body, behaviour, refusal = await self._take(request)
        if refusal is not None:
            return refusal
        if body.get("stream"):
            return StreamingResponse(self._stream(body, behaviour), media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": behaviour.text}
        finish = "stop"
        if behaviour.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": behaviour.tool_calls}
            finish = "tool_calls"
        n = body.get("n") or 1  # n answers, each as long and as paid as one
        data: dict[str, Any] = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {"index": i, "message": message, "finish_reason": finish} for i in range(n)
            ],
        }
        if behaviour.usage is not None:
            data["usage"] = {**behaviour.usage}
            data["usage"]["completion_tokens"] *= n
            data["usage"]["total_tokens"] = (
                data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
            )
        return Response(orjson.dumps(data), media_type="application/json")

    async def _stream(self, body: dict[str, Any], behaviour: Behaviour):  # type: ignore[no-untyped-def]
        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": choices,
            }
            if usage is not None:
                data["usage"] = usage
            return b"data: " + orjson.dumps(data) + b"\n\n"

        yield event(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
        if behaviour.tool_calls:
            for i, call in enumerate(behaviour.tool_calls):
                yield event(
                    [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": i,
                                        "id": call["id"],
                                        "type": "function",
                                        "function": {
                                            "name": call["function"]["name"],
                                            "arguments": "",
                                        },
                                    }
                                ]
                            },
                            "finish_reason": None,
                        }
                    ]
                )
                yield event(
                    [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": i,
                                        "function": {"arguments": call["function"]["arguments"]},
                                    }
                                ]
                            },
                            "finish_reason": None,
                        }
                    ]
                )
            finish = "tool_calls"
        else:
            words = behaviour.text.split(" ")
            for i, word in enumerate(words):
                if behaviour.break_after is not None and i >= behaviour.break_after:
                    if behaviour.break_gate is not None:
                        await asyncio.to_thread(behaviour.break_gate.wait, 30)
                    raise RuntimeError("scripted upstream breaks the stream")
                if behaviour.chunk_delay:
                    await asyncio.sleep(behaviour.chunk_delay)
                yield event(
                    [
                        {
                            "index": 0,
                            "delta": {"content": word if i == 0 else " " + word},
                            "finish_reason": None,
                        }
                    ]
                )
            finish = "stop"
        yield event([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage") and behaviour.usage:
            yield event([], behaviour.usage)
        yield b"data: [DONE]\n\n"
