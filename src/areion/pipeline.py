"""How the request path composes: a fixed list of stages around the gateway.

A stage is a small object with one async method, `handle(call, call_next)`, that
may answer by itself (a cache hit), change the call (a routing decision), or
wrap what the later stages return (accounting). The runtime builds the chain
once; a call pays one function call per stage.

Embeddings go through a chain of their own (`EmbeddingCall`, `EmbeddingStage`,
`compose_embedding`): the stages that apply to them (admission, the embedding cache,
accounting, lanes) have a second method, `handle_embedding`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from areion.streaming import ChatStream
from areion.types import ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse

__all__ = [
    "Call",
    "EmbeddingCall",
    "EmbeddingHandler",
    "EmbeddingStage",
    "Handler",
    "Result",
    "Stage",
    "compose",
    "compose_embedding",
]

Result = ChatResponse | ChatStream
Handler = Callable[["Call"], Awaitable[Result]]


@dataclass(slots=True, kw_only=True)
class Call:
    """One model call on its way through the request path."""

    request: ChatRequest
    """What the client asked for."""
    tenant: str
    """Who asks, and pays."""
    request_id: str
    """Areion's id of the request."""
    client_request_id: str = ""
    """The client's own id of the request, if it gave one."""
    started: float
    """`time.perf_counter()` at arrival."""
    annotations: dict[str, Any] = field(default_factory=dict)
    """What stages note for each other and for the response headers."""


class Stage(Protocol):
    async def handle(self, call: Call, call_next: Handler) -> Result:
        """Answer `call`, usually by passing it on to `call_next`."""
        ...


def compose(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """One handler that runs `stages` in order, then `terminal`."""
    handler = terminal
    for stage in reversed(stages):
        handler = functools.partial(stage.handle, call_next=handler)
    return handler


@dataclass(slots=True, kw_only=True)
class EmbeddingCall:
    """One embeddings call on its way through the request path."""

    request: EmbeddingRequest
    """What the client asked for (a stage may pass on a call for part of it)."""
    tokens: list[int]
    """Each input's tokens as Areion counts them (cl100k; a token array's length)."""
    tenant: str
    """Who asks, and pays."""
    request_id: str
    """Areion's id of the request."""
    client_request_id: str = ""
    """The client's own id of the request, if it gave one."""
    started: float
    """`time.perf_counter()` at arrival."""
    annotations: dict[str, Any] = field(default_factory=dict)
    """What stages note for each other (the budget hold, the cache control...)."""


EmbeddingHandler = Callable[[EmbeddingCall], Awaitable[EmbeddingResponse]]


class EmbeddingStage(Protocol):
    async def handle_embedding(
        self, call: EmbeddingCall, call_next: EmbeddingHandler
    ) -> EmbeddingResponse:
        """Answer `call`, usually by passing it on to `call_next`."""
        ...


def compose_embedding(
    stages: Sequence[EmbeddingStage], terminal: EmbeddingHandler
) -> EmbeddingHandler:
    """One handler that runs the embedding `stages` in order, then `terminal`."""
    handler = terminal
    for stage in reversed(stages):
        handler = functools.partial(stage.handle_embedding, call_next=handler)
    return handler
