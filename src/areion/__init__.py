"""Areion: the agent runtime environment.

from areion import Runtime, ChatRequest, Message

async with Runtime() as rt:
    answer = await rt.chat(ChatRequest(model="fast", messages=[Message(role="user", content="Hi")]))
"""

from areion._version import __version__
from areion.agent import Agent, RunResult, Tool, ToolContext, ToolResult, tool
from areion.config import Config, load_config
from areion.errors import (
    AreionError,
    AuthenticationError,
    ConfigError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    ReplayMissError,
    RequestError,
    StreamInterruptedError,
    UnknownModelError,
    UpstreamError,
)
from areion.runtime import Runtime
from areion.streaming import ChatStream
from areion.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "Agent",
    "AreionError",
    "AuthenticationError",
    "ChatRequest",
    "ChatResponse",
    "ChatStream",
    "Choice",
    "Config",
    "ConfigError",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Message",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "ReplayMissError",
    "RequestError",
    "RunResult",
    "Runtime",
    "StreamChunk",
    "StreamInterruptedError",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolContext",
    "ToolResult",
    "UnknownModelError",
    "UpstreamError",
    "Usage",
    "__version__",
    "load_config",
    "tool",
]
