"""/healthz and /metrics: what operators see, and who may see it.

An open server (no keys anywhere: a local dev server) shows both to anyone. Once
auth is on, /metrics (per-tenant spend among it) needs an admin or metrics key
(`auth.admin_keys`, `auth.metrics_keys`), as a Prometheus scraper sends one; and
/healthz answers anyone only whether the server can serve, the per-deployment
breaker states only to such a key. Healthy means at least one deployment's breaker
lets calls through; when none does, 503, so a load balancer takes the replica out.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.errors import AuthenticationError, RequestError
from areion.runtime import Runtime
from areion.server.admin import bearer_key
from areion.server.schema import json_response

__all__ = ["MetricsKeyRequiredError", "OpsApi"]


class MetricsKeyRequiredError(RequestError):
    """A tenant key asked for /metrics."""

    status = 403
    code = "metrics_key_required"


class OpsApi:
    """Handlers of /healthz and /metrics."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def _operator(self, request: Request) -> bool:
        """Whether the caller may see operational detail: anyone on an open server,
        else the holder of an admin or metrics key."""
        if not await self.runtime.keys.closed():
            return True
        key = bearer_key(request.headers.get("authorization", ""))
        return key is not None and self.runtime.keys.is_operator(key)

    async def healthz(self, request: Request) -> Response:
        deployments = self.runtime.gateway.deployments.values()
        now = self.runtime.gateway.clock()
        healthy = any(deployment.breaker.available(now) for deployment in deployments)
        body: dict[str, object] = {"status": "ok" if healthy else "unavailable"}
        if await self._operator(request):
            body["deployments"] = {d.id: d.breaker.state.value for d in deployments}
        return json_response(body, 200 if healthy else 503)

    async def metrics(self, request: Request) -> Response:
        if not await self._operator(request):
            key = bearer_key(request.headers.get("authorization", ""))
            if key is None:
                raise AuthenticationError(
                    "missing key: /metrics needs an admin or metrics key (auth.metrics_keys); "
                    "send 'Authorization: Bearer <key>'"
                )
            try:
                await self.runtime.keys.identify(key)
            except AuthenticationError:
                raise AuthenticationError("invalid metrics key") from None
            raise MetricsKeyRequiredError(
                "a tenant key cannot read /metrics; use an admin key or a key in auth.metrics_keys"
            )
        return Response(
            self.runtime.metrics.exposition(),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )
