"""An OpenAI-compatible upstream whose answers a test scripts from the conversation.

`policy(body)` receives each request body and returns the assistant message to
answer with; the upstream records every request so tests can read what the model
was shown (tool results, repair prompts, memory).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

Policy = Callable[[dict[str, Any]], dict[str, Any]]

_ids = itertools.count(1)


def say(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def call(*calls: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{next(_ids)}",
                "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(args).decode()},
            }
            for name, args in calls
        ],
    }


def tool_results(body: dict[str, Any]) -> list[str]:
    """Contents of the tool messages in the conversation, in order."""
    return [str(m.get("content")) for m in body["messages"] if m.get("role") == "tool"]


def model_turns(body: dict[str, Any]) -> int:
    """Assistant messages so far (how many model calls this run has made)."""
    return sum(1 for m in body["messages"] if m.get("role") == "assistant")


class AgentUpstream:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        """Each request's headers (lower-case names), in order."""
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        message = self.policy(body)
        usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        if not body.get("stream"):
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            data = {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
            return Response(orjson.dumps(data), media_type="application/json")

        async def events():  # type: ignore[no-untyped-def]
            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                data = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return b"data: " + orjson.dumps(data) + b"\n\n"

            yield chunk({"role": "assistant", "content": ""})
            for word in (message.get("content") or "").split(" "):
                if word:
                    yield chunk({"content": word + " "})
            for i, tc in enumerate(message.get("tool_calls") or []):
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": tc["id"],
                                "type": "function",
                                "function": {
                                    "name": tc["function"]["name"],
                                    "arguments": tc["function"]["arguments"],
                                },
                            }
                        ]
                    }
                )
            yield chunk({}, "tool_calls" if message.get("tool_calls") else "stop")
            final = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [],
                "usage": usage,
            }
            yield b"data: " + orjson.dumps(final) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
