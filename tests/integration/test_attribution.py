"""Attribution in the ledger: who, what run, which route and tags each row is for, and
the tool costs an agent run books beside its model calls (real HTTP upstream, SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areion import Agent, ChatRequest, Message, Runtime, ToolResult, tool
from areion.config import parse_config
from areion.store.rollups import SpendQuery, merge
from tests.agent_upstream import AgentUpstream, Policy, call, model_turns, say, tool_results
from tests.support import serve_app

PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Any]:
    servers: list[Any] = []

    def make(policy: Policy, **extra: Any) -> Runtime:
        server = serve_app(AgentUpstream(policy).app)
        url = server.__enter__()
        servers.append(server)
        model = {"provider": "openai", "model": "m", "base_url": url + "/v1", "price": PRICE}
        config = parse_config(
            {
                "models": [{"name": "fast", **model}, {"name": "strong", **model}],
                "routes": [{"name": "auto", "candidates": ["fast", "strong"], "solver": False}],
                "store": f"sqlite:///{tmp_path / 'areion.db'}",
                **extra,
            }
        )
        return Runtime(config)

    yield make
    for server in servers:
        server.__exit__(None, None, None)


@tool(cost_usd=0.002)
def search(query: str) -> str:
    """Search the web (a paid API: a fixed price per call)."""
    return f"results for {query}"


@tool
def translate(text: str) -> ToolResult:
    """Translate a text (priced by its length, as the API bills it)."""
    return ToolResult(value=text.upper(), cost_usd=0.0001 * len(text))


def search_translate_answer(body: dict[str, Any]) -> dict[str, Any]:
    if model_turns(body) == 0:
        return call(("search", {"query": "areion"}), ("translate", {"text": "hello"}))
    return say("done: " + " / ".join(tool_results(body)))


async def test_a_runs_rows_carry_its_run_agent_and_session_and_its_tools_costs(
    make_runtime: Any,
) -> None:
    rt = make_runtime(search_translate_answer)
    agent = Agent(name="researcher", model="fast", tools=[search, translate])
    async with rt:
        result = await rt.run(agent, "find and translate", session="s-1", tenant="acme")
        await rt.ledger.flush()
        rows = await rt.store.ledger(tenant="acme")
        query = SpendQuery(group_by=("agent",), since=0, until=2e9)
        groups = merge(await rt.store.spend(query), 1)
    assert result.status == "finished"
    model_cost = 2 * (100 * 1.0 + 20 * 2.0) / 1e6  # two model calls of the scripted size
    tool_cost = 0.002 + 0.0005
    assert result.cost_usd == pytest.approx(model_cost + tool_cost)
    assert {r.kind for r in rows} == {"chat", "tool"}
    for row in rows:
        assert (row.run_id, row.agent, row.session) == (result.run_id, "researcher", "s-1")
    tools = {r.upstream_model: r for r in rows if r.kind == "tool"}
    assert tools["search"].cost_usd == pytest.approx(0.002)
    assert tools["translate"].cost_usd == pytest.approx(0.0005)
    assert tools["search"].model == "tool:search"
    # The ledger and the run agree on what the task cost.
    assert sum(r.cost_usd for r in rows) == pytest.approx(result.cost_usd)
    # And so do the rollups, by agent.
    assert groups[("researcher",)].cost_usd == pytest.approx(result.cost_usd)
    assert groups[("researcher",)].calls == 4


async def test_a_calls_row_carries_key_user_tags_and_route(make_runtime: Any) -> None:
    rt = make_runtime(lambda body: say("hi"))
    request = ChatRequest(
        model="auto", messages=[Message(role="user", content="hello")], user="end-user-7"
    )
    async with rt:
        answer = await rt.chat(request, tenant="acme", key="ci-key", tags=["eu", "beta"])
        header_user = ChatRequest(model="fast", messages=[Message(role="user", content="x")])
        await rt.chat(header_user, tenant="acme", user="from-header")
        await rt.ledger.flush()
        rows = {r.model: r for r in await rt.store.ledger(tenant="acme")}
    routed = rows["strong"]  # the route's pick: no rule matched, the strongest candidate
    assert routed.key_label == "ci-key"
    assert routed.end_user == "end-user-7"
    assert routed.tags == ("eu", "beta")
    assert routed.route == "auto"
    assert routed.route_reason == answer.info["route_reason"] != ""
    assert routed.run_id == routed.agent == ""
    assert rows["fast"].end_user == "from-header"
    assert rows["fast"].route == ""


def test_a_tool_cost_must_be_an_amount() -> None:
    from areion.errors import ConfigError

    with pytest.raises(ConfigError, match="cost_usd must be >= 0"):
        tool(cost_usd=-1.0)(lambda: "x")
    with pytest.raises(ValueError, match="finite amount"):
        ToolResult(value="x", cost_usd=float("nan"))


async def test_a_tools_cost_counts_against_the_tenants_budget_at_once(make_runtime: Any) -> None:
    # The first model call (0.00014) and the two tools (0.0025) leave less than the
    # second call needs: it is refused, and the day's spend stays within the budget.
    budget = 0.0027
    rt = make_runtime(
        search_translate_answer, tenants=[{"name": "acme", "budget_usd_per_day": budget}]
    )
    agent = Agent(name="researcher", model="fast", tools=[search, translate])
    async with rt:
        result = await rt.run(agent, "find and translate", tenant="acme")
        await rt.ledger.flush()
        rows = await rt.store.ledger(tenant="acme")
    assert result.status != "finished"
    assert [r.kind for r in rows].count("chat") == 1
    assert sum(r.cost_usd for r in rows) <= budget
