"""The runs API: start, inspect, follow, approve, reject and resume agent runs.

Runs belong to the tenant whose key created them; any other tenant gets a 404. Run
ids are per tenant: a client may choose one (`run_id`), and the same id chosen by
another tenant is another run. Reusing one's own id for a different run is a 409.
Events are read back from the store, so any replica can serve them for a run
another replica drives; model text deltas are not stored and not replayed here
(`Runtime.stream()` in-process has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from areion.agent import Agent
from areion.agent.runner import RunBusyError, RunNotFoundError, new_run_id
from areion.cache.plans import offered_plan
from areion.config import AgentConfig
from areion.errors import ConfigError, RequestError
from areion.pricing import round_usd
from areion.runtime import Runtime
from areion.server.schema import clip, json_response, parse_body
from areion.store.records import RunSnapshot

__all__ = ["RunsApi", "load_agents"]

log = logging.getLogger(__name__)

_TERMINAL = {"finished", "failed", "paused"}


def load_agents(configs: list[AgentConfig]) -> dict[str, Agent]:
    """Import the agents the config names; a bad path fails at start."""
    agents: dict[str, Agent] = {}
    for index, entry in enumerate(configs):
        module_name, _, attribute = entry.path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ConfigError(
                f"agents[{index}].path: cannot import module '{module_name}': {error}"
            ) from None
        agent = getattr(module, attribute, None)
        if callable(agent) and not isinstance(agent, Agent):
            agent = agent()
        if not isinstance(agent, Agent):
            raise ConfigError(
                f"agents[{index}].path: '{entry.path}' is not an Agent (or a function "
                "returning one)"
            )
        agents[entry.name] = agent
    return agents


class _DeferBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    window: str | None = None  # one of jobs.windows; the default window if none; "none"
    not_before: float | None = Field(default=None, ge=0)  # Unix times
    deadline: float | None = Field(default=None, ge=0)


class _StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1)
    input: str = Field(min_length=1)
    session: str | None = Field(default=None, min_length=1, max_length=200)
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    wait: bool = False
    # Run it later, as a job in the store (Runtime.defer): 202 with when and why.
    defer: _DeferBody | None = None


class _DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1, max_length=256)  # echoed in errors; ids are short
    reason: str = "rejected"


class _ResumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    wait: bool = False


def _event_id(raw: str) -> int:
    """The event to follow from (`after`, or a reconnecting client's Last-Event-ID): -1
    for the start, else an id the store can hold. Checked before the stream's 200 is
    sent; after it, a bad value could only cut the stream."""
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not -1 <= value < 2**63:
        raise RequestError(
            f"after (or Last-Event-ID) must be an event id, an integer from -1 to "
            f"{2**63 - 1}; got '{clip(raw)}'",
            param="after",
        )
    return value


def run_json(snapshot: RunSnapshot, *, experiment: str | None = None) -> dict[str, Any]:
    """A run as the API shows it; `experiment`: the variant (`experiment:variant`) the
    run is served by, if an experiment applies to its agent."""
    run = snapshot.run
    plan = offered_plan(snapshot.messages)
    return {
        "id": run.run_id,
        "object": "run",
        "agent": run.agent,
        "session": run.session,
        "experiment": experiment,
        "status": run.status,
        "output": run.output,
        "error": run.error,
        "pause_reason": run.pause_reason,
        "pending_calls": [
            {"call_id": r.call_id, "name": r.name, "arguments": r.arguments}
            for r in snapshot.tool_calls.values()
            if r.status == "pending_approval"
        ],
        "steps": run.steps,
        "usage": {
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
            "total_tokens": run.prompt_tokens + run.completion_tokens,
        },
        "cost_usd": round_usd(run.cost_usd),
        "plan_hit": None
        if plan is None
        else {"entry": plan.entry, "task": plan.task, "score": plan.score},
        "created": run.created,
        "updated": run.updated,
    }


class RunsApi:
    """Handlers of /v1/runs, given how to find the caller's tenant."""

    def __init__(
        self,
        runtime: Runtime,
        tenant_of: Callable[[Request], str],
    ) -> None:
        self.runtime = runtime
        self.agents = load_agents(runtime.config.agents)
        self._tenant_of = tenant_of
        self._tasks: set[asyncio.Task[Any]] = set()
        self._adopter: asyncio.Task[None] | None = None
        self._adopting: set[tuple[str, str]] = set()

    def _json(self, snapshot: RunSnapshot) -> dict[str, Any]:
        experiment = None
        if self.runtime.experiments:
            run = snapshot.run
            found = self.runtime.experiments.for_run(
                run.agent, run_id=run.run_id, session=run.session, user=None
            )
            experiment = found.label if found is not None else None
        return run_json(snapshot, experiment=experiment)

    def begin(self) -> None:
        """Begin taking over runs whose driver died (`runs.adopt`), on any replica."""
        if self.agents and self.runtime.config.runs.adopt and self._adopter is None:
            self._adopter = asyncio.get_running_loop().create_task(self._adopt())

    async def _adopt(self) -> None:
        """Every half lease: resume the runs still `running` whose lease ran out (their
        driver's replica died). Taking the lease decides which replica resumes one."""
        ttl = self.runtime.agents.lease_ttl_s
        while True:
            await asyncio.sleep(ttl / 2)
            try:
                stale = await self.runtime.store.stale_runs(updated_before=time.time() - ttl)
            except Exception:  # the store is down: look again next time
                log.warning("looking for runs to take over failed", exc_info=True)
                continue
            for tenant, run_id in stale:
                if (tenant, run_id) not in self._adopting:
                    self._adopting.add((tenant, run_id))
                    self._background(self._take_over(tenant, run_id))

    async def _take_over(self, tenant: str, run_id: str) -> None:
        try:
            snapshot = await self.runtime.agents.get(run_id, tenant=tenant)
            if snapshot is None or snapshot.run.status != "running":
                return
            agent = self.agents.get(snapshot.run.agent)
            if agent is None:
                return  # an agent this replica does not serve (a library's run)
            log.info("taking over run %s of tenant %s", run_id, tenant)
            await self.runtime.resume(run_id, agent=agent, tenant=tenant)
        except RunBusyError:
            pass  # another replica took it first, or its driver is alive after all
        except Exception:
            log.warning("taking over run %s failed", run_id, exc_info=True)
        finally:
            self._adopting.discard((tenant, run_id))

    def routes(self) -> list[Route]:
        return [
            Route("/v1/runs", self.start, methods=["POST"]),
            Route("/v1/runs/{run_id}", self.get, methods=["GET"]),
            Route("/v1/runs/{run_id}/events", self.events, methods=["GET"]),
            Route("/v1/runs/{run_id}/approve", self.approve, methods=["POST"]),
            Route("/v1/runs/{run_id}/reject", self.reject, methods=["POST"]),
            Route("/v1/runs/{run_id}/resume", self.resume, methods=["POST"]),
        ]

    def _agent(self, name: str) -> Agent:
        agent = self.agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self.agents)) or "none configured"
            raise RequestError(f"no agent '{clip(name)}'; available: {known}", param="agent")
        return agent

    async def _snapshot(self, run_id: str, tenant: str) -> RunSnapshot:
        snapshot = await self.runtime.agents.get(run_id, tenant=tenant)
        if snapshot is None:
            raise RunNotFoundError(f"no run '{clip(run_id)}'", param="run_id")
        return snapshot

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _started(self, run_id: str, tenant: str) -> RunSnapshot:
        # A background run creates its row on its first await; wait for it briefly.
        for _ in range(200):
            snapshot = await self.runtime.agents.get(run_id, tenant=tenant)
            if snapshot is not None:
                return snapshot
            await asyncio.sleep(0.005)
        raise RunNotFoundError(f"run '{run_id}' did not start")

    async def start(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        body: _StartBody = parse_body(_StartBody, await request.body())
        agent = self._agent(body.agent)
        run_id = body.run_id or None
        if run_id is not None:
            # Before answering 202: a run id the caller already gave another run is a 409
            # now, not a failure of the background task nobody sees. Only the caller's own
            # runs are looked at; other tenants' ids are theirs.
            await self.runtime.agents.existing(
                run_id, agent=agent, input=body.input, session=body.session, tenant=tenant
            )
        if body.defer is not None:
            if body.wait:
                raise RequestError("a deferred run cannot be waited for: drop wait", param="wait")
            deferred = await self.runtime.defer(
                agent, body.input, session=body.session, run_id=run_id, tenant=tenant,
                window=body.defer.window, not_before=body.defer.not_before,
                deadline=body.defer.deadline,
            )  # fmt: skip
            return json_response(
                {
                    "run_id": deferred.run_id,
                    "status": "deferred",
                    "job_id": deferred.job_id,
                    "not_before": deferred.not_before,
                    "schedule": deferred.schedule,
                },
                202,
            )
        if body.wait:
            result = await self.runtime.run(
                agent, body.input, session=body.session, run_id=run_id, tenant=tenant
            )
            return json_response(self._json(await self._snapshot(result.run_id, tenant)), 200)
        run_id = run_id or new_run_id()
        self._background(
            self.runtime.run(agent, body.input, session=body.session, run_id=run_id, tenant=tenant)
        )
        return json_response(self._json(await self._started(run_id, tenant)), 202)

    async def get(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        snapshot = await self._snapshot(request.path_params["run_id"], tenant)
        return json_response(self._json(snapshot), 200)

    async def approve(self, request: Request) -> Response:
        return await self._decide(request, approve=True)

    async def reject(self, request: Request) -> Response:
        return await self._decide(request, approve=False)

    async def _decide(self, request: Request, *, approve: bool) -> Response:
        tenant = self._tenant_of(request)
        run_id = request.path_params["run_id"]
        body: _DecisionBody = parse_body(_DecisionBody, await request.body())
        await self._snapshot(run_id, tenant)  # a 404 that echoes the path's run id clipped
        if approve:
            await self.runtime.approve(run_id, body.call_id, tenant=tenant)
        else:
            await self.runtime.reject(run_id, body.call_id, body.reason, tenant=tenant)
        snapshot = await self._snapshot(run_id, tenant)
        return json_response(self._json(snapshot), 200)

    async def resume(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        run_id = request.path_params["run_id"]
        body: _ResumeBody = parse_body(_ResumeBody, await request.body())
        snapshot = await self._snapshot(run_id, tenant)
        agent = self._agent(snapshot.run.agent)
        work = self.runtime.resume(
            run_id,
            agent=agent,
            tenant=tenant,
            max_steps=body.max_steps,
            max_cost_usd=body.max_cost_usd,
            max_tokens=body.max_tokens,
        )
        if body.wait:
            await work
            return json_response(self._json(await self._snapshot(run_id, tenant)), 200)
        self._background(work)
        return json_response(self._json(snapshot), 202)

    async def events(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        run_id = request.path_params["run_id"]
        await self._snapshot(run_id, tenant)
        after = _event_id(
            request.headers.get("last-event-id") or request.query_params.get("after", "-1")
        )
        return StreamingResponse(
            self._follow(run_id, tenant, after),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def _follow(self, run_id: str, tenant: str, after: int) -> AsyncIterator[bytes]:
        """Stored events after `after`, then new ones as they land, until the run stops."""
        while True:
            events = await self.runtime.store.run_events(run_id, after=after, tenant=tenant)
            for seq, event in events:
                after = seq
                yield (
                    f"id: {seq}\nevent: {event.get('kind')}\n".encode()
                    + b"data: "
                    + orjson.dumps(event)
                    + b"\n\n"
                )
                if event.get("kind") in _TERMINAL:
                    return
            await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        if self._adopter is not None:
            self._adopter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._adopter
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
