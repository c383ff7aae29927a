"""GET /dashboard: the operator's and the finance lead's view, served by `areion serve`.

The page (`server/dashboard/`: one HTML file, one script, one stylesheet, shipped in
the package; nothing is fetched from elsewhere) signs in with an API key kept in the
tab's session storage, then reads one endpoint per page view:

    GET  /v1/dashboard/overview?range=24h     spend vs budgets, traffic, latency, caches
    GET  /v1/dashboard/spend?range=&by=model  a table and a stacked series
    GET  /v1/dashboard/tasks?range=           cost per task, the costliest runs
    GET  /v1/dashboard/runs?status=&agent=&cursor=
    GET  /v1/dashboard/runs/{id}              steps, tool calls, model calls, events
    POST /v1/dashboard/runs/{id}/decision     approve or reject a pending call, resume
    GET  /v1/dashboard/limits                 budget windows, rate headroom, lanes, breakers

Each answer is read from the spend rollups (`store.rollups`) and keyset pages of runs
(`store.run_pages`), never by scanning the ledger. Who sees what is `/v1/spend`'s rule
(`server.spend`): a tenant key its own tenant only, an admin key (or anyone on an open
server) every tenant, or one with `tenant=`. Process-wide figures (errors, TTFT, route
reasons, lanes, breakers) are not per tenant: only admin keys and open servers get them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion import spend as reports
from areion.agent.runner import RunNotFoundError
from areion.errors import RequestError
from areion.runtime import Runtime
from areion.server.admin import bearer_key
from areion.server.runs import RunsApi, run_json
from areion.server.schema import clip, json_response, parse_body
from areion.server.spend import SpendApi
from areion.store.rollups import RAW_DIMENSIONS, SpendQuery, SpendTotals, merge, quantile
from areion.store.run_pages import RunPageQuery, RunRow

__all__ = ["RANGES", "DashboardApi"]

RANGES: dict[str, float] = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
"""The time ranges the pages offer, as `range=` names them."""
SPEND_BY = ("model", "tenant", "key", "route", "agent", "user")
"""What the spend page groups by."""
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"
_PAGE_SIZE = 50
_SERIES_GROUPS = 8  # the most series a stacked chart draws; the rest is "other"


def _asset(name: str) -> bytes:
    return (resources.files("areion.server") / "dashboard" / name).read_bytes()


def _range(request: Request) -> tuple[str, float, float]:
    """The page's range (`range=`, default 24h) as (name, since, until)."""
    name = request.query_params.get("range", "24h")
    seconds = RANGES.get(name)
    if seconds is None:
        raise RequestError(
            f"range '{clip(name, 20)}' is not one of " + ", ".join(RANGES), param="range"
        )
    until = time.time() + 1.0  # a call that ended just now is in
    return name, until - seconds, until


def _bucket(span_s: float) -> str:
    """The series' bucket of a range: hours up to a week, then days."""
    return "hour" if span_s <= 7 * 86400.0 else "day"


def _starts(since: float, until: float, bucket: str) -> list[int]:
    """Every bucket's start in [since, until): a chart shows the empty ones too."""
    step = 3600 if bucket == "hour" else 86400
    first = int(since // step) * step
    return list(range(first, int(until), step))


def _start_of_day(now: float) -> float:
    return float(int(now // 86400) * 86400)


def _start_of_month(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()


def _sum(groups: Iterable[SpendTotals]) -> SpendTotals:
    total = SpendTotals()
    for totals in groups:
        total.calls += totals.calls
        total.input_tokens += totals.input_tokens
        total.output_tokens += totals.output_tokens
        total.cost_usd += totals.cost_usd
        total.cache_hits += totals.cache_hits
        total.saved_usd += totals.saved_usd
        total.histogram = [a + b for a, b in zip(total.histogram, totals.histogram, strict=True)]
    return total


def _latency(histogram: list[int]) -> dict[str, float | None]:
    return {f"p{q}": quantile(histogram, q / 100) for q in (50, 95, 99)}


# -- process-wide figures from the metrics registry -----------------------------------


def _samples(registry: CollectorRegistry, name: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
    ]


def _counter_by(registry: CollectorRegistry, name: str, label: str) -> dict[str, float]:
    """A counter's total per value of one label."""
    out: dict[str, float] = {}
    for sample, labels, value in _samples(registry, name):
        if sample.endswith("_total") and value:
            key = labels.get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def _histogram_quantiles(registry: CollectorRegistry, name: str) -> dict[str, float | None]:
    """p50/p95/p99 of a histogram over all its label sets, interpolated in buckets."""
    cumulative: dict[float, float] = {}
    for sample, labels, value in _samples(registry, name):
        if sample.endswith("_bucket"):
            edge = float(labels["le"])
            cumulative[edge] = cumulative.get(edge, 0.0) + value
    edges = sorted(cumulative)
    total = cumulative.get(float("inf"), 0.0)
    out: dict[str, float | None] = {}
    for q in (50, 95, 99):
        if total <= 0:
            out[f"p{q}"] = None
            continue
        target = total * q / 100
        low_edge, low_count = 0.0, 0.0
        found: float | None = None
        for edge in edges:
            count = cumulative[edge]
            if count >= target:
                high = edge if edge != float("inf") else low_edge
                share = (target - low_count) / (count - low_count) if count > low_count else 1.0
                found = round(low_edge + (high - low_edge) * share, 4)
                break
            low_edge, low_count = edge, count
        out[f"p{q}"] = found
    return out


def _process(runtime: Runtime, started: float) -> dict[str, Any]:
    """What this process counted since it started (operators only: not per tenant)."""
    registry = runtime.metrics.registry
    requests = _counter_by(registry, "areion_requests", "outcome")
    calls = sum(requests.values())
    errors = _counter_by(registry, "areion_errors", "kind")
    return {
        "since": started,
        "requests": requests,
        "errors": {
            kind: {"count": count, "rate": count / calls if calls else None}
            for kind, count in sorted(errors.items())
        },
        "refusals": _counter_by(registry, "areion_refusals", "code"),
        "ttft_s": _histogram_quantiles(
            registry, "gen_ai_client_operation_time_to_first_chunk_seconds"
        ),
        "duration_s": _histogram_quantiles(registry, "gen_ai_client_operation_duration_seconds"),
        "route_reasons": _counter_by(registry, "areion_route_decisions", "reason"),
        "cache_saved_s": _counter_by(registry, "areion_cache_saved_seconds", "tier"),
    }


# -- cursors --------------------------------------------------------------------------


def _cursor(row: RunRow) -> str:
    raw = orjson.dumps([row.created, row.tenant, row.run_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(text: str | None) -> tuple[float, str, str] | None:
    if not text:
        return None
    try:
        created, tenant, run_id = orjson.loads(
            base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        )
        return float(created), str(tenant), str(run_id)
    except (ValueError, TypeError):
        raise RequestError(
            "cursor is not one this API gave (use next_cursor of the previous page)",
            param="cursor",
        ) from None


class _DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1, max_length=256)
    approve: bool
    reason: str = Field(default="rejected in the dashboard", max_length=2000)


class _Scoped(SpendApi):
    """`/v1/spend`'s rule of who reads which tenant, for the dashboard's endpoints."""

    async def tenant(self, request: Request) -> str | None:
        """The tenant the caller may read; None: every tenant (admin, open server)."""
        return await self._scope(request)


class DashboardApi:
    """The page, its assets, and the endpoints its pages read."""

    def __init__(
        self,
        runtime: Runtime,
        identity: Callable[[Request], tuple[str, str | None]],
        runs: RunsApi,
    ) -> None:
        self.runtime = runtime
        self.runs = runs
        self._scoped = _Scoped(runtime, identity)
        self._started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()

    def routes(self) -> list[Route]:
        return [
            Route("/dashboard", self.page, methods=["GET"]),
            Route("/dashboard/{asset}", self.asset, methods=["GET"]),
            Route("/v1/dashboard/overview", self.overview, methods=["GET"]),
            Route("/v1/dashboard/spend", self.spend, methods=["GET"]),
            Route("/v1/dashboard/tasks", self.tasks, methods=["GET"]),
            Route("/v1/dashboard/runs", self.run_list, methods=["GET"]),
            Route("/v1/dashboard/runs/{run_id}", self.run, methods=["GET"]),
            Route("/v1/dashboard/runs/{run_id}/decision", self.decide, methods=["POST"]),
            Route("/v1/dashboard/limits", self.limits, methods=["GET"]),
        ]

    async def page(self, request: Request) -> Response:
        return Response(
            _asset("index.html"),
            media_type="text/html; charset=utf-8",
            headers={"content-security-policy": _CSP, "cache-control": "no-cache"},
        )

    async def asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        media = _ASSETS.get(name)
        if media is None:
            raise RequestError(f"no dashboard asset '{clip(name, 40)}'", param="asset")
        return Response(_asset(name), media_type=media, headers={"cache-control": "no-cache"})

    async def _scope(self, request: Request) -> tuple[str | None, bool]:
        """(the tenant the caller reads, None for all; whether it sees process figures)."""
        tenant = await self._scoped.tenant(request)
        keys = self.runtime.keys
        if not await keys.closed():
            return tenant, True
        key = bearer_key(request.headers.get("authorization", ""))
        return tenant, key is not None and keys.is_admin(key)

    async def _spend(self, query: SpendQuery) -> dict[tuple[Any, ...], SpendTotals]:
        return merge(await self.runtime.store.spend(query), len(query.group_by))

    def _budgets(self) -> dict[str, tuple[float | None, float | None]]:
        tenants = [*self.runtime.config.auth.tenants, *self.runtime.config.tenants]
        return {t.name: (t.budget_usd_per_day, t.budget_usd_per_month) for t in tenants}

    async def _budget_windows(self, tenant: str | None, now: float) -> list[dict[str, Any]]:
        """Each tenant's spend today and this month (UTC) against its budgets."""
        day, month = await asyncio.gather(
            self._spend(
                SpendQuery(group_by=("tenant",), since=_start_of_day(now), until=now, tenant=tenant)
            ),
            self._spend(
                SpendQuery(
                    group_by=("tenant",), since=_start_of_month(now), until=now, tenant=tenant
                )
            ),
        )
        budgets = self._budgets()
        names = {key[0] for key in month} | {key[0] for key in day}
        names |= set(budgets) if tenant is None else {tenant}
        rows = []
        # The biggest spenders this month first.
        for name in sorted(names, key=lambda n: (-month.get((n,), SpendTotals()).cost_usd, n)):
            per_day, per_month = budgets.get(name, (None, None))
            rows.append(
                {
                    "tenant": name,
                    "day_usd": round(day.get((name,), SpendTotals()).cost_usd, 10),
                    "day_budget_usd": per_day,
                    "month_usd": round(month.get((name,), SpendTotals()).cost_usd, 10),
                    "month_budget_usd": per_month,
                }
            )
        return rows

    async def overview(self, request: Request) -> Response:
        tenant, operator = await self._scope(request)
        name, since, until = _range(request)
        bucket = _bucket(until - since)
        series_q = SpendQuery(group_by=(bucket, "cache"), since=since, until=until, tenant=tenant)
        routes_q = SpendQuery(group_by=("route", "model"), since=since, until=until, tenant=tenant)
        by_time, by_route, budgets = await asyncio.gather(
            self._spend(series_q), self._spend(routes_q), self._budget_windows(tenant, until)
        )
        total = _sum(by_time.values())
        tiers: dict[str, SpendTotals] = {}
        points: dict[int, SpendTotals] = {}
        for (start, tier), totals in by_time.items():
            tiers[tier] = _sum([tiers.get(tier, SpendTotals()), totals])
            points[int(start)] = _sum([points.get(int(start), SpendTotals()), totals])
        cache = {
            tier: {
                "hits": tiers[tier].calls if tier in tiers else 0,
                "hit_rate": (tiers[tier].calls / total.calls) if tier in tiers else 0.0,
                "saved_usd": round(tiers[tier].saved_usd, 10) if tier in tiers else 0.0,
            }
            for tier in ("exact", "semantic")
        }
        body: dict[str, Any] = {
            "object": "dashboard.overview",
            "scope": {"tenant": tenant, "operator": operator},
            "range": name,
            "since": since,
            "until": until,
            "budgets": budgets,
            "totals": {
                **total.as_json(),
                "requests_per_s": total.calls / (until - since),
                "latency_s": _latency(total.histogram),
            },
            "cache": cache,
            "solver_answers": tiers["solver"].calls if "solver" in tiers else 0,
            "routes": [
                {"route": route, "model": model, "calls": totals.calls}
                for (route, model), totals in sorted(
                    by_route.items(), key=lambda item: (-item[1].calls, str(item[0]))
                )
                if route
            ],
            "series": [
                {
                    "start": start,
                    "calls": points[start].calls if start in points else 0,
                    "cost_usd": round(points[start].cost_usd, 10) if start in points else 0.0,
                }
                for start in _starts(since, until, bucket)
            ],
            "bucket": bucket,
            "process": _process(self.runtime, self._started) if operator else None,
        }
        return json_response(body)

    async def spend(self, request: Request) -> Response:
        tenant, _ = await self._scope(request)
        name, since, until = _range(request)
        by = request.query_params.get("by", "model")
        if by not in SPEND_BY:
            raise RequestError(
                f"by '{clip(by, 20)}' is not one of " + ", ".join(SPEND_BY), param="by"
            )
        if by in RAW_DIMENSIONS and until - since > RANGES["24h"] + 1.0:
            raise RequestError(
                f"spend by {by} reads the ledger itself ({by} is not kept in the rollups): "
                "choose a range of a day or less (range=1h or 24h)",
                param="range",
            )
        bucket = _bucket(until - since)
        series: dict[int, dict[str, float]] = {}
        groups: dict[str, SpendTotals] = {}
        if by in RAW_DIMENSIONS:
            # The ledger's rows by user, and the series (one, of all) from the rollups: a
            # series per user per hour would read the rows once per latency bucket.
            by_value, by_time = await asyncio.gather(
                self._spend(SpendQuery(group_by=(by,), since=since, until=until, tenant=tenant)),
                self._spend(
                    SpendQuery(group_by=(bucket,), since=since, until=until, tenant=tenant)
                ),
            )
            groups = {value: totals for (value,), totals in by_value.items()}
            ordered = sorted(groups, key=lambda value: (-groups[value].cost_usd, value))
            for (start,), totals in by_time.items():
                series[int(start)] = {"all": totals.cost_usd}
            names = ["all"]
        else:
            found = await self._spend(
                SpendQuery(group_by=(bucket, by), since=since, until=until, tenant=tenant)
            )
            for (_, value), totals in found.items():
                groups[value] = _sum([groups.get(value, SpendTotals()), totals])
            ordered = sorted(groups, key=lambda value: (-groups[value].cost_usd, value))
            shown = ordered[:_SERIES_GROUPS]
            for (start, value), totals in found.items():
                label = value if value in shown else "other"
                point = series.setdefault(int(start), {})
                point[label] = point.get(label, 0.0) + totals.cost_usd
            names = shown + (["other"] if len(ordered) > len(shown) else [])
        return json_response(
            {
                "object": "dashboard.spend",
                "range": name,
                "since": since,
                "until": until,
                "by": by,
                "bucket": bucket,
                "data": [{by: value, **groups[value].as_json()} for value in ordered],
                "total": _sum(groups.values()).as_json(),
                "series": [
                    {
                        "start": start,
                        "cost_usd": {k: round(v, 10) for k, v in series.get(start, {}).items()},
                    }
                    for start in _starts(since, until, bucket)
                ],
                "series_names": names,
            }
        )

    async def tasks(self, request: Request) -> Response:
        tenant, _ = await self._scope(request)
        name, since, until = _range(request)
        store = self.runtime.store
        per_agent, costliest = await asyncio.gather(
            reports.tasks(store, since=since, until=until, tenant=tenant),
            store.run_page(
                RunPageQuery(tenant=tenant, order="cost", since=since, until=until, limit=10)
            ),
        )
        per_agent["costliest"] = [self._row(row, tenant) for row in costliest]
        per_agent["range"] = name
        return json_response(per_agent)

    def _row(self, row: RunRow, tenant: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row.run_id,
            "agent": row.agent,
            "status": row.status,
            "steps": row.steps,
            "cost_usd": round(row.cost_usd, 10),
            "pause_reason": row.pause_reason,
            "created": row.created,
            "updated": row.updated,
        }
        if tenant is None:
            out["tenant"] = row.tenant
        return out

    async def run_list(self, request: Request) -> Response:
        tenant, _ = await self._scope(request)
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in ("running", "paused", "finished", "failed"):
            raise RequestError(
                f"status '{clip(status, 20)}' is not one of running, paused, finished, failed",
                param="status",
            )
        limit = params.get("limit", str(_PAGE_SIZE))
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise RequestError("limit must be a whole number from 1 to 500", param="limit")
        query = RunPageQuery(
            tenant=tenant,
            status=status,
            agent=params.get("agent") or None,
            after=_after(params.get("cursor")),
            limit=int(limit) + 1,  # one more: whether a next page exists
        )
        rows = await self.runtime.store.run_page(query)
        page = rows[: int(limit)]
        more = len(rows) > len(page)
        return json_response(
            {
                "object": "list",
                "data": [self._row(row, tenant) for row in page],
                "next_cursor": _cursor(page[-1]) if more and page else None,
                "agents": sorted(self.runs.agents),
            }
        )

    async def _owner(self, request: Request) -> str:
        """Whose run the path names: the caller's tenant, or an admin's `tenant=`."""
        tenant, _ = await self._scope(request)
        if tenant is not None:
            return tenant
        if not await self.runtime.keys.closed():
            return "default"
        raise RequestError(
            "an admin key names the run's tenant: add ?tenant=<tenant>", param="tenant"
        )

    async def run(self, request: Request) -> Response:
        tenant = await self._owner(request)
        run_id = request.path_params["run_id"]
        store = self.runtime.store
        snapshot = await store.load_run(run_id, tenant=tenant)
        if snapshot is None:
            raise RunNotFoundError(f"no run '{clip(run_id)}'", param="run_id")
        run = snapshot.run
        calls, events = await asyncio.gather(
            store.run_calls(run_id, tenant=tenant, since=run.created, until=run.updated + 60.0),
            store.run_events(run_id, tenant=tenant),
        )
        body = run_json(snapshot)
        body["tenant"] = tenant
        body["input"] = run.input
        body["messages"] = snapshot.messages
        body["tool_calls"] = [
            {
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
                "status": call.status,
                "result": call.result,
                "reason": call.reason,
            }
            for call in snapshot.tool_calls.values()
        ]
        body["model_calls"] = [
            {
                "created": c.created,
                "kind": c.kind,
                "model": c.model,
                "deployment": c.deployment,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "cost_usd": round(c.cost_usd, 10),
                "latency_s": round(c.latency_s, 4),
                "cache": c.cache,
            }
            for c in calls
        ]
        body["events"] = [{"seq": seq, **event} for seq, event in events]
        return json_response(body)

    async def decide(self, request: Request) -> Response:
        """Approve or reject a call the run waits for; once none waits, resume the run
        in the background (the page follows it by reading the run again)."""
        tenant = await self._owner(request)
        run_id = request.path_params["run_id"]
        body: _DecisionBody = parse_body(_DecisionBody, await request.body())
        runtime = self.runtime
        snapshot = await runtime.store.load_run(run_id, tenant=tenant)
        if snapshot is None:
            raise RunNotFoundError(f"no run '{clip(run_id)}'", param="run_id")
        if body.approve:
            await runtime.approve(run_id, body.call_id, tenant=tenant)
        else:
            await runtime.reject(run_id, body.call_id, body.reason, tenant=tenant)
        snapshot = await runtime.store.load_run(run_id, tenant=tenant)
        assert snapshot is not None
        waiting = any(c.status == "pending_approval" for c in snapshot.tool_calls.values())
        agent = self.runs.agents.get(snapshot.run.agent)
        resumed = not waiting and agent is not None
        if resumed:
            assert agent is not None
            task = asyncio.get_running_loop().create_task(
                runtime.resume(run_id, agent=agent, tenant=tenant)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return json_response({**run_json(snapshot), "resumed": resumed})

    async def limits(self, request: Request) -> Response:
        tenant, operator = await self._scope(request)
        now = time.time()
        minute, budgets = await asyncio.gather(
            self._spend(
                SpendQuery(group_by=("tenant",), since=now - 60.0, until=now + 1.0, tenant=tenant)
            ),
            self._budget_windows(tenant, now),
        )
        config = self.runtime.config
        rates = []
        for t in [*config.auth.tenants, *config.tenants]:
            if tenant is not None and t.name != tenant:
                continue
            used = minute.get((t.name,), SpendTotals())
            tokens = used.input_tokens + used.output_tokens
            rates.append(
                {
                    "tenant": t.name,
                    "rpm": t.rpm,
                    "rpm_used": used.calls,
                    "tpm": t.tpm,
                    "tpm_used": tokens,
                    "weight": t.weight,
                }
            )
        body: dict[str, Any] = {
            "object": "dashboard.limits",
            "scope": {"tenant": tenant, "operator": operator},
            "budgets": budgets,
            "rates": rates,
            "lanes": None,
            "deployments": None,
        }
        if operator:
            body["lanes"] = self._lanes()
            gateway = self.runtime.gateway
            body["deployments"] = [
                {
                    "id": d.id,
                    "group": d.group,
                    "breaker": d.breaker.state.value,
                    "available": d.breaker.available(gateway.clock()),
                    "in_flight": d.outstanding,
                    "max_concurrency": d.config.max_concurrency,
                }
                for d in gateway.deployments.values()
            ]
            body["model_limits"] = [
                {"model": m.model, "rpm": m.rpm, "tpm": m.tpm} for m in config.limits.models
            ]
            body["scaling"] = self._scaling()
        return json_response(body)

    def _scaling(self) -> dict[str, Any] | None:
        """`areion_desired_replicas` and what it is made of (None: scaling is off)."""
        signal = self.runtime.scaling
        if signal is None:
            return None
        desired = signal.desired()
        forecast = desired.forecast
        return {
            "desired_replicas": desired.replicas,
            "forecast_rate": forecast.rate,
            "recent_rate": forecast.recent_rate,
            "level": forecast.level,
            "history_days": forecast.days,
            "service_time_p95_s": desired.service_time_s,
            "in_flight": desired.in_flight,
        }

    def _lanes(self) -> list[dict[str, Any]]:
        out = []
        for group in self.runtime.gateway.groups:
            with contextlib.suppress(KeyError):
                stats = self.runtime.lanes.stats(group)
                limited = stats.capacity < 2**62
                out.append(
                    {
                        "group": group,
                        "capacity": stats.capacity if limited else None,
                        "in_flight": stats.in_flight,
                        "queued_interactive": stats.queued_interactive,
                        "queued_batch": stats.queued_batch,
                        "shed": {
                            f"{lane}/{reason}": count
                            for (lane, reason), count in stats.shed.items()
                        },
                    }
                )
        return out

    async def aclose(self) -> None:
        """Cancel runs resumed from the page that still run (the store keeps them)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
