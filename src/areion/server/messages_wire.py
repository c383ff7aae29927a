"""The Anthropic Messages API's wire format at Areion's ingress: a request body
validated and translated onto the internal (OpenAI-shaped) `ChatRequest`, and the
answer translated back: a message, a stream of Messages events, an error.

The other direction (an OpenAI-shaped request sent on to an Anthropic deployment) is
`providers/anthropic.py`; the tables both directions need (stop reasons, thinking
budgets) live there. An Anthropic client talking to an Anthropic deployment through
Areion goes through both, and some things do not survive the trip:

- `stop_reason: "stop_sequence"` comes back as `end_turn`: OpenAI says `stop` for both;
- `is_error` on a tool result: OpenAI tool messages have no such flag, so the result's
  text is prefixed `Error: ` for every model to read it as one;
- thinking blocks are not returned (nor taken back: they are dropped from history);
- `cache_control` is accepted and dropped: Areion sends no prompt-caching hints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from areion.config import ModelConfig
from areion.errors import AreionError, RequestError, StreamInterruptedError, UpstreamError
from areion.pricing import usd_text
from areion.providers.anthropic import reasoning_effort, stop_reason
from areion.server.schema import clip, invalid_parameter, json_object
from areion.streaming import ChatStream
from areion.types import ChatRequest, ChatResponse, Message, StreamChunk, ToolCall, Usage

__all__ = [
    "error_json",
    "error_type",
    "message_events",
    "message_json",
    "parse_messages_request",
]

Targets = Callable[[str], Sequence[ModelConfig]]
"""The deployments a model name may reach: its group's, or its route's candidates',
and their fallbacks'."""

# Strict as Anthropic's API is: unknown parameters are refused, and "10" is no integer.
_STRICT = ConfigDict(strict=True, extra="forbid")
# Content blocks pass what they do not need: clients send back the blocks of an answer
# as the SDK parsed them, with whatever fields its version knows (`caller`...).
_BLOCK = ConfigDict(strict=True, extra="ignore")


class _Cacheable(BaseModel):
    model_config = _BLOCK

    cache_control: dict[str, Any] | None = None


class _Text(_Cacheable):
    type: Literal["text"]
    text: str
    citations: list[dict[str, Any]] | None = None


class _Source(BaseModel):
    model_config = _BLOCK

    type: Literal["base64", "url"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"] | None = None
    data: str | None = None
    url: str | None = None


class _Image(_Cacheable):
    type: Literal["image"]
    source: _Source


class _ToolUse(_Cacheable):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class _ToolResult(_Cacheable):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None


class _Thinking(BaseModel):
    # Kept by clients from an earlier answer; dropped (see the module's docstring).
    model_config = _BLOCK

    type: Literal["thinking", "redacted_thinking"]


_Block = _Text | _Image | _ToolUse | _ToolResult | _Thinking
_BLOCKS: dict[str, type[_Block]] = {
    "text": _Text,
    "image": _Image,
    "tool_use": _ToolUse,
    "tool_result": _ToolResult,
    "thinking": _Thinking,
    "redacted_thinking": _Thinking,
}


class _Message(BaseModel):
    model_config = _STRICT

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class _Tool(BaseModel):
    model_config = _STRICT

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class _ToolChoice(BaseModel):
    model_config = _STRICT

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1)
    disable_parallel_tool_use: bool | None = None


class _ThinkingConfig(BaseModel):
    model_config = _STRICT

    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=1024)
    display: Literal["summarized", "omitted"] | None = None


class _Metadata(BaseModel):
    model_config = _STRICT

    user_id: str | None = None


class _Body(BaseModel):
    model_config = _STRICT

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[_Message] = Field(min_length=1)
    system: str | list[_Text] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    metadata: _Metadata | None = None
    thinking: _ThinkingConfig | None = None


def _param(loc: tuple[int | str, ...]) -> str:
    """A dotted parameter path as Anthropic names them (`messages.0.content`), without
    pydantic's names for union members."""
    parts = [
        str(part)
        for part in loc
        if isinstance(part, int)
        or not (part in ("str", "int", "float", "bool") or "[" in part or part.startswith("_"))
    ]
    return ".".join(parts)


def _invalid(where: str, message: str) -> RequestError:
    return RequestError(f"invalid parameter '{where}': {message}", param=where)


def _validate(model: type[Any], value: Any, where: str) -> Any:
    """`value` validated as `model`; errors name the parameter below `where`."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise invalid_parameter(
            error, lambda loc: ".".join(part for part in (where, _param(loc)) if part)
        ) from None


def _block(raw: dict[str, Any], where: str, allowed: Sequence[str]) -> _Block:
    kind = raw.get("type")
    if kind not in allowed:
        shown = clip(str(kind)) if isinstance(kind, str) else repr(kind)
        raise _invalid(
            f"{where}.type",
            f"a block of type {shown} cannot be here; use one of: {', '.join(allowed)}",
        )
    block: _Block = _validate(_BLOCKS[str(kind)], raw, where)
    return block


_USER_BLOCKS = ("text", "image", "tool_result")
_ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
_RESULT_BLOCKS = ("text", "image")


def _image_part(image: _Image, where: str) -> dict[str, Any]:
    source = image.source
    if source.type == "url":
        if not source.url:
            raise _invalid(f"{where}.source.url", "an image of source type url needs a url")
        return {"type": "image_url", "image_url": {"url": source.url}}
    if not source.data or not source.media_type:
        raise _invalid(
            f"{where}.source", "a base64 image needs media_type and data (base64 encoded)"
        )
    url = f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _parts(blocks: Sequence[_Block], where: str) -> list[dict[str, Any]]:
    """Text and image blocks as OpenAI content parts."""
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        if isinstance(block, _Text):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, _Image):
            parts.append(_image_part(block, f"{where}.{index}"))
    return parts


def _tool_result(result: _ToolResult, where: str) -> Message:
    content: str | list[dict[str, Any]]
    if isinstance(result.content, list):
        blocks = [
            _block(raw, f"{where}.content.{index}", _RESULT_BLOCKS)
            for index, raw in enumerate(result.content)
        ]
        content = _parts(blocks, f"{where}.content")
        if result.is_error:
            content.insert(0, {"type": "text", "text": "Error:"})
    else:
        content = result.content or ""
        if result.is_error:
            content = f"Error: {content}"
    return Message(role="tool", tool_call_id=result.tool_use_id, content=content)


def _messages(messages: Sequence[_Message]) -> list[Message]:
    """Anthropic turns as OpenAI messages: tool results become `tool` messages, each
    answering a call of the assistant turn before."""
    out: list[Message] = []
    offered: set[str] = set()  # tool_use ids of the assistant turn just before
    for number, message in enumerate(messages):
        where = f"messages.{number}.content"
        if isinstance(message.content, str):
            out.append(Message(role=message.role, content=message.content))
            offered = set()
            continue
        allowed = _ASSISTANT_BLOCKS if message.role == "assistant" else _USER_BLOCKS
        blocks = [
            _block(raw, f"{where}.{index}", allowed) for index, raw in enumerate(message.content)
        ]
        if message.role == "assistant":
            text = "".join(block.text for block in blocks if isinstance(block, _Text))
            calls = [
                ToolCall(id=block.id, name=block.name, arguments=orjson.dumps(block.input).decode())
                for block in blocks
                if isinstance(block, _ToolUse)
            ]
            out.append(Message(role="assistant", content=text, tool_calls=calls or None))
            offered = {call.id for call in calls}
            continue
        for index, block in enumerate(blocks):
            if isinstance(block, _ToolResult):
                if block.tool_use_id not in offered:
                    raise _invalid(
                        f"{where}.{index}.tool_use_id",
                        f"no tool_use '{clip(block.tool_use_id)}' in the assistant message "
                        "just before; a tool_result answers one of its tool_use blocks",
                    )
                out.append(_tool_result(block, f"{where}.{index}"))
        others = [block for block in blocks if not isinstance(block, _ToolResult)]
        if others or not blocks:
            parts = _parts(others, where)
            one_text = len(parts) == 1 and parts[0]["type"] == "text"
            content = parts[0]["text"] if one_text else parts or ""
            out.append(Message(role="user", content=content))
        offered = set()
    return out


def _system(system: str | list[_Text] | None) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message(role="system", content=system)] if system else []
    texts = [block.text for block in system if block.text]
    if len(texts) <= 1:
        return [Message(role="system", content=text) for text in texts]
    return [Message(role="system", content=[{"type": "text", "text": t} for t in texts])]


def _tools(tools: Sequence[_Tool]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: _ToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        if choice.name is None:
            raise _invalid("tool_choice.name", "tool_choice of type tool names the tool")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _thinking(body: _Body, targets: Sequence[ModelConfig]) -> dict[str, Any]:
    """What `thinking` becomes in `extra`: Anthropic's own parameter when every
    deployment the model may reach is an Anthropic one (kept exactly), else the OpenAI
    `reasoning_effort` nearest below the budget (which Anthropic deployments turn back
    into a budget; `adaptive` leaves the effort to the model). Only models marked
    `reasoning: true` in the config may be asked to think."""
    thinking = body.thinking
    if thinking is None or thinking.type == "disabled":
        return {}
    budget = thinking.budget_tokens
    if thinking.type == "enabled" and budget is None:
        raise _invalid("thinking.budget_tokens", "enabled thinking needs budget_tokens")
    if budget is not None and budget >= body.max_tokens:
        raise _invalid(
            "thinking.budget_tokens",
            f"the thinking budget ({budget}) must be less than max_tokens ({body.max_tokens})",
        )
    unable = sorted({target.name for target in targets if not target.reasoning})
    if unable:
        raise _invalid(
            "thinking",
            f"model '{clip(body.model)}' may be answered by {', '.join(unable)}, which "
            "Areion's config does not mark as a reasoning model (reasoning: true); "
            "leave thinking out, or ask for a reasoning model",
        )
    if targets and all(target.provider == "anthropic" for target in targets):
        return {"thinking": thinking.model_dump(exclude_none=True)}
    if budget is None:
        return {}
    return {"reasoning_effort": reasoning_effort(budget)}


def parse_messages_request(raw: bytes, targets: Targets) -> ChatRequest:
    """A `ChatRequest` from an Anthropic Messages body; `targets` tells which
    deployments a model name may reach (whether they can think).

    Raises `RequestError` naming the offending parameter.
    """
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON Messages request")
    body: _Body = _validate(_Body, json_object(raw), "")
    extra: dict[str, Any] = {}
    if body.top_k is not None:
        # Passed on: Anthropic deployments take it, and so do vLLM and llama.cpp;
        # an upstream that does not refuses it, and its 400 reaches the client.
        extra["top_k"] = body.top_k
    if body.tool_choice is not None and body.tool_choice.disable_parallel_tool_use:
        extra["parallel_tool_calls"] = False
    extra.update(_thinking(body, targets(body.model)))
    return ChatRequest(
        model=body.model,
        messages=[*_system(body.system), *_messages(body.messages)],
        stream=body.stream,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=list(body.stop_sequences) if body.stop_sequences else None,
        tools=_tools(body.tools) if body.tools else None,
        tool_choice=_tool_choice(body.tool_choice) if body.tool_choice is not None else None,
        user=body.metadata.user_id if body.metadata is not None else None,
        extra=extra,
    )


# -- answers ---------------------------------------------------------------------------


def _message_id(upstream_id: str, request_id: str) -> str:
    """An Anthropic deployment's own message id, else one made of Areion's request id."""
    if upstream_id.startswith("msg_"):
        return upstream_id
    return "msg_" + request_id.removeprefix("req_")


def _usage(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage: its input_tokens leave out those read from the prompt cache."""
    usage = usage or Usage()
    return {
        "input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def _tool_input(call: ToolCall, deployment: str) -> dict[str, Any]:
    try:
        value = orjson.loads(call.arguments) if call.arguments.strip() else {}
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"deployment {deployment} called tool '{call.name}' with arguments that are not "
            "a JSON object; an Anthropic tool_use block needs one",
            retryable=False,
        )
    return value


def message_json(response: ChatResponse, request_id: str) -> dict[str, Any]:
    """`response` as an Anthropic message."""
    choice = response.choices[0]
    content: list[dict[str, Any]] = []
    text = choice.message.text()
    if text:
        content.append({"type": "text", "text": text})
    for call in choice.message.tool_calls or ():
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": _tool_input(call, response.deployment),
            }
        )
    return {
        "id": _message_id(response.id, request_id),
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": stop_reason(choice.finish_reason),
        "stop_sequence": None,
        "usage": _usage(response.usage),
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    # The `event:` line is not optional: the anthropic SDK skips events without one.
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data}) + b"\n\n"


class _Blocks:
    """The content blocks of a streamed message, opened and closed as chunks arrive:
    text goes into a text block, each tool call into a tool_use block of its own."""

    def __init__(self) -> None:
        self.count = 0
        self.open: int | None = None
        self.text = False  # whether the open block is a text block
        self.tools: dict[int, int] = {}  # a chunk's tool call index -> its block's index

    def _start(self, block: dict[str, Any], *, text: bool) -> list[bytes]:
        events = self.stop()
        self.open, self.text = self.count, text
        self.count += 1
        events.append(_event("content_block_start", {"index": self.open, "content_block": block}))
        return events

    def stop(self) -> list[bytes]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        return [_event("content_block_stop", {"index": index})]

    def feed(self, chunk: StreamChunk) -> list[bytes]:
        events: list[bytes] = []
        if chunk.content:
            if self.open is None or not self.text:
                events += self._start({"type": "text", "text": ""}, text=True)
            delta = {"type": "text_delta", "text": chunk.content}
            events.append(_event("content_block_delta", {"index": self.open, "delta": delta}))
        for call in chunk.tool_calls or ():
            index = self.tools.get(call.index)
            if index is None:
                block = {
                    "type": "tool_use",
                    "id": call.id or "",
                    "name": call.name or "",
                    "input": {},
                }
                events += self._start(block, text=False)
                index = self.tools[call.index] = self.count - 1
            if call.arguments:
                delta = {"type": "input_json_delta", "partial_json": call.arguments}
                events.append(_event("content_block_delta", {"index": index, "delta": delta}))
        if chunk.finish_reason is not None:
            events += self.stop()
        return events


async def message_events(stream: ChatStream) -> AsyncIterator[bytes]:
    """The Messages events of `stream`: message_start, its content blocks, then
    message_delta (stop reason, usage) and message_stop, with the cost in a comment
    line before it. A failure after the first byte is an `error` event, never a
    silent truncation."""
    blocks = _Blocks()
    started = False
    finish: str | None = None
    try:
        async for chunk in stream:
            if not started:
                started = True
                yield _message_start(chunk.id, chunk.model, stream.request_id)
            if chunk.index != 0:
                continue  # a Messages request asks for one answer
            for event in blocks.feed(chunk):
                yield event
            finish = chunk.finish_reason or finish
    except StreamInterruptedError as error:
        yield _event(
            "error", {"error": {"type": error_type(error.status), "message": error.message}}
        )
        return
    if not started:
        yield _message_start("", stream.upstream_model, stream.request_id)
    for event in blocks.stop():
        yield event
    delta = {"stop_reason": stop_reason(finish), "stop_sequence": None}
    yield _event("message_delta", {"delta": delta, "usage": _usage(stream.usage)})
    if stream.cost_usd is not None:
        yield f": x-areion-cost-usd={usd_text(stream.cost_usd)}\n\n".encode()
    yield _event("message_stop", {})


def _message_start(upstream_id: str, model: str, request_id: str) -> bytes:
    # Input tokens are known only when the stream ends: message_delta carries them.
    message: dict[str, Any] = {
        "id": _message_id(upstream_id, request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    return _event("message_start", {"message": message})


# -- errors ----------------------------------------------------------------------------

# Anthropic's error types by status. 402 is `billing_error`, as the Anthropic SDKs
# type it; Areion's 503 (no deployment can take the call, a lane is full) is
# `overloaded_error`, Anthropic's 529.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """The Anthropic error type for an HTTP status."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_json(error: AreionError) -> dict[str, Any]:
    """`error` as an Anthropic error body."""
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}
