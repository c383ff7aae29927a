"""Chat answers in the Responses shape, whole and as events (server/responses_output.py)."""

from __future__ import annotations

from typing import Any

import orjson

from areion.server.responses_output import ResponseEvents, ResponseShape, output_items
from areion.types import Message, StreamChunk, ToolCall, ToolCallDelta, Usage


def shape() -> ResponseShape:
    return ResponseShape(response_id="resp_1", created_at=7, echo={"store": True})


def events(data: list[bytes]) -> list[dict[str, Any]]:
    """The JSON of each SSE event, checking its `event:` line names its type."""
    out = []
    for frame in data:
        head, _, body = frame.partition(b"\ndata: ")
        event = orjson.loads(body)
        assert head == b"event: " + event["type"].encode() and frame.endswith(b"\n\n")
        out.append(event)
    return out


def chunk(**fields: Any) -> StreamChunk:
    return StreamChunk(id="c", model="gpt-test", created=1, **fields)


def test_a_text_answer_is_one_message_item() -> None:
    [item] = output_items(Message(role="assistant", content="Hi."), "stop")
    assert item["type"] == "message" and item["status"] == "completed"
    assert item["content"] == [
        {"type": "output_text", "text": "Hi.", "annotations": [], "logprobs": []}
    ]
    assert item["id"].startswith("msg_")


def test_tool_calls_are_function_call_items_after_any_text() -> None:
    message = Message(
        role="assistant",
        content="Checking.",
        tool_calls=[
            ToolCall(id="c1", name="a", arguments="{}"),
            ToolCall(id="c2", name="b", arguments='{"x": 1}'),
        ],
    )
    items = output_items(message, "tool_calls")
    assert [item["type"] for item in items] == ["message", "function_call", "function_call"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in items[1:]] == [
        ("c1", "a", "{}"),
        ("c2", "b", '{"x": 1}'),
    ]
    # Calls alone: no empty message beside them.
    only = output_items(Message(role="assistant", tool_calls=message.tool_calls), "tool_calls")
    assert [item["type"] for item in only] == ["function_call", "function_call"]


def test_a_cut_answer_is_incomplete() -> None:
    items = output_items(Message(role="assistant", content="Once upon"), "length")
    body = shape().body(model="m", output=items, finish_reason="length", usage=Usage())
    assert body["status"] == "incomplete" and items[0]["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    done = shape().body(model="m", output=[], finish_reason="stop", completed_at=9)
    assert (done["status"], done["incomplete_details"], done["completed_at"]) == (
        "completed",
        None,
        9,
    )


def test_usage_in_the_responses_shape() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=20, cached_tokens=64, reasoning_tokens=5)
    body = shape().body(model="m", output=[], usage=usage)
    assert body["usage"] == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 64},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 120,
    }
    assert body["id"] == "resp_1" and body["object"] == "response" and body["store"] is True


def test_a_stream_of_text_then_a_tool_call() -> None:
    stream = ResponseEvents(shape(), model="gpt-test")
    data = stream.start()
    data += stream.chunk(chunk(role="assistant", content=""))
    data += stream.chunk(chunk(content="Let me "))
    data += stream.chunk(chunk(content="look."))
    data += stream.chunk(chunk(tool_calls=[ToolCallDelta(index=0, id="c1", name="look")]))
    data += stream.chunk(chunk(tool_calls=[ToolCallDelta(index=0, arguments='{"q"')]))
    data += stream.chunk(chunk(tool_calls=[ToolCallDelta(index=0, arguments=": 1}")]))
    data += stream.chunk(chunk(finish_reason="tool_calls"))
    data += stream.finish("tool_calls")
    body = shape().body(model="gpt-test", output=stream.items, finish_reason="tool_calls")
    data.append(stream.completed(body))
    seen = events(data)
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    assert [(e["type"], e.get("output_index")) for e in seen] == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.delta", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.output_text.done", 0),
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    assert seen[0]["response"]["status"] == "in_progress" and seen[0]["response"]["output"] == []
    assert seen[9]["text"] == "Let me look."
    assert seen[12]["arguments"] == '{"q": 1}'
    message, call = seen[-1]["response"]["output"]
    assert message["content"][0]["text"] == "Let me look." and message["status"] == "completed"
    assert (call["call_id"], call["name"], call["arguments"]) == ("c1", "look", '{"q": 1}')
    assert seen[6]["item"]["id"] == seen[7]["item_id"] == call["id"]


def test_an_empty_stream_still_answers_with_a_message() -> None:
    stream = ResponseEvents(shape(), model="m")
    seen = events(stream.start() + stream.finish("stop"))
    assert seen[-1]["type"] == "response.output_item.done"
    assert seen[-1]["item"]["content"][0]["text"] == ""


def test_a_broken_stream_ends_failed_with_what_it_had() -> None:
    stream = ResponseEvents(shape(), model="m")
    data = stream.start() + stream.chunk(chunk(content="Half"))
    error, failed = events(data + stream.failed("stream_interrupted", "upstream went away"))[-2:]
    assert error == {
        "type": "error",
        "sequence_number": 5,
        "code": "stream_interrupted",
        "message": "upstream went away",
        "param": None,
    }
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "upstream went away"}
    assert failed["response"]["output"][0]["type"] == "message"
