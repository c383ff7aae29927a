"""The Anthropic Messages API, translated to and from the OpenAI chat shape.

Anthropic differs from OpenAI in ways that matter at the boundary: the system
prompt is a top-level field, roles must alternate (so tool results and adjacent
turns are merged), tool calls and results are content blocks, `max_tokens` is
required, and a stream is a sequence of typed events rather than deltas.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from areion.config import ModelConfig
from areion.errors import RequestError, UpstreamError
from areion.providers.base import HttpTransport
from areion.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    Message,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "finish_reason",
    "messages_url",
    "parse_response",
    "parse_usage",
    "reasoning_effort",
    "request_body",
    "stop_reason",
    "translate_messages",
    "translate_tool_choice",
    "translate_tools",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; OpenAI clients usually leave it out."""

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The other way, for answers to Anthropic clients (`server/messages_wire.py`). OpenAI
# says `stop` both for the end of a turn and for a stop sequence: it becomes `end_turn`.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic-native parameters a client may send through `extra`; every other
# OpenAI extra (seed, response_format, logprobs...) would be rejected upstream.
_NATIVE_EXTRAS = ("top_k", "thinking", "service_tier")
# OpenAI's `reasoning_effort` as an Anthropic thinking budget (none: no thinking).
_THINKING_BUDGET = {"low": 1024, "medium": 4096, "high": 16384}


def messages_url(base_url: str | None) -> str:
    """The Messages endpoint under `base_url`, whether or not it already ends in `/v1`."""
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v1"):
        return base + "/messages"
    return base + "/v1/messages"


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise RequestError(
                "image_url data URLs must be base64 (data:<media type>;base64,<data>)",
                param="messages",
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise RequestError("image_url must be a data: URL or an http(s) URL", param="messages")


def _content_blocks(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        # Anthropic rejects empty text blocks.
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            text = str(part.get("text") or "")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise RequestError("image_url part without a url", param="messages")
            blocks.append(_image_block(url))
        else:
            raise RequestError(
                f"content part type {kind!r} is not supported by Anthropic deployments",
                param="messages",
            )
    return blocks


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = orjson.loads(call.arguments) if call.arguments.strip() else {}
    except orjson.JSONDecodeError:
        raise RequestError(
            f"tool call {call.id!r} ({call.name}) has arguments that are not valid JSON",
            param="messages",
        ) from None
    if not isinstance(arguments, dict):
        raise RequestError(
            f"tool call {call.id!r} ({call.name}) has arguments that are not a JSON object",
            param="messages",
        )
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


def _tool_result_block(message: Message) -> dict[str, Any]:
    if not message.tool_call_id:
        raise RequestError("a tool message needs tool_call_id", param="messages")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if isinstance(message.content, list):
        block["content"] = _content_blocks(message.content)
    else:
        block["content"] = message.content or ""
    return block


def translate_messages(messages: Iterable[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """The top-level system prompt and the alternating Anthropic messages."""
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            text = message.text()
            if text:
                system.append(text)
            continue
        if message.role == "tool":
            role, blocks = "user", [_tool_result_block(message)]
        elif message.role == "assistant":
            blocks = _content_blocks(message.content)
            blocks.extend(_tool_use_block(call) for call in message.tool_calls or ())
            role = "assistant"
        else:
            role, blocks = "user", _content_blocks(message.content)
        if not blocks:
            continue
        # Merging also gathers consecutive tool results into one user turn.
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    out: list[dict[str, Any]] = []
    for role, blocks in turns:
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            out.append({"role": role, "content": blocks[0]["text"]})
        else:
            out.append({"role": role, "content": blocks})
    return ("\n\n".join(system) or None), out


def translate_tools(tools: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function tools as Anthropic tools."""
    out = []
    for tool in tools:
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise RequestError(
                f"tool type {tool.get('type')!r} is not supported by Anthropic deployments",
                param="tools",
            )
        name = function.get("name")
        if not name:
            raise RequestError("a function tool needs a name", param="tools")
        item: dict[str, Any] = {
            "name": name,
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            item["description"] = function["description"]
        out.append(item)
    return out


def translate_tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `tool_choice` as an Anthropic one."""
    if isinstance(choice, str):
        mapped = {"auto": "auto", "required": "any", "none": "none"}.get(choice)
        if mapped is None:
            raise RequestError(f"unknown tool_choice {choice!r}", param="tool_choice")
        return {"type": mapped}
    function = choice.get("function")
    if choice.get("type") == "function" and isinstance(function, dict) and function.get("name"):
        return {"type": "tool", "name": function["name"]}
    raise RequestError(
        "tool_choice must be auto, none, required or {type: function, function: {name}}",
        param="tool_choice",
    )


def request_body(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The Anthropic Messages body for `request`, addressed to upstream `model`."""
    n = request.extra.get("n")
    if n is not None and n != 1:
        raise RequestError("Anthropic deployments cannot answer n > 1 choices", param="n")
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
    }
    if system is not None:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = translate_tools(request.tools)
        choice = translate_tool_choice(request.tool_choice or "auto")
        if request.extra.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        if request.tool_choice is not None or "disable_parallel_tool_use" in choice:
            body["tool_choice"] = choice
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    for key in _NATIVE_EXTRAS:
        if key in request.extra:
            body[key] = request.extra[key]
    budget = _THINKING_BUDGET.get(str(request.extra.get("reasoning_effort")))
    if budget and "thinking" not in body:
        # Thinking counts against max_tokens, and takes no sampling parameters.
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        body["max_tokens"] += budget
        body.pop("temperature", None)
        body.pop("top_p", None)
    if stream:
        body["stream"] = True
    return body


def finish_reason(stop_reason: str | None) -> str | None:
    """The OpenAI finish reason for an Anthropic `stop_reason`."""
    if stop_reason is None:
        return None
    return _FINISH_REASONS.get(stop_reason, "stop")


def stop_reason(finish_reason: str | None) -> str:
    """The Anthropic `stop_reason` for an OpenAI finish reason (`end_turn` if none)."""
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def reasoning_effort(budget_tokens: int) -> str:
    """The OpenAI `reasoning_effort` nearest below an Anthropic thinking budget: the
    inverse of how `request_body` turns an effort into a budget."""
    fitting = [effort for effort, budget in _THINKING_BUDGET.items() if budget <= budget_tokens]
    return fitting[-1] if fitting else "low"


def parse_usage(data: dict[str, Any] | None) -> Usage | None:
    """Usage from an Anthropic `usage` object; cache reads and writes count as prompt."""
    if not data:
        return None
    cache_read = int(data.get("cache_read_input_tokens") or 0)
    cache_write = int(data.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(data.get("input_tokens") or 0) + cache_read + cache_write,
        completion_tokens=int(data.get("output_tokens") or 0),
        cached_tokens=cache_read,
    )


def parse_response(data: dict[str, Any], *, model: str) -> ChatResponse:
    """A ChatResponse from an Anthropic message; `model` stands in if the answer has none."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=str(block.get("id") or ""),
                    name=str(block.get("name") or ""),
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    text = "".join(texts)
    message = Message(
        role="assistant",
        # OpenAI clients expect null content on a pure tool-call answer.
        content=None if calls and not text else text,
        tool_calls=calls or None,
    )
    return ChatResponse(
        id=str(data.get("id") or ""),
        model=str(data.get("model") or model),
        created=int(time.time()),
        choices=[Choice(message=message, finish_reason=finish_reason(data.get("stop_reason")))],
        usage=parse_usage(data.get("usage")),
    )


@dataclass(slots=True, kw_only=True)
class _StreamState:
    """What a stream has told so far."""

    id: str = ""
    """Message id, from message_start."""
    model: str
    """Upstream model id."""
    created: int
    """Unix time the stream began."""
    usage: dict[str, Any] = field(default_factory=dict)
    """Anthropic usage counters, updated by message_start and message_delta."""
    tools: dict[int, int] = field(default_factory=dict)
    """Content block index → ordinal of that tool call among the message's calls."""
    done: bool = False
    """message_stop arrived."""

    def chunk(self, **fields: Any) -> StreamChunk:
        return StreamChunk(id=self.id, model=self.model, created=self.created, **fields)


class AnthropicProvider:
    """Messages API calls over HTTP to one Anthropic deployment."""

    def __init__(self, config: ModelConfig, *, deployment: str) -> None:
        self.deployment = deployment
        self.model = config.upstream_model
        self._url = messages_url(config.base_url)
        self._headers = {
            "content-type": "application/json",
            "anthropic-version": config.anthropic_version,
            **{name: value.get_secret_value() for name, value in config.headers.items()},
        }
        if config.api_key is not None and config.api_key.get_secret_value():
            self._headers["x-api-key"] = config.api_key.get_secret_value()
        self._http = HttpTransport(config, deployment=deployment)

    @property
    def http(self) -> HttpTransport:
        """The deployment's HTTP connections (the runtime sets their trace hook)."""
        return self._http

    async def complete(self, request: ChatRequest) -> ChatResponse:
        body = orjson.dumps(request_body(request, self.model, stream=False))
        content = await self._http.post(self._url, body, self._headers)
        try:
            return parse_response(orjson.loads(content), model=self.model)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UpstreamError(
                f"deployment {self.deployment} sent an answer that is not an Anthropic "
                f"message ({type(error).__name__})"
            ) from None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        body = orjson.dumps(request_body(request, self.model, stream=True))
        state = _StreamState(model=self.model, created=int(time.time()))
        data_lines: list[str] = []
        async for raws in self._http.post_lines(self._url, body, self._headers):
            for raw in raws:
                if state.done:
                    break  # read to the end, so the connection is reused
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data_lines.append(line[5:].strip())
                    continue
                if line or not data_lines:
                    continue  # `event:` lines repeat the type the data carries
                payload, data_lines = "\n".join(data_lines), []
                for chunk in self._chunks(payload, state):
                    yield chunk
        if data_lines and not state.done:
            for chunk in self._chunks("\n".join(data_lines), state):
                yield chunk
        if not state.done:
            raise UpstreamError(
                f"deployment {self.deployment} ended the stream before message_stop"
            )

    def _chunks(self, payload: str, state: _StreamState) -> list[StreamChunk]:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"deployment {self.deployment} sent a stream event that is not JSON",
                retryable=False,
            ) from None
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            state.id = str(message.get("id") or "")
            state.model = str(message.get("model") or state.model)
            state.usage.update(message.get("usage") or {})
            return [state.chunk(role="assistant", content="")]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                ordinal = len(state.tools)
                state.tools[int(event.get("index") or 0)] = ordinal
                call = ToolCallDelta(
                    index=ordinal, id=str(block.get("id") or ""), name=str(block.get("name") or "")
                )
                return [state.chunk(tool_calls=[call])]
            if block.get("type") == "text" and block.get("text"):
                return [state.chunk(content=str(block["text"]))]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [state.chunk(content=str(delta["text"]))]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                known = state.tools.get(int(event.get("index") or 0))
                if known is None:
                    return []
                call = ToolCallDelta(index=known, arguments=str(delta["partial_json"]))
                return [state.chunk(tool_calls=[call])]
            return []  # thinking, signature and citation deltas carry no answer text
        if kind == "message_delta":
            state.usage.update(
                {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            )
            reason = finish_reason((event.get("delta") or {}).get("stop_reason"))
            return [state.chunk(finish_reason=reason)] if reason else []
        if kind == "message_stop":
            state.done = True
            usage = parse_usage(state.usage) or Usage()
            return [state.chunk(usage=usage)]
        if kind == "error":
            error = event.get("error") or {}
            detail = str(error.get("message") or error.get("type") or payload)
            raise UpstreamError(
                f"deployment {self.deployment} reported an error mid-stream: "
                f"{self._http.redact(detail)[:500]}"
            )
        return []  # ping, content_block_stop and event types added later

    async def aclose(self) -> None:
        await self._http.aclose()
