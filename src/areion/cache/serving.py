"""Answers made without a model call, and the response caches' entries.

An entry is the OpenAI-shaped response plus what it cost and how long it took to
make, so a hit can book the saving. A hit is served in the shape the client asked
for: a `ChatResponse`, or a `ChatStream` that replays the answer in chunks. The
router's solver answers go out the same way (`free_entry`, `as_stream`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from areion.pipeline import Call, EmbeddingCall, Result
from areion.streaming import ChatStream, MessageAssembler
from areion.telemetry.ledger import Ledger, attribution
from areion.telemetry.metrics import Metrics
from areion.types import (
    ChatResponse,
    Choice,
    LedgerEntry,
    Message,
    StreamChunk,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "NO_STORE",
    "HitServer",
    "as_stream",
    "entry_of",
    "free_entry",
    "on_stream_complete",
    "replay",
    "when_complete",
]

_PIECE = 64  # characters per replayed chunk


def entry_of(response: ChatResponse, latency_s: float) -> dict[str, Any]:
    """The cache entry of an answer that took `latency_s` to make."""
    return {
        "response": response.to_openai(),
        "cost_usd": response.cost_usd or 0.0,
        "latency_s": latency_s,
        "deployment": response.deployment,
    }


# An `info` flag: an answer the response caches must not keep (the solver's: making it
# again costs nothing).
NO_STORE = "no_store"


def when_complete(result: Result, call: Call, store: Callable[[dict[str, Any]], None]) -> None:
    """Hand a fresh answer to `store` as a cache entry once it is complete: a response at
    once, a stream when it finishes normally. Never a cache hit, nor an answer marked
    `NO_STORE`."""
    if isinstance(result, ChatResponse):
        if result.cache in (None, "miss") and not result.info.get(NO_STORE):
            store(entry_of(result, time.perf_counter() - call.started))
    elif result.info.get("cache", "miss") == "miss" and not result.info.get(NO_STORE):
        on_stream_complete(result, call, store)


def on_stream_complete(
    stream: ChatStream, call: Call, store: Callable[[dict[str, Any]], None]
) -> None:
    """Call `store(entry)` once `stream` has finished normally (never when broken or
    abandoned), with the answer reassembled from its chunks."""
    assembler = MessageAssembler()

    def finished(done: ChatStream, error: BaseException | None) -> None:
        if error is not None or done.finish_reason is None:
            return
        response = ChatResponse(
            id=done.request_id,
            model=done.upstream_model,
            created=int(time.time()),
            choices=[Choice(message=Message.from_openai(assembler.message()),
                            finish_reason=done.finish_reason)],
            usage=done.usage,
            deployment=done.deployment,
            cost_usd=done.cost_usd,
        )  # fmt: skip
        store(entry_of(response, time.perf_counter() - call.started))

    stream.tap(assembler.add)
    stream.on_finish(finished)


class HitServer:
    """Serves cache hits of one tier (`exact`, `semantic`): metrics, ledger, shape. The
    embedding tier books its hits with it too (`book`), and shapes them itself."""

    def __init__(self, tier: str, metrics: Metrics, ledger: Ledger) -> None:
        self.tier = tier
        self.deployment = f"cache:{tier}"
        self.label = f"hit-{tier}"
        self._ledger = ledger
        self._hits = metrics.cache_requests.labels(tier, "hit")
        self._misses = metrics.cache_requests.labels(tier, "miss")
        self._saved_usd = metrics.cache_saved_usd.labels(tier)
        self._saved_s = metrics.cache_saved_seconds.labels(tier)

    def miss(self, count: int = 1) -> None:
        self._misses.inc(count)

    def book(
        self,
        call: Call | EmbeddingCall,
        upstream_model: str,
        *,
        saved_usd: float,
        saved_s: float,
        hits: int = 1,
    ) -> None:
        """Count `hits` in metrics with what they saved, and book the call's free ledger
        row (written within the ledger's flush interval)."""
        self._hits.inc(hits)
        self._saved_usd.inc(saved_usd)
        self._saved_s.inc(saved_s)
        self._ledger.record(
            free_entry(
                call,
                self.deployment,
                upstream_model,
                cache=self.tier,
                saved_usd=saved_usd,
                saved_s=saved_s,
            )
        )

    def serve(
        self, entry: dict[str, Any], call: Call, info: dict[str, Any] | None = None
    ) -> Result:
        """Answer `call` from `entry`; `info` (about the hit) goes with the answer."""
        info = info or {}
        saved_usd = float(entry.get("cost_usd") or 0.0)
        saved_s = float(entry.get("latency_s") or 0.0)
        data = entry["response"]
        usage_data = data.get("usage") or {}
        usage = Usage(
            prompt_tokens=int(usage_data.get("prompt_tokens") or 0),
            completion_tokens=int(usage_data.get("completion_tokens") or 0),
        )
        choices = [
            Choice(
                index=int(item.get("index") or 0),
                message=Message.from_openai(item["message"]),
                finish_reason=item.get("finish_reason"),
            )
            for item in data["choices"]
        ]
        upstream_model = str(data.get("model") or "")
        self.book(call, upstream_model, saved_usd=saved_usd, saved_s=saved_s)
        response = ChatResponse(
            id="chatcmpl-" + call.request_id,
            model=upstream_model,
            created=int(time.time()),
            choices=choices,
            usage=usage,
            deployment=self.deployment,
            cost_usd=0.0,
            cache=self.label,
            info=info,
        )
        if not call.request.stream:
            return response
        return as_stream(response, call)


def free_entry(
    call: Call | EmbeddingCall, deployment: str, upstream_model: str, **fields: Any
) -> LedgerEntry:
    """The ledger row of a call answered without a model (cache hit, solver): no tokens,
    no cost; `fields` add the cache tier and the saving."""
    return LedgerEntry(
        request_id=call.request_id,
        client_request_id=call.client_request_id,
        tenant=call.tenant,
        model=call.request.model,
        deployment=deployment,
        upstream_model=upstream_model,
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
        cost_usd=0.0,
        estimated=False,
        latency_s=time.perf_counter() - call.started,
        created=time.time(),
        kind="embedding" if isinstance(call, EmbeddingCall) else "chat",
        **attribution(call.annotations, call.request.user),
        **fields,
    )


def as_stream(response: ChatResponse, call: Call) -> ChatStream:
    """A complete answer served as the stream the client asked for."""
    stream = ChatStream(
        replay(response),
        model=call.request.model,
        deployment=response.deployment,
        upstream_model=response.model,
        request_id=call.request_id,
        started=call.started,
    )
    stream.cost_usd = response.cost_usd
    stream.usage = response.usage
    if response.cache is not None:
        stream.info["cache"] = response.cache
    stream.info.update(response.info)
    return stream


async def replay(response: ChatResponse) -> AsyncIterator[StreamChunk]:
    """A cached answer in the chunks a stream would have brought it in."""

    def chunk(**fields: Any) -> StreamChunk:
        return StreamChunk(id=response.id, model=response.model, created=response.created, **fields)

    for choice in response.choices:
        message = choice.message
        yield chunk(index=choice.index, role="assistant", content="")
        text = message.text()
        for start in range(0, len(text), _PIECE):
            yield chunk(index=choice.index, content=text[start : start + _PIECE])
        if message.tool_calls:
            yield chunk(
                index=choice.index,
                tool_calls=[
                    ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments)
                    for i, c in enumerate(message.tool_calls)
                ],
            )
        yield chunk(index=choice.index, finish_reason=choice.finish_reason)
    yield chunk(usage=response.usage)
