"""The translation of batch lines to Message Batch requests, and of results back."""

from __future__ import annotations

import re
from typing import Any

from areion.jobs.native_anthropic import batch_params, chat_result, request_id
from areion.jobs.records import LineRecord
from areion.server.batches import parse_line

JOB = "batch_0123456789abcdef0123456789abcdef"


def line(index: int, custom_id: str, body: dict[str, Any]) -> LineRecord:
    return LineRecord(batch_id=JOB, index=index, custom_id=custom_id, body=body)


def test_lines_become_messages_params_with_ids_anthropic_accepts() -> None:
    lines = [
        line(0, "a client's id: with spaces/and slashes", {
            "model": "fast",
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "hi"}],
            "temperature": 0.2,
            "stop": ["END"],
        }),
        line(7, "tools", {
            "model": "fast",
            "messages": [{"role": "user", "content": "weather?"}],
            "max_tokens": 50,
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}],
        }),
        line(8, "streams", {"model": "fast", "messages": [{"role": "user", "content": "x"}],
                            "stream": True}),
        line(9, "n>1", {"model": "fast", "messages": [{"role": "user", "content": "x"}], "n": 2}),
        line(10, "not chat", {"model": "fast"}),
    ]  # fmt: skip
    requests = batch_params(JOB, lines, parse_line, "claude-up")
    # Lines Anthropic cannot take are left out (run here, they fail with that error).
    assert [r["custom_id"] for r in requests] == [
        request_id(JOB, lines[0]),
        request_id(JOB, lines[1]),
    ]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", r["custom_id"]) for r in requests)
    assert requests[0]["custom_id"] != requests[1]["custom_id"]
    first, second = requests[0]["params"], requests[1]["params"]
    assert first == {
        "model": "claude-up",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4096,
        "temperature": 0.2,
        "stop_sequences": ["END"],
    }
    assert second["max_tokens"] == 50 and second["tools"][0]["name"] == "w"
    assert "stream" not in first and "stream" not in second


def test_ids_are_the_jobs_and_stable() -> None:
    other = "batch_ffffffffffffffffffffffffffffffff"
    a = line(3, "x", {})
    assert request_id(JOB, a) == request_id(JOB, line(3, "renamed", {}))
    assert request_id(JOB, a) != request_id(other, a)
    assert request_id(JOB, a) != request_id(JOB, line(30, "x", {}))


def test_a_succeeded_result_is_a_chat_completion_with_its_usage() -> None:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
        "content": [{"type": "text", "text": "Sunny."},
                    {"type": "tool_use", "id": "tu_1", "name": "w", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 5, "cache_read_input_tokens": 4,
                  "cache_creation_input_tokens": 0},
    }  # fmt: skip
    answer = chat_result({"type": "succeeded", "message": message}, model="claude-up")
    assert answer is not None
    status, body = answer
    assert status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Sunny."
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "w", "arguments": '{"city":"Oslo"}'}
    # Cache reads are prompt tokens (and cached ones): what the ledger row is priced on.
    assert body["usage"]["prompt_tokens"] == 15 and body["usage"]["completion_tokens"] == 5
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 4


def test_an_errored_result_is_an_openai_error_and_the_unanswered_are_none() -> None:
    errored = {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "invalid_request_error",
                                             "message": "max_tokens: too large"}},
    }  # fmt: skip
    assert chat_result(errored, model="m") == (
        400,
        {"error": {"message": "max_tokens: too large", "type": "invalid_request_error",
                   "param": None, "code": None}},
    )  # fmt: skip
    overloaded = {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "overloaded_error"}},
    }
    assert chat_result(overloaded, model="m") is not None
    assert chat_result(overloaded, model="m")[0] == 529  # type: ignore[index]
    assert chat_result({"type": "canceled"}, model="m") is None
    assert chat_result({"type": "expired"}, model="m") is None
