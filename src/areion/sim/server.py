"""`areion sim`: the simulated models over HTTP, in both the OpenAI and the Anthropic wire shape.

Real SDKs can point at it: `/v1/chat/completions` and `/v1/models` speak OpenAI,
`/v1/messages` speaks Anthropic Messages, `/v1/files` and `/v1/batches` OpenAI's batch API
(`sim/batches.py`), `/v1/messages/batches` Anthropic's Message Batches
(`sim/message_batches.py`), and `/metrics` exposes the vLLM load
gauges a capacity-aware balancer reads. The Anthropic translation lives here on
purpose: the sim must not depend on the production Anthropic provider it tests.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from areion.errors import (
    AreionError,
    ConfigError,
    RateLimitedError,
    RequestError,
    UnknownModelError,
)
from areion.sim.batches import SimBatches
from areion.sim.engine import SimEngine, estimate_prompt_tokens
from areion.sim.message_batches import SimMessageBatches
from areion.sim.profiles import builtin_profiles, load_profiles
from areion.types import ChatRequest, ChatResponse, Message, Role, StreamChunk, ToolCall

__all__ = ["create_sim_app", "run_sim"]

_JSON = "application/json"
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "developer",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def create_sim_app(engine: SimEngine) -> Starlette:
    """The ASGI app serving `engine`."""

    async def chat_completions(request: Request) -> Response:
        try:
            chat, include_usage = _openai_request(await _json_body(request))
            if chat.stream:
                chunks = engine.stream(chat)
                # Pull the first chunk before answering so a fault still gets its status.
                first = await anext(chunks)
                return StreamingResponse(
                    _openai_events(first, chunks, include_usage=include_usage),
                    media_type="text/event-stream",
                    headers=_SSE_HEADERS,
                )
            response = await engine.complete(chat)
        except AreionError as error:
            return _openai_error(error)
        return Response(orjson.dumps(response.to_openai()), media_type=_JSON)

    async def answer_line(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A batch line's chat completion, as its status and response body."""
        try:
            chat, _ = _openai_request({**body, "stream": False})
            response = await engine.complete(chat)
        except AreionError as error:
            failed = _openai_error(error)
            return failed.status_code, orjson.loads(bytes(failed.body))
        return 200, response.to_openai()

    async def answer_message(params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A Message Batch request's message, as its status and Anthropic body."""
        try:
            chat = _anthropic_request({**params, "stream": False})
            response = await engine.complete(chat)
        except AreionError as error:
            failed = _anthropic_error(error)
            return failed.status_code, orjson.loads(bytes(failed.body))
        return 200, _anthropic_message(response)

    async def models(request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "areion-sim"}
            for name in sorted(engine.profiles)
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=_JSON)

    async def messages(request: Request) -> Response:
        try:
            chat = _anthropic_request(await _json_body(request))
            if chat.stream:
                chunks = engine.stream(chat)
                first = await anext(chunks)
                return StreamingResponse(
                    _anthropic_events(first, chunks, input_tokens=estimate_prompt_tokens(chat)),
                    media_type="text/event-stream",
                    headers=_SSE_HEADERS,
                )
            response = await engine.complete(chat)
        except AreionError as error:
            return _anthropic_error(error)
        return Response(orjson.dumps(_anthropic_message(response)), media_type=_JSON)

    async def metrics(request: Request) -> Response:
        return Response(
            _metrics_text(engine), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            *SimBatches(answer_line).routes(),
            *SimMessageBatches(answer_message).routes(),
        ]
    )


def run_sim(
    host: str, port: int, *, profiles_file: str | None, time_scale: float, seed: int | None
) -> None:
    """Serve the built-in profiles (plus those of `profiles_file`) until interrupted."""
    try:
        profiles = load_profiles(profiles_file) if profiles_file else builtin_profiles()
        engine = SimEngine(profiles, time_scale=time_scale, seed=seed)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    app = create_sim_app(engine)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


# --- shared -----------------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise RequestError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _status(error: AreionError) -> int:
    if isinstance(error, RateLimitedError | UnknownModelError):
        return error.status
    if isinstance(error, RequestError):
        return 400
    # The sim is the upstream: its own failures are plain 500s, not a gateway's 502.
    return 500


def _retry_headers(error: AreionError) -> dict[str, str]:
    retry_after = getattr(error, "retry_after", None)
    if not isinstance(error, RateLimitedError) or retry_after is None:
        return {}
    # Retry-After takes whole seconds; OpenAI SDKs prefer the exact retry-after-ms.
    return {
        "retry-after": str(math.ceil(retry_after)),
        "retry-after-ms": str(round(retry_after * 1000)),
    }


def _message_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _text_of(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{where}: must be a string", param=where)
    return value


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


async def _drain(
    first: StreamChunk,
    rest: AsyncGenerator[StreamChunk, None],
    emit: Callable[[StreamChunk], list[bytes]],
) -> AsyncIterator[bytes]:
    try:
        for item in emit(first):
            yield item
        async for chunk in rest:
            for item in emit(chunk):
                yield item
    finally:
        # A client that hangs up must free its slot now, not when the generator is collected.
        await rest.aclose()


# --- OpenAI -----------------------------------------------------------------------------

_OPENAI_FIELDS = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "user",
}


def _openai_request(body: dict[str, Any]) -> tuple[ChatRequest, bool]:
    """The request, and whether a stream should end with a usage chunk."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: required, a non-empty string", param="model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RequestError("messages: required, a non-empty array", param="messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream: must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options: must be an object", param="stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (
        isinstance(stop, list) and all(isinstance(item, str) for item in stop)
    ):
        raise RequestError("stop: must be a string or an array of strings", param="stop")
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)
    ):
        raise RequestError("tools: must be an array of objects", param="tools")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, str | dict):
        raise RequestError("tool_choice: must be a string or an object", param="tool_choice")
    user = body.get("user")
    if user is not None:
        user = _text_of(user, "user")
    chat = ChatRequest(
        model=model,
        messages=[_openai_message(raw, index) for index, raw in enumerate(raw_messages)],
        stream=stream,
        max_tokens=_max_tokens(max_tokens, required=False),
        temperature=_number(body.get("temperature"), "temperature"),
        top_p=_number(body.get("top_p"), "top_p"),
        stop=stop,
        tools=tools,
        tool_choice=tool_choice,
        user=user,
        extra={key: value for key, value in body.items() if key not in _OPENAI_FIELDS},
    )
    return chat, bool(options.get("include_usage"))


def _max_tokens(value: Any, *, required: bool) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(
            "max_tokens: " + ("required, " if required else "") + "a whole number >= 1",
            param="max_tokens",
        )
    return value


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{where}: must be a number", param=where)
    return float(value)


def _openai_message(raw: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise RequestError(f"{where}: must be an object", param=where)
    role = _ROLES.get(str(raw.get("role")))
    if role is None:
        raise RequestError(
            f"{where}.role: must be one of {', '.join(_ROLES)}", param=f"{where}.role"
        )
    content = raw.get("content")
    if content is not None and not (
        isinstance(content, str)
        or (isinstance(content, list) and all(isinstance(part, dict) for part in content))
    ):
        raise RequestError(
            f"{where}.content: must be a string or an array of content parts",
            param=f"{where}.content",
        )
    calls = None
    raw_calls = raw.get("tool_calls")
    if raw_calls is not None:
        if not isinstance(raw_calls, list):
            raise RequestError(f"{where}.tool_calls: must be an array", param=f"{where}.tool_calls")
        calls = [
            _openai_tool_call(call, f"{where}.tool_calls[{n}]") for n, call in enumerate(raw_calls)
        ]
    tool_call_id = raw.get("tool_call_id")
    if tool_call_id is not None:
        tool_call_id = _text_of(tool_call_id, f"{where}.tool_call_id")
    name = raw.get("name")
    if name is not None:
        name = _text_of(name, f"{where}.name")
    return Message(
        role=role, content=content, name=name, tool_calls=calls or None, tool_call_id=tool_call_id
    )


def _openai_tool_call(raw: Any, where: str) -> ToolCall:
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict):
        raise RequestError(f"{where}.function: required, an object", param=f"{where}.function")
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return ToolCall(
        id=_text_of(raw.get("id", ""), f"{where}.id"),
        name=_text_of(function.get("name"), f"{where}.function.name"),
        arguments=arguments,
    )


def _openai_error(error: AreionError) -> Response:
    status = _status(error)
    body = {
        "error": {
            "message": error.message,
            "type": error.type if status < 500 else "server_error",
            "param": error.param,
            "code": error.code,
        }
    }
    return Response(
        orjson.dumps(body), status_code=status, media_type=_JSON, headers=_retry_headers(error)
    )


def _openai_events(
    first: StreamChunk, rest: AsyncGenerator[StreamChunk, None], *, include_usage: bool
) -> AsyncIterator[bytes]:
    def emit(chunk: StreamChunk) -> list[bytes]:
        out = []
        if chunk.usage is None or include_usage:
            out.append(_sse(chunk.to_openai()))
        # The engine always ends with the usage chunk; [DONE] follows it.
        if chunk.usage is not None:
            out.append(b"data: [DONE]\n\n")
        return out

    return _drain(first, rest, emit)


# --- Anthropic --------------------------------------------------------------------------


def _anthropic_request(body: dict[str, Any]) -> ChatRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: Field required", param="model")
    max_tokens = _max_tokens(body.get("max_tokens"), required=True)
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RequestError("messages: required, a non-empty array", param="messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream: must be a boolean", param="stream")
    messages = _anthropic_system(body.get("system"))
    for index, raw in enumerate(raw_messages):
        messages.extend(_anthropic_message_in(raw, f"messages.{index}"))
    stop = body.get("stop_sequences")
    if stop is not None and not (
        isinstance(stop, list) and all(isinstance(item, str) for item in stop)
    ):
        raise RequestError("stop_sequences: must be an array of strings", param="stop_sequences")
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        max_tokens=max_tokens,
        temperature=_number(body.get("temperature"), "temperature"),
        top_p=_number(body.get("top_p"), "top_p"),
        stop=stop,
        tools=_anthropic_tools(body.get("tools")),
        tool_choice=_anthropic_tool_choice(body.get("tool_choice")),
        user=user if isinstance(user, str) else None,
    )


def _anthropic_system(system: Any) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message(role="system", content=system)] if system else []
    if isinstance(system, list) and all(isinstance(block, dict) for block in system):
        text = "".join(
            _text_of(block.get("text"), f"system.{index}.text")
            for index, block in enumerate(system)
            if block.get("type") == "text"
        )
        return [Message(role="system", content=text)] if text else []
    raise RequestError("system: must be a string or an array of text blocks", param="system")


def _anthropic_message_in(raw: Any, where: str) -> list[Message]:
    """One Anthropic message as OpenAI-shaped messages (tool results become `tool` ones)."""
    if not isinstance(raw, dict):
        raise RequestError(f"{where}: must be an object", param=where)
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise RequestError(f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
    content = raw.get("content")
    if isinstance(content, str):
        return [Message(role=role, content=content)]
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise RequestError(
            f"{where}.content: must be a string or an array of content blocks",
            param=f"{where}.content",
        )
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for index, block in enumerate(content):
        at = f"{where}.content.{index}"
        kind = block.get("type")
        if kind == "text":
            texts.append(_text_of(block.get("text"), f"{at}.text"))
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=_text_of(block.get("id"), f"{at}.id"),
                    name=_text_of(block.get("name"), f"{at}.name"),
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
        elif kind == "tool_result":
            results.append(
                Message(
                    role="tool",
                    tool_call_id=_text_of(block.get("tool_use_id"), f"{at}.tool_use_id"),
                    content=_tool_result_text(block.get("content")),
                )
            )
        # Images, documents and thinking blocks carry nothing the sim answers from.
    out = results
    if role == "assistant":
        out.append(
            Message(role="assistant", content="".join(texts) or None, tool_calls=calls or None)
        )
    elif texts or not results:
        out.append(Message(role="user", content="".join(texts)))
    return out


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _anthropic_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise RequestError("tools: must be an array of objects", param="tools")
    out = []
    for index, tool in enumerate(tools):
        # Server tools (web search, code execution...) have a versioned type and no schema.
        if "input_schema" not in tool:
            continue
        function: dict[str, Any] = {
            "name": _text_of(tool.get("name"), f"tools.{index}.name"),
            "parameters": tool["input_schema"],
        }
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out or None


def _anthropic_tool_choice(choice: Any) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        return str(kind)
    if kind == "any":
        return "required"
    if kind == "tool":
        name = _text_of(choice.get("name"), "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise RequestError(
        "tool_choice: must be an object with type auto, any, tool or none", param="tool_choice"
    )


def _tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _anthropic_message(response: ChatResponse) -> dict[str, Any]:
    message = response.message
    content: list[dict[str, Any]] = []
    text = message.text()
    if text:
        content.append({"type": "text", "text": text})
    for call in message.tool_calls or ():
        content.append(
            {
                "type": "tool_use",
                "id": _tool_use_id(call.id),
                "name": call.name,
                "input": orjson.loads(call.arguments or "{}"),
            }
        )
    usage = response.usage
    return {
        "id": _message_id("msg_sim"),
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": _STOP_REASONS.get(response.choices[0].finish_reason or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _anthropic_error(error: AreionError) -> Response:
    status = _status(error)
    kind = {
        400: "invalid_request_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": error.message}}
    return Response(
        orjson.dumps(body), status_code=status, media_type=_JSON, headers=_retry_headers(error)
    )


def _anthropic_events(
    first: StreamChunk, rest: AsyncGenerator[StreamChunk, None], *, input_tokens: int
) -> AsyncIterator[bytes]:
    """The Messages event sequence for an OpenAI-shaped chunk stream."""
    block = -1  # index of the open content block, -1 when none is open
    opened = 0
    stop_reason = "end_turn"

    def open_block(content_block: dict[str, Any]) -> list[bytes]:
        nonlocal block, opened
        out = close_block()
        block, opened = opened, opened + 1
        data = {"type": "content_block_start", "index": block, "content_block": content_block}
        out.append(_sse(data, "content_block_start"))
        return out

    def close_block() -> list[bytes]:
        nonlocal block
        if block < 0:
            return []
        data = {"type": "content_block_stop", "index": block}
        block = -1
        return [_sse(data, "content_block_stop")]

    def emit(chunk: StreamChunk) -> list[bytes]:
        nonlocal stop_reason
        out: list[bytes] = []
        if chunk.role is not None:
            message: dict[str, Any] = {
                "id": _message_id("msg_sim"),
                "type": "message",
                "role": "assistant",
                "model": chunk.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }
            out.append(_sse({"type": "message_start", "message": message}, "message_start"))
            out.append(_sse({"type": "ping"}, "ping"))
        if chunk.content:
            if block < 0:
                out.extend(open_block({"type": "text", "text": ""}))
            delta = {"type": "text_delta", "text": chunk.content}
            out.append(_delta(block, delta))
        for call in chunk.tool_calls or ():
            if call.id is not None:
                out.extend(
                    open_block(
                        {
                            "type": "tool_use",
                            "id": _tool_use_id(call.id),
                            "name": call.name or "",
                            "input": {},
                        }
                    )
                )
            if call.arguments:
                out.append(
                    _delta(block, {"type": "input_json_delta", "partial_json": call.arguments})
                )
        if chunk.finish_reason is not None:
            stop_reason = _STOP_REASONS.get(chunk.finish_reason, "end_turn")
            out.extend(close_block())
        if chunk.usage is not None:
            data = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": chunk.usage.completion_tokens},
            }
            out.append(_sse(data, "message_delta"))
            out.append(_sse({"type": "message_stop"}, "message_stop"))
        return out

    return _drain(first, rest, emit)


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    data = {"type": "content_block_delta", "index": index, "delta": delta}
    return _sse(data, "content_block_delta")


# --- metrics ----------------------------------------------------------------------------

_GAUGES = (
    ("vllm:num_requests_running", "Number of requests running on the model.", "running"),
    ("vllm:num_requests_waiting", "Number of requests waiting for a slot.", "waiting"),
    ("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.", "kv_cache_usage"),
    (
        "vllm:gpu_cache_usage_perc",
        "KV-cache usage (older name); 1 means 100 percent.",
        "kv_cache_usage",
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metrics_text(engine: SimEngine) -> bytes:
    loads = [engine.load(name) for name in sorted(engine.profiles)]
    lines = []
    for metric, description, attribute in _GAUGES:
        lines.append(f"# HELP {metric} {description}")
        lines.append(f"# TYPE {metric} gauge")
        for load in loads:
            value = float(getattr(load, attribute))
            lines.append(f'{metric}{{model_name="{_label(load.model)}"}} {value}')
    return ("\n".join(lines) + "\n").encode()
