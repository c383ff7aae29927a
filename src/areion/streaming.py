"""`ChatStream`: an answer that arrives as chunks, with its accounting attached."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

from areion.errors import AreionError, StreamInterruptedError
from areion.types import StreamChunk, Usage

__all__ = ["ChatStream", "MessageAssembler"]

Finisher = Callable[["ChatStream", BaseException | None], None]

log = logging.getLogger("areion.streaming")

_ABANDONED = (
    "a ChatStream was dropped before its end without aclose(): it is booked at what it "
    "had received, but its upstream connection is closed only when it is garbage "
    "collected. Read streams to the end, or use `async with await rt.chat_stream(...) "
    "as stream:`, or call `await stream.aclose()` when you stop early."
)
_warned = False


def _warn_abandoned() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(_ABANDONED, RuntimeWarning, stacklevel=3)


class ChatStream:
    """A streamed answer. Iterate it once; `usage` and `cost_usd` are set when it ends.

    By the time a caller holds a `ChatStream` the first chunk has already arrived,
    so every failure that could still be retried or failed over has been; a failure
    while iterating raises `StreamInterruptedError`.
    """

    def __init__(
        self,
        chunks: AsyncIterator[StreamChunk],
        *,
        model: str,
        deployment: str,
        upstream_model: str,
        request_id: str,
        started: float,
        first_chunk_at: float | None = None,
    ) -> None:
        self.model = model
        """The model group the client asked for."""
        self.deployment = deployment
        """The deployment that answers."""
        self.upstream_model = upstream_model
        """The provider's model id."""
        self.request_id = request_id
        """Areion's id of the request."""
        self.started = started
        """`time.perf_counter()` when the request arrived."""
        self.first_chunk_at = first_chunk_at if first_chunk_at is not None else started
        """`time.perf_counter()` when the first chunk arrived."""
        self.usage: Usage | None = None
        """Usage reported by the provider (or estimated once the stream ends)."""
        self.cost_usd: float | None = None
        """Cost, set by accounting when the stream ends."""
        self.text_parts: list[str] = []
        """The content seen so far, kept to count tokens when the provider reports none."""
        self.finish_reason: str | None = None
        """The finish reason of the first choice."""
        self.info: dict[str, Any] = {}
        """Stage-specific annotations (for example what a cache saved)."""
        self.bound_usd: float | None = None
        """What the call may cost at most, as its budget hold covered it when it started
        (None without a budget)."""
        self._chunks = chunks
        self._finishers: list[Finisher] = []
        self._taps: list[Callable[[StreamChunk], None]] = []
        self._finished = False

    @property
    def ttft_s(self) -> float:
        """Seconds from the request to the first chunk."""
        return self.first_chunk_at - self.started

    def tap(self, observer: Callable[[StreamChunk], None]) -> None:
        """Call `observer(chunk)` for every chunk as it passes (a cache recording it)."""
        self._taps.append(observer)

    def on_finish(self, finisher: Finisher) -> None:
        """Call `finisher(stream, error)` once, when the stream ends, fails or is closed."""
        self._finishers.append(finisher)

    @property
    def finished(self) -> bool:
        """Whether the stream has ended, failed or been closed (its finishers have run)."""
        return self._finished

    def _finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        for finisher in self._finishers:
            finisher(self, error)

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        error: BaseException | None = None
        try:
            async for chunk in self._chunks:
                if chunk.content:
                    self.text_parts.append(chunk.content)
                if chunk.tool_calls:
                    for call in chunk.tool_calls:
                        if call.arguments:
                            self.text_parts.append(call.arguments)
                if chunk.finish_reason is not None and chunk.index == 0:
                    self.finish_reason = chunk.finish_reason
                for observer in self._taps:
                    observer(chunk)
                if chunk.usage is not None:
                    self.usage = chunk.usage
                if chunk.cost_usd is not None:
                    self.cost_usd = chunk.cost_usd
                yield chunk
        except StreamInterruptedError as failure:
            error = failure
            raise
        except AreionError as failure:
            error = StreamInterruptedError(f"the stream broke after it started: {failure}")
            raise error from failure
        except GeneratorExit:
            # The iteration was abandoned (a `break`, and the iterator collected) before
            # the stream ended, and without `aclose()`.
            if not self._finished:
                _warn_abandoned()
            raise
        except BaseException as failure:
            error = failure
            raise
        finally:
            self._finish(error)

    async def aclose(self) -> None:
        """Stop early: the upstream connection is closed and what was received is booked."""
        try:
            closer = getattr(self._chunks, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            self._finish(None)

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._finished or not self._finishers:
            return
        # Never iterated, never closed: book what it had (its first chunk) now.
        _warn_abandoned()
        try:
            self._finish(None)
        except Exception:
            log.exception("booking an abandoned stream failed")

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started


class MessageAssembler:
    """Puts the first choice of a stream back together as an OpenAI assistant message."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, chunk: StreamChunk) -> None:
        if chunk.index != 0:
            return
        if chunk.content:
            self._content.append(chunk.content)
        for delta in chunk.tool_calls or ():
            call = self._calls.setdefault(
                delta.index,
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if delta.id:
                call["id"] = delta.id
            if delta.name:
                call["function"]["name"] += delta.name
            call["function"]["arguments"] += delta.arguments

    def message(self) -> dict[str, Any]:
        """The assembled message, in the OpenAI wire shape."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._content) or None}
        if self._calls:
            message["tool_calls"] = [self._calls[index] for index in sorted(self._calls)]
        return message
