"""A Responses API request (`POST /v1/responses`), validated and translated onto the
`ChatRequest` every other request path stage and provider takes.

    input (a string, or items)  ->  messages: a string is one user message; `message`
                                    items keep their role (input_text -> text parts,
                                    input_image -> image_url parts; an assistant's
                                    output_text/refusal parts -> its text); `function_call`
                                    items join the assistant message before them as
                                    tool_calls; `function_call_output` -> a tool message
    instructions                ->  a system message first (never carried to a later turn)
    tools (function tools)      ->  tools in the chat shape; tool_choice likewise
    text.format                 ->  response_format (json_schema, json_object)
    max_output_tokens           ->  max_tokens; reasoning.effort -> reasoning_effort
    temperature, top_p, user, parallel_tool_calls, service_tier, prompt_cache_key,
    prompt_cache_retention, safety_identifier, text.verbosity -> passed on as they are

What Areion cannot honour is a 400 naming the parameter, never silently dropped:
built-in tools (web_search, file_search, ...), `background`, `conversation`, stored
`prompt` templates, `include`, `truncation: auto`, logprobs, reasoning summaries,
`reasoning` for a model that is not a reasoning model, and input items other than
messages and function calls (reasoning, item references, built-in tool calls...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from areion.errors import RequestError
from areion.server.schema import clip, parse_body
from areion.types import ChatRequest, Message, ToolCall

__all__ = ["ResponsesRequest", "parse_responses_request"]

_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_VERBOSITY = ("low", "medium", "high")
_IMAGE_DETAIL = ("auto", "low", "high", "original")


class _Body(BaseModel):
    # Strict, as OpenAI's API is. Items, tools and formats are checked by hand below,
    # so an error names the exact item (`input[2].content[0].image_url`).
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1)
    input: Any = None
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)
    reasoning: dict[str, Any] | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    # Accepted only where they ask for nothing Areion cannot do (see `_refuse`).
    include: list[str] | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = None
    conversation: Any = None
    prompt: Any = None
    context_management: Any = None
    prompt_cache_options: Any = None


@dataclass(slots=True, kw_only=True)
class ResponsesRequest:
    """A validated Responses API request, before the conversation it continues is known."""

    model: str
    """The model group or route asked for."""
    stream: bool
    """Answer as typed server-sent events."""
    store: bool
    """Keep the response, so `previous_response_id` can continue it (default true)."""
    previous_response_id: str | None
    """The stored response this request continues."""
    instructions: str | None
    """The system message of this request alone."""
    turn: list[tuple[int, Message]]
    """This request's input as chat messages, each with the index of the input item it
    starts at (for errors)."""
    template: ChatRequest
    """Every chat parameter; its messages are filled in by `chat_request`."""
    echo: dict[str, Any]
    """The request's parameters as the response object repeats them."""

    def chat_request(self, history: list[Message]) -> ChatRequest:
        """The chat request: instructions, the stored conversation, then this turn."""
        _check_answers(history, self.turn)
        messages = [Message(role="system", content=self.instructions)] if self.instructions else []
        messages += history
        messages += [message for _, message in self.turn]
        return dataclasses.replace(self.template, messages=messages)

    def turn_messages(self) -> list[dict[str, Any]]:
        """This turn's input messages in the OpenAI wire shape, as they are stored."""
        return [message.to_openai() for _, message in self.turn]


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(f"invalid parameter '{param}': {message}", param=param)


def _unsupported(param: str, message: str) -> RequestError:
    return RequestError(f"'{param}' is not supported by Areion: {message}", param=param)


def parse_responses_request(raw: bytes, *, reasoning: Callable[[str], bool]) -> ResponsesRequest:
    """A `ResponsesRequest` from a JSON body; `reasoning(model)` says whether a model may
    take `reasoning`. Raises `RequestError` naming the offending parameter."""
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON Responses API request")
    body: _Body = parse_body(_Body, raw)
    for name in body.model_extra or {}:
        param = clip(name)
        raise RequestError(
            f"unknown parameter '{param}': Areion's Responses API does not take it", param=param
        )
    _refuse(body)
    if body.input is None:
        raise _invalid("input", "required: a string, or a list of input items")
    tools = _tools(body.tools) if body.tools else None
    extra: dict[str, Any] = {}
    if tools and body.parallel_tool_calls is not None:
        extra["parallel_tool_calls"] = body.parallel_tool_calls
    for name in ("service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier"):
        value = getattr(body, name)
        if value is not None:
            extra[name] = value
    text = _text(body.text, extra)
    effort = _reasoning(body.reasoning, body.model, reasoning)
    if effort is not None:
        extra["reasoning_effort"] = effort
    _check_metadata(body.metadata)
    template = ChatRequest(
        model=body.model,
        messages=[],
        stream=bool(body.stream),
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        user=body.user,
        extra=extra,
    )
    store = body.store is not False
    echo: dict[str, Any] = {
        "background": False,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": {"effort": effort, "summary": None},
        "safety_identifier": body.safety_identifier,
        "service_tier": body.service_tier or "default",
        "store": store,
        "temperature": body.temperature,
        "text": text,
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": body.tools or [],
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
    }
    return ResponsesRequest(
        model=body.model,
        stream=bool(body.stream),
        store=store,
        previous_response_id=body.previous_response_id,
        instructions=body.instructions,
        turn=_turn(body.input),
        template=template,
        echo=echo,
    )


def _refuse(body: _Body) -> None:
    """A 400 for each parameter that asks for what Areion cannot do."""
    if body.background:
        raise _unsupported(
            "background", "responses are answered while the request waits (send false)"
        )
    if body.conversation is not None:
        raise _unsupported(
            "conversation",
            "there is no Conversations API; continue with previous_response_id or send the "
            "conversation as input items",
        )
    if body.prompt is not None:
        raise _unsupported("prompt", "stored prompt templates; send instructions and input")
    if body.context_management is not None:
        raise _unsupported("context_management", "server-side context compaction")
    if body.prompt_cache_options is not None:
        raise _unsupported("prompt_cache_options", "send prompt_cache_key alone")
    if body.truncation == "auto":
        raise _unsupported("truncation", "'auto' (Areion never drops input; send 'disabled')")
    if body.top_logprobs:
        raise _unsupported("top_logprobs", "log probabilities are not returned")
    if body.include:
        value = clip(body.include[0])
        raise _unsupported("include[0]", f"'{value}': no additional output data is returned")


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise _invalid("metadata", "at most 16 key-value pairs")
    for key, value in metadata.items():
        if len(key) > 64:
            raise _invalid("metadata", f"key '{clip(key)}' is longer than 64 characters")
        if len(value) > 512:
            param = f"metadata.{clip(key)}"
            raise _invalid(param, "values are at most 512 characters")


# -- input -----------------------------------------------------------------------------


def _turn(value: Any) -> list[tuple[int, Message]]:
    if isinstance(value, str):
        return [(0, Message(role="user", content=value))]
    if not isinstance(value, list) or not value:
        raise _invalid("input", "must be a string or a non-empty list of input items")
    turn: list[tuple[int, Message]] = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise _invalid(param, "an input item must be a JSON object")
        kind = item.get("type", "message")
        if kind == "message":
            turn.append((index, _message(item, param)))
        elif kind == "function_call":
            call = ToolCall(
                id=_string(item, "call_id", param),
                name=_string(item, "name", param),
                arguments=_string(item, "arguments", param, empty=True),
            )
            last = turn[-1][1] if turn else None
            if last is not None and last.role == "assistant":
                # One assistant turn: its text and its calls are one chat message.
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                turn.append((index, Message(role="assistant", content=None, tool_calls=[call])))
        elif kind == "function_call_output":
            turn.append(
                (
                    index,
                    Message(
                        role="tool",
                        tool_call_id=_string(item, "call_id", param),
                        content=_tool_output(item.get("output"), f"{param}.output"),
                    ),
                )
            )
        elif isinstance(kind, str):
            raise _unsupported(
                f"{param}.type",
                f"input items of type '{clip(kind)}'; Areion takes message, function_call "
                "and function_call_output items",
            )
        else:
            raise _invalid(f"{param}.type", "must be a string")
    return turn


def _string(item: dict[str, Any], name: str, param: str, *, empty: bool = False) -> str:
    value = item.get(name)
    if not isinstance(value, str) or (not value and not empty):
        raise _invalid(f"{param}.{name}", "required: a non-empty string")
    return value


def _message(item: dict[str, Any], param: str) -> Message:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise _invalid(f"{param}.role", "must be one of: user, system, developer, assistant")
    content = item.get("content")
    if isinstance(content, str):
        return Message(role=role, content=content)
    if not isinstance(content, list):
        raise _invalid(f"{param}.content", "must be a string or a list of content parts")
    parts = [_part(part, role, f"{param}.content[{n}]") for n, part in enumerate(content)]
    if role == "assistant":
        # What the model said before, as the chat shape keeps it: its text.
        return Message(role=role, content="".join(part["text"] for part in parts))
    return Message(role=role, content=parts)


def _part(part: Any, role: str, param: str) -> dict[str, Any]:
    """One content part, as a chat content part."""
    if not isinstance(part, dict):
        raise _invalid(param, "a content part must be a JSON object")
    kind = part.get("type")
    if kind in ("input_text", "output_text") or (kind == "refusal" and role == "assistant"):
        field = "refusal" if kind == "refusal" else "text"
        text = part.get(field)
        if not isinstance(text, str):
            raise _invalid(f"{param}.{field}", "required: a string")
        return {"type": "text", "text": text}
    if kind == "input_image" and role != "assistant":
        url = part.get("image_url")
        if part.get("file_id") is not None and url is None:
            raise _unsupported(f"{param}.file_id", "there is no file store; send image_url")
        if not isinstance(url, str) or not url:
            raise _invalid(f"{param}.image_url", "required: an http(s) or data: URL")
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail is not None:
            if detail not in _IMAGE_DETAIL:
                raise _invalid(f"{param}.detail", f"must be one of: {', '.join(_IMAGE_DETAIL)}")
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if isinstance(kind, str):
        raise _unsupported(
            f"{param}.type",
            f"'{clip(kind)}' content in a {role} message; Areion takes "
            + ("output_text and refusal" if role == "assistant" else "input_text and input_image"),
        )
    raise _invalid(f"{param}.type", "must be a string")


def _tool_output(output: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise _invalid(param, "must be a string or a list of input_text parts")
    parts = []
    for number, part in enumerate(output):
        if not isinstance(part, dict) or part.get("type") != "input_text":
            raise _unsupported(
                f"{param}[{number}]", "a tool's output is text (a string or input_text parts)"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise _invalid(f"{param}[{number}].text", "required: a string")
        parts.append({"type": "text", "text": text})
    return parts


def _check_answers(history: list[Message], turn: list[tuple[int, Message]]) -> None:
    """What the chat shape (and every provider) needs: a tool result answers a call of
    the assistant message before it (other results may come between)."""
    calls: set[str] = set()
    for message in history:
        if message.role != "tool":
            calls = {call.id for call in message.tool_calls or ()}
    for index, message in turn:
        if message.role != "tool":
            calls = {call.id for call in message.tool_calls or ()}
        elif message.tool_call_id not in calls:
            param = f"input[{index}].call_id"
            raise _invalid(
                param,
                "a function_call_output must answer a function_call just before it (in the "
                "input, or in the output of previous_response_id); there is no call "
                f"'{clip(message.tool_call_id or '')}'",
            )


# -- tools and output format -----------------------------------------------------------


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _invalid(param, "a tool must be a JSON object")
        kind = tool.get("type")
        if kind != "function":
            raise _unsupported(
                f"{param}.type",
                f"built-in tool '{clip(str(kind))}'; Areion serves function tools only "
                "(type: function), which your code runs",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise _invalid(f"{param}.name", "required: a string of 1 to 64 characters")
        function: dict[str, Any] = {"name": name}
        for field, kinds in (("description", str), ("parameters", dict), ("strict", bool)):
            value = tool.get(field)
            if value is None:
                continue
            if not isinstance(value, kinds):
                raise _invalid(f"{param}.{field}", f"must be a {_TYPE_NAMES[kinds]}")
            function[field] = value
        out.append({"type": "function", "function": function})
    return out


_TYPE_NAMES: dict[type, str] = {str: "string", dict: "JSON object", bool: "boolean"}


def _tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("none", "auto", "required"):
        return str(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        names = {tool["function"]["name"] for tool in tools or ()}
        if not isinstance(name, str) or name not in names:
            raise _invalid("tool_choice.name", "must name one of the function tools offered")
        return {"type": "function", "function": {"name": name}}
    if isinstance(choice, dict) and isinstance(choice.get("type"), str):
        raise _unsupported(
            "tool_choice",
            f"'{clip(choice['type'])}'; use none, auto, required or {{type: function, name}}",
        )
    raise _invalid("tool_choice", "must be none, auto, required or {type: function, name}")


def _text(text: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """`text` as the response repeats it; its format goes into `extra` as the chat
    `response_format`, its verbosity as `verbosity`."""
    if text is None:
        return {"format": {"type": "text"}}
    for name in text:
        if name not in ("format", "verbosity"):
            raise _invalid(f"text.{clip(name)}", "unknown; text takes format and verbosity")
    verbosity = text.get("verbosity")
    if verbosity is not None:
        if verbosity not in _VERBOSITY:
            raise _invalid("text.verbosity", f"must be one of: {', '.join(_VERBOSITY)}")
        extra["verbosity"] = verbosity
    shape = text.get("format") or {"type": "text"}
    if not isinstance(shape, dict):
        raise _invalid("text.format", "must be a JSON object")
    kind = shape.get("type")
    if kind == "json_object":
        extra["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema_name = shape.get("name")
        if not isinstance(schema_name, str) or not 1 <= len(schema_name) <= 64:
            raise _invalid("text.format.name", "required: a string of 1 to 64 characters")
        schema = shape.get("schema")
        if not isinstance(schema, dict):
            raise _invalid("text.format.schema", "required: a JSON Schema object")
        json_schema: dict[str, Any] = {"name": schema_name, "schema": schema}
        for field, kinds in (("description", str), ("strict", bool)):
            value = shape.get(field)
            if value is None:
                continue
            if not isinstance(value, kinds):
                raise _invalid(f"text.format.{field}", f"must be a {_TYPE_NAMES[kinds]}")
            json_schema[field] = value
        extra["response_format"] = {"type": "json_schema", "json_schema": json_schema}
    elif kind != "text":
        raise _invalid("text.format.type", "must be one of: text, json_schema, json_object")
    return {"format": shape, **({"verbosity": verbosity} if verbosity is not None else {})}


def _reasoning(
    reasoning: dict[str, Any] | None, model: str, allowed: Callable[[str], bool]
) -> str | None:
    """The reasoning effort asked for, if any."""
    if reasoning is None:
        return None
    for name, value in reasoning.items():
        if name in ("summary", "generate_summary"):
            if value is not None:
                raise _unsupported(f"reasoning.{name}", "reasoning summaries are not returned")
        elif name != "effort":
            raise _invalid(f"reasoning.{clip(name)}", "unknown; reasoning takes effort")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise _invalid("reasoning.effort", f"must be one of: {', '.join(_EFFORTS)}")
    if not allowed(model):
        raise _unsupported(
            "reasoning",
            f"model '{clip(model)}' is not a reasoning model (its deployments would need "
            "reasoning: true in the config)",
        )
    return str(effort)
