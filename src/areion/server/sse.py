"""A streamed chat answer as server-sent events, stopped when the client hangs up.

Starlette's `StreamingResponse` learns of a disconnect by cancelling the body's task,
which takes effect only where that task next waits; an upstream fast enough to keep
the read buffer full is read to its end, and billed, after the client has gone.
`EventStream` instead listens for the disconnect beside the sender and checks it
before and after every event, then closes the stream: the upstream request is
cancelled and only what was received is booked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from areion.errors import StreamInterruptedError
from areion.pricing import usd_text
from areion.server.access import note
from areion.server.schema import error_body
from areion.streaming import ChatStream
from areion.types import StreamChunk

__all__ = ["ChunkEvents", "EventStream", "chat_events"]


class EventStream(Response):
    """The events of `stream` as a `text/event-stream` response."""

    media_type = "text/event-stream"

    def __init__(
        self, stream: ChatStream, events: AsyncIterator[bytes], headers: Mapping[str, str]
    ) -> None:
        self.stream = stream
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        note(scope, stream=self.stream)  # its cost and cache outcome, once it has ended
        gone = False  # a plain flag: it is read before and after every event

        async def listen() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True

        listener = asyncio.get_running_loop().create_task(listen())
        ended = False  # the events ran out, which leaves nothing to close
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for data in self.events:
                if gone:
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
            ended = True
            if not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()
            if not (ended and self.stream.finished):
                # Shielded: a server shutting down must still close the upstream and book it.
                await asyncio.shield(self._close())
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _close(self) -> None:
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            await aclose()
        await self.stream.aclose()


class ChunkEvents:
    """A stream's chunk events, each `data: ` and the JSON of `chunk.to_openai()`.

    Most events carry a piece of text and nothing else: those are written from the
    part every event of the stream repeats (id, created, model), made once, and the
    text's JSON, rather than through three dicts an event; the bytes are the same
    (tests/unit/test_sse.py)."""

    __slots__ = ("_head", "_key")

    _TAIL = b'},"finish_reason":null,"logprobs":null}]}\n\n'

    def __init__(self) -> None:
        self._key: tuple[str, int, str] | None = None
        self._head = b""

    def __call__(self, chunk: StreamChunk) -> bytes:
        if (
            chunk.content is None
            or chunk.index != 0
            or chunk.role is not None
            or chunk.tool_calls is not None
            or chunk.finish_reason is not None
            or chunk.usage is not None
        ):
            return b"data: " + orjson.dumps(chunk.to_openai()) + b"\n\n"
        key = (chunk.id, chunk.created, chunk.model)
        if key != self._key:
            self._key = key
            self._head = b"".join(
                (
                    b'data: {"id":',
                    orjson.dumps(chunk.id),
                    b',"object":"chat.completion.chunk","created":',
                    orjson.dumps(chunk.created),
                    b',"model":',
                    orjson.dumps(chunk.model),
                    b',"choices":[{"index":0,"delta":{"content":',
                )
            )
        return b"".join((self._head, orjson.dumps(chunk.content), self._TAIL))


async def chat_events(stream: ChatStream, include_usage: bool) -> AsyncIterator[bytes]:
    """The OpenAI chat-completions SSE events of `stream`, then `[DONE]`; a failure after
    the first byte is an error event, never a silent truncation."""
    event = ChunkEvents()
    try:
        async for chunk in stream:
            if chunk.usage is not None and not include_usage:
                # The client did not ask for usage: OpenAI sends none, and neither do we.
                if (
                    chunk.content is None
                    and chunk.role is None
                    and chunk.finish_reason is None
                    and chunk.tool_calls is None
                ):
                    continue
                chunk.usage = None
            yield event(chunk)
    except StreamInterruptedError as error:
        body = error_body(error.message, type=error.type, code=error.code)
        yield b"data: " + orjson.dumps(body) + b"\n\n"
        return
    if stream.cost_usd is not None:
        yield f": x-areion-cost-usd={usd_text(stream.cost_usd)}\n\n".encode()
    yield b"data: [DONE]\n\n"
