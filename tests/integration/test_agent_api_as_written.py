"""The agent API exactly as the docs show it, against the built-in sim models."""

from __future__ import annotations

from pathlib import Path

import pytest

from areion import Agent, Runtime, tool
from areion.agent import RunFinished, RunStarted


@tool(cache_ttl=60)  # memoized per tenant for 60 s; pure tools only
async def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Rain in {city}"


@tool(idempotent=False, requires_approval=True)  # side effect: never cached, exactly once
def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount} on {order_id}"


async def test_the_documented_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "areion.yaml").write_text(
        "models:\n"
        "  - {name: fast, provider: sim, model: sim-fast, time_scale: 0.02}\n"
        "store: sqlite:///areion.db\n"
    )
    agent = Agent(
        name="support",
        instructions="...",
        model="fast",
        tools=[get_weather, refund],
        max_steps=12,
        max_cost_usd=0.05,
    )
    rt = Runtime.from_config("areion.yaml")
    result = await rt.run(agent, "Is it raining in Paris?", session="user-42", run_id=None)
    assert result.status == "finished" and result.output
    assert result.steps == 2  # the sim calls the first tool, then answers
    assert result.cost_usd > 0 and result.usage.prompt_tokens > 0 and result.run_id
    events = [event async for event in rt.stream(agent, "...", session="user-42")]
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    again = await rt.resume(result.run_id, agent=agent)
    assert again.status == "finished" and again.output == result.output
    await rt.aclose()
    assert (tmp_path / "areion.db").exists()


async def test_the_embedded_default_runs_an_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with Runtime() as rt:
        result = await rt.run(Agent(name="plain", model="fast", max_steps=1), "Hello")
    assert result.status == "finished" and result.output
