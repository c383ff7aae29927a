"""OpenAI ⇄ Anthropic Messages translation, without a network."""

from __future__ import annotations

import orjson
import pytest

from areion.errors import RequestError
from areion.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    finish_reason,
    messages_url,
    parse_response,
    parse_usage,
    request_body,
    translate_messages,
    translate_tool_choice,
    translate_tools,
)
from areion.types import ChatRequest, Message, ToolCall


def test_system_and_developer_messages_become_the_top_level_system() -> None:
    system, messages = translate_messages(
        [
            Message(role="system", content="Be terse."),
            Message(role="developer", content=[{"type": "text", "text": "Answer in French."}]),
            Message(role="user", content="Hi"),
        ]
    )
    assert system == "Be terse.\n\nAnswer in French."
    assert messages == [{"role": "user", "content": "Hi"}]


def test_no_system_message_means_no_system() -> None:
    system, _ = translate_messages([Message(role="user", content="Hi")])
    assert system is None


def test_consecutive_same_role_messages_merge() -> None:
    _, messages = translate_messages(
        [
            Message(role="user", content="one"),
            Message(role="user", content="two"),
            Message(role="assistant", content="three"),
        ]
    )
    assert messages == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": "three"},
    ]


def test_tool_calls_and_results_translate_and_results_merge_into_one_user_turn() -> None:
    _, messages = translate_messages(
        [
            Message(role="user", content="Weather in Paris and Rome?"),
            Message(
                role="assistant",
                content="Checking.",
                tool_calls=[
                    ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}'),
                    ToolCall(id="call_2", name="weather", arguments='{"city": "Rome"}'),
                ],
            ),
            Message(role="tool", tool_call_id="call_1", content="18C"),
            Message(role="tool", tool_call_id="call_2", content="24C"),
        ]
    )
    assert messages == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "24C"},
            ],
        },
    ]


def test_a_user_message_after_tool_results_joins_their_turn() -> None:
    _, messages = translate_messages(
        [
            Message(role="assistant", tool_calls=[ToolCall(id="c", name="f", arguments="")]),
            Message(role="tool", tool_call_id="c", content="done"),
            Message(role="user", content="thanks"),
        ]
    )
    assert messages[0] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}],
    }
    assert messages[1]["content"] == [
        {"type": "tool_result", "tool_use_id": "c", "content": "done"},
        {"type": "text", "text": "thanks"},
    ]


def test_unparsable_tool_arguments_name_the_call() -> None:
    with pytest.raises(RequestError, match="call_9"):
        translate_messages(
            [
                Message(
                    role="assistant",
                    tool_calls=[ToolCall(id="call_9", name="f", arguments="{not json")],
                )
            ]
        )


def test_image_parts_become_image_sources() -> None:
    _, messages = translate_messages(
        [
            Message(
                role="user",
                content=[
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            )
        ]
    )
    assert messages[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tools_translate() -> None:
    tools = translate_tools(
        [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            },
            {"type": "function", "function": {"name": "now"}},
        ]
    )
    assert tools == [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"type": "tool", "name": "weather"},
        ),
    ],
)
def test_tool_choice_maps(choice: str | dict[str, object], expected: dict[str, str]) -> None:
    assert translate_tool_choice(choice) == expected


def test_unknown_tool_choice_is_a_request_error() -> None:
    with pytest.raises(RequestError):
        translate_tool_choice("sometimes")


def test_request_body_maps_parameters_and_drops_openai_only_extras() -> None:
    request = ChatRequest(
        model="group",
        messages=[Message(role="system", content="sys"), Message(role="user", content="hi")],
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        user="u-1",
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="required",
        extra={"seed": 7, "response_format": {"type": "json_object"}, "n": 1, "top_k": 5},
    )
    body = request_body(request, "claude-x", stream=True)
    assert body == {
        "model": "claude-x",
        "system": "sys",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any"},
        "top_k": 5,
        "stream": True,
    }


def test_request_body_keeps_max_tokens_and_disables_parallel_tools_on_request() -> None:
    request = ChatRequest(
        model="group",
        messages=[Message(role="user", content="hi")],
        max_tokens=50,
        tools=[{"type": "function", "function": {"name": "f"}}],
        extra={"parallel_tool_calls": False},
    )
    body = request_body(request, "claude-x", stream=False)
    assert body["max_tokens"] == 50
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "stream" not in body


def test_n_above_one_is_a_request_error() -> None:
    request = ChatRequest(model="g", messages=[Message(role="user", content="hi")], extra={"n": 2})
    with pytest.raises(RequestError, match="n > 1"):
        request_body(request, "claude-x", stream=False)


def test_messages_url() -> None:
    assert messages_url(None) == "https://api.anthropic.com/v1/messages"
    assert messages_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000/v1/messages"
    assert messages_url("http://127.0.0.1:9000/v1/") == "http://127.0.0.1:9000/v1/messages"


def test_response_maps_text_tool_use_and_ignores_thinking() -> None:
    response = parse_response(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x-2025",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
        model="claude-x",
    )
    assert response.id == "msg_1"
    assert response.model == "claude-x-2025"
    assert response.message.content == "Let me look."
    assert response.message.tool_calls is not None
    call = response.message.tool_calls[0]
    assert (call.id, call.name, orjson.loads(call.arguments)) == (
        "toolu_1",
        "weather",
        {"city": "Oslo"},
    )
    assert response.choices[0].finish_reason == "tool_calls"


def test_pure_tool_call_answer_has_null_content() -> None:
    response = parse_response(
        {
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            "stop_reason": "tool_use",
        },
        model="claude-x",
    )
    assert response.message.content is None
    assert response.model == "claude-x"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, None),
    ],
)
def test_finish_reasons(stop: str | None, expected: str | None) -> None:
    assert finish_reason(stop) == expected


def test_usage_counts_cache_reads_and_writes_as_prompt() -> None:
    usage = parse_usage(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
            "output_tokens": 40,
        }
    )
    assert usage is not None
    assert usage.prompt_tokens == 1300
    assert usage.cached_tokens == 1000
    assert usage.completion_tokens == 40
    assert usage.total_tokens == 1340
    assert parse_usage(None) is None


@pytest.mark.parametrize(("effort", "budget"), [("none", None), ("low", 1024), ("high", 16384)])
def test_reasoning_effort_becomes_a_thinking_budget(effort: str, budget: int | None) -> None:
    request = ChatRequest(
        model="group",
        messages=[Message(role="user", content="Prove it.")],
        max_tokens=500,
        temperature=0,
        extra={"reasoning_effort": effort},
    )
    body = request_body(request, "claude-x", stream=False)
    assert "reasoning_effort" not in body
    if budget is None:
        assert "thinking" not in body and body["max_tokens"] == 500 and body["temperature"] == 0
    else:
        assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
        assert body["max_tokens"] == 500 + budget  # the answer keeps its own budget
        assert "temperature" not in body  # thinking takes no sampling parameters
