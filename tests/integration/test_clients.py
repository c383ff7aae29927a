"""Agent frameworks pointed at Areion's base URL, as their users write them: LangChain's
ChatOpenAI with bound tools, and a pydantic-ai agent with a tool and structured output.

A scripted upstream plays the model (it asks for the tool, then answers from the
tool's result); each test checks what the user sees and what the ledger booked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.agent_upstream import AgentUpstream, call, say, tool_results
from tests.support import serve_app

KEY = "sk-clients-0123456789"


def weather_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Ask for the weather tool, then answer from its result: in text, or through the
    output tool a structured-output framework offers (pydantic-ai: `final_result`)."""
    results = tool_results(body)
    if not results:
        return call(("get_weather", {"city": "Paris"}))
    offered = {t["function"]["name"] for t in body.get("tools") or []}
    if "final_result" in offered:
        return call(("final_result", {"city": "Paris", "forecast": results[-1]}))
    return say(f"In Paris: {results[-1]}.")


@pytest.fixture
def areion(tmp_path: Path) -> Iterator[tuple[AgentUpstream, str, Path]]:
    upstream = AgentUpstream(weather_policy)
    db = tmp_path / "areion.db"
    with serve_app(upstream.app) as url:
        config = parse_config(
            {
                "models": [
                    {"name": "fast", "provider": "openai", "model": "m",
                     "base_url": url + "/v1", "price": {"input": 1, "output": 2}}
                ],
                "store": f"sqlite:///{db}",
                "auth": {"keys": [{"key": KEY, "tenant": "acme"}]},
            }
        )  # fmt: skip
        with serve_app(create_app(Runtime(config))) as base:
            yield upstream, base, db


def booked(db: Path) -> list[tuple[str, float]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT tenant, cost_usd FROM ledger").fetchall()


def test_langchain_chat_openai_with_bound_tools(areion: Any) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    upstream, base, db = areion

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"rain over {city}"

    chat = ChatOpenAI(model="fast", base_url=base + "/v1", api_key=KEY, max_retries=0)
    bound = chat.bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    asked = bound.invoke([question])
    [tool_call] = asked.tool_calls
    assert (tool_call["name"], tool_call["args"]) == ("get_weather", {"city": "Paris"})
    result = get_weather.invoke(tool_call["args"])
    answer = bound.invoke([question, asked, ToolMessage(result, tool_call_id=tool_call["id"])])
    assert answer.content == "In Paris: rain over Paris."
    assert answer.usage_metadata is not None and answer.usage_metadata["total_tokens"] == 120
    # The tool's result reached the model; each call is in the ledger, at its price.
    assert tool_results(upstream.requests[-1]) == ["rain over Paris"]
    assert [tenant for tenant, _ in booked(db)] == ["acme", "acme"]
    assert all(cost > 0 for _, cost in booked(db))


def test_pydantic_ai_agent_with_a_tool_and_structured_output(areion: Any) -> None:
    from pydantic import BaseModel
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    upstream, base, db = areion

    class Forecast(BaseModel):
        city: str
        forecast: str

    model = OpenAIChatModel("fast", provider=OpenAIProvider(base_url=base + "/v1", api_key=KEY))
    agent = Agent(model, output_type=Forecast)
    seen: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"rain over {city}"

    result = agent.run_sync("What is the weather in Paris?")
    assert result.output == Forecast(city="Paris", forecast="rain over Paris")
    assert seen == ["Paris"]  # the tool ran, with the model's arguments
    assert result.usage.total_tokens == 240  # two model calls, as the upstream counted
    assert len(upstream.requests) == 2 and len(booked(db)) == 2
