"""/v1/cache: invalidating the response caches and judging semantic hits.

    DELETE /v1/cache?model=M&older_than_s=S            both tiers (age: semantic only)
    DELETE /v1/cache/exact?model=M                     the caller's exact entries
    DELETE /v1/cache/semantic?model=M&older_than_s=S   the caller's semantic entries
    DELETE /v1/cache/semantic/{entry}                  one semantic entry
    POST   /v1/cache/semantic/feedback                 {"request_id": ..., "correct": false}

Every call is scoped to the caller's tenant: a key can neither see nor drop another
tenant's entries, and an invalidation reaches every replica. Feedback on a wrong hit
lifts the threshold of the entry that was served, so the same look-alike question is
not answered from it again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.errors import RequestError
from areion.runtime import Runtime
from areion.server.schema import clip, json_response, parse_body

if TYPE_CHECKING:  # numpy and the embedder: only when the tier is on
    from areion.cache.semantic import SemanticCache

__all__ = ["CacheApi", "CacheNotFoundError"]


class CacheNotFoundError(RequestError):
    """No such cache entry or hit for the caller, or the tier is off."""

    status = 404
    code = "not_found"


_ENTRY_ID = re.compile(r"[0-9]{1,18}")  # an id SQLite and the index can hold


class _FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    correct: bool


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(
            f"'{name}' must be a number of seconds, got '{clip(raw)}'", param=name
        ) from None
    if not value >= 0:  # also rejects nan
        raise RequestError(f"'{name}' must be >= 0, got '{clip(raw)}'", param=name)
    return value


class CacheApi:
    """Handlers of /v1/cache, /v1/cache/exact and /v1/cache/semantic."""

    def __init__(
        self,
        runtime: Runtime,
        tenant_of: Callable[[Request], str],
    ) -> None:
        self.runtime = runtime
        self._tenant_of = tenant_of

    def routes(self) -> list[Route]:
        return [
            Route("/v1/cache", self.invalidate_all, methods=["DELETE"]),
            Route("/v1/cache/exact", self.invalidate_exact, methods=["DELETE"]),
            Route("/v1/cache/semantic", self.invalidate, methods=["DELETE"]),
            Route("/v1/cache/semantic/feedback", self.feedback, methods=["POST"]),
            Route("/v1/cache/semantic/{entry}", self.drop, methods=["DELETE"]),
        ]

    def _cache(self) -> SemanticCache:
        cache = self.runtime.semantic_cache
        if cache is None:
            raise CacheNotFoundError(
                "the semantic cache is not enabled; set cache.semantic.enabled: true"
            )
        return cache

    async def invalidate_exact(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        cache = self.runtime.exact_cache
        if cache is None:
            raise CacheNotFoundError("the exact cache is not enabled (cache.exact.enabled)")
        if "older_than_s" in request.query_params:
            raise RequestError(
                "older_than_s: exact entries are found by their content, not listed, so they "
                "are dropped all at once (per model with ?model=)",
                param="older_than_s",
            )
        await cache.invalidate(tenant, model=request.query_params.get("model") or None)
        return json_response({"object": "cache.invalidation", "tier": "exact", "deleted": True})

    async def invalidate_all(self, request: Request) -> Response:
        """Both tiers: exact entries (all of the tenant's, or of `model`) and semantic
        ones (narrowed by `older_than_s` too)."""
        tenant = self._tenant_of(request)
        model = request.query_params.get("model") or None
        older_than_s = _float(request, "older_than_s")
        body: dict[str, object] = {"object": "cache.invalidation", "tier": "all"}
        if self.runtime.exact_cache is not None:
            await self.runtime.exact_cache.invalidate(tenant, model=model)
            body["exact"] = True
        if self.runtime.semantic_cache is not None:
            body["semantic"] = await self.runtime.semantic_cache.invalidate(
                tenant, model=model, older_than_s=older_than_s
            )
        return json_response(body)

    async def invalidate(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        cache = self._cache()
        model = request.query_params.get("model") or None
        deleted = await cache.invalidate(
            tenant, model=model, older_than_s=_float(request, "older_than_s")
        )
        return json_response(
            {"object": "cache.invalidation", "tier": "semantic", "deleted": deleted}
        )

    async def drop(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        cache = self._cache()
        raw = request.path_params["entry"]
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
        if not _ENTRY_ID.fullmatch(raw):
            raise RequestError(
                f"entry must be an entry id (up to 18 digits), got '{clip(raw)}'", param="entry"
            )
        if await cache.invalidate(tenant, entry=int(raw)) == 0:
            raise CacheNotFoundError(f"no semantic cache entry {raw}", param="entry")
        return json_response({"object": "cache.invalidation", "tier": "semantic", "deleted": 1})

    async def feedback(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        cache = self._cache()
        body = parse_body(_FeedbackBody, await request.body())
        hit = await cache.feedback(tenant, body.request_id, body.correct)
        if hit is None:
            raise CacheNotFoundError(
                f"no recent semantic hit answered request '{body.request_id}'",
                param="request_id",
            )
        return json_response(
            {
                "object": "cache.feedback",
                "entry": hit.entry,
                "correct": body.correct,
                "threshold": cache.thresholds.threshold(hit.entry),
            }
        )
