"""Parsing and validating an OpenAI chat-completions request body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from areion.errors import RequestError
from areion.server import schema
from areion.server.schema import parse_chat_request
from areion.types import ToolCall

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
        "strict": True,
    },
}

FULL_BODY: dict[str, Any] = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the weather in Paris? "},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.png"}},
                {"type": "text", "text": "And here?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 14}'},
        {"role": "user", "name": "ana", "content": "Thanks."},
    ],
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": "\n\n",
    "max_completion_tokens": 256,
    "n": 2,
    "user": "user-42",
    "stream": True,
    "stream_options": {"include_usage": True},
    "seed": 7,
    "response_format": {"type": "json_object"},
    "parallel_tool_calls": False,
    "logit_bias": {"50256": -100},
}


def _parse(body: Any) -> Any:
    return parse_chat_request(json.dumps(body).encode())


def _minimal(**fields: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": "hi"}], **fields}


def _rejected(raw: bytes | dict[str, Any]) -> RequestError:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(RequestError) as caught:
        parse_chat_request(data)
    assert caught.value.status == 400
    return caught.value


# --- accepted -------------------------------------------------------------------------


def test_full_openai_body() -> None:
    request, include_usage = _parse(FULL_BODY)

    assert request.model == "fast"
    assert request.stream is True
    assert include_usage is True
    assert request.temperature == 0.2
    assert request.top_p == 0.9
    assert request.stop == ["\n\n"]
    assert request.max_tokens == 256
    assert request.user == "user-42"
    assert request.tools == [WEATHER_TOOL]
    assert request.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert request.extra == {
        "seed": 7,
        "response_format": {"type": "json_object"},
        "parallel_tool_calls": False,
        "logit_bias": {"50256": -100},
        "n": 2,
        "max_completion_tokens": 256,
    }

    system, user, assistant, tool, named = request.messages
    assert (system.role, system.content) == ("system", "You are terse.")
    assert user.content == FULL_BODY["messages"][1]["content"]
    assert user.text() == "What is the weather in Paris? And here?"
    assert assistant.content is None
    assert assistant.tool_calls == [
        ToolCall(id="call_abc", name="get_weather", arguments='{"city": "Paris"}')
    ]
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_abc", '{"temp_c": 14}')
    assert named.name == "ana"


def test_history_round_trips_to_the_openai_shape() -> None:
    request, _ = _parse(FULL_BODY)
    assert [m.to_openai() for m in request.messages] == FULL_BODY["messages"]


def test_minimal_body_defaults() -> None:
    request, include_usage = _parse(_minimal())
    assert request.stream is False
    assert include_usage is False
    assert request.max_tokens is None
    assert request.stop is None
    assert request.tools is None
    assert request.tool_choice is None
    assert request.extra == {}


def test_stop_list_is_kept() -> None:
    request, _ = _parse(_minimal(stop=["END", "###"]))
    assert request.stop == ["END", "###"]


def test_max_tokens_wins_over_max_completion_tokens() -> None:
    request, _ = _parse(_minimal(max_tokens=50, max_completion_tokens=100))
    assert request.max_tokens == 50


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings(choice: str) -> None:
    request, _ = _parse(_minimal(tools=[WEATHER_TOOL], tool_choice=choice))
    assert request.tool_choice == choice


def test_developer_role_is_accepted() -> None:
    request, _ = _parse(
        {"model": "o3-mini", "messages": [{"role": "developer", "content": "Be brief."}]}
    )
    assert request.messages[0].role == "developer"


def test_unicode_and_whitespace_around_the_body() -> None:
    raw = b"\n  " + json.dumps(_minimal(), ensure_ascii=False).encode() + b"\n"
    request, _ = parse_chat_request(raw.replace(b'"hi"', '"héllo 🌍"'.encode()))
    assert request.messages[0].content == "héllo 🌍"


# --- rejected -------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   \n\t "])
def test_empty_body(raw: bytes) -> None:
    error = _rejected(raw)
    assert "empty" in error.message
    assert error.param is None


def test_body_that_is_not_json() -> None:
    error = _rejected(b"model=fast&messages=hi")
    assert "not valid JSON" in error.message
    assert error.param is None


def test_truncated_json() -> None:
    error = _rejected(json.dumps(_minimal()).encode()[:-5])
    assert "not valid JSON" in error.message


def test_json_array() -> None:
    error = _rejected(b'[{"model": "fast"}]')
    assert "JSON object" in error.message
    assert error.param is None


def test_missing_model() -> None:
    error = _rejected({"messages": [{"role": "user", "content": "hi"}]})
    assert error.param == "model"
    assert "'model'" in error.message


def test_empty_model() -> None:
    error = _rejected(_minimal(model=""))
    assert error.param == "model"


def test_empty_messages() -> None:
    error = _rejected({"model": "fast", "messages": []})
    assert error.param == "messages"
    assert "'messages'" in error.message
    assert "at least 1" in error.message


def test_bad_role() -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "a"}, {"role": "bot"}]}
    error = _rejected(body)
    assert error.param == "messages[1].role"
    assert "'messages[1].role'" in error.message
    assert "'assistant'" in error.message


def test_temperature_out_of_range() -> None:
    error = _rejected(_minimal(temperature=3))
    assert error.param == "temperature"
    assert "less than or equal to 2" in error.message


def test_max_tokens_zero() -> None:
    error = _rejected(_minimal(max_tokens=0))
    assert error.param == "max_tokens"
    assert "greater than or equal to 1" in error.message


def test_tool_with_wrong_type() -> None:
    tool = {"type": "retrieval", "function": {"name": "search"}}
    error = _rejected(_minimal(tools=[WEATHER_TOOL, tool]))
    assert error.param == "tools[1].type"
    assert "'function'" in error.message


def test_tools_not_a_list() -> None:
    error = _rejected(_minimal(tools=WEATHER_TOOL))
    assert error.param == "tools"


def test_tool_without_a_name() -> None:
    error = _rejected(_minimal(tools=[{"type": "function", "function": {"name": ""}}]))
    assert error.param == "tools[0].function.name"


def test_content_of_wrong_type_names_the_message() -> None:
    error = _rejected({"model": "fast", "messages": [{"role": "user", "content": 42}]})
    assert error.param == "messages[0].content"


def test_bad_tool_choice_names_only_the_field() -> None:
    error = _rejected(_minimal(tool_choice="sometimes"))
    assert error.param == "tool_choice"
    assert "'auto'" in error.message


def test_stream_that_is_not_a_bool() -> None:
    error = _rejected(_minimal(stream="please"))
    assert error.param == "stream"


def test_tool_call_without_arguments() -> None:
    body = {
        "model": "fast",
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
            }
        ],
    }
    error = _rejected(body)
    assert error.param == "messages[0].tool_calls[0].function.arguments"


# --- numbers no upstream can take --------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 2**64 + 1}, "seed"),
        ({"max_tokens": 2**64}, "max_tokens"),
        ({"max_tokens": 2**63}, "max_tokens"),  # a plain body's own check, at its bound
        ({"stream_options": {"include_usage": True, "x": 2**64}}, "stream_options.x"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"logit_bias": {"50256": 2**70}}, "logit_bias.50256"),
        (
            {"tools": [{**WEATHER_TOOL, "function": {"name": "f", "parameters": {"max": 2**99}}}]},
            "tools[0].function.parameters.max",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a", "w": 2**64}]}
                ]
            },
            "messages[0].content[0].w",
        ),
    ],
)
def test_integers_beyond_64_bits_name_the_field(fields: dict[str, Any], param: str) -> None:
    error = _rejected(_minimal(**fields))
    assert error.param == param
    assert f"'{param}'" in error.message and "64 bits" in error.message


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'"seed": NaN', "seed"),
        (b'"temperature": Infinity', "temperature"),
        (b'"response_format": {"type": "json_object", "x": [-Infinity]}', "response_format.x[0]"),
        (b'"top_p": 1e999', "top_p"),
        (b'"temperature": 1e999', "temperature"),
        (b'"stream_options": {"include_usage": true, "x": NaN}', "stream_options.x"),
    ],
)
def test_nan_and_infinity_are_refused(raw: bytes, param: str) -> None:
    body = b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], ' + raw + b"}"
    error = _rejected(body)
    assert error.param == param
    assert "NaN and Infinity" in error.message


def test_a_long_parameter_name_is_echoed_clipped() -> None:
    error = _rejected(_minimal(**{"x" * 10_000: 2**64}))
    assert error.param is not None and len(error.param) < 110
    assert len(error.message) < 300


# --- strict types, as OpenAI's API has them --------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": 10.0}, "max_completion_tokens"),
        ({"n": "2"}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"temperature": "0.5"}, "temperature"),
    ],
)
def test_values_are_not_coerced(fields: dict[str, Any], param: str) -> None:
    assert _rejected(_minimal(**fields)).param == param


def test_a_message_that_is_not_an_object_is_named() -> None:
    error = _rejected({"model": "fast", "messages": ["hi"]})
    assert error.param == "messages[0]"
    assert "'messages[0]'" in error.message and "JSON object" in error.message
    assert "_Message" not in error.message


def test_content_part_without_a_type() -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    error = _rejected(body)
    assert error.param == "messages[0].content[0].type"
    assert "required" in error.message


def test_text_part_without_text() -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    assert _rejected(body).param == "messages[0].content[0].text"


def _answering(call_id: str | None, *before: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"role": "tool", "content": "14C"}
    if call_id is not None:
        tool["tool_call_id"] = call_id
    return {"model": "fast", "messages": [*before, tool]}


ASKED = {
    "role": "assistant",
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ],
}


def test_tool_message_without_tool_call_id() -> None:
    error = _rejected(_answering(None, {"role": "user", "content": "hi"}, ASKED))
    assert error.param == "messages[2].tool_call_id"


def test_conversation_starting_with_a_tool_message() -> None:
    error = _rejected(_answering("call_1"))
    assert error.param == "messages[0].role"
    assert "'tool_calls'" in error.message


def test_tool_message_must_answer_a_call_just_asked() -> None:
    assert _rejected(_answering("call_2", ASKED)).param == "messages[1].role"
    later = {"role": "user", "content": "and?"}
    assert _rejected(_answering("call_1", ASKED, later)).param == "messages[2].role"


# Bodies near the common shape, valid and not: each must read as `_Body` reads it, or
# fail with the same error.
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-1, 3, allow_nan=False),
    st.sampled_from(["", "fast", "tool", "critic"]),
    st.just([]),
    st.just({}),
    st.just([{"type": "text", "text": "hi"}]),
)
_ROLES = st.sampled_from(["system", "developer", "user", "assistant"])


def _or_odd(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`values`, or one time in ten an odd value."""
    return st.integers(0, 9).flatmap(lambda pick: values if pick else _ODD)


_MESSAGE = _or_odd(
    st.fixed_dictionaries(
        {"role": _or_odd(_ROLES)},
        optional={
            "content": _or_odd(st.one_of(st.text(max_size=3), st.none())),
            "name": _or_odd(st.text(max_size=3)),
            "tool_call_id": st.just("call_1"),
        },
    )
)
_BODY = st.fixed_dictionaries(
    {"model": _or_odd(st.just("fast")), "messages": _or_odd(st.lists(_MESSAGE, max_size=3))},
    optional={
        "stream": _or_odd(st.booleans()),
        "max_tokens": _or_odd(st.sampled_from([0, 1, 7])),
        "temperature": _or_odd(st.sampled_from([-0.1, 0.0, 0.7, 2.0, 2.1])),
        "top_p": _or_odd(st.sampled_from([-0.1, 0.0, 0.5, 1.0, 1.1])),
        "user": _or_odd(st.text(max_size=3)),
        "stream_options": _or_odd(st.sampled_from([{}, {"include_usage": True}])),
        "n": st.integers(1, 2),
    },
)


def _outcome(read: Any, value: dict[str, Any]) -> Any:
    try:
        return read(value)
    except RequestError as error:
        return (error.message, error.param)


@settings(max_examples=1000, deadline=None)
@given(value=_BODY)
def test_a_plain_body_reads_as_the_full_validation_reads_it(value: dict[str, Any]) -> None:
    plain = schema._plain_chat(value)
    event("plain" if plain is not None else "validated")
    if plain is not None:
        assert plain == _outcome(schema._validated_chat, value)
    assert _outcome(lambda v: schema.parse_chat_request(json.dumps(v).encode()), value) == (
        _outcome(schema._validated_chat, value)
    )


def test_the_common_body_takes_the_plain_reading() -> None:
    body = {
        "model": "fast",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert schema._plain_chat(body) == schema._validated_chat(body)
    assert schema._plain_chat(body) is not None
