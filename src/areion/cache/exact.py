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
from typing import Any

import orjson

from areion.cache.serving import HitServer, when_complete
from areion.pipeline import Call, Handler, Result
from areion.store.base import Store
from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import Metrics
from areion.types import ChatRequest, ChatResponse

__all__ = ["ExactCache", "exact_key", "output_params"]

# Parameters that do not change what the model answers.
_NEUTRAL = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})


def _text(content: Any) -> Any:
    if isinstance(content, str):
        return content.replace("\r\n", "\n").strip()
    return content


def output_params(request: ChatRequest) -> dict[str, Any]:
    """Every parameter of `request` that can change what the model answers."""
    params = {k: v for k, v in request.extra.items() if k not in _NEUTRAL}
    params.update(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        tools=request.tools,
        tool_choice=request.tool_choice,
    )
    return params


def exact_key(tenant: str, request: ChatRequest) -> str:
    """The cache key of `request` for `tenant`."""
    messages = []
    for message in request.messages:
        raw = message.to_openai()
        raw["content"] = _text(raw.get("content"))
        messages.append(raw)
    canonical = orjson.dumps(
        [tenant, request.model, messages, output_params(request)],
        option=orjson.OPT_SORT_KEYS,
        default=str,
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
        self._hit_server = HitServer("exact", metrics, ledger)

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
                return self._hit_server.serve(entry, call)
        self._hit_server.miss()
        result = await call_next(call)
        if isinstance(result, ChatResponse):
            result.cache = result.cache or "miss"
        else:
            result.info.setdefault("cache", "miss")
        when_complete(result, call, lambda entry: self._put(key, entry))
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
