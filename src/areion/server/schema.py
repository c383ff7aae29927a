"""The wire format at the HTTP boundary: request bodies validated in (the OpenAI
chat-completions body, and the small bodies of the runs, cache and admin APIs), JSON
responses out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from areion.errors import RequestError
from areion.types import ChatRequest, Message, ToolCall

__all__ = ["json_response", "parse_body", "parse_chat_request"]


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


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`data` as an application/json response."""
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _invalid(
    error: ValidationError, param_of: Callable[[tuple[int | str, ...]], str]
) -> RequestError:
    """The RequestError for a body pydantic refused: bad JSON, or the first bad parameter
    (named by `param_of` from pydantic's location)."""
    first = error.errors()[0]
    if first["type"].startswith("json"):
        return RequestError(f"the request body is not valid JSON: {first['msg']}")
    param = param_of(tuple(first["loc"])) or None
    return RequestError(f"invalid parameter '{param}': {first['msg']}", param=param)


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """`raw` parsed as `model` (an empty body as `{}`), or a RequestError naming the bad
    parameter."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as error:
        raise _invalid(error, _dotted) from None


def parse_chat_request(raw: bytes) -> tuple[ChatRequest, bool]:
    """A `ChatRequest` from a JSON body, and whether the client asked for stream usage.

    Raises `RequestError` naming the offending parameter.
    """
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON chat completion request")
    try:
        body = _Body.model_validate_json(raw)
    except ValidationError as error:
        if error.errors()[0]["type"] == "model_type":
            raise RequestError("the request body must be a JSON object") from None
        raise _invalid(error, _param) from None
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
