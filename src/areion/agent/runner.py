"""Starting, streaming, resuming and approving agent runs: the runtime's agent API."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from areion.agent.agent import Agent
from areion.agent.events import Event, RunFailed, RunFinished, RunPaused
from areion.agent.leases import RunBusyError, RunLease
from areion.agent.loop import ModelHost, RunDriver, RunResult
from areion.cache.plans import Plan, offered_plan
from areion.errors import ConfigError, FencedError, RequestError
from areion.store.base import Store
from areion.store.records import RunRecord, RunSnapshot, ToolCallRecord
from areion.store.shared import Shared
from areion.types import Message

if TYPE_CHECKING:
    from areion.cache.plans import PlanCache
    from areion.telemetry.experiments import Experiments
    from areion.telemetry.tracing import Tracing

__all__ = ["AgentRunner", "RunBusyError", "RunExistsError", "RunNotFoundError", "new_run_id"]

log = logging.getLogger(__name__)

_LIMIT_KEYS = ("max_steps", "max_cost_usd", "max_tokens")


def new_run_id() -> str:
    """A new, unique run id."""
    return "run_" + uuid.uuid4().hex


class RunNotFoundError(RequestError):
    """No run of that id belongs to the caller."""

    status = 404
    code = "run_not_found"


class RunExistsError(RequestError):
    """The caller already has another run of that id (run ids are per tenant: another
    tenant's runs never conflict)."""

    status = 409
    code = "run_exists"


ContextLoader = Callable[[str, str, str], Awaitable[list[Message]]]
TurnRecorder = Callable[[str, str, Sequence[tuple[str, str]]], Awaitable[None]]


class AgentRunner:
    """Runs agents over a model host and a store; one per runtime.

    `plans`: the plan cache of agents with `plan_cache` set, or a factory called when
    the first such agent runs; by default a `PlanCache()` made then. Agents that do
    not opt in never make one (it loads an embedding model).
    """

    def __init__(
        self,
        host: ModelHost,
        store: Store,
        *,
        context: ContextLoader | None = None,
        remember: TurnRecorder | None = None,
        plans: PlanCache | Callable[[], PlanCache] | None = None,
        shared: Shared | None = None,
        lease_ttl_s: float = 15.0,
        tracing: Tracing | None = None,
        on_drive: Callable[[str, str, float], None] | None = None,
        experiments: Experiments | None = None,
    ) -> None:
        self._host = host
        self._tracing = tracing
        self._experiments = experiments
        self._on_drive = on_drive  # (agent, status, seconds) after each drive: metrics
        self._store = store
        self._shared = shared
        self.lease_ttl_s = lease_ttl_s
        """How long a driver's lease on a run lasts unless renewed (every third of it)."""
        self._context = context
        self._remember = remember
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tool_cache: dict[str, tuple[float, str]] = {}
        self._plans_factory = plans if callable(plans) else None
        self._plans: PlanCache | None = None if callable(plans) else plans

    @property
    def plans(self) -> PlanCache | None:
        """The plan cache, once made (an agent with `plan_cache` has run, or one was given)."""
        return self._plans

    def plan_cache(self) -> PlanCache:
        """The plan cache, made now if it was not yet."""
        if self._plans is None:
            if self._plans_factory is not None:
                self._plans = self._plans_factory()
            else:
                from areion.cache.plans import PlanCache

                self._plans = PlanCache()
        return self._plans

    def _lock(self, tenant: str, run_id: str) -> asyncio.Lock:
        lock = self._locks.get((tenant, run_id))
        if lock is None:
            lock = self._locks[tenant, run_id] = asyncio.Lock()
        return lock

    async def existing(
        self, run_id: str, *, agent: Agent, input: str, session: str | None, tenant: str
    ) -> RunSnapshot | None:
        """The caller's run of this id if a new run asked for with it is a retry of it
        (same agent, input and session), None if there is none; `RunExistsError` if
        the id names another run of the caller's."""
        snapshot = await self._store.load_run(run_id, tenant=tenant)
        if snapshot is None:
            return None
        run = snapshot.run
        if (run.agent, run.input, run.session) != (agent.name, input, session):
            raise RunExistsError(
                f"you already have a run '{run_id}' (agent '{run.agent}', status "
                f"{run.status}) with another agent, input or session; choose another "
                "run_id, or resume that run by its id",
                param="run_id",
            )
        return snapshot

    async def run(
        self,
        agent: Agent,
        input: str,
        *,
        session: str | None = None,
        run_id: str | None = None,
        tenant: str = "default",
        emit: Callable[[Event], None] | None = None,
        stream: bool = False,
    ) -> RunResult:
        """Run `agent` on `input` until it finishes, pauses or fails.

        Run ids are per tenant. Given the id of a run of the tenant's that already
        exists with the same agent, input and session (a retry after a crash), it
        resumes that run instead of starting another; the id of another of its runs
        raises `RunExistsError`.
        """
        if run_id is not None:
            found = await self.existing(
                run_id, agent=agent, input=input, session=session, tenant=tenant
            )
            if found is not None:
                return await self.resume(
                    run_id, agent=agent, tenant=tenant, emit=emit, stream=stream
                )
        run_id = run_id or new_run_id()
        messages: list[dict[str, Any]] = []
        if session is not None and self._context is not None:
            context = await self._context(tenant, session, input)
            messages.extend(message.to_openai() for message in context)
        if agent.plan_cache:
            # In the first messages, so a resume replays it instead of looking up again.
            plan = await self._offer_plan(agent, tenant, input)
            if plan is not None:
                messages.append(plan)
        messages.append({"role": "user", "content": input})
        now = time.time()
        run = RunRecord(
            run_id=run_id, tenant=tenant, agent=agent.name, session=session, input=input,
            message_count=len(messages), created=now, updated=now,
        )  # fmt: skip
        async with self._lock(tenant, run_id):
            try:
                await self._store.create_run(run, messages)
            except ValueError:  # made meanwhile, by a concurrent call or another replica
                raise RunExistsError(
                    f"you already have a run '{run_id}'; choose another run_id",
                    param="run_id",
                ) from None
            snapshot = RunSnapshot(run=run, messages=messages, tool_calls={})
            return await self._drive(agent, snapshot, emit, stream, resumed=False)

    async def resume(
        self,
        run_id: str,
        *,
        agent: Agent,
        tenant: str = "default",
        emit: Callable[[Event], None] | None = None,
        stream: bool = False,
        limits: dict[str, Any] | None = None,
    ) -> RunResult:
        """Continue a run from its last checkpoint, in this process or any other.

        `limits` (`max_steps`, `max_cost_usd`, `max_tokens`) raise the agent's limits
        for this run, so a run paused at a limit can go on.
        """
        limits = limits or {}
        unknown = set(limits) - set(_LIMIT_KEYS)
        if unknown:
            raise RequestError(f"unknown limits {sorted(unknown)}; use {list(_LIMIT_KEYS)}")
        async with self._lock(tenant, run_id):
            snapshot = await self._store.load_run(run_id, tenant=tenant)
            if snapshot is None:
                raise RunNotFoundError(f"no run '{run_id}'", param="run_id")
            if snapshot.run.agent != agent.name:
                raise RequestError(
                    f"run '{run_id}' belongs to agent '{snapshot.run.agent}', not '{agent.name}'"
                )
            if snapshot.run.status in ("finished", "failed"):
                return RunResult.of(snapshot.run, plan_hit=offered_plan(snapshot.messages))
            snapshot.run.limits.update({k: v for k, v in limits.items() if v is not None})
            return await self._drive(agent, snapshot, emit, stream, resumed=True)

    async def _drive(
        self,
        agent: Agent,
        snapshot: RunSnapshot,
        emit: Callable[[Event], None] | None,
        stream: bool,
        *,
        resumed: bool,
    ) -> RunResult:
        run = snapshot.run
        variant = ""
        if self._experiments:
            # Found again from the run on every drive (a resume, another replica's
            # takeover): the same unit gets the same variant.
            assignment = self._experiments.for_run(
                agent.name, run_id=run.run_id, session=run.session, user=None
            )
            if assignment is not None:
                agent = assignment.agent(agent)
                variant = assignment.label
        lease: RunLease | None = None
        if self._shared is not None:
            lease = RunLease(self._shared, f"run:{run.tenant}:{run.run_id}", ttl_s=self.lease_ttl_s)
            if not await lease.take():
                raise RunBusyError(
                    f"run '{run.run_id}' is in progress (another driver holds it, on this "
                    "replica or another); follow it with GET /v1/runs/{id}/events",
                    param="run_id",
                )
        driver = RunDriver(
            host=self._host,
            store=self._store,
            agent=agent,
            snapshot=snapshot,
            emit=emit,
            stream=stream,
            tool_cache=self._tool_cache,
            on_finish=self._finished,
            fence=0 if lease is None else lease.fence,
            tracing=self._tracing,
            variant=variant,
        )
        started = time.perf_counter()
        try:
            if self._tracing is None:
                result = await driver.drive(resumed=resumed)
            else:
                result = await self._traced(driver, resumed=resumed)
        except FencedError:
            # Another replica took the run over while this driver stalled: it goes on there.
            log.warning("run %s of %s was taken over by another replica", run.run_id, run.tenant)
            latest = await self._store.load_run(run.run_id, tenant=run.tenant)
            return RunResult.of((latest or snapshot).run)
        finally:
            if lease is not None:
                await lease.release()
        if self._on_drive is not None:
            self._on_drive(agent.name, result.status, time.perf_counter() - started)
        if result.status == "finished" and agent.plan_cache:
            await self._keep_plan(agent, snapshot)
        return result

    async def _traced(self, driver: RunDriver, *, resumed: bool) -> RunResult:
        """`driver.drive()` inside the run's `invoke_agent` span."""
        assert self._tracing is not None
        run, agent = driver.run, driver.agent
        with self._tracing.invoke_agent(
            agent=agent.name, model=agent.model, run_id=run.run_id, tenant=run.tenant,
            session=run.session, resumed=resumed, variant=driver.variant,
        ) as span:  # fmt: skip
            result = await driver.drive(resumed=resumed)
            self._tracing.agent_done(
                span, status=result.status, steps=result.steps, cost_usd=run.cost_usd,
                input_tokens=run.prompt_tokens, output_tokens=run.completion_tokens,
            )  # fmt: skip
            return result

    async def _offer_plan(self, agent: Agent, tenant: str, task: str) -> dict[str, Any] | None:
        """The system message offering a cached plan for `task`, if one is found."""
        plans = self.plan_cache()
        try:
            match = await plans.lookup(
                tenant, agent.name, task, tools=[item.name for item in agent.tools]
            )
        except ConfigError:
            raise  # the embedding model is missing: the message says how to install it
        except Exception:  # a cache must never fail the run it could only speed up
            log.exception(
                "plan cache: lookup failed for agent %s; running without a plan", agent.name
            )
            return None
        return None if match is None else match.message()

    async def _keep_plan(self, agent: Agent, snapshot: RunSnapshot) -> None:
        run = snapshot.run
        plan = Plan.of_run(run.input, snapshot.messages, run.output or "")
        if plan is None:
            return
        offered = offered_plan(snapshot.messages)
        try:
            await self.plan_cache().remember(
                run.tenant, agent.name, run.input, plan, ttl_s=agent.plan_ttl_s,
                source=None if offered is None else offered.entry,
            )  # fmt: skip
        except Exception:  # the run is finished either way
            log.exception("plan cache: keeping the plan of run %s failed", run.run_id)

    async def _finished(self, run: RunRecord) -> None:
        if run.session is not None and self._remember is not None and run.output is not None:
            await self._remember(
                run.tenant, run.session, [("user", run.input), ("assistant", run.output)]
            )

    async def stream(
        self,
        agent: Agent,
        input: str,
        *,
        session: str | None = None,
        run_id: str | None = None,
        tenant: str = "default",
    ) -> AsyncIterator[Event]:
        """The run's events as they happen; the last one is finished, paused or failed."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        task = asyncio.create_task(
            self.run(agent, input, session=session, run_id=run_id, tenant=tenant,
                     emit=queue.put_nowait, stream=True)
        )  # fmt: skip
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield event
                if isinstance(event, RunFinished | RunPaused | RunFailed):
                    break
            await task  # surfaces an unexpected error of the run itself
        finally:
            if not task.done():
                task.cancel()

    async def _pending(self, run_id: str, call_id: str, tenant: str) -> ToolCallRecord:
        snapshot = await self._store.load_run(run_id, tenant=tenant)
        if snapshot is None:
            raise RunNotFoundError(f"no run '{run_id}'", param="run_id")
        record = snapshot.tool_calls.get(call_id)
        if record is None or record.status != "pending_approval":
            waiting = [c for c, r in snapshot.tool_calls.items() if r.status == "pending_approval"]
            raise RequestError(
                f"run '{run_id}' has no call '{call_id}' waiting for approval; waiting: {waiting}",
                param="call_id",
            )
        return record

    async def approve(self, run_id: str, call_id: str, *, tenant: str = "default") -> None:
        """Let a paused call run when the run resumes."""
        record = await self._pending(run_id, call_id, tenant)
        record.status = "approved"
        record.updated = time.time()
        await self._store.record_tool_call(record)

    async def reject(
        self, run_id: str, call_id: str, reason: str, *, tenant: str = "default"
    ) -> None:
        """Refuse a paused call; the model reads the reason when the run resumes."""
        record = await self._pending(run_id, call_id, tenant)
        record.status = "rejected"
        record.reason = reason
        record.updated = time.time()
        await self._store.record_tool_call(record)

    async def get(self, run_id: str, *, tenant: str = "default") -> RunSnapshot | None:
        """A run's state, if it belongs to `tenant`."""
        return await self._store.load_run(run_id, tenant=tenant)
