"""The wire format at the HTTP boundary: request bodies validated in (the OpenAI
chat-completions body, and the small bodies of the runs, cache and admin APIs), JSON
responses out."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import orjson
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails
from starlette.responses import Response

from areion.errors import RequestError
from areion.types import ChatRequest, Message, Role, ToolCall

__all__ = [
    "clip",
    "error_body",
    "invalid_parameter",
    "json_object",
    "json_response",
    "parse_body",
    "parse_chat_request",
]

_INT64 = 2**63
_ECHO = 100


def clip(text: str, limit: int = _ECHO) -> str:
    """`text` cut to `limit` characters, to echo a caller's input in an error message:
    a 10 MB model name must not come back whole."""
    return text if len(text) <= limit else text[:limit] + "..."


# Strict throughout, as OpenAI's API is: "10" is no integer, "yes" no boolean. Numbers
# are checked before the models see them (`_check_numbers`).
_STRICT = ConfigDict(strict=True)
_OPEN = ConfigDict(strict=True, extra="allow")


class _FunctionCall(BaseModel):
    model_config = _STRICT

    name: str
    arguments: str


class _ToolCall(BaseModel):
    model_config = _STRICT

    id: str
    type: Literal["function"] = "function"
    function: _FunctionCall


class _Part(BaseModel):
    model_config = _OPEN

    type: str = Field(min_length=1)
    text: str | None = None


class _Message(BaseModel):
    model_config = _OPEN

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None


class _Function(BaseModel):
    model_config = _OPEN

    name: str = Field(min_length=1, max_length=64)


class _Tool(BaseModel):
    model_config = _OPEN

    type: Literal["function"]
    function: _Function


class _Body(BaseModel):
    model_config = _OPEN

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
        elif part in ("str", "list[_Part]") or "[" in part or part.startswith("literal"):
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


def error_body(
    message: str, *, type: str, code: str | None, param: str | None = None
) -> dict[str, object]:
    """An error in OpenAI's shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def json_object(raw: bytes) -> dict[str, Any]:
    """`raw` parsed as a JSON object with only numbers an upstream can take."""
    value = _any_object(raw)
    _refuse_bad_numbers(value)
    return value


def _any_object(raw: bytes) -> dict[str, Any]:
    """`raw` parsed as a JSON object, its numbers not checked yet (`_refuse_bad_numbers`)."""
    try:
        value = pydantic_core.from_json(raw)
    except ValueError as error:
        raise RequestError(f"the request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise RequestError("the request body must be a JSON object")
    return value


def _refuse_bad_numbers(value: Any) -> None:
    """Refuses a number in parsed JSON `value` that `_check_numbers` refuses, naming it."""
    if not _plain_numbers(value):
        _check_numbers(value, "")  # raises, naming the first bad number's parameter


def _plain_numbers(root: Any) -> bool:
    """Whether every number in parsed JSON `root` is one `_check_numbers` takes: the
    common case, checked in one loop with no parameter paths (JSON parsers make plain
    dicts, lists, ints and floats; a bool is not an int here)."""
    stack = [root]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            stack.extend(value.values())
        elif kind is list:
            stack.extend(value)
        elif kind is int:
            if not -_INT64 <= value < _INT64:
                return False
        elif kind is float and not math.isfinite(value):
            return False
    return True


def _check_numbers(value: Any, path: str) -> None:
    """Refuses integers beyond 64 bits (orjson cannot send them upstream, SQLite cannot
    store them, and OpenAI's API refuses them) and NaN or Infinity (not JSON, though
    Python's parsers take the literals; orjson would send them on as null)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_numbers(item, f"{path}[{index}]")
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int) and not -_INT64 <= value < _INT64:
        param = clip(path)
        raise RequestError(
            f"invalid parameter '{param}': integers must fit in 64 bits "
            "(-9223372036854775808 to 9223372036854775807)",
            param=param,
        )
    elif isinstance(value, float) and not math.isfinite(value):
        param = clip(path)
        raise RequestError(
            f"invalid parameter '{param}': NaN and Infinity are not JSON numbers", param=param
        )


def invalid_parameter(
    error: ValidationError, param_of: Callable[[tuple[int | str, ...]], str]
) -> RequestError:
    """The RequestError for a body pydantic refused, naming the bad parameter (by
    `param_of` from pydantic's location). Of a union's errors the deepest is the one that
    says what is wrong: a content part without `type`, rather than "not a string"."""
    worst: ErrorDetails = max(error.errors(), key=lambda found: len(found["loc"]))
    param = clip(param_of(tuple(worst["loc"])))
    message = worst["msg"]
    if worst["type"] == "model_type":  # pydantic names our private classes
        message = "Input should be a JSON object"
    return RequestError(f"invalid parameter '{param}': {message}", param=param or None)


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """`raw` parsed as `model` (an empty body as `{}`), or a RequestError naming the bad
    parameter."""
    value = json_object(raw) if raw.strip() else {}
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as error:
        raise invalid_parameter(error, _dotted) from None


def _check_conversation(messages: list[_Message]) -> None:
    """What OpenAI checks across messages: a tool message answers a call of the assistant
    message before it (other tool messages may come between), and a text part has text."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        parts = message.content if isinstance(message.content, list) else []
        for number, part in enumerate(parts):
            if part.type == "text" and part.text is None:
                param = f"messages[{index}].content[{number}].text"
                raise RequestError(
                    f"invalid parameter '{param}': a text part needs text", param=param
                )
        if message.role != "tool":
            calls = {call.id for call in message.tool_calls or ()}
            continue
        if message.tool_call_id is None:
            param = f"messages[{index}].tool_call_id"
            raise RequestError(
                f"invalid parameter '{param}': a tool message needs the id of the call it answers",
                param=param,
            )
        if message.tool_call_id not in calls:
            param = f"messages[{index}].role"
            raise RequestError(
                f"invalid parameter '{param}': a tool message must answer a call in the "
                f"'tool_calls' of the assistant message before it; no call "
                f"'{clip(message.tool_call_id)}' there",
                param=param,
            )


_PLAIN_KEYS = frozenset(
    {"model", "messages", "stream", "max_tokens", "temperature", "top_p", "user", "stream_options"}
)
_PLAIN_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "developer",
    "user": "user",
    "assistant": "assistant",
}
_PLAIN_MESSAGE_KEYS = frozenset({"role", "content", "name"})


def _plain_chat(value: dict[str, Any]) -> tuple[ChatRequest, bool] | None:
    """The common body (text messages, the usual parameters, every value plainly valid,
    every number too) as `_Body` reads it, without pydantic; None for anything else,
    which `_refuse_bad_numbers` and `_Body` then validate (so every error is its own)."""
    if not _PLAIN_KEYS.issuperset(value):
        return None
    model = value.get("model")
    messages = value.get("messages")
    if type(model) is not str or not model or type(messages) is not list or not messages:
        return None
    stream = value.get("stream", False)
    max_tokens = value.get("max_tokens")
    temperature = value.get("temperature")
    top_p = value.get("top_p")
    user = value.get("user")
    options = value.get("stream_options")
    # Every number the body may hold is checked here as `_refuse_bad_numbers` would: within
    # its range (which no NaN is in), or, in `stream_options`, by it.
    if (
        type(stream) is not bool
        or not (max_tokens is None or (type(max_tokens) is int and 1 <= max_tokens < _INT64))
        or not (temperature is None or (type(temperature) is float and 0 <= temperature <= 2))
        or not (top_p is None or (type(top_p) is float and 0 <= top_p <= 1))
        or not (user is None or type(user) is str)
        or not (options is None or (type(options) is dict and _plain_numbers(options)))
    ):
        return None
    out: list[Message] = []
    for message in messages:
        if type(message) is not dict or not _PLAIN_MESSAGE_KEYS.issuperset(message):
            return None
        role = message.get("role")
        role = _PLAIN_ROLES.get(role) if type(role) is str else None
        content = message.get("content")
        name = message.get("name")
        if (
            role is None
            or not (content is None or type(content) is str)
            or not (name is None or type(name) is str)
        ):
            return None
        out.append(Message(role=role, content=content, name=name))
    request = ChatRequest(
        model=model,
        messages=out,
        stream=stream,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        user=user,
    )
    return request, bool(options and options.get("include_usage"))


def parse_chat_request(raw: bytes) -> tuple[ChatRequest, bool]:
    """A `ChatRequest` from a JSON body, and whether the client asked for stream usage.

    Raises `RequestError` naming the offending parameter.
    """
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON chat completion request")
    value = _any_object(raw)
    plain = _plain_chat(value)  # numbers checked by it: no walk over the whole body
    if plain is not None:
        return plain
    _refuse_bad_numbers(value)
    return _validated_chat(value)


def _validated_chat(value: dict[str, Any]) -> tuple[ChatRequest, bool]:
    """`parse_chat_request` of any body, by `_Body`."""
    try:
        body = _Body.model_validate(value)
    except ValidationError as error:
        raise invalid_parameter(error, _param) from None
    _check_conversation(body.messages)
    extra: dict[str, Any] = dict(body.model_extra or {})
    if body.n is not None:
        extra["n"] = body.n
    if body.max_completion_tokens is not None:
        extra["max_completion_tokens"] = body.max_completion_tokens
    include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))
    messages = [
        Message(
            role=message.role,
            content=[part.model_dump(exclude_unset=True) for part in message.content]
            if isinstance(message.content, list)
            else message.content,
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
