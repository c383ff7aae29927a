"""AnthropicProvider against a scripted Anthropic-compatible upstream on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from areion.config import ModelConfig
from areion.errors import RateLimitedError, RequestError, UpstreamError
from areion.providers.anthropic import AnthropicProvider
from areion.types import ChatRequest, Message, StreamChunk, ToolCallDelta
from tests.support import free_port, serve_app


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    events: list[dict[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Upstream:
    url: str = ""
    replies: list[Reply] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


UPSTREAM = Upstream()


async def _sse(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in events:
        frame = f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"
        # Split frames across writes so the provider must reassemble lines.
        middle = len(frame) // 2
        yield frame[:middle]
        yield frame[middle:]


async def _messages(request: Request) -> Response:
    UPSTREAM.bodies.append(orjson.loads(await request.body()))
    UPSTREAM.headers.append(dict(request.headers))
    reply = UPSTREAM.replies.pop(0)
    if reply.events is not None:
        return StreamingResponse(_sse(reply.events), media_type="text/event-stream")
    return Response(
        orjson.dumps(reply.body),
        status_code=reply.status,
        headers=reply.headers,
        media_type="application/json",
    )


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/messages", _messages, methods=["POST"])])
    with serve_app(app) as url:
        yield url


@pytest.fixture
def upstream(upstream_url: str) -> Upstream:
    UPSTREAM.url = upstream_url
    UPSTREAM.replies.clear()
    UPSTREAM.bodies.clear()
    UPSTREAM.headers.clear()
    return UPSTREAM


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[AnthropicProvider]:
    config = ModelConfig(
        name="claude",
        provider="anthropic",
        model="claude-test",
        base_url=upstream.url + "/",
        api_key="sk-ant-test",  # type: ignore[arg-type]
        headers={"anthropic-beta": "tools-2024"},
    )
    provider = AnthropicProvider(config, deployment="claude-1")
    yield provider
    await provider.aclose()


def _request(**fields: Any) -> ChatRequest:
    return ChatRequest(
        model="claude",
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="Hello"),
        ],
        **fields,
    )


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


async def _collect(provider: AnthropicProvider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


async def test_complete_text(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.replies.append(
        Reply(
            body={
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-test-20250101",
                "content": [{"type": "text", "text": "Hi there."}],
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": 12,
                    "output_tokens": 4,
                    "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 0,
                },
            }
        )
    )
    response = await provider.complete(_request(temperature=0.5, extra={"seed": 1}))

    assert upstream.bodies == [
        {
            "model": "claude-test",
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4096,
            "temperature": 0.5,
        }
    ]
    headers = upstream.headers[0]
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "tools-2024"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers

    assert response.id == "msg_01"
    assert response.model == "claude-test-20250101"
    assert response.message.role == "assistant"
    assert response.message.content == "Hi there."
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.cached_tokens) == (112, 100)
    assert response.usage.completion_tokens == 4


async def test_complete_tool_use(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.replies.append(
        Reply(
            body={
                "id": "msg_02",
                "model": "claude-test",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"c": "Oslo"}}
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 30, "output_tokens": 9},
            }
        )
    )
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    response = await provider.complete(
        _request(tools=tools, tool_choice={"type": "function", "function": {"name": "weather"}})
    )
    body = upstream.bodies[0]
    assert body["tools"] == [
        {"name": "weather", "input_schema": {"type": "object", "properties": {}}}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "weather"}
    assert response.message.content is None
    assert response.message.tool_calls is not None
    assert [(c.id, c.name, c.arguments) for c in response.message.tool_calls] == [
        ("toolu_1", "weather", '{"c":"Oslo"}')
    ]
    assert response.choices[0].finish_reason == "tool_calls"


def _start(usage: dict[str, int]) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_s1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test-20250101",
            "content": [],
            "stop_reason": None,
            "usage": usage,
        },
    }


async def test_stream_text(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.replies.append(
        Reply(
            events=[
                _start({"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1}),
                {"type": "ping"},
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Hello"},
                },
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": ", world"},
                },
                {"type": "content_block_stop", "index": 0},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 7},
                },
                {"type": "message_stop"},
            ]
        )
    )
    chunks = await _collect(provider, _request(max_tokens=64))

    assert upstream.bodies[0]["stream"] is True
    assert upstream.bodies[0]["max_tokens"] == 64
    assert {(c.id, c.model) for c in chunks} == {("msg_s1", "claude-test-20250101")}
    assert chunks[0].role == "assistant"
    assert "".join(c.content or "" for c in chunks) == "Hello, world"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    last = chunks[-1]
    assert last.usage is not None
    assert (last.role, last.content, last.finish_reason, last.tool_calls) == (None,) * 4
    assert (last.usage.prompt_tokens, last.usage.cached_tokens) == (25, 5)
    assert last.usage.completion_tokens == 7
    assert last.to_openai()["choices"] == []


async def test_stream_tool_use(provider: AnthropicProvider, upstream: Upstream) -> None:
    def tool_start(index: int, call_id: str) -> dict[str, Any]:
        return {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": call_id, "name": "weather", "input": {}},
        }

    def json_delta(index: int, part: str) -> dict[str, Any]:
        return {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": part},
        }

    upstream.replies.append(
        Reply(
            events=[
                _start({"input_tokens": 50, "output_tokens": 1}),
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Checking both."},
                },
                {"type": "content_block_stop", "index": 0},
                tool_start(1, "toolu_a"),
                json_delta(1, '{"city": '),
                json_delta(1, '"Paris"}'),
                {"type": "content_block_stop", "index": 1},
                tool_start(2, "toolu_b"),
                json_delta(2, '{"city": "Rome"}'),
                {"type": "content_block_stop", "index": 2},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use"},
                    "usage": {"output_tokens": 30},
                },
                {"type": "message_stop"},
            ]
        )
    )
    chunks = await _collect(provider, _request())

    deltas: list[ToolCallDelta] = [d for c in chunks for d in c.tool_calls or ()]
    assert [(d.index, d.id, d.name) for d in deltas if d.id] == [
        (0, "toolu_a", "weather"),
        (1, "toolu_b", "weather"),
    ]
    arguments = {0: "", 1: ""}
    for delta in deltas:
        arguments[delta.index] += delta.arguments
    assert arguments == {0: '{"city": "Paris"}', 1: '{"city": "Rome"}'}
    assert "".join(c.content or "" for c in chunks) == "Checking both."
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30


async def test_stream_error_event_raises(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.replies.append(
        Reply(
            events=[
                _start({"input_tokens": 5, "output_tokens": 1}),
                _error("overloaded_error", "Overloaded"),
            ]
        )
    )
    with pytest.raises(UpstreamError, match="Overloaded"):
        await _collect(provider, _request())


async def test_stream_cut_before_message_stop_raises(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    upstream.replies.append(Reply(events=[_start({"input_tokens": 5, "output_tokens": 1})]))
    with pytest.raises(UpstreamError, match="message_stop"):
        await _collect(provider, _request())


async def test_429_is_rate_limited_with_retry_after(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    limited = Reply(
        status=429,
        body=_error("rate_limit_error", "Number of requests has exceeded your rate limit"),
        headers={"retry-after": "3"},
    )
    upstream.replies.extend([limited, limited])
    with pytest.raises(RateLimitedError) as caught:
        await provider.complete(_request())
    assert caught.value.retry_after == 3.0
    assert "exceeded your rate limit" in caught.value.message
    with pytest.raises(RateLimitedError) as caught_stream:
        await _collect(provider, _request())
    assert caught_stream.value.retry_after == 3.0


async def test_529_overloaded_is_retryable(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.replies.append(Reply(status=529, body=_error("overloaded_error", "Overloaded")))
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(_request())
    assert caught.value.retryable
    assert caught.value.upstream_status == 529
    assert "Overloaded" in caught.value.message
    assert not isinstance(caught.value, RequestError)


async def test_400_is_a_request_error(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.replies.append(
        Reply(status=400, body=_error("invalid_request_error", "max_tokens: too large"))
    )
    with pytest.raises(RequestError, match="max_tokens: too large"):
        await provider.complete(_request())


async def test_base_url_ending_in_v1_is_not_doubled(upstream: Upstream) -> None:
    upstream.replies.append(
        Reply(body={"id": "m", "content": [{"type": "text", "text": "ok"}], "stop_reason": None})
    )
    config = ModelConfig(name="c", provider="anthropic", base_url=upstream.url + "/v1")
    provider = AnthropicProvider(config, deployment="c")
    try:
        response = await provider.complete(_request())
    finally:
        await provider.aclose()
    assert response.message.content == "ok"
    assert response.model == "c"
    assert "x-api-key" not in upstream.headers[0]


async def test_connection_refused_is_an_upstream_error() -> None:
    config = ModelConfig(name="c", provider="anthropic", base_url=f"http://127.0.0.1:{free_port()}")
    provider = AnthropicProvider(config, deployment="c")
    try:
        with pytest.raises(UpstreamError, match="cannot connect"):
            await provider.complete(_request())
    finally:
        await provider.aclose()
