"""Responses API requests translated onto chat requests (server/responses_input.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from areion.errors import RequestError
from areion.server.responses_input import ResponsesRequest, parse_responses_request
from areion.types import Message, ToolCall


def parse(thinks: bool = False, **body: Any) -> ResponsesRequest:
    """`body` parsed; `thinks`: whether the model is a reasoning model."""
    raw = orjson.dumps({"model": "fast", **body})
    return parse_responses_request(raw, reasoning=lambda model: thinks)


def wire(request: ResponsesRequest, history: list[Message] | None = None) -> list[Any]:
    return [m.to_openai() for m in request.chat_request(history or []).messages]


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    request = parse(input="Hello", instructions="Be brief.")
    assert wire(request) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    # What is stored of the turn leaves the instructions out: they are not carried over.
    assert request.turn_messages() == [{"role": "user", "content": "Hello"}]
    assert request.store is True and request.stream is False


def test_items_become_chat_messages() -> None:
    request = parse(
        input=[
            {"role": "developer", "content": "Use metric units."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": "A cat. ", "annotations": []},
                    {"type": "output_text", "text": "Let me check.", "annotations": []},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "weigh", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "tabby"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "4 kg"}],
            },
            {"type": "function_call", "call_id": "c3", "name": "look", "arguments": ""},
            {"type": "function_call_output", "call_id": "c3", "output": "asleep"},
        ]
    )
    assert wire(request) == [
        {"role": "developer", "content": "Use metric units."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "A cat. Let me check.",  # its calls join the message before them
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "weigh", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "tabby", "tool_call_id": "c1"},
        {"role": "tool", "content": [{"type": "text", "text": "4 kg"}], "tool_call_id": "c2"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "look", "arguments": ""}}
            ],
        },
        {"role": "tool", "content": "asleep", "tool_call_id": "c3"},
    ]
    # Errors name the item an input message started at.
    assert [index for index, _ in request.turn] == [0, 1, 2, 5, 6, 7, 8]


def test_a_tool_output_may_answer_the_stored_conversation() -> None:
    history = [
        Message(role="user", content="Weather?"),
        Message(role="assistant", tool_calls=[ToolCall(id="c1", name="weather", arguments="{}")]),
    ]
    request = parse(
        input=[{"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
        previous_response_id="resp_1",
    )
    assert wire(request, history)[-1] == {
        "role": "tool",
        "content": "sunny",
        "tool_call_id": "c1",
    }
    with pytest.raises(RequestError, match="no call 'c1'") as caught:
        request.chat_request([Message(role="user", content="Weather?")])
    assert caught.value.param == "input[0].call_id"


def test_parameters_reach_the_chat_request() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}
    request = parse(
        True,
        input="x",
        tools=[tool],
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        max_output_tokens=100,
        temperature=0,
        top_p=0.5,
        user="u",
        text={"format": {"type": "json_object"}, "verbosity": "low"},
        reasoning={"effort": "medium", "summary": None},
        prompt_cache_key="k",
        safety_identifier="s",
        service_tier="flex",
        metadata={"a": "b"},
        store=False,
        stream=True,
        include=[],
        truncation="disabled",
        background=False,
        stream_options={"include_obfuscation": False},
    )
    chat = request.chat_request([])
    assert chat.tools == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "strict": True},
        }
    ]
    assert chat.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.user) == (100, 0, 0.5, "u")
    assert chat.stream is True
    assert chat.extra == {
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "verbosity": "low",
        "reasoning_effort": "medium",
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "service_tier": "flex",
    }
    assert request.store is False
    assert request.echo["metadata"] == {"a": "b"} and request.echo["tools"] == [tool]
    assert request.echo["reasoning"] == {"effort": "medium", "summary": None}
    assert request.echo["parallel_tool_calls"] is False


def test_a_json_schema_format_is_the_chat_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    request = parse(
        input="x",
        text={"format": {"type": "json_schema", "name": "n", "schema": schema, "strict": True}},
    )
    assert request.chat_request([]).extra == {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": schema, "strict": True},
        }
    }


def test_what_the_response_repeats_by_default() -> None:
    echo = parse(input="x").echo
    assert echo["tool_choice"] == "auto" and echo["tools"] == []
    assert echo["text"] == {"format": {"type": "text"}}
    assert echo["parallel_tool_calls"] is True and echo["truncation"] == "disabled"
    assert echo["store"] is True and echo["metadata"] == {}
    # parallel_tool_calls goes upstream only with tools (OpenAI refuses it without).
    assert parse(input="x", parallel_tool_calls=False).chat_request([]).extra == {}


JSON_NO_SCHEMA = {"type": "json_schema", "name": "n"}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "input", "required"),
        ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata", "16"),
        ({"input": "x", "metadata": {"k": "v" * 513}}, "metadata.k", "512"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "must be one of"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content", "string or a list"),
        ({"input": ["x"]}, "input[0]", "JSON object"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id", "required"),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
            "output_text and refusal",
        ),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "1 to 64"),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": "{}"}]},
            "tools[0].parameters",
            "JSON object",
        ),
        ({"input": "x", "text": {"format": JSON_NO_SCHEMA}}, "text.format.schema", "JSON Schema"),
        ({"input": "x", "text": {"verbosity": "loud"}}, "text.verbosity", "low, medium, high"),
        ({"input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort", "one of"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice", "none, auto, required"),
        ({"input": "x", "previous_response_id": ""}, "previous_response_id", "at least 1"),
    ],
)  # fmt: skip
def test_bad_requests_name_the_parameter(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse(True, **body)
    assert caught.value.param == param
    assert words in caught.value.message and param in caught.value.message
