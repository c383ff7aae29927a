"""Chat answers in the Responses API's shape: the response object, and the typed
server-sent events of a streamed one.

    assistant text        ->  a `message` output item with one `output_text` part
    each tool call        ->  a `function_call` output item (call_id = the chat call id)
    finish_reason length  ->  status `incomplete` (max_output_tokens); content_filter
                              likewise; anything else `completed`
    usage                 ->  input/output tokens (cached and reasoning in the details)

A stream is `response.created`, `response.in_progress`, then per item
`response.output_item.added` (+ `response.content_part.added` for text), its deltas
(`response.output_text.delta`, `response.function_call_arguments.delta`), then, once
the answer is complete, each item's `.done` events in output order and
`response.completed` (or `response.incomplete`) with the whole response and its usage.
Every event carries the next `sequence_number`. A stream that breaks ends with an
`error` event and `response.failed`.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from areion.types import Message, StreamChunk, Usage

__all__ = ["ResponseEvents", "ResponseShape", "new_id", "output_items"]


def new_id(prefix: str) -> str:
    """A new id in OpenAI's style (`resp_...`, `msg_...`, `fc_...`)."""
    return f"{prefix}_{secrets.token_hex(24)}"


def _status(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    """The response's status, and why it is incomplete."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def output_items(message: Message, finish_reason: str | None) -> list[dict[str, Any]]:
    """The output items of a complete assistant message."""
    status = "incomplete" if _status(finish_reason)[0] == "incomplete" else "completed"
    items = []
    text = message.text()
    if text or not message.tool_calls:
        items.append(_message_item(new_id("msg"), text, status))
    for call in message.tool_calls or ():
        items.append(_call_item(new_id("fc"), call.id, call.name, call.arguments, "completed"))
    return items


class ResponseShape:
    """The response object of one request: what it repeats of the request, and what the
    answer fills in."""

    def __init__(self, *, response_id: str, created_at: int, echo: dict[str, Any]) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.echo = echo

    def body(
        self,
        *,
        model: str,
        output: list[dict[str, Any]],
        finish_reason: str | None = None,
        usage: Usage | None = None,
        status: str | None = None,
        error: dict[str, str] | None = None,
        completed_at: int | None = None,
    ) -> dict[str, Any]:
        """The response object; `status` overrides the one `finish_reason` gives."""
        done, incomplete = _status(finish_reason)
        status = status or done
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": completed_at if status == "completed" else None,
            "error": error,
            "incomplete_details": incomplete if status == "incomplete" else None,
            "model": model,
            "output": output,
            "usage": _usage(usage),
            **self.echo,
        }


class ResponseEvents:
    """Turns the chunks of a chat stream into the Responses API's typed events (SSE
    bytes), keeping the output items they build."""

    def __init__(self, shape: ResponseShape, *, model: str) -> None:
        self.shape = shape
        self.model = model
        self.items: list[dict[str, Any]] = []
        self._sequence = 0
        self._text: list[str] | None = None  # the open message item's text, if any
        self._text_index = -1
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> list[bytes]:
        """The events before any output."""
        body = self.shape.body(model=self.model, output=[], status="in_progress")
        return [
            self._event("response.created", response=body),
            self._event("response.in_progress", response=body),
        ]

    def chunk(self, chunk: StreamChunk) -> list[bytes]:
        """The events of one chunk (of the first choice; Responses have one answer)."""
        if chunk.index != 0:
            return []
        events = []
        if chunk.content:
            events += self._text_delta(chunk.content)
        for delta in chunk.tool_calls or ():
            index = self._calls.get(delta.index)
            if index is None:
                index = self._calls[delta.index] = len(self.items)
                item = _call_item(new_id("fc"), delta.id or "", delta.name or "", "", "in_progress")
                self.items.append(item)
                events.append(
                    self._event("response.output_item.added", output_index=index, item=item)
                )
            else:
                item = self.items[index]
                item["call_id"] = item["call_id"] or delta.id or ""
                item["name"] += delta.name or ""
            if delta.arguments:
                item["arguments"] += delta.arguments
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=delta.arguments,
                    )
                )
        return events

    def _text_delta(self, text: str) -> list[bytes]:
        events = []
        if self._text is None:
            self._text = []
            self._text_index = len(self.items)
            item = _message_item(new_id("msg"), None, "in_progress")
            self.items.append(item)
            position = {"item_id": item["id"], "output_index": self._text_index}
            events.append(
                self._event("response.output_item.added", output_index=self._text_index, item=item)
            )
            events.append(
                self._event(
                    "response.content_part.added", **position, content_index=0, part=_text_part("")
                )
            )
        self._text.append(text)
        item_id = self.items[self._text_index]["id"]
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=self._text_index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def finish(self, finish_reason: str | None) -> list[bytes]:
        """The `.done` events of every item, in output order, once the answer is whole."""
        if not self.items:  # an empty answer is still a message, as it is unstreamed
            self._text_delta("")
        incomplete = _status(finish_reason)[0] == "incomplete"
        events = []
        for index, item in enumerate(self.items):
            position = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                text = "".join(self._text or ())
                part = _text_part(text)
                events.append(
                    self._event(
                        "response.output_text.done", **position, content_index=0, text=text,
                        logprobs=[],
                    )
                )  # fmt: skip
                events.append(
                    self._event(
                        "response.content_part.done", **position, content_index=0, part=part
                    )
                )
                item["content"] = [part]
                item["status"] = "incomplete" if incomplete else "completed"
            else:
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        **position,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
                item["status"] = "completed"
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def completed(self, body: dict[str, Any]) -> bytes:
        """The last event of a whole answer: `response.completed` or `.incomplete`."""
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return self._event(kind, response=body)

    def failed(self, code: str, message: str) -> list[bytes]:
        """The last events of a broken stream: `error`, then `response.failed` with the
        output received so far."""
        body = self.shape.body(
            model=self.model,
            output=self.items,
            status="failed",
            error={"code": "server_error", "message": message},
        )
        return [
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=body),
        ]
