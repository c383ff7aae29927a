"""Experiments over HTTP: their figures and verdicts, and the outcomes that judge them.

    GET  /v1/experiments            every configured experiment's report
    GET  /v1/experiments/{name}     one experiment's report (?history=true: with the
                                    running comparison as the units came in)
    POST /v1/outcomes               {"run_id" | "request_id" | "session": ..., "success": bool,
                                     "score": float?}: whether a task succeeded

An experiment's figures span every tenant, so reading them takes an admin key
(`auth.admin_keys`), or an open server (no keys: a local one); a tenant key is a 403. An
outcome is a tenant's own: it names the tenant's run, call (Areion's `x-request-id`) or
session, and a run or call the tenant never made is a 404.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.errors import RequestError
from areion.runtime import Runtime
from areion.server.admin import bearer_key
from areion.server.schema import json_response, parse_body

__all__ = ["ExperimentsApi"]


class ExperimentsForbiddenError(RequestError):
    """A tenant key asked for experiments, whose figures span every tenant."""

    status = 403
    code = "admin_key_required"


class _OutcomeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    run_id: str | None = Field(default=None, min_length=1, max_length=128)
    request_id: str | None = Field(default=None, min_length=1, max_length=128)
    session: str | None = Field(default=None, min_length=1, max_length=128)
    success: bool
    score: float | None = Field(default=None, allow_inf_nan=False)


class ExperimentsApi:
    """Handlers of /v1/experiments and /v1/outcomes."""

    def __init__(
        self, runtime: Runtime, identity: Callable[[Request], tuple[str, str | None]]
    ) -> None:
        self.runtime = runtime
        self._identity = identity

    def routes(self) -> list[Route]:
        return [
            Route("/v1/experiments", self.list, methods=["GET"]),
            Route("/v1/experiments/{name}", self.get, methods=["GET"]),
            Route("/v1/outcomes", self.outcome, methods=["POST"]),
        ]

    async def _authorize(self, request: Request) -> None:
        keys = self.runtime.keys
        key = bearer_key(request.headers.get("authorization", "")) or (
            request.headers.get("x-api-key", "").strip() or None
        )
        if not await keys.closed() or (key is not None and keys.is_admin(key)):
            return
        self._identity(request)  # no key or a bad one: 401
        raise ExperimentsForbiddenError(
            "experiments span every tenant: read them with an admin key (auth.admin_keys)"
        )

    async def list(self, request: Request) -> Response:
        await self._authorize(request)
        reports = await self.runtime.judge.reports()
        return json_response({"object": "list", "data": [r.as_dict() for r in reports]})

    async def get(self, request: Request) -> Response:
        await self._authorize(request)
        over_time = request.query_params.get("history", "") in ("1", "true")
        report = await self.runtime.experiment_report(
            request.path_params["name"], over_time=over_time
        )
        return json_response(report.as_dict())

    async def outcome(self, request: Request) -> Response:
        tenant, _ = self._identity(request)
        body = parse_body(_OutcomeBody, await request.body())
        await self.runtime.record_outcome(
            tenant=tenant,
            run_id=body.run_id,
            request_id=body.request_id,
            session=body.session,
            success=body.success,
            score=body.score,
        )
        return json_response({"object": "outcome", "recorded": True}, 201)
