"""Plan caching (L3) end to end: real loopback HTTP, a scripted model that records what
it is shown, real SQLite checkpoints and the real MiniLM embedder."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areion import Agent, Runtime, tool
from areion.cache.plans import FROM_RESULT, FROM_TASK, PLAN_KEY
from areion.config import parse_config
from tests.agent_upstream import AgentUpstream, Policy, call, model_turns, say, tool_results
from tests.support import serve_app

TASK = "Look up the status of order 1234 and email the customer about it"
PARAPHRASE = "Check where order 1234 is and send the customer an email about it"
OFFER = "A plan that worked for a similar task"


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Any]:
    servers: list[Any] = []
    runtimes: list[Runtime] = []

    def make(policy: Policy) -> tuple[Runtime, AgentUpstream]:
        upstream = AgentUpstream(policy)
        server = serve_app(upstream.app)
        url = server.__enter__()
        servers.append(server)
        config = parse_config(
            {
                "models": [
                    {"name": "fast", "provider": "openai", "model": "m", "base_url": url + "/v1"}
                ],
                "store": f"sqlite:///{tmp_path / 'areion.db'}",
            }
        )
        runtime = Runtime(config)
        runtimes.append(runtime)
        return runtime, upstream

    yield make
    for runtime in runtimes:
        if runtime.agents.plans is not None:
            runtime.agents.plans.close()
    for server in servers:
        server.__exit__(None, None, None)


@tool
def find_order(order_id: int) -> str:
    """Find an order's status and customer."""
    return f"order {order_id}: shipped; customer ann@example.com"


def task_of(body: dict[str, Any]) -> str:
    return str([m for m in body["messages"] if m["role"] == "user"][-1]["content"])


def plan_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "system" and OFFER in str(m.get("content"))]


def support_model(body: dict[str, Any]) -> dict[str, Any]:
    """Finds the order in the task, emails its customer, says so."""
    order = int(re.findall(r"\d+", task_of(body))[0])
    turns = model_turns(body)
    if turns == 0:
        return call(("find_order", {"order_id": order}))
    if turns == 1:
        body_text = "Hello, your order has shipped and will arrive within a few days. Thanks!"
        return call(("send_email", {"to": "ann@example.com", "body": body_text}))
    return say(f"Order {order} has shipped; I emailed the customer. ({tool_results(body)[-1]})")


async def test_a_similar_task_is_offered_the_plan_and_another_tenant_is_not(
    make_runtime: Any,
) -> None:
    @tool
    def send_email(to: str, body: str) -> str:
        """Email someone."""
        return "sent"

    rt, upstream = make_runtime(support_model)
    agent = Agent(name="support", model="fast", tools=[find_order, send_email], plan_cache=True)
    async with rt:
        first = await rt.run(agent, TASK, tenant="acme")
        seen = len(upstream.requests)
        second = await rt.run(agent, PARAPHRASE, tenant="acme")
        seen_second = len(upstream.requests)
        other = await rt.run(agent, PARAPHRASE, tenant="globex")

    assert first.status == second.status == other.status == "finished"
    assert first.plan_hit is None
    assert not any(plan_messages(body) for body in upstream.requests[:seen])

    assert second.plan_hit is not None and second.plan_hit.task == TASK
    for body in upstream.requests[seen:seen_second]:  # every step of the run sees it
        (offered,) = plan_messages(body)
        messages = body["messages"]
        assert messages[messages.index(offered) + 1] == {"role": "user", "content": PARAPHRASE}
        assert PLAN_KEY not in offered  # the transcript's bookkeeping stays in Areion
        plan = offered["content"]
        assert f'1. find_order {{"order_id":"{FROM_TASK}"}}' in plan
        assert f'2. send_email {{"to":"{FROM_RESULT}"' in plan
        assert "shipped" not in plan.split("\n", 1)[1]  # steps, no tool results

    assert other.plan_hit is None  # tenants never see each other's plans
    assert not any(plan_messages(body) for body in upstream.requests[seen_second:])


async def test_a_resumed_run_keeps_the_plan_it_was_offered(make_runtime: Any) -> None:
    sent: list[str] = []

    @tool(idempotent=False, requires_approval=True)
    def send_email(to: str, body: str) -> str:
        """Email someone (a person approves it first)."""
        sent.append(to)
        return "sent"

    rt, upstream = make_runtime(support_model)
    agent = Agent(name="support", model="fast", tools=[find_order, send_email], plan_cache=3600)
    async with rt:
        first = await rt.run(agent, TASK, tenant="acme")
        await rt.approve(first.run_id, first.pending_calls[0], tenant="acme")
        assert (await rt.resume(first.run_id, agent=agent, tenant="acme")).status == "finished"

        paused = await rt.run(agent, PARAPHRASE, tenant="acme")
        assert paused.status == "paused"
        assert paused.plan_hit is not None and paused.plan_hit.task == TASK
        plans = rt.agents.plans
        assert plans is not None
        # Whatever the cache holds now, the run continues with what it was offered.
        assert await plans.invalidate("acme") == 1
        await rt.approve(paused.run_id, paused.pending_calls[0], tenant="acme")
        seen = len(upstream.requests)
        done = await rt.resume(paused.run_id, agent=agent, tenant="acme")
        again = await rt.resume(paused.run_id, agent=agent, tenant="acme")

    assert done.status == "finished" and sent == ["ann@example.com"] * 2
    assert done.plan_hit == paused.plan_hit == again.plan_hit
    resumed = upstream.requests[seen:]
    assert resumed and all(len(plan_messages(body)) == 1 for body in resumed)
    assert plans.hits == 1  # looked up once, when the run started


async def test_agents_that_do_not_opt_in_never_load_the_model(make_runtime: Any) -> None:
    rt, upstream = make_runtime(lambda body: say("hello"))
    async with rt:
        result = await rt.run(Agent(name="plain", model="fast"), "hi")
        again = await rt.run(Agent(name="plain", model="fast"), "hi")
    assert result.output == again.output == "hello"
    assert result.plan_hit is None and again.plan_hit is None
    assert rt.agents.plans is None
    assert not any(plan_messages(body) for body in upstream.requests)
