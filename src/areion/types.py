"""The data that flows through the request path, in the OpenAI chat shape.

Messages keep the OpenAI wire shape because that is what every client speaks and
what most providers accept; providers with another shape (Anthropic) translate at
their own boundary. Parameters Areion does not interpret travel in `extra` and are
passed to the provider untouched. Embeddings have their own pair
(`EmbeddingRequest`, `EmbeddingResponse`), in the shape of OpenAI's embeddings API.
"""

from __future__ import annotations

import base64
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "Choice",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EncodingFormat",
    "LedgerEntry",
    "Message",
    "Role",
    "StreamChunk",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "pack_vector",
    "unpack_vector",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(slots=True, kw_only=True)
class ToolCall:
    """A function call the model asked for."""

    id: str
    """Provider-assigned call id; a tool result refers back to it."""
    name: str
    """Name of the function."""
    arguments: str
    """JSON-encoded arguments, exactly as the model produced them."""

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True, kw_only=True)
class Message:
    """One chat message."""

    role: Role
    """Who wrote it."""
    content: str | list[dict[str, Any]] | None = None
    """Text, or a list of OpenAI content parts (text, image_url...)."""
    name: str | None = None
    """Optional participant name."""
    tool_calls: list[ToolCall] | None = None
    """Calls an assistant message asks for."""
    tool_call_id: str | None = None
    """For role `tool`: the call this message answers."""

    def text(self) -> str:
        """The textual content, with content parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )

    @classmethod
    def from_openai(cls, raw: dict[str, Any]) -> Message:
        """A message from its OpenAI wire shape."""
        calls = raw.get("tool_calls")
        return cls(
            role=raw.get("role") or "assistant",
            content=raw.get("content"),
            name=raw.get("name"),
            tool_calls=[
                ToolCall(
                    id=str(c.get("id") or ""),
                    name=str((c.get("function") or {}).get("name") or ""),
                    arguments=str((c.get("function") or {}).get("arguments") or ""),
                )
                for c in calls
            ]
            if calls
            else None,
            tool_call_id=raw.get("tool_call_id"),
        )

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(slots=True, kw_only=True)
class Usage:
    """Tokens a call consumed."""

    prompt_tokens: int = 0
    """Input tokens, cached ones included."""
    completion_tokens: int = 0
    """Output tokens, reasoning tokens included."""
    cached_tokens: int = 0
    """Part of `prompt_tokens` served from the provider's prompt cache."""
    reasoning_tokens: int = 0
    """Part of `completion_tokens` spent on hidden reasoning."""
    estimated: bool = False
    """True when the provider reported no usage and Areion counted the tokens itself."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


@dataclass(slots=True, kw_only=True)
class ChatRequest:
    """A chat completion request, as a client sent it."""

    model: str
    """The model group (or route) the client asked for."""
    messages: list[Message]
    """The conversation so far."""
    stream: bool = False
    """Answer as a stream of chunks."""
    max_tokens: int | None = None
    """Cap on output tokens (`max_tokens` or `max_completion_tokens`)."""
    temperature: float | None = None
    """Sampling temperature."""
    top_p: float | None = None
    """Nucleus sampling."""
    stop: list[str] | None = None
    """Stop sequences."""
    tools: list[dict[str, Any]] | None = None
    """Tools offered, in the OpenAI `{"type": "function", ...}` shape."""
    tool_choice: str | dict[str, Any] | None = None
    """`auto`, `none`, `required` or a named function."""
    user: str | None = None
    """End-user id, passed through."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other OpenAI parameters (seed, response_format, n, ...), passed through untouched."""

    @property
    def n(self) -> int:
        """How many answers the request asks for (OpenAI `n`, kept in `extra`); each is
        paid for."""
        n = self.extra.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1

    def prompt_text(self) -> str:
        """All message text, for token estimates."""
        return "\n".join(message.text() for message in self.messages)


@dataclass(slots=True, kw_only=True)
class Choice:
    """One completion choice."""

    index: int = 0
    """Position among the choices."""
    message: Message
    """The assistant message."""
    finish_reason: str | None = None
    """`stop`, `length`, `tool_calls` or `content_filter`."""


@dataclass(slots=True, kw_only=True)
class ChatResponse:
    """A complete (non-streamed) answer."""

    id: str
    """Completion id."""
    model: str
    """Upstream model id that produced it."""
    created: int
    """Unix time of creation."""
    choices: list[Choice]
    """The completions (one unless the client asked for `n`)."""
    usage: Usage | None = None
    """Tokens consumed; None until accounting counts them when the provider did not."""
    deployment: str = ""
    """The deployment that answered (set by the gateway)."""
    cost_usd: float | None = None
    """Cost of the call; a provider that knows its exact cost (replay) sets it."""
    system_fingerprint: str | None = None
    """Passed through from the provider."""
    cache: str | None = None
    """`hit-exact`, `hit-semantic` or `miss` when a cache looked the request up."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the request path noted for the response headers (cache entry, route...)."""

    @property
    def message(self) -> Message:
        """The first choice's message."""
        return self.choices[0].message

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": choice.index,
                    "message": choice.message.to_openai(),
                    "finish_reason": choice.finish_reason,
                    "logprobs": None,
                }
                for choice in self.choices
            ],
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        if self.system_fingerprint is not None:
            out["system_fingerprint"] = self.system_fingerprint
        return out


@dataclass(slots=True, kw_only=True)
class ToolCallDelta:
    """A fragment of a streamed tool call; fragments with the same index concatenate."""

    index: int
    """Which tool call of the message this fragment belongs to."""
    id: str | None = None
    """Call id, on the first fragment."""
    name: str | None = None
    """Function name, on the first fragment."""
    arguments: str = ""
    """A piece of the JSON arguments."""

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out


@dataclass(slots=True, kw_only=True)
class StreamChunk:
    """One streamed delta of one choice; the last chunk of a stream may carry only usage."""

    id: str
    """Completion id, the same on every chunk of a stream."""
    model: str
    """Upstream model id."""
    created: int
    """Unix time of creation."""
    index: int = 0
    """Choice index."""
    role: str | None = None
    """Set on the first chunk of a choice."""
    content: str | None = None
    """A piece of the text."""
    tool_calls: list[ToolCallDelta] | None = None
    """Pieces of tool calls."""
    finish_reason: str | None = None
    """Set on the last chunk of a choice."""
    usage: Usage | None = None
    """Usage of the whole call, on the final chunk."""
    cost_usd: float | None = None
    """Exact cost of the whole call, from a provider that knows it (replay); not sent."""

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }
        if (
            self.role is None
            and self.content is None
            and self.tool_calls is None
            and (self.finish_reason is None and self.usage is not None)
        ):
            out["choices"] = []
        else:
            delta: dict[str, Any] = {}
            if self.role is not None:
                delta["role"] = self.role
            if self.content is not None:
                delta["content"] = self.content
            if self.tool_calls is not None:
                delta["tool_calls"] = [call.to_openai() for call in self.tool_calls]
            out["choices"] = [
                {
                    "index": self.index,
                    "delta": delta,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ]
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out


@dataclass(slots=True, kw_only=True)
class LedgerEntry:
    """One model call's spend, as written to the ledger."""

    request_id: str
    """Areion's id of the request."""
    tenant: str
    """Who paid."""
    model: str
    """The model group the client asked for."""
    deployment: str
    """The deployment that answered."""
    upstream_model: str
    """The provider's model id."""
    prompt_tokens: int
    """Input tokens."""
    completion_tokens: int
    """Output tokens."""
    cached_tokens: int
    """Input tokens served from the provider's cache."""
    cost_usd: float
    """What the call cost."""
    estimated: bool
    """True when tokens were counted by Areion, not reported by the provider."""
    latency_s: float
    """End-to-end seconds."""
    created: float
    """Unix time the call finished."""
    cache: str = ""
    """Empty for a model call; the cache tier (`exact`, `semantic`, `embedding`) that
    answered instead."""
    saved_usd: float = 0.0
    """For a cache hit: what the answer cost when it was made."""
    saved_s: float = 0.0
    """For a cache hit: how long the answer took when it was made."""
    open: bool = False
    """A stream still in progress: its cost is what it may cost at most, until the row is
    closed with the real figures when the stream ends (a crash leaves it open)."""
    client_request_id: str = ""
    """The client's own id of the request (`x-request-id`), if it gave one."""
    kind: str = "chat"
    """What was paid for: `chat` (a model call or its cache hit), `embedding`, or `tool`
    (a tool call's own cost, booked by the agent loop)."""
    key_label: str = ""
    """The label of the API key that asked, if any."""
    route: str = ""
    """The route (virtual model) asked for, if any; `model` is then the group it chose."""
    route_reason: str = ""
    """Why the route chose that group (`rule:...`, `learned`, `cascade_accept`...)."""
    run_id: str = ""
    """The agent run that made the call, if any."""
    agent: str = ""
    """The name of that run's agent."""
    session: str = ""
    """The session the call belongs to, if any."""
    end_user: str = ""
    """The end user (the request's `user` field, or the `x-areion-user` header)."""
    tags: tuple[str, ...] = ()
    """The request's tags (`x-areion-tags`)."""
    variant: str = ""
    """The experiment variant the call was served by; empty outside experiments."""


# -- embeddings ---------------------------------------------------------------------

EncodingFormat = Literal["float", "base64"]
"""How an embeddings response carries its vectors: JSON numbers, or the base64 of
little-endian float32 values (what OpenAI sends, and its SDK asks for by default)."""


@dataclass(slots=True, kw_only=True)
class EmbeddingRequest:
    """An embeddings request (OpenAI `POST /v1/embeddings`), as a client sent it."""

    model: str
    """The model group the client asked for."""
    input: list[str] | list[list[int]]
    """What to embed, one vector each: texts, or token arrays (for upstreams that take
    tokens)."""
    dimensions: int | None = None
    """The length of the vectors wanted, where the model allows it."""
    user: str | None = None
    """End-user id, passed through."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other parameters, passed to the upstream untouched."""


@dataclass(slots=True, kw_only=True)
class EmbeddingResponse:
    """The vectors of an embeddings request, in input order."""

    model: str
    """Upstream model id that made them."""
    vectors: list[list[float]]
    """One vector per input, in input order; float32 values (as Python floats)."""
    usage: Usage | None = None
    """Input tokens the call was billed for (inputs served from Areion's embedding cache
    are not); None until accounting counts them when the provider did not."""
    deployment: str = ""
    """The deployment that answered (set by the gateway), or `cache:embedding`."""
    cost_usd: float | None = None
    """Cost of the call."""
    cache: str | None = None
    """`hit-embedding` (every input cached), `partial-embedding` (some) or `miss`."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the request path noted for the response headers."""

    def to_openai(self, encoding_format: EncodingFormat = "float") -> dict[str, Any]:
        usage = self.usage or Usage()
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": vector
                    if encoding_format == "float"
                    else base64.b64encode(pack_vector(vector)).decode("ascii"),
                }
                for index, vector in enumerate(self.vectors)
            ],
            "model": self.model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        }


def pack_vector(vector: list[float]) -> bytes:
    """`vector` as little-endian float32 bytes (the base64 encoding's payload)."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack_vector(data: bytes) -> list[float]:
    """The vector packed by `pack_vector`; ValueError if `data` is not whole float32s."""
    packed = array("f")
    packed.frombytes(data)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tolist()
