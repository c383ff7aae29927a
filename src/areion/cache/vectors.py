"""The embedding cache: each input's vector, kept per tenant, model and parameters.

An embeddings request is looked up input by input. The key hashes the tenant, the
model group, what changes the vectors besides the input (`dimensions`, parameters
passed through) and the input itself (a text, exactly as sent, or a token array).
Then:

- every input found: the request is answered without a call (`x-areion-cache:
  hit-embedding`, cost 0, usage 0), and booked in the ledger as a hit of tier
  `embedding` with what its vectors cost when they were made;
- some found: only the missing inputs go on, each distinct one once, and the vectors
  are put back in input order (`partial-embedding`). The call is billed (and its usage
  reported) for what it sent; the hits are booked beside it, as above;
- none found: `miss`, and the call goes on whole (repeated inputs once).

A fresh vector is stored with its share of its call's cost (split by the inputs'
token counts) and the call's latency, so that a hit books its saving. Metrics count
hits and misses per input (`areion_cache_requests_total{tier="embedding"}`).

Entries live in the store (shared by replicas; `cache.embeddings.ttl_s`), behind an
in-process LRU of packed float32 vectors. `x-areion-cache: no-store` (neither read
nor write) and `refresh` (skip the read, write anew) work as for the exact cache.
While the store is down every input is a miss: the cache is only a shortcut.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

import orjson

from areion.cache.serving import HitServer
from areion.errors import BackendUnavailableError
from areion.pipeline import EmbeddingCall, EmbeddingHandler
from areion.store.base import Store
from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import Metrics
from areion.types import EmbeddingRequest, EmbeddingResponse, Usage, pack_vector, unpack_vector

__all__ = ["EmbeddingCache", "embedding_keys"]

log = logging.getLogger(__name__)

_PREFIX = "emb:"
# Parameters that do not change the vectors.
_NEUTRAL = frozenset({"metadata"})


@dataclass(slots=True, frozen=True)
class _Entry:
    """One cached vector and what making it took."""

    vector: bytes
    """The vector, packed (little-endian float32)."""
    tokens: int
    """Its input's tokens, as Areion counted them."""
    cost_usd: float
    """Its share of what its call cost."""
    latency_s: float
    """How long its call took."""
    model: str
    """The upstream model that made it."""

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": base64.b64encode(self.vector).decode("ascii"),
                "t": self.tokens,
                "c": self.cost_usd,
                "s": self.latency_s,
                "m": self.model,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> _Entry:
        data = orjson.loads(raw)
        return cls(
            vector=base64.b64decode(data["v"]),
            tokens=int(data["t"]),
            cost_usd=float(data["c"]),
            latency_s=float(data["s"]),
            model=str(data["m"]),
        )


def embedding_keys(tenant: str, request: EmbeddingRequest) -> list[str]:
    """The cache key of each of `request`'s inputs, for `tenant`."""
    params = {k: v for k, v in request.extra.items() if k not in _NEUTRAL}
    scope = hashlib.sha256(
        orjson.dumps(
            [tenant, request.model, request.dimensions, params],
            option=orjson.OPT_SORT_KEYS,
            default=str,
        )
    )
    keys: list[str] = []
    for item in request.input:
        digest = scope.copy()
        digest.update(orjson.dumps(item))
        keys.append(_PREFIX + digest.hexdigest())
    return keys


class EmbeddingCache:
    """The embedding stage: answers inputs embedded before without a model call."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        ledger: Ledger,
        *,
        ttl_s: float = 604_800.0,
        max_local_entries: int = 10_000,
    ) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self._local: OrderedDict[str, tuple[float, _Entry]] = OrderedDict()
        self._max_local = max_local_entries
        self._writes: set[asyncio.Task[None]] = set()
        self._hits = HitServer("embedding", metrics, ledger)

    async def handle_embedding(
        self, call: EmbeddingCall, call_next: EmbeddingHandler
    ) -> EmbeddingResponse:
        control = call.annotations.get("cache_control")
        if control == "no-store":
            return await call_next(call)
        request = call.request
        keys = embedding_keys(call.tenant, request)
        found: dict[str, _Entry] = {}
        if control != "refresh":
            try:
                found = await self._get_many(keys)
            except BackendUnavailableError:
                found = {}  # the store is down: go the long way
        hits = sum(key in found for key in keys)
        self._hits.miss(len(keys) - hits)
        if hits == len(keys):
            return self._serve(call, keys, found)
        asked: dict[str, int] = {}  # each missing input once: its key -> its first index
        for index, key in enumerate(keys):
            if key not in found:
                asked.setdefault(key, index)
        inputs = cast("list[str] | list[list[int]]", [request.input[i] for i in asked.values()])
        part = dataclasses.replace(
            call,
            request=dataclasses.replace(request, input=inputs),
            tokens=[call.tokens[i] for i in asked.values()],
        )
        response = await call_next(part)
        fresh = dict(zip(asked, response.vectors, strict=True))
        self._keep(part, response, asked)
        response.vectors = [
            fresh[key] if key in fresh else unpack_vector(found[key].vector) for key in keys
        ]
        response.info["cached_inputs"] = hits
        response.cache = "miss"
        if hits:
            response.cache = "partial-embedding"
            saved = sum(found[key].cost_usd for key in keys if key in found)
            # The call still waited for the upstream: no time was saved.
            self._hits.book(call, response.model, saved_usd=saved, saved_s=0.0, hits=hits)
        return response

    def _serve(
        self, call: EmbeddingCall, keys: list[str], found: dict[str, _Entry]
    ) -> EmbeddingResponse:
        """Every input was found: the answer, with no call."""
        entries = [found[key] for key in keys]
        model = entries[0].model
        self._hits.book(
            call,
            model,
            saved_usd=sum(entry.cost_usd for entry in entries),
            saved_s=max(entry.latency_s for entry in entries),
            hits=len(entries),
        )
        return EmbeddingResponse(
            model=model,
            vectors=[unpack_vector(entry.vector) for entry in entries],
            usage=Usage(),
            deployment=self._hits.deployment,
            cost_usd=0.0,
            cache=self._hits.label,
            info={"cached_inputs": len(entries)},
        )

    def _keep(
        self, part: EmbeddingCall, response: EmbeddingResponse, asked: dict[str, int]
    ) -> None:
        """Store the vectors `part`'s call made, each with its share of the call's cost."""
        latency = time.perf_counter() - part.started
        cost = response.cost_usd or 0.0
        total = sum(part.tokens)
        for key, vector, tokens in zip(asked, response.vectors, part.tokens, strict=True):
            share = cost * tokens / total if total else cost / len(part.tokens)
            entry = _Entry(
                vector=pack_vector(vector),
                tokens=tokens,
                cost_usd=share,
                latency_s=latency,
                model=response.model,
            )
            self._remember(key, entry, time.time() + self.ttl_s)
            # The store write is not the caller's business: it must not delay the answer.
            task = asyncio.get_running_loop().create_task(self._write(key, entry))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, entry: _Entry) -> None:
        # While the store is down it is kept here only, not for the other replicas.
        with contextlib.suppress(BackendUnavailableError):
            await self._store.cache_put(key, entry.to_bytes(), ttl=self.ttl_s)

    async def _get_many(self, keys: list[str]) -> dict[str, _Entry]:
        now = time.time()
        found: dict[str, _Entry] = {}
        wanted: list[str] = []
        for key in dict.fromkeys(keys):
            local = self._local.get(key)
            if local is not None and local[0] > now:
                self._local.move_to_end(key)
                found[key] = local[1]
            else:
                wanted.append(key)
        if not wanted:
            return found
        raws = await asyncio.gather(*(self._store.cache_get(key) for key in wanted))
        for key, raw in zip(wanted, raws, strict=True):
            if raw is None:
                continue
            try:
                entry = _Entry.from_bytes(raw)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("an embedding cache entry could not be read; treated as a miss")
                continue
            found[key] = entry
            self._remember(key, entry, now + self.ttl_s)
        return found

    def _remember(self, key: str, entry: _Entry, expires: float) -> None:
        self._local[key] = (expires, entry)
        self._local.move_to_end(key)
        while len(self._local) > self._max_local:
            self._local.popitem(last=False)

    async def drain(self) -> None:
        """Wait for pending store writes (before closing the store)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
