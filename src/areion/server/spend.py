"""GET /v1/spend and GET /v1/spend/tasks: what was spent, by whom, on what.

    GET /v1/spend?group_by=tenant,model&since=2026-12-01&until=1796400000
    GET /v1/spend/tasks?since=...            cost per task, per agent

A tenant key sees its own tenant's spend only: naming another tenant (`tenant=`) is a
403, and every group is its own. An admin key (`auth.admin_keys`) sees every tenant's,
or one's with `tenant=`; so does anyone on an open server (no keys: a local server).
Bad parameters are a 400 naming the parameter. See `areion.spend` for the answers.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion import spend as reports
from areion.errors import RequestError
from areion.runtime import Runtime
from areion.server.admin import bearer_key
from areion.server.schema import json_response
from areion.store.rollups import SpendQuery

__all__ = ["OtherTenantError", "SpendApi"]

_PARAMS = frozenset(("group_by", "since", "until", "tenant", "limit"))


class OtherTenantError(RequestError):
    """A tenant key asked for another tenant's spend."""

    status = 403
    code = "tenant_forbidden"


class SpendApi:
    """Handlers of /v1/spend and /v1/spend/tasks."""

    def __init__(self, runtime: Runtime, identity: Callable[[Request], tuple[str, str | None]]):
        self.runtime = runtime
        self._identity = identity

    def routes(self) -> list[Route]:
        return [
            Route("/v1/spend", self.spend, methods=["GET"]),
            Route("/v1/spend/tasks", self.tasks, methods=["GET"]),
        ]

    async def _scope(self, request: Request) -> str | None:
        """The tenant whose spend the caller may read; None: every tenant's."""
        asked = request.query_params.get("tenant") or None
        keys = self.runtime.keys
        key = bearer_key(request.headers.get("authorization", "")) or (
            request.headers.get("x-api-key", "").strip() or None
        )
        if not await keys.closed() or (key is not None and keys.is_admin(key)):
            return asked
        tenant, _ = self._identity(request)
        if asked is not None and asked != tenant:
            raise OtherTenantError(
                "a tenant key sees only its own tenant's spend; use an admin key "
                "(auth.admin_keys) to read another's",
                param="tenant",
            )
        return tenant

    def _span(self, request: Request) -> tuple[float, float]:
        params = request.query_params
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise RequestError(
                f"unknown parameter '{unknown[0][:40]}'; use any of " + ", ".join(sorted(_PARAMS)),
                param=unknown[0][:40],
            )
        since = params.get("since")
        until = params.get("until")
        return reports.span(
            None if since is None else reports.parse_time(since, "since"),
            None if until is None else reports.parse_time(until, "until"),
        )

    async def spend(self, request: Request) -> Response:
        tenant = await self._scope(request)
        since, until = self._span(request)
        group_by = reports.parse_group_by(request.query_params.get("group_by", ""))
        limit = _limit(request.query_params.get("limit"))
        query = SpendQuery(group_by=group_by, since=since, until=until, tenant=tenant)
        return json_response(await reports.spend(self.runtime.store, query, limit=limit))

    async def tasks(self, request: Request) -> Response:
        tenant = await self._scope(request)
        since, until = self._span(request)
        answer = await reports.tasks(self.runtime.store, since=since, until=until, tenant=tenant)
        return json_response(answer)


def _limit(value: str | None) -> int:
    if value is None:
        return reports.MAX_GROUPS
    if not value.isdigit() or not 1 <= int(value) <= reports.MAX_GROUPS:
        raise RequestError(
            f"limit must be a whole number from 1 to {reports.MAX_GROUPS}", param="limit"
        )
    return int(value)
