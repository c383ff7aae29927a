"""Money is shown rounded (7.3e-05, not 7.300000000000001e-05) and summed exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from areion import Runtime
from areion.agent.events import StepDone
from areion.config import parse_config
from areion.server import create_app
from tests import agents_fixture
from tests.agent_upstream import AgentUpstream, call, model_turns, say
from tests.support import serve_app

# gpt-4o-mini's price, and the usage AgentUpstream reports for every call: three
# calls add up to 8.099999999999999e-05 in floating point.
PRICE = {"input": 0.15, "output": 0.60}
STEP = (100 * 0.15 + 20 * 0.60) / 1e6
KEY = "money-key"


def three_calls(body: dict[str, Any]) -> dict[str, Any]:
    if model_turns(body) < 2:
        return call(("lookup", {"order_id": f"o-{model_turns(body)}"}))
    return say("found both")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[dict[str, Any]]:
    upstream = AgentUpstream(three_calls)
    with serve_app(upstream.app) as url:
        yield {
            "models": [
                {"name": "fast", "provider": "openai", "base_url": url + "/v1", "price": PRICE}
            ],
            "store": f"sqlite:///{tmp_path / 'money.db'}",
            "auth": {"keys": [{"key": KEY, "tenant": "acme"}]},
            "agents": [{"name": "looker", "path": "tests.agents_fixture:make_looker"}],
        }


def exact_sum(steps: int) -> float:
    total = 0.0
    for _ in range(steps):
        total += STEP
    return total


async def test_a_runs_cost_is_rounded_where_shown_and_exact_where_kept(
    settings: dict[str, Any],
) -> None:
    assert exact_sum(3) == 8.099999999999999e-05  # what used to be shown
    async with Runtime(parse_config(settings)) as rt:
        agent = agents_fixture.make_looker()
        result = await rt.run(agent, "find o-0 and o-1")
        assert result.steps == 3
        assert result.cost_usd == 8.1e-05
        assert "cost_usd=8.1e-05" in repr(result)
        steps = [e async for e in rt.stream(agent, "again") if isinstance(e, StepDone)]
        assert [e.total_cost_usd for e in steps] == [2.7e-05, 5.4e-05, 8.1e-05]
        snapshot = await rt.agents.get(result.run_id)
        assert snapshot is not None and snapshot.run.cost_usd == exact_sum(3)  # kept exact


def test_the_runs_api_and_the_cost_header_show_rounded_money(settings: dict[str, Any]) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    with serve_app(create_app(Runtime(parse_config(settings)))) as base:
        started = httpx.post(
            base + "/v1/runs",
            headers=auth,
            timeout=30,
            json={"agent": "looker", "input": "find o-0 and o-1", "wait": True},
        )
        assert started.status_code == 200
        assert started.json()["cost_usd"] == 8.1e-05
        assert b'"cost_usd":0.000081,' in started.content
        shown = httpx.get(f"{base}/v1/runs/{started.json()['id']}", headers=auth)
        assert orjson.loads(shown.content)["cost_usd"] == 8.1e-05
        answer = httpx.post(
            base + "/v1/chat/completions",
            headers=auth,
            json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.headers["x-areion-cost-usd"] == "0.000027"
