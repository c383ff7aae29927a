"""The Responses API served by an Anthropic deployment: the openai SDK speaks Responses
to Areion, and Areion speaks the Messages API to a scripted Anthropic upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.support import serve_app

PRICE = {"input": 3.0, "output": 15.0}


class Anthropic:
    """Answers each Messages request with the next scripted reply (a body, or events)."""

    def __init__(self) -> None:
        self.replies: list[dict[str, Any] | list[dict[str, Any]]] = []
        self.bodies: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    async def _messages(self, request: Request) -> Response:
        self.bodies.append(orjson.loads(await request.body()))
        reply = self.replies.pop(0)
        if isinstance(reply, list):
            return StreamingResponse(_sse(reply), media_type="text/event-stream")
        return Response(orjson.dumps(reply), media_type="application/json")


async def _sse(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in events:
        yield f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


def _message(content: list[dict[str, Any]], stop_reason: str | None) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 40, "output_tokens": 10},
    }


@pytest.fixture
def served() -> Iterator[tuple[Anthropic, openai.AsyncOpenAI]]:
    upstream = Anthropic()
    with serve_app(upstream.app) as upstream_url:
        config = {
            "models": [
                {
                    "name": "claude",
                    "provider": "anthropic",
                    "model": "claude-test",
                    "base_url": upstream_url,
                    "api_key": "sk-ant-test",
                    "price": PRICE,
                }
            ],
            "store": "sqlite:///:memory:",
        }
        with serve_app(create_app(Runtime(parse_config(config)))) as url:
            yield upstream, openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def test_a_tool_round_trip_on_an_anthropic_deployment(
    served: tuple[Anthropic, openai.AsyncOpenAI],
) -> None:
    upstream, client = served
    upstream.replies.append(
        _message(
            [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                }
            ],
            "tool_use",
        )
    )
    upstream.replies.append(_message([{"type": "text", "text": "Cold in Oslo."}], "end_turn"))
    raw = await client.responses.with_raw_response.create(
        model="claude", input="Weather in Oslo?", instructions="Be brief.", tools=[TOOL]
    )
    first = raw.parse()
    [call] = first.output
    assert call.type == "function_call" and call.call_id == "toolu_1"
    assert orjson.loads(call.arguments) == {"city": "Oslo"}
    assert first.usage is not None and first.usage.input_tokens == 40
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx((40 * 3 + 10 * 15) / 1e6)
    assert upstream.bodies[0]["system"] == "Be brief."
    assert upstream.bodies[0]["tools"] == [
        {"name": "get_weather", "input_schema": TOOL["parameters"]}
    ]

    final = await client.responses.create(
        model="claude",
        input=[{"type": "function_call_output", "call_id": "toolu_1", "output": "-3C"}],
        previous_response_id=first.id,
        tools=[TOOL],
    )
    assert final.output_text == "Cold in Oslo."
    assert upstream.bodies[1]["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"}],
        },
    ]
    assert "system" not in upstream.bodies[1]  # instructions are not carried over


async def test_a_streamed_response_from_an_anthropic_deployment(
    served: tuple[Anthropic, openai.AsyncOpenAI],
) -> None:
    upstream, client = served
    started = {"input_tokens": 40, "output_tokens": 1}
    upstream.replies.append(
        [
            {"type": "message_start", "message": _message([], None) | {"usage": started}},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "!"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 3},
            },
            {"type": "message_stop"},
        ]
    )
    async with client.responses.stream(model="claude", input="Hello") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hi!"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 3)
    assert upstream.bodies[0]["stream"] is True
