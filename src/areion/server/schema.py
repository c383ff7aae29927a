"""The OpenAI chat-completions request body, validated at the HTTP boundary."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from areion.errors import RequestError
from areion.types import ChatRequest, Message, ToolCall

__all__ = ["parse_chat_request"]


class _FunctionCall(BaseModel):
    name: str
    arguments: str


class _ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: _FunctionCall


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None


class _Function(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64)


class _Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: _Function


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    user: str | None = None
    stream_options: dict[str, Any] | None = None


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = part
        elif part in ("str", "list[dict[str,any]]") or "[" in part or part.startswith("literal"):
            continue  # pydantic's union-member names say nothing to an API user
        else:
            out += f".{part}"
    return out


def parse_chat_request(raw: bytes) -> tuple[ChatRequest, bool]:
    """A `ChatRequest` from a JSON body, and whether the client asked for stream usage.

    Raises `RequestError` naming the offending parameter.
    """
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON chat completion request")
    try:
        body = _Body.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"].startswith("json"):
            raise RequestError(f"the request body is not valid JSON: {first['msg']}") from None
        if first["type"] == "model_type":
            raise RequestError("the request body must be a JSON object") from None
        param = _param(tuple(first["loc"]))
        raise RequestError(f"invalid parameter '{param}': {first['msg']}", param=param) from None
    extra: dict[str, Any] = dict(body.model_extra or {})
    if body.n is not None:
        extra["n"] = body.n
    if body.max_completion_tokens is not None:
        extra["max_completion_tokens"] = body.max_completion_tokens
    include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))
    messages = [
        Message(
            role=message.role,
            content=message.content,
            name=message.name,
            tool_calls=[
                ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
                for call in message.tool_calls
            ]
            if message.tool_calls
            else None,
            tool_call_id=message.tool_call_id,
        )
        for message in body.messages
    ]
    request = ChatRequest(
        model=body.model,
        messages=messages,
        stream=body.stream,
        max_tokens=body.max_tokens or body.max_completion_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None,
        tool_choice=body.tool_choice,
        user=body.user,
        extra=extra,
    )
    return request, include_usage
