"""A scripted OpenAI-compatible upstream, for tests that need exact control.

Each request takes the next scripted behaviour (or the default one) and the
upstream records what it received, so a test can assert both sides.
"""

from __future__ import annotations

import asyncio
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
            ]
        )

    def then(self, *behaviours: Behaviour) -> ScriptedUpstream:
        self.script.extend(behaviours)
        return self

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def _chat(self, request: Request) -> Response:
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
        if behaviour.status != 200:
            headers = {"retry-after": behaviour.retry_after} if behaviour.retry_after else {}
            error = {
                "error": {
                    "message": f"{self.name} says {behaviour.status}",
                    "type": "server_error",
                    "code": None,
                }
            }
            return Response(
                orjson.dumps(error),
                status_code=behaviour.status,
                headers=headers,
                media_type="application/json",
            )
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
