"""The agent loop: one run, step by step, checkpointed as it goes.

A step is one model call and the tool calls it asks for. The assistant message is
checkpointed before any tool runs, so after a crash the run resumes with exactly
the calls the model made (never a fresh set with new ids); a side-effecting call
is recorded as `started` before it runs and `done` with its result after, so a
completed call is never run again, and one interrupted mid-way is re-run with the
same idempotency key for the world to deduplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from areion.agent.agent import Agent
from areion.agent.events import (
    Event,
    ModelDelta,
    RunFailed,
    RunFinished,
    RunPaused,
    RunStarted,
    StepDone,
    ToolCallEvent,
    ToolResultEvent,
    event_to_dict,
)
from areion.agent.tools import Tool, ToolArgumentsError, ToolContext, ToolResult, render_result
from areion.cache.plans import PlanHit, offered_plan
from areion.errors import (
    AreionError,
    BackendUnavailableError,
    BudgetExceededError,
    FencedError,
)
from areion.pricing import round_usd
from areion.store.base import Store
from areion.store.counters import Counters, Take
from areion.store.records import Checkpoint, RunRecord, RunSnapshot, ToolCallRecord
from areion.streaming import ChatStream, MessageAssembler
from areion.types import ChatRequest, ChatResponse, LedgerEntry, Message, ToolCall, Usage

if TYPE_CHECKING:
    from areion.telemetry.tracing import Tracing

__all__ = ["ModelHost", "RunDriver", "RunResult"]

# The user message that asks for a corrected answer starts with this, so a resumed
# run can tell that its one repair attempt is already spent.
REPAIR_PREFIX = "[areion: output repair]"


class ModelHost(Protocol):
    """What the loop needs from the runtime."""

    async def chat(
        self,
        request: ChatRequest,
        *,
        tenant: str = "default",
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        variant: str | None = None,
    ) -> ChatResponse: ...

    async def chat_stream(
        self,
        request: ChatRequest,
        *,
        tenant: str = "default",
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        variant: str | None = None,
    ) -> ChatStream: ...

    def cognitive_error(self, agent: str, kind: str) -> None: ...

    async def book_tool(self, entry: LedgerEntry) -> None:
        """Book a tool call's own cost in the ledger (committed when this returns)."""
        ...

    @property
    def counters(self) -> Counters:
        """The atomic counters every replica shares (tool cooldowns, the loop guard)."""
        ...


@dataclass(slots=True, kw_only=True)
class RunResult:
    """Where a run ended up."""

    run_id: str
    """The run's id: pass it to `resume`, `approve` and `reject`."""
    status: str
    """`finished`, `paused` or `failed`."""
    output: str | None
    """The final answer, when finished."""
    steps: int
    """Model calls made."""
    cost_usd: float
    """Spend of the whole run."""
    usage: Usage
    """Tokens of the whole run."""
    pause_reason: str | None = None
    """Why it paused."""
    error: str | None = None
    """Why it failed."""
    pending_calls: list[str] = field(default_factory=list)
    """Tool calls waiting for approval."""
    plan_hit: PlanHit | None = None
    """The plan of a similar earlier task this run was offered (`Agent(plan_cache=...)`)."""

    @classmethod
    def of(
        cls, run: RunRecord, pending: Sequence[str] = (), *, plan_hit: PlanHit | None = None
    ) -> RunResult:
        return cls(
            run_id=run.run_id,
            status=run.status,
            output=run.output,
            steps=run.steps,
            cost_usd=round_usd(run.cost_usd),  # the run's row keeps the exact sum
            usage=Usage(prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens),
            pause_reason=run.pause_reason,
            error=run.error,
            pending_calls=list(pending),
            plan_hit=plan_hit,
        )


class _Failure(Exception):
    """Ends the run as failed, with a message for the user."""


@dataclass(slots=True)
class _Checked:
    tool: Tool
    arguments: dict[str, Any]


@dataclass(slots=True)
class _Outcome:
    message: dict[str, Any]
    event: ToolResultEvent
    record: ToolCallRecord | None = None


def _signature(name: str, arguments: str) -> str:
    try:
        canonical = orjson.dumps(orjson.loads(arguments or "{}"), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = arguments.encode()
    return name + ":" + canonical.decode()


class RunDriver:
    """Drives one run from its snapshot until it finishes, pauses or fails."""

    def __init__(
        self,
        *,
        host: ModelHost,
        store: Store,
        agent: Agent,
        snapshot: RunSnapshot,
        emit: Callable[[Event], None] | None = None,
        stream: bool = False,
        tool_cache: dict[str, tuple[float, str]] | None = None,
        on_finish: Callable[[RunRecord], Any] | None = None,
        fence: int = 0,
        tracing: Tracing | None = None,
        variant: str = "",
    ) -> None:
        self.host = host
        self.tracing = tracing
        self.variant = variant
        """The experiment variant (`experiment:variant`) the run is served by, if any:
        booked on every model call and tool cost of the run."""
        """Traces (an `execute_tool` span per tool call), when on."""
        self.fence = fence
        """The driver's fencing token (its lease's): its checkpoints carry it."""
        self.store = store
        self.agent = agent
        self.run = snapshot.run
        self.transcript = snapshot.messages
        self.records = snapshot.tool_calls
        self._emit = emit
        self._stream = stream
        self._events: list[dict[str, Any]] = []
        self._tool_cache = tool_cache if tool_cache is not None else {}
        self._on_finish = on_finish
        self._last_usage = Usage()
        self._last_cost = 0.0
        self._schemas = [item.schema() for item in agent.tools] or None
        # The prompt as typed messages, kept in step with the transcript so a step
        # converts only what it added, not the whole history.
        self._prompt = (
            [Message(role="system", content=agent.instructions)] if (agent.instructions) else []
        )
        self._prompt.extend(Message.from_openai(m) for m in self.transcript)
        # Read from the transcript, so a resumed run reports the plan it was offered.
        self.plan_hit = offered_plan(self.transcript)

    # -- events and checkpoints ---------------------------------------------------

    def emit(self, event: Event) -> None:
        if not isinstance(event, ModelDelta):
            self._events.append(event_to_dict(event))
        if self._emit is not None:
            self._emit(event)

    async def checkpoint(
        self, messages: list[dict[str, Any]], records: Sequence[ToolCallRecord] = ()
    ) -> None:
        self.transcript.extend(messages)
        self._prompt.extend(Message.from_openai(m) for m in messages)
        self.run.message_count = len(self.transcript)
        self.run.updated = time.time()
        events, self._events = self._events, []
        await self.store.checkpoint(
            Checkpoint(
                run=self.run,
                messages=messages,
                events=events,
                tool_calls=list(records),
                fence=self.fence,
            )
        )

    # -- the loop -----------------------------------------------------------------

    async def drive(self, *, resumed: bool) -> RunResult:
        self.run.status = "running"
        self.run.pause_reason = None
        self.emit(RunStarted(run_id=self.run.run_id, agent=self.agent.name, resumed=resumed))
        try:
            while True:
                pending = self._unanswered_calls()
                if pending:
                    waiting = await self._answer(pending)
                    if waiting:
                        return await self._pause(
                            "approval needed for "
                            + ", ".join(f"{c.name} ({c.id})" for c in waiting),
                            [c.id for c in waiting],
                        )
                    continue
                limit = self._limit_reached() or await self._hourly_guard()
                if limit is not None:
                    return await self._pause(limit, [])
                final = await self._model_turn()
                if final is not None:
                    return await self._finish(final)
        except _Failure as failure:
            return await self._fail(str(failure))
        except (FencedError, BackendUnavailableError):
            # Another replica drives the run now, or the store is down: stop here and
            # write nothing (the run stays `running`; a driver resumes it later).
            raise
        except BudgetExceededError as error:
            # The tenant's budget is out, not the run's fault: wait for approval (resume
            # once the budget renews or is raised), do not fail.
            return await self._pause(f"tenant budget exhausted: {error.message}", [])
        except AreionError as error:
            return await self._fail(f"{type(error).__name__}: {error.message}")

    def _unanswered_calls(self) -> list[ToolCall]:
        """Tool calls of the last assistant message that have no result message yet."""
        answered: set[str] = set()
        for message in reversed(self.transcript):
            role = message.get("role")
            if role == "tool":
                answered.add(str(message.get("tool_call_id")))
            elif role == "assistant":
                calls = message.get("tool_calls") or []
                return [
                    ToolCall(
                        id=str(c["id"]),
                        name=str(c["function"]["name"]),
                        arguments=str(c["function"].get("arguments") or ""),
                    )
                    for c in calls
                    if str(c["id"]) not in answered
                ]
            else:
                return []
        return []

    def _limit_reached(self) -> str | None:
        limits = self.run.limits
        max_steps = int(limits.get("max_steps", self.agent.max_steps))
        if self.run.steps >= max_steps:
            return (
                f"step limit reached ({max_steps} model calls); resume with a higher "
                "max_steps to continue"
            )
        max_cost = limits.get("max_cost_usd", self.agent.max_cost_usd)
        if max_cost is not None and self.run.cost_usd >= float(max_cost):
            return (
                f"cost limit reached (${self.run.cost_usd:.6f} of ${float(max_cost):.6f}); "
                "resume with a higher max_cost_usd to continue"
            )
        max_tokens = limits.get("max_tokens", self.agent.max_tokens)
        used = self.run.prompt_tokens + self.run.completion_tokens
        if max_tokens is not None and used >= int(max_tokens):
            return (
                f"token limit reached ({used} of {int(max_tokens)}); resume with a higher "
                "max_tokens to continue"
            )
        return None

    async def _model_turn(self) -> str | None:
        """One model call; returns the final answer if the model gave one."""
        step = self.run.steps + 1
        request = ChatRequest(
            model=self.agent.model,
            messages=list(self._prompt),
            tools=self._schemas,
            temperature=self.agent.temperature,
        )
        request_id = f"{self.run.run_id}-{step}"
        if self._stream:
            message, usage, cost = await self._streamed(request, request_id, step)
        else:
            response = await self.host.chat(
                request,
                tenant=self.run.tenant,
                request_id=request_id,
                run_id=self.run.run_id,
                agent=self.agent.name,
                session=self.run.session,
                variant=self.variant or None,
            )
            message = response.message.to_openai()
            usage = response.usage or Usage()
            cost = response.cost_usd or 0.0
        self.run.steps = step
        self.run.prompt_tokens += usage.prompt_tokens
        self.run.completion_tokens += usage.completion_tokens
        self.run.cost_usd += cost
        self._last_usage, self._last_cost = usage, cost
        calls = message.get("tool_calls") or []
        if calls:
            for call in calls:
                self.emit(
                    ToolCallEvent(
                        run_id=self.run.run_id,
                        step=step,
                        call_id=str(call["id"]),
                        name=str(call["function"]["name"]),
                        arguments=str(call["function"].get("arguments") or ""),
                    )
                )
            # Durable before any tool runs: a resume replays exactly these calls.
            await self.checkpoint([message])
            return None
        text = message.get("content") or ""
        if not isinstance(text, str):
            text = Message(role="assistant", content=text).text()
        problem = self._output_problem(text)
        if problem is None:
            self._step_done(step)
            await self.checkpoint([message])
            return text
        self.host.cognitive_error(self.agent.name, "unparsable_output")
        if any(
            m.get("role") == "user" and str(m.get("content", "")).startswith(REPAIR_PREFIX)
            for m in self.transcript
        ):
            raise _Failure(f"the model's answer is unusable after one repair attempt: {problem}")
        repair = {
            "role": "user",
            "content": f"{REPAIR_PREFIX} Your last answer could not be used: {problem}. "
            "Answer again, with only the corrected answer.",
        }
        self._step_done(step)
        await self.checkpoint([message, repair])
        return None

    async def _streamed(
        self, request: ChatRequest, request_id: str, step: int
    ) -> tuple[dict[str, Any], Usage, float]:
        stream = await self.host.chat_stream(
            request,
            tenant=self.run.tenant,
            request_id=request_id,
            run_id=self.run.run_id,
            agent=self.agent.name,
            session=self.run.session,
            variant=self.variant or None,
        )
        assembler = MessageAssembler()
        async for chunk in stream:
            assembler.add(chunk)
            if chunk.index == 0 and chunk.content:
                self.emit(ModelDelta(run_id=self.run.run_id, step=step, content=chunk.content))
        message = assembler.message()
        return message, stream.usage or Usage(), stream.cost_usd or 0.0

    def _output_problem(self, text: str) -> str | None:
        if not text.strip():
            return "the answer was empty"
        schema = self.agent.output_schema
        if schema is None:
            return None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            return f"it is not valid JSON ({error})"
        missing = [
            key
            for key in schema.get("required", ())
            if not isinstance(value, dict) or key not in value
        ]
        if schema.get("type") == "object" and not isinstance(value, dict):
            return "it must be a JSON object"
        if missing:
            return f"it lacks the required keys {missing}"
        return None

    def _step_done(self, step: int) -> None:
        self.emit(
            StepDone(
                run_id=self.run.run_id,
                step=step,
                usage=self._last_usage,
                cost_usd=round_usd(self._last_cost),
                total_cost_usd=round_usd(self.run.cost_usd),
            )
        )

    # -- tools ----------------------------------------------------------------------

    def _repeats(self, call: ToolCall) -> int:
        wanted = _signature(call.name, call.arguments)
        count = 0
        for message in self.transcript:
            for other in message.get("tool_calls") or ():
                if other["id"] == call.id:
                    continue
                function = other["function"]
                if _signature(function["name"], function.get("arguments") or "") == wanted:
                    count += 1
        return count

    async def _answer(self, calls: list[ToolCall]) -> list[ToolCall]:
        """Run or refuse each call; returns the calls still waiting for approval."""
        step = self.run.steps
        outcomes: list[_Outcome] = []
        runnable: list[tuple[ToolCall, Tool, dict[str, Any]]] = []
        waiting: list[ToolCall] = []
        new_records: list[ToolCallRecord] = []
        for call in calls:
            checked = self._check(call)
            if isinstance(checked, tuple):
                kind, text = checked
                outcomes.append(self._outcome(call, step, text, error=kind))
                continue
            item, arguments = checked.tool, checked.arguments
            record = self.records.get(call.id)
            if item.requires_approval:
                if record is None or record.status == "pending_approval":
                    if record is None:
                        record = self._record(call, "pending_approval")
                        new_records.append(record)
                    waiting.append(call)
                    continue
                if record.status == "rejected":
                    text = (
                        f"error: a human rejected this call: {record.reason or 'no reason given'}"
                    )
                    outcomes.append(self._outcome(call, step, text, error="rejected"))
                    continue
            if record is not None and record.status == "done" and record.result is not None:
                # Completed before a crash or pause: its result stands, it never runs twice.
                outcomes.append(self._outcome(call, step, record.result))
                continue
            runnable.append((call, item, arguments))
        if runnable:
            semaphore = asyncio.Semaphore(self.agent.max_parallel_tools)

            async def run_one(entry: tuple[ToolCall, Tool, dict[str, Any]]) -> _Outcome:
                async with semaphore:
                    if self.tracing is None:
                        return await self._invoke(*entry, step=step)
                    return await self._traced(*entry, step=step)

            outcomes.extend(await asyncio.gather(*(run_one(entry) for entry in runnable)))
        for outcome in outcomes:
            self.emit(outcome.event)
            if outcome.record is not None:
                new_records.append(outcome.record)
        order = {call.id: index for index, call in enumerate(calls)}
        outcomes.sort(key=lambda o: order[str(o.message["tool_call_id"])])
        if not waiting:
            self._step_done(step)
        await self.checkpoint([o.message for o in outcomes], new_records)
        for record in new_records:
            self.records[record.call_id] = record
        return waiting

    def _check(self, call: ToolCall) -> _Checked | tuple[str, str]:
        """The tool and arguments of a sound call, or its cognitive error as
        (kind, message for the model)."""
        item = self.agent.tool(call.name)
        if item is None:
            self.host.cognitive_error(self.agent.name, "unknown_tool")
            names = ", ".join(t.name for t in self.agent.tools) or "none"
            return "unknown_tool", f"error: there is no tool '{call.name}'; available: {names}"
        try:
            arguments = item.validate(call.arguments)
        except ToolArgumentsError as error:
            self.host.cognitive_error(self.agent.name, "invalid_arguments")
            return "invalid_arguments", (
                f"error: invalid arguments for {call.name}: {error}. "
                f"The parameters are: {orjson.dumps(item.parameters).decode()}"
            )
        repeats = self._repeats(call)
        if repeats >= self.agent.max_repeats:
            self.host.cognitive_error(self.agent.name, "repeated_call")
            if repeats >= self.agent.max_repeats + 2:
                raise _Failure(
                    f"the model is stuck in a loop: it called {call.name} with the same "
                    f"arguments {repeats + 1} times"
                )
            return "repeated_call", (
                f"error: you already called {call.name} with these arguments {repeats} times "
                "and got its result above; use that result or try something different"
            )
        return _Checked(tool=item, arguments=arguments)

    def _idempotency_key(self, call: ToolCall) -> str:
        """Stable across retries and resumes: the stored one if the call has a record (a
        key made by an earlier version keeps its shape). The tenant is in it because run
        ids are unique only within a tenant, and the world outside is shared."""
        record = self.records.get(call.id)
        if record is not None and record.idempotency_key:
            return record.idempotency_key
        return f"{self.run.tenant}:{self.run.run_id}:{call.id}"

    def _record(self, call: ToolCall, status: Any, result: str | None = None) -> ToolCallRecord:
        return ToolCallRecord(
            tenant=self.run.tenant,
            run_id=self.run.run_id,
            call_id=call.id,
            name=call.name,
            arguments=call.arguments,
            status=status,
            idempotency_key=self._idempotency_key(call),
            result=result,
            updated=time.time(),
        )

    def _outcome(
        self,
        call: ToolCall,
        step: int,
        text: str,
        *,
        error: str | None = None,
        cached: bool = False,
        record: ToolCallRecord | None = None,
    ) -> _Outcome:
        return _Outcome(
            message={"role": "tool", "tool_call_id": call.id, "content": text},
            event=ToolResultEvent(
                run_id=self.run.run_id,
                step=step,
                call_id=call.id,
                name=call.name,
                result=text,
                error=error,
                cached=cached,
            ),
            record=record,
        )

    async def _invoke(
        self, call: ToolCall, item: Tool, arguments: dict[str, Any], *, step: int
    ) -> _Outcome:
        cache_key = None
        if item.cache_ttl is not None:
            cache_key = self._cache_key(item, arguments)
            hit = await self._cached(cache_key)
            if hit is not None:
                return self._outcome(call, step, hit, cached=True)
        if item.cooldown_s is not None:
            wait = await self._cooldown(item, arguments)
            if wait > 0:
                text = (
                    f"error: {call.name} was called with these arguments less than "
                    f"{item.cooldown_s:g}s ago; wait {wait:.0f}s before calling it again"
                    " with them, or go on without it"
                )
                return self._outcome(call, step, text, error="cooldown")
        context = ToolContext(
            run_id=self.run.run_id,
            call_id=call.id,
            tenant=self.run.tenant,
            idempotency_key=self._idempotency_key(call),
        )
        if not item.idempotent:
            # Written before the side effect: after a crash, the resume knows it may have
            # happened and re-runs it with the same idempotency key.
            await self.store.record_tool_call(self._record(call, "started"))
        started = time.perf_counter()
        # A call that ran costs what its tool declares, whether or not it succeeded
        # (a paid API bills a failed request too); a `ToolResult` says its own cost.
        spent = item.cost_usd or 0.0
        try:
            value = await item.invoke(arguments, context)
            if isinstance(value, ToolResult):
                spent = value.cost_usd
            text = render_result(value)
            error = None
        except TimeoutError:
            text, error = f"error: {call.name} timed out after {item.timeout}s", "timeout"
        except Exception as failure:  # a tool's failure is the model's to handle
            text, error = (
                f"error: {call.name} failed: {type(failure).__name__}: {failure}",
                ("tool_error"),
            )
        if spent:
            await self._book_tool(call, spent, time.perf_counter() - started)
        record = None
        if not item.idempotent:
            record = self._record(call, "done", text)
            await self.store.record_tool_call(record)
        elif cache_key is not None and error is None:
            await self._remember(cache_key, text, item.cache_ttl or 0.0)
        return self._outcome(call, step, text, error=error, record=record)

    async def _traced(
        self, call: ToolCall, item: Tool, arguments: dict[str, Any], *, step: int
    ) -> _Outcome:
        """`_invoke` inside the call's `execute_tool` span (each call of a parallel batch
        runs in its own task, so each span is a child of the run's)."""
        assert self.tracing is not None
        with self.tracing.execute_tool(
            name=call.name, call_id=call.id, arguments=call.arguments
        ) as span:
            outcome = await self._invoke(call, item, arguments, step=step)
            event = outcome.event
            self.tracing.tool_done(
                span, result=event.result, error=event.error, cached=event.cached
            )
            return outcome

    async def _book_tool(self, call: ToolCall, amount: float, seconds: float) -> None:
        """Book a tool call's cost against the run and its agent: a ledger row, and the
        run's cost (checkpointed with the step's tool results)."""
        self.run.cost_usd += amount
        await self.host.book_tool(
            LedgerEntry(
                request_id=f"{self.run.run_id}:{call.id}",
                tenant=self.run.tenant,
                model=f"tool:{call.name}",
                deployment="tool",
                upstream_model=call.name,
                prompt_tokens=0,
                completion_tokens=0,
                cached_tokens=0,
                cost_usd=amount,
                estimated=False,
                latency_s=seconds,
                created=time.time(),
                kind="tool",
                run_id=self.run.run_id,
                agent=self.agent.name,
                session=self.run.session or "",
                variant=self.variant,
            )
        )

    async def _cooldown(self, item: Tool, arguments: dict[str, Any]) -> float:
        """Seconds until this tenant may call `item` with `arguments` again; 0: now (and
        the call is counted). One atomic take from a one-token bucket in the store."""
        assert item.cooldown_s is not None
        key = "cooldown:" + self._cache_key(item, arguments).removeprefix("tool:")
        take = Take(key=key, amount=1.0, rate=1.0 / item.cooldown_s, burst=1.0)
        ok, states = await self.host.counters.take([take], time.time())
        return 0.0 if ok else max(states[0].retry_after, 0.001)

    async def _hourly_guard(self) -> str | None:
        """The loop guard: a pause reason once this agent made `max_steps_per_hour` model
        calls for this tenant within the hour (over all its runs)."""
        limit = self.agent.max_steps_per_hour
        if limit is None:
            return None
        key = f"agent-steps:{self.run.tenant}:{self.agent.name}"
        take = Take(key=key, amount=1.0, rate=limit / 3600.0, burst=float(limit))
        ok, states = await self.host.counters.take([take], time.time())
        if ok:
            return None
        return (
            f"loop guard: agent {self.agent.name} made {limit} model calls in the last hour "
            f"for this tenant; resume in {states[0].retry_after:.0f}s or raise "
            "max_steps_per_hour"
        )

    def _cache_key(self, item: Tool, arguments: dict[str, Any]) -> str:
        canonical = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS, default=str)
        digest = hashlib.sha256(
            self.run.tenant.encode() + b"\0" + item.name.encode() + b"\0" + canonical
        ).hexdigest()
        return "tool:" + digest

    async def _cached(self, key: str) -> str | None:
        now = time.time()
        local = self._tool_cache.get(key)
        if local is not None and local[0] > now:
            return local[1]
        value = await self.store.cache_get(key)
        return None if value is None else value.decode()

    async def _remember(self, key: str, text: str, ttl: float) -> None:
        self._tool_cache[key] = (time.time() + ttl, text)
        await self.store.cache_put(key, text.encode(), ttl=ttl)

    # -- endings --------------------------------------------------------------------

    async def _pause(self, reason: str, pending: list[str]) -> RunResult:
        self.run.status = "paused"
        self.run.pause_reason = reason
        self.emit(RunPaused(run_id=self.run.run_id, reason=reason, pending_calls=pending))
        await self.checkpoint([])
        return RunResult.of(self.run, pending, plan_hit=self.plan_hit)

    async def _finish(self, output: str) -> RunResult:
        self.run.status = "finished"
        self.run.output = output
        self.emit(RunFinished(run_id=self.run.run_id, output=output))
        await self.checkpoint([])
        if self._on_finish is not None:
            await self._on_finish(self.run)
        return RunResult.of(self.run, plan_hit=self.plan_hit)

    async def _fail(self, error: str) -> RunResult:
        self.run.status = "failed"
        self.run.error = error
        self.emit(RunFailed(run_id=self.run.run_id, error=error))
        await self.checkpoint([])
        return RunResult.of(self.run, plan_hit=self.plan_hit)
