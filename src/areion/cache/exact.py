"""L1, the exact response cache: the same request from the same tenant, answered again.

The key hashes the tenant, the model group, the messages (text trimmed, line ends
normalized) and every parameter that can change the output (temperature, tools,
response_format, seed, ...). Only requests whose answer is deterministic enough are
cached: temperature 0, unless the config opts every request in. Entries live in the
store (shared by replicas, with a TTL) behind a small in-process LRU for hot keys.

Per request, the `x-areion-cache` header (or `Call.annotations["cache_control"]`)
says `no-store` (neither read nor write) or `refresh` (skip the read, write anew).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import orjson

from areion.pipeline import Call, Handler, Result
from areion.store.base import Store
from areion.streaming import ChatStream, MessageAssembler
from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import Metrics
from areion.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    LedgerEntry,
    Message,
    StreamChunk,
    ToolCallDelta,
    Usage,
)

__all__ = ["ExactCache", "exact_key"]

# Parameters that do not change what the model answers.
_NEUTRAL = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})
_PIECE = 64


def _text(content: Any) -> Any:
    if isinstance(content, str):
        return content.replace("\r\n", "\n").strip()
    return content


def exact_key(tenant: str, request: ChatRequest) -> str:
    """The cache key of `request` for `tenant`."""
    messages = []
    for message in request.messages:
        raw = message.to_openai()
        raw["content"] = _text(raw.get("content"))
        messages.append(raw)
    params = {k: v for k, v in request.extra.items() if k not in _NEUTRAL}
    params.update(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        tools=request.tools,
        tool_choice=request.tool_choice,
    )
    canonical = orjson.dumps(
        [tenant, request.model, messages, params], option=orjson.OPT_SORT_KEYS, default=str
    )
    return "l1:" + hashlib.sha256(canonical).hexdigest()


class ExactCache:
    """The L1 stage: answers repeated deterministic requests without a model call."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        ledger: Ledger,
        *,
        ttl_s: float = 3600.0,
        any_temperature: bool = False,
        max_local_entries: int = 10_000,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._ledger = ledger
        self.ttl_s = ttl_s
        self.any_temperature = any_temperature
        self._local: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_local = max_local_entries
        self._writes: set[asyncio.Task[None]] = set()
        self._hits = metrics.cache_requests.labels("exact", "hit")
        self._misses = metrics.cache_requests.labels("exact", "miss")
        self._saved_usd = metrics.cache_saved_usd.labels("exact")
        self._saved_s = metrics.cache_saved_seconds.labels("exact")

    def eligible(self, request: ChatRequest) -> bool:
        return self.any_temperature or request.temperature == 0

    async def handle(self, call: Call, call_next: Handler) -> Result:
        control = call.annotations.get("cache_control")
        if control == "no-store" or not self.eligible(call.request):
            return await call_next(call)
        key = exact_key(call.tenant, call.request)
        if control != "refresh":
            entry = await self._get(key)
            if entry is not None:
                self._hits.inc()
                return self._serve(entry, call)
        self._misses.inc()
        result = await call_next(call)
        if isinstance(result, ChatResponse):
            result.cache = "miss"
            self._put(key, _entry(result, time.perf_counter() - call.started))
        else:
            result.info["cache"] = "miss"
            self._record_stream(key, result, call)
        return result

    # -- storage --------------------------------------------------------------------

    async def _get(self, key: str) -> dict[str, Any] | None:
        now = time.time()
        local = self._local.get(key)
        if local is not None:
            if local[0] > now:
                self._local.move_to_end(key)
                return dict(orjson.loads(local[1]))
            del self._local[key]
        raw = await self._store.cache_get(key)
        if raw is None:
            return None
        self._remember(key, raw, now + self.ttl_s)
        return dict(orjson.loads(raw))

    def _remember(self, key: str, raw: bytes, expires: float) -> None:
        self._local[key] = (expires, raw)
        self._local.move_to_end(key)
        while len(self._local) > self._max_local:
            self._local.popitem(last=False)

    def _put(self, key: str, entry: dict[str, Any]) -> None:
        raw = orjson.dumps(entry)
        self._remember(key, raw, time.time() + self.ttl_s)
        # The store write is not the caller's business: it must not delay the answer.
        task = asyncio.get_running_loop().create_task(
            self._store.cache_put(key, raw, ttl=self.ttl_s)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def drain(self) -> None:
        """Wait for pending store writes (before closing the store)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def _record_stream(self, key: str, stream: ChatStream, call: Call) -> None:
        assembler = MessageAssembler()

        def finished(done: ChatStream, error: BaseException | None) -> None:
            if error is not None or done.finish_reason is None:
                return  # a broken or abandoned stream is never cached
            message = assembler.message()
            response = ChatResponse(
                id=done.request_id,
                model=done.upstream_model,
                created=int(time.time()),
                choices=[Choice(message=Message.from_openai(message),
                                finish_reason=done.finish_reason)],
                usage=done.usage,
                deployment=done.deployment,
                cost_usd=done.cost_usd,
            )  # fmt: skip
            self._put(key, _entry(response, time.perf_counter() - call.started))

        stream.tap(assembler.add)
        stream.on_finish(finished)

    # -- serving a hit ----------------------------------------------------------------

    def _serve(self, entry: dict[str, Any], call: Call) -> Result:
        saved_usd = float(entry.get("cost_usd") or 0.0)
        saved_s = float(entry.get("latency_s") or 0.0)
        self._saved_usd.inc(saved_usd)
        self._saved_s.inc(saved_s)
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
        self._ledger.record(
            LedgerEntry(
                request_id=call.request_id,
                tenant=call.tenant,
                model=call.request.model,
                deployment="cache:exact",
                upstream_model=str(data.get("model") or ""),
                prompt_tokens=0,
                completion_tokens=0,
                cached_tokens=0,
                cost_usd=0.0,
                estimated=False,
                latency_s=time.perf_counter() - call.started,
                created=time.time(),
                cache="exact",
                saved_usd=saved_usd,
                saved_s=saved_s,
            )
        )
        response = ChatResponse(
            id="chatcmpl-" + call.request_id,
            model=str(data.get("model") or ""),
            created=int(time.time()),
            choices=choices,
            usage=usage,
            deployment="cache:exact",
            cost_usd=0.0,
            cache="hit-exact",
        )
        if not call.request.stream:
            return response
        stream = ChatStream(
            _replay(response),
            model=call.request.model,
            deployment="cache:exact",
            upstream_model=response.model,
            request_id=call.request_id,
            started=call.started,
        )
        stream.cost_usd = 0.0
        stream.info["cache"] = "hit-exact"
        return stream


def _entry(response: ChatResponse, latency_s: float) -> dict[str, Any]:
    return {
        "response": response.to_openai(),
        "cost_usd": response.cost_usd or 0.0,
        "latency_s": latency_s,
        "deployment": response.deployment,
    }


async def _replay(response: ChatResponse) -> AsyncIterator[StreamChunk]:
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
