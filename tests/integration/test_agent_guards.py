"""Tool cooldowns and the hourly loop guard, over real loopback HTTP and real SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areion import Agent, Runtime, tool
from areion.config import parse_config
from areion.errors import ConfigError
from tests.agent_upstream import AgentUpstream, Policy, call, model_turns, say, tool_results
from tests.support import serve_app

SENT: list[str] = []


@tool(cooldown_s=3600)
def send_reminder(to: str) -> str:
    """Send a reminder email."""
    SENT.append(to)
    return f"sent to {to}"


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Any]:
    stack: list[Any] = []

    def make(policy: Policy) -> tuple[Runtime, AgentUpstream]:  # one per test
        upstream = AgentUpstream(policy)
        server = serve_app(upstream.app)
        url = server.__enter__()
        stack.append(server)
        config = parse_config(
            {
                "models": [
                    {"name": "fast", "provider": "openai", "model": "m", "base_url": url + "/v1"}
                ],
                "store": f"sqlite:///{tmp_path / 'guards.db'}",
            }
        )
        return Runtime(config), upstream

    SENT.clear()
    yield make
    for server in stack:
        server.__exit__(None, None, None)


def remind(body: dict[str, Any]) -> dict[str, Any]:
    """Reminds whoever the user names last in their message."""
    if model_turns(body) == 0:
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return call(("send_reminder", {"to": user.split()[-1]}))
    return say("done: " + " | ".join(tool_results(body)))


async def test_a_tool_cooldown_holds_per_tenant_and_arguments(make_runtime: Any) -> None:
    agent = Agent(name="reminder", model="fast", tools=[send_reminder])
    rt, _ = make_runtime(remind)
    async with rt:
        first = await rt.run(agent, "remind bob@example.com", tenant="acme")
        again = await rt.run(agent, "remind bob@example.com", tenant="acme")
        other_tenant = await rt.run(agent, "remind bob@example.com", tenant="globex")
        other_arguments = await rt.run(agent, "remind carol@example.com", tenant="acme")
    assert first.output == "done: sent to bob@example.com"
    assert again.status == "finished"
    assert "less than 3600s ago" in (again.output or "")  # the model was told to wait
    assert other_tenant.output == "done: sent to bob@example.com"
    assert other_arguments.output == "done: sent to carol@example.com"
    assert SENT == ["bob@example.com", "bob@example.com", "carol@example.com"]


def chatty(body: dict[str, Any]) -> dict[str, Any]:
    return say("ok")


async def test_the_loop_guard_pauses_runs_past_the_hourly_steps(make_runtime: Any) -> None:
    agent = Agent(name="chatty", model="fast", max_steps_per_hour=3)
    rt, upstream = make_runtime(chatty)
    async with rt:
        results = [await rt.run(agent, f"hello {i}", tenant="acme") for i in range(4)]
        other = await rt.run(agent, "hello", tenant="globex")
    assert [r.status for r in results] == ["finished"] * 3 + ["paused"]
    assert "loop guard" in (results[3].pause_reason or "")
    assert "max_steps_per_hour" in (results[3].pause_reason or "")
    assert other.status == "finished"  # the guard is per tenant
    assert len(upstream.requests) == 4


def test_bad_guard_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cooldown_s"):
        tool(cooldown_s=0)(lambda x: x)
    with pytest.raises(ConfigError, match="max_steps_per_hour"):
        Agent(name="a", model="fast", max_steps_per_hour=0)
