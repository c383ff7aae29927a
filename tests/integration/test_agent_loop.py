"""The agent loop over real loopback HTTP, with a scripted model and real SQLite."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areion import Agent, Runtime, ToolContext, tool
from areion.agent import (
    ModelDelta,
    RunFinished,
    RunStarted,
    StepDone,
    ToolCallEvent,
    ToolResultEvent,
)
from areion.config import parse_config
from tests.agent_upstream import AgentUpstream, Policy, call, model_turns, say, tool_results
from tests.support import serve_app


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Any]:
    servers: list[Any] = []

    def make(policy: Policy, **extra: Any) -> tuple[Runtime, AgentUpstream]:
        upstream = AgentUpstream(policy)
        server = serve_app(upstream.app)
        url = server.__enter__()
        servers.append(server)
        config = parse_config(
            {
                "models": [
                    {
                        "name": "fast",
                        "provider": "openai",
                        "model": "m",
                        "base_url": url + "/v1",
                        "price": {"input": 1.0, "output": 2.0},
                    }
                ],
                "store": f"sqlite:///{tmp_path / 'areion.db'}",
                **extra,
            }
        )
        return Runtime(config), upstream

    yield make
    for server in servers:
        server.__exit__(None, None, None)


@tool
async def slow_lookup(key: str) -> str:
    """Look a key up slowly."""
    await asyncio.sleep(0.5)
    return f"value-of-{key}"


# Each of the two tools waits for the other to have started: they can both finish
# only if they run at the same time (run one after the other, the first times out).
MEETING = threading.Barrier(2)


@tool
async def meeting_lookup(key: str) -> str:
    """Look a key up, alongside the other lookup."""
    await asyncio.to_thread(MEETING.wait, 10)
    return f"value-of-{key}"


@tool
def meeting_sync_lookup(key: str) -> str:
    """The same, as a blocking function (runs in a thread)."""
    MEETING.wait(10)
    return f"sync-{key}"


def two_lookups_then_answer(body: dict[str, Any]) -> dict[str, Any]:
    if model_turns(body) == 0:
        return call(("meeting_lookup", {"key": "a"}), ("meeting_sync_lookup", {"key": "b"}))
    return say("answer: " + " & ".join(tool_results(body)))


async def test_parallel_tools_and_a_final_answer(make_runtime: Any) -> None:
    rt, upstream = make_runtime(two_lookups_then_answer)
    tools = [meeting_lookup, meeting_sync_lookup]
    agent = Agent(name="a", model="fast", instructions="Be brief.", tools=tools)
    MEETING.reset()
    async with rt:
        result = await rt.run(agent, "look up a and b")
    assert result.status == "finished"
    assert result.output == "answer: value-of-a & sync-b"  # both met: they ran in parallel
    assert result.steps == 2
    assert result.usage.prompt_tokens == 200 and result.usage.completion_tokens == 40
    assert result.cost_usd == pytest.approx(2 * (100 * 1.0 + 20 * 2.0) / 1e6)
    first = upstream.requests[0]
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    assert {t["function"]["name"] for t in first["tools"]} == {
        "meeting_lookup",
        "meeting_sync_lookup",
    }


async def test_tool_errors_go_back_to_the_model(make_runtime: Any) -> None:
    @tool
    def broken(x: int) -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        if model_turns(body) == 0:
            return call(("broken", {"x": 1}))
        return say("saw: " + tool_results(body)[0])

    rt, _ = make_runtime(policy)
    async with rt:
        result = await rt.run(Agent(name="a", model="fast", tools=[broken]), "go")
    assert result.status == "finished"
    assert result.output == "saw: error: broken failed: RuntimeError: disk on fire"


async def test_tool_timeout_is_reported_to_the_model(make_runtime: Any) -> None:
    @tool(timeout=0.1)
    async def stuck() -> str:
        """Never returns in time."""
        await asyncio.sleep(5)
        return "late"

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        return call(("stuck", {})) if model_turns(body) == 0 else say(tool_results(body)[0])

    rt, _ = make_runtime(policy)
    async with rt:
        result = await rt.run(Agent(name="a", model="fast", tools=[stuck]), "go")
    assert result.output == "error: stuck timed out after 0.1s"


async def test_step_limit_pauses_and_a_raised_limit_resumes(make_runtime: Any) -> None:
    def policy(body: dict[str, Any]) -> dict[str, Any]:
        turns = model_turns(body)
        return call(("slow_lookup", {"key": str(turns)})) if turns < 3 else say("done")

    rt, upstream = make_runtime(policy)
    agent = Agent(name="a", model="fast", tools=[slow_lookup], max_steps=2)
    async with rt:
        paused = await rt.run(agent, "go")
        assert paused.status == "paused" and "step limit" in (paused.pause_reason or "")
        assert paused.steps == 2 and len(upstream.requests) == 2
        again = await rt.resume(paused.run_id, agent=agent)
        assert again.status == "paused" and len(upstream.requests) == 2  # checked before calling
        done = await rt.resume(paused.run_id, agent=agent, max_steps=10)
    assert done.status == "finished" and done.output == "done" and done.steps == 4


async def test_cost_limit_is_checked_before_each_call(make_runtime: Any) -> None:
    def policy(body: dict[str, Any]) -> dict[str, Any]:
        return call(("slow_lookup", {"key": str(model_turns(body))}))

    rt, upstream = make_runtime(policy)
    # each call costs 0.00014 USD: the limit is reached after two calls
    agent = Agent(name="a", model="fast", tools=[slow_lookup], max_cost_usd=0.0002)
    async with rt:
        result = await rt.run(agent, "go")
    assert result.status == "paused" and "cost limit" in (result.pause_reason or "")
    assert len(upstream.requests) == 2
    assert result.cost_usd == pytest.approx(0.00028)


async def test_approval_pauses_then_runs_exactly_once(make_runtime: Any) -> None:
    executed: list[tuple[str, str]] = []

    @tool(idempotent=False, requires_approval=True)
    def refund(order_id: str, amount: float, context: ToolContext) -> str:
        """Refund an order."""
        executed.append((order_id, context.idempotency_key))
        return f"refunded {amount} on {order_id}"

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        if model_turns(body) == 0:
            return call(("refund", {"order_id": "o-1", "amount": 12.5}))
        return say("result: " + tool_results(body)[0])

    rt, _ = make_runtime(policy)
    agent = Agent(name="support", model="fast", tools=[refund])
    async with rt:
        paused = await rt.run(agent, "refund o-1")
        assert paused.status == "paused" and len(paused.pending_calls) == 1
        assert "approval needed for refund" in (paused.pause_reason or "")
        assert executed == []
        still = await rt.resume(paused.run_id, agent=agent)  # nobody approved yet
        assert still.status == "paused" and executed == []
        await rt.approve(paused.run_id, paused.pending_calls[0])
        done = await rt.resume(paused.run_id, agent=agent)
        assert done.status == "finished" and done.output == "result: refunded 12.5 on o-1"
        again = await rt.resume(paused.run_id, agent=agent)
        assert again.status == "finished"
    assert (
        len(executed) == 1
        and executed[0][1] == f"default:{paused.run_id}:{paused.pending_calls[0]}"
    )


async def test_rejection_is_told_to_the_model(make_runtime: Any) -> None:
    @tool(idempotent=False, requires_approval=True)
    def wire(amount: float) -> str:
        """Send money."""
        raise AssertionError("must not run")

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        return (
            call(("wire", {"amount": 1e6}))
            if model_turns(body) == 0
            else say(tool_results(body)[0])
        )

    rt, _ = make_runtime(policy)
    agent = Agent(name="a", model="fast", tools=[wire])
    async with rt:
        paused = await rt.run(agent, "send it")
        await rt.reject(paused.run_id, paused.pending_calls[0], "too much money")
        done = await rt.resume(paused.run_id, agent=agent)
    assert done.output == "error: a human rejected this call: too much money"


async def test_cognitive_errors_are_handled_and_counted(make_runtime: Any) -> None:
    def policy(body: dict[str, Any]) -> dict[str, Any]:
        turns = model_turns(body)
        if turns == 0:
            return call(("nonexistent", {}))
        if turns == 1:
            return call(("slow_lookup", {"wrong": 1}))
        if turns in (2, 3, 4):
            return call(("slow_lookup", {"key": "same"}))
        return say("|".join(tool_results(body)))

    rt, _ = make_runtime(policy)
    agent = Agent(name="cog", model="fast", tools=[slow_lookup], max_repeats=2)
    async with rt:
        result = await rt.run(agent, "go")
        metrics = rt.metrics.exposition().decode()
    results = result.output or ""
    assert "there is no tool 'nonexistent'" in results
    assert "invalid arguments for slow_lookup" in results
    assert "already called slow_lookup" in results
    for kind in ("unknown_tool", "invalid_arguments", "repeated_call"):
        assert f'areion_agent_cognitive_errors_total{{agent="cog",kind="{kind}"}} 1.0' in metrics


async def test_unparsable_output_gets_one_repair(make_runtime: Any) -> None:
    answers = iter(["not json at all", '{"city": "Paris"}'])
    rt, upstream = make_runtime(lambda body: say(next(answers)))
    schema = {"type": "object", "required": ["city"]}
    async with rt:
        result = await rt.run(Agent(name="a", model="fast", output_schema=schema), "where?")
    assert result.status == "finished" and result.output == '{"city": "Paris"}'
    assert (
        "could not be used: it is not valid JSON" in upstream.requests[1]["messages"][-1]["content"]
    )


async def test_unparsable_output_fails_after_the_repair(make_runtime: Any) -> None:
    rt, upstream = make_runtime(lambda body: say("still not json"))
    async with rt:
        result = await rt.run(
            Agent(name="a", model="fast", output_schema={"type": "object"}), "where?"
        )
    assert result.status == "failed" and "after one repair attempt" in (result.error or "")
    assert len(upstream.requests) == 2


async def test_a_model_stuck_in_a_loop_fails_the_run(make_runtime: Any) -> None:
    rt, _ = make_runtime(lambda body: call(("slow_lookup", {"key": "x"})))
    async with rt:
        result = await rt.run(
            Agent(name="a", model="fast", tools=[slow_lookup], max_repeats=1), "go"
        )
    assert result.status == "failed" and "stuck in a loop" in (result.error or "")


async def test_memoized_tool_runs_once_per_tenant(make_runtime: Any) -> None:
    runs: list[str] = []

    @tool(cache_ttl=60)
    def weather(city: str) -> str:
        """Weather for a city."""
        runs.append(city)
        return f"rain in {city}"

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        return (
            call(("weather", {"city": "Paris"}))
            if model_turns(body) == 0
            else say(tool_results(body)[0])
        )

    rt, _ = make_runtime(policy)
    agent = Agent(name="a", model="fast", tools=[weather])
    async with rt:
        first = await rt.run(agent, "weather?", tenant="acme")
        second = await rt.run(agent, "weather?", tenant="acme")
        other = await rt.run(agent, "weather?", tenant="globex")
    assert first.output == second.output == other.output == "rain in Paris"
    assert runs == ["Paris", "Paris"]  # once for acme, once for globex


async def test_stream_yields_typed_events(make_runtime: Any) -> None:
    rt, _ = make_runtime(two_lookups_then_answer)
    agent = Agent(name="a", model="fast", tools=[meeting_lookup, meeting_sync_lookup])
    MEETING.reset()
    async with rt:
        events = [event async for event in rt.stream(agent, "go")]
    kinds = [type(e) for e in events]
    assert kinds[0] is RunStarted and kinds[-1] is RunFinished
    assert kinds.count(ToolCallEvent) == 2 and kinds.count(ToolResultEvent) == 2
    assert kinds.count(StepDone) == 2
    deltas = "".join(e.content for e in events if isinstance(e, ModelDelta))
    assert deltas.strip() == "answer: value-of-a & sync-b"
    step = next(e for e in events if isinstance(e, StepDone))
    assert step.usage.prompt_tokens == 100 and step.cost_usd > 0


async def test_session_memory_carries_across_runs(make_runtime: Any) -> None:
    rt, upstream = make_runtime(lambda body: say(f"reply {len(upstream.requests)}"))
    agent = Agent(name="a", model="fast")
    async with rt:
        await rt.run(agent, "my name is Ada", session="user-42")
        await rt.run(agent, "what is my name?", session="user-42")
        await rt.run(agent, "hello", session="someone-else")
    second = upstream.requests[1]["messages"]
    assert {"role": "user", "content": "my name is Ada"} in second
    assert second[-1] == {"role": "user", "content": "what is my name?"}
    third = upstream.requests[2]["messages"]
    assert all("Ada" not in str(m.get("content")) for m in third)


async def test_runs_are_invisible_to_other_tenants(make_runtime: Any) -> None:
    from areion.agent import RunNotFoundError

    rt, _ = make_runtime(lambda body: say("hi"))
    agent = Agent(name="a", model="fast")
    async with rt:
        result = await rt.run(agent, "x", tenant="acme")
        with pytest.raises(RunNotFoundError):
            await rt.resume(result.run_id, agent=agent, tenant="globex")
        assert await rt.agents.get(result.run_id, tenant="globex") is None
        assert await rt.agents.get(result.run_id, tenant="acme") is not None
