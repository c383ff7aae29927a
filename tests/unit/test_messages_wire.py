"""The Anthropic Messages ingress's translation (server/messages_wire.py), without a
network: request bodies onto `ChatRequest`, answers and streams back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from areion.config import ModelConfig
from areion.errors import RequestError, StreamInterruptedError, UpstreamError
from areion.providers.anthropic import reasoning_effort, request_body, stop_reason
from areion.server.messages_wire import (
    error_type,
    message_events,
    message_json,
    parse_messages_request,
)
from areion.streaming import ChatStream
from areion.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    Message,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)

PNG = "iVBORw0KGgo="


def _model(provider: str = "openai", *, reasoning: bool = False) -> ModelConfig:
    return ModelConfig(
        name="m",
        provider=provider,  # type: ignore[arg-type]
        model="up",
        base_url="http://127.0.0.1:1/v1",
        reasoning=reasoning,
    )


def _parse(body: dict[str, Any], targets: Sequence[ModelConfig] = ()) -> ChatRequest:
    base = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    return parse_messages_request(orjson.dumps({**base, **body}), lambda _: targets)


def _refused(body: dict[str, Any], targets: Sequence[ModelConfig] = ()) -> RequestError:
    with pytest.raises(RequestError) as refused:
        _parse(body, targets)
    return refused.value


def test_content_blocks_become_openai_messages() -> None:
    request = _parse(
        {
            "system": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "t1", "name": "see", "input": {"a": 1}},
                        {"type": "tool_use", "id": "t2", "name": "see", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "is_error": True,
                            "content": [{"type": "text", "text": "boom"}],
                        },
                        {"type": "text", "text": "Go on."},
                    ],
                },
            ],
        }
    )
    assert [m.to_openai() for m in request.messages] == [
        {
            "role": "system",
            "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "see", "arguments": '{"a":1}'},
                },
                {"id": "t2", "type": "function", "function": {"name": "see", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "ok", "tool_call_id": "t1"},
        {
            "role": "tool",
            "content": [{"type": "text", "text": "Error:"}, {"type": "text", "text": "boom"}],
            "tool_call_id": "t2",
        },
        {"role": "user", "content": "Go on."},
    ]


def test_parameters_map() -> None:
    request = _parse(
        {
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 7,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
            "tools": [{"name": "f", "description": "F.", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
            "stream": True,
        }
    )
    assert (request.temperature, request.top_p, request.stop, request.user) == (
        0.2,
        0.9,
        ["END"],
        "u1",
    )
    assert request.stream and request.max_tokens == 100
    assert request.extra == {"top_k": 7, "parallel_tool_calls": False}
    assert request.tools == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "description": "F."},
        }
    ]
    assert request.tool_choice == {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", "auto"), ("any", "required"), ("none", "none")]
)
def test_tool_choices_map(choice: str, expected: str) -> None:
    assert _parse({"tool_choice": {"type": choice}}).tool_choice == expected


def test_an_anthropic_deployment_is_asked_what_the_client_asked() -> None:
    """Through the ingress and back out of the Anthropic provider: one source of truth
    for each mapping, so the trip is the identity for what both shapes carry."""
    body = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "snow"}],
            },
        ],
        "tools": [{"name": "w", "description": "W.", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "top_k": 3,
        "metadata": {"user_id": "u"},
        "thinking": {"type": "enabled", "budget_tokens": 1500},
        "max_tokens": 2000,
    }
    request = _parse(body, [_model("anthropic", reasoning=True)])
    sent = request_body(request, "up", stream=False)
    assert sent == {"model": "up", **body}


def test_thinking_goes_to_reasoning_models_only() -> None:
    think = {"max_tokens": 9000, "thinking": {"type": "enabled", "budget_tokens": 5000}}
    assert _parse(think, [_model(reasoning=True)]).extra == {"reasoning_effort": "medium"}
    assert _parse(think, [_model("anthropic", reasoning=True)]).extra == {
        "thinking": {"type": "enabled", "budget_tokens": 5000}
    }
    mixed = [_model("anthropic", reasoning=True), _model(reasoning=True)]
    assert _parse(think, mixed).extra == {"reasoning_effort": "medium"}
    adaptive = {"thinking": {"type": "adaptive"}}
    assert _parse(adaptive, [_model(reasoning=True)]).extra == {}
    assert _parse({"thinking": {"type": "disabled"}}, [_model()]).extra == {}
    refused = _refused(think, [_model(reasoning=True), _model("sim")])
    assert refused.param == "thinking" and "reasoning: true" in refused.message
    assert _refused({"thinking": {"type": "enabled"}}).param == "thinking.budget_tokens"
    too_big = {"thinking": {"type": "enabled", "budget_tokens": 2000}}
    assert _refused(too_big, [_model(reasoning=True)]).param == "thinking.budget_tokens"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": "100"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "doc"}]}]},
            "messages.0.content.0.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ]
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ]
            },
            "messages.0.content.0.tool_use_id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/bmp"},
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0.source.media_type",
        ),
        ({"system": [{"type": "text"}]}, "system.0.text"),
        ({"temperature": 1.5}, "temperature"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"metadata": {"user": "u"}}, "metadata.user"),
        ({"n": 2}, "n"),
    ],
)
def test_a_bad_body_names_the_parameter(body: dict[str, Any], param: str) -> None:
    refused = _refused(body)
    assert refused.param == param
    assert refused.message.startswith(f"invalid parameter '{param}': ")


def test_an_empty_or_unparsable_body_is_refused() -> None:
    for raw in (b"", b"{nope", b"[1]"):
        with pytest.raises(RequestError):
            parse_messages_request(raw, lambda _: ())


def _response(message: Message, finish: str, usage: Usage | None = None) -> ChatResponse:
    return ChatResponse(
        id="chatcmpl-1",
        model="up-1",
        created=1,
        choices=[Choice(message=message, finish_reason=finish)],
        usage=usage,
        deployment="m/up",
    )


def test_an_answer_becomes_a_message() -> None:
    call = ToolCall(id="call_1", name="w", arguments='{"c": "Oslo"}')
    response = _response(
        Message(role="assistant", content="Looking.", tool_calls=[call]),
        "tool_calls",
        Usage(prompt_tokens=40, completion_tokens=9, cached_tokens=10),
    )
    assert message_json(response, "req_abc") == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "up-1",
        "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "call_1", "name": "w", "input": {"c": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 9, "cache_read_input_tokens": 10},
    }


def test_tool_arguments_that_are_no_object_are_an_upstream_error() -> None:
    call = ToolCall(id="c", name="w", arguments="[1, 2")
    response = _response(Message(role="assistant", tool_calls=[call]), "tool_calls")
    with pytest.raises(UpstreamError, match="not a JSON object"):
        message_json(response, "req_1")


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, stop: str) -> None:
    assert stop_reason(finish) == stop


@pytest.mark.parametrize(
    ("budget", "effort"), [(1024, "low"), (4095, "low"), (4096, "medium"), (20000, "high")]
)
def test_a_thinking_budget_becomes_the_effort_below_it(budget: int, effort: str) -> None:
    assert reasoning_effort(budget) == effort


def test_error_types() -> None:
    assert [error_type(s) for s in (400, 401, 402, 403, 404, 409, 429, 502, 503, 504)] == [
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "invalid_request_error",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
    ]


def _stream(chunks: list[StreamChunk], *, fail: bool = False) -> ChatStream:
    async def produce() -> AsyncIterator[StreamChunk]:
        for chunk in chunks:
            yield chunk
        if fail:
            raise StreamInterruptedError("deployment m/up failed mid-stream: reset")

    return ChatStream(
        produce(), model="m", deployment="m/up", upstream_model="up", request_id="req_9", started=0
    )


def _chunk(**fields: Any) -> StreamChunk:
    return StreamChunk(id="chatcmpl-9", model="up-1", created=1, **fields)


async def _events(stream: ChatStream) -> list[tuple[str, dict[str, Any]]]:
    out = []
    async for raw in message_events(stream):
        if raw.startswith(b":"):
            continue
        head, data = raw.decode().strip().split("\n")
        out.append((head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return out


async def test_a_stream_becomes_messages_events() -> None:
    stream = _stream(
        [
            _chunk(role="assistant", content=""),
            _chunk(content="Let "),
            _chunk(content="me."),
            _chunk(tool_calls=[ToolCallDelta(index=0, id="c1", name="w")]),
            _chunk(tool_calls=[ToolCallDelta(index=0, arguments='{"c":')]),
            _chunk(tool_calls=[ToolCallDelta(index=0, arguments='"Oslo"}')]),
            _chunk(tool_calls=[ToolCallDelta(index=1, id="c2", name="x", arguments="{}")]),
            _chunk(finish_reason="tool_calls"),
            _chunk(usage=Usage(prompt_tokens=12, completion_tokens=5)),
        ]
    )
    events = await _events(stream)
    assert [kind for kind, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["content"]) == ("msg_9", "up-1", [])
    assert events[5][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "c1", "name": "w", "input": {}},
    }
    assert events[7][1]["delta"] == {"type": "input_json_delta", "partial_json": '"Oslo"}'}
    assert events[9][1]["index"] == 2
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 0},
    }


async def test_a_stream_broken_after_its_first_byte_ends_with_an_error_event() -> None:
    events = await _events(_stream([_chunk(role="assistant", content="Hi")], fail=True))
    assert [kind for kind, _ in events][-1] == "error"
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "deployment m/up failed mid-stream: reset"},
    }
