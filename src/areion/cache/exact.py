"""L1, the exact response cache: the same request from the same tenant, answered again.

The key hashes the tenant, the model group, the messages (text trimmed, line ends
normalized) and every parameter that can change the output (temperature, tools,
response_format, seed, ...). Only requests whose answer is deterministic enough are
cached: temperature 0, unless the config opts every request in. Entries live in the
store (shared by replicas, with a TTL) behind a small in-process LRU for hot keys.

Per request, the `x-areion-cache` header (or `Call.annotations["cache_control"]`)
says `no-store` (neither read nor write) or `refresh` (skip the read, write anew).

Entries are found by a hash of their content, so they cannot be listed by tenant or
model; `invalidate()` instead moves the tenant's (or the tenant and model's)
*generation* on, which is part of every key: the old entries are never found again
and expire. Generations live in the store, each process keeps them for a few seconds,
and a change is announced on `Shared` so every replica applies it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import orjson

from areion.cache.serving import HitServer, when_complete
from areion.errors import BackendUnavailableError
from areion.pipeline import Call, Handler, Result
from areion.store.base import Store
from areion.store.shared import Shared
from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import Metrics
from areion.types import ChatRequest, ChatResponse

__all__ = ["ExactCache", "exact_key", "output_params"]

log = logging.getLogger(__name__)

_CHANNEL = "cache:exact"
# How long a process trusts its copy of a generation: an announcement that did not
# reach it (a replica cut off from Redis) is made good within this.
_GENERATION_TTL_S = 5.0
_GENERATION_KEEP_S = 400 * 86_400.0
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


def exact_key(tenant: str, request: ChatRequest, generation: str = "") -> str:
    """The cache key of `request` for `tenant` (at the tenant's cache `generation`)."""
    messages = []
    for message in request.messages:
        raw = message.to_openai()
        raw["content"] = _text(raw.get("content"))
        messages.append(raw)
    canonical = orjson.dumps(
        [tenant, request.model, messages, output_params(request), generation],
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
        shared: Shared | None = None,
    ) -> None:
        self._store = store
        self._shared = shared
        self._generations: dict[str, tuple[int, float]] = {}  # name -> (generation, read at)
        if shared is not None:
            shared.subscribe(_CHANNEL, self._notice)
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
        tenant, model = call.tenant, call.request.model
        try:
            generation = f"{await self._generation(tenant)}.{await self._generation(tenant, model)}"
            key = exact_key(tenant, call.request, generation)
            if control != "refresh":
                entry = await self._get(key)
                if entry is not None:
                    return self._hit_server.serve(entry, call)
        except BackendUnavailableError:
            # The store is down: the cache is only a shortcut, so go the long way.
            self._hit_server.miss()
            return await call_next(call)
        self._hit_server.miss()
        result = await call_next(call)
        if isinstance(result, ChatResponse):
            result.cache = result.cache or "miss"
        else:
            result.info.setdefault("cache", "miss")
        when_complete(result, call, lambda entry: self._put(key, entry))
        return result

    # -- invalidation -----------------------------------------------------------------

    async def _generation(
        self, tenant: str, model: str | None = None, *, fresh: bool = False
    ) -> int:
        name = tenant if model is None else f"{tenant}\x1f{model}"
        now = time.monotonic()
        found = self._generations.get(name)
        if found is not None and not fresh and now - found[1] < _GENERATION_TTL_S:
            return found[0]
        raw = await self._store.cache_get("l1gen:" + name)
        generation = int(raw) if raw else 0
        self._generations[name] = (generation, now)
        return generation

    async def invalidate(self, tenant: str, *, model: str | None = None) -> None:
        """Drop `tenant`'s entries (of one model group, if given), on every replica."""
        name = tenant if model is None else f"{tenant}\x1f{model}"
        generation = await self._generation(tenant, model, fresh=True) + 1
        await self._store.cache_put(
            "l1gen:" + name, str(generation).encode(), ttl=_GENERATION_KEEP_S
        )
        self._apply(name, generation)
        if self._shared is not None:
            try:
                await self._shared.publish(
                    _CHANNEL, orjson.dumps({"name": name, "generation": generation})
                )
            except Exception:  # the others see it within _GENERATION_TTL_S anyway
                log.warning("could not announce an exact-cache invalidation", exc_info=True)

    def _apply(self, name: str, generation: int) -> None:
        found = self._generations.get(name)
        if found is None or found[0] < generation:
            self._generations[name] = (generation, time.monotonic())
        self._local.clear()  # keys are hashes: which were the tenant's is not known

    def _notice(self, message: bytes) -> None:
        try:
            notice = orjson.loads(message)
            self._apply(str(notice["name"]), int(notice["generation"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("an exact-cache notice could not be read; ignored")

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
        task = asyncio.get_running_loop().create_task(self._keep(key, raw))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _keep(self, key: str, raw: bytes) -> None:
        # While the store is down it is kept here only, not for the other replicas.
        with contextlib.suppress(BackendUnavailableError):
            await self._store.cache_put(key, raw, ttl=self.ttl_s)

    async def drain(self) -> None:
        """Wait for pending store writes (before closing the store)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
