"""The OpenAI Agents SDK on its default model (`OpenAIResponsesModel`, the Responses API)
pointed at Areion over loopback, with a scripted upstream behind it: an agent whose
tool really runs, with `Runner.run` and `Runner.run_streamed`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.models.multi_provider import MultiProvider
from agents.models.openai_responses import OpenAIResponsesModel

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from areion.store import SQLiteStore
from areion.types import LedgerEntry
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import eventually, serve_app

KEY = "sk-agents-responses-0123456789"
PRICE = {"input": 0.15, "output": 0.60}
COST = (11 * 0.15 + 7 * 0.60) / 1e6  # one scripted call's usage at PRICE
INSTRUCTIONS = "You tell the weather. Use the tool."
ANSWER = "It is 21C and sunny in Paris."


class Server:
    def __init__(self, up: ScriptedUpstream, url: str, db: Path) -> None:
        self.up = up
        self.url = url
        self.db = db

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)

    def run_config(self) -> RunConfig:
        """The SDK's own default provider (Responses API, over HTTP) with its client
        pointed at Areion; tracing off, so nothing is exported anywhere."""
        provider = MultiProvider(openai_client=self.client())
        assert isinstance(provider.get_model("fast"), OpenAIResponsesModel)
        return RunConfig(model_provider=provider, tracing_disabled=True)

    async def ledger(self, rows: int) -> list[LedgerEntry]:
        """The ledger's rows once there are `rows`, all closed, oldest first."""
        store = SQLiteStore(str(self.db))
        try:

            async def written() -> bool:
                found = await store.ledger(tenant="acme")
                return len(found) == rows and not any(row.open for row in found)

            await eventually(written)
            return list(reversed(await store.ledger(tenant="acme")))
        finally:
            await store.aclose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    up = ScriptedUpstream()
    db = tmp_path / "areion.db"
    with serve_app(up.app) as upstream_url:
        config = {
            "models": [
                {
                    "name": "fast",
                    "provider": "openai",
                    "model": "gpt-test",
                    "base_url": upstream_url + "/v1",
                    "price": PRICE,
                }
            ],
            "store": f"sqlite:///{db}",
            "auth": {"keys": [{"key": KEY, "tenant": "acme"}]},
        }
        with serve_app(create_app(Runtime(parse_config(config)))) as url:
            yield Server(up, url, db)


def weather_agent(runs: list[str]) -> Agent[Any]:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: The city's name.
        """
        runs.append(city)
        return f"21C and sunny in {city}"

    return Agent(name="forecaster", instructions=INSTRUCTIONS, model="fast", tools=[get_weather])


def script_the_model(up: ScriptedUpstream) -> None:
    """The model asks for the tool, then answers with what it returned."""
    call = {
        "id": "call_paris",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    up.then(Behaviour(tool_calls=[call]), Behaviour(text=ANSWER))


def assert_the_upstream_saw_the_tool_round_trip(up: ScriptedUpstream) -> None:
    first, second = up.requests
    assert first["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    [tool] = first["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "get_weather"
    assert tool["function"]["parameters"]["properties"]["city"]["type"] == "string"
    assert second["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "21C and sunny in Paris", "tool_call_id": "call_paris"},
    ]


async def test_an_agent_runs_its_tool_through_areion(server: Server) -> None:
    script_the_model(server.up)
    runs: list[str] = []
    result = await Runner.run(
        weather_agent(runs), "Weather in Paris?", run_config=server.run_config()
    )
    assert result.final_output == ANSWER
    assert runs == ["Paris"]  # the tool ran, with the model's arguments
    assert_the_upstream_saw_the_tool_round_trip(server.up)
    usage = result.context_wrapper.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 22, 14)
    rows = await server.ledger(2)
    assert [row.cost_usd for row in rows] == pytest.approx([COST, COST])
    assert all((raw.response_id or "").startswith("resp_") for raw in result.raw_responses)


async def test_an_agent_streams_its_run_through_areion(server: Server) -> None:
    script_the_model(server.up)
    runs: list[str] = []
    result = Runner.run_streamed(
        weather_agent(runs), "Weather in Paris?", run_config=server.run_config()
    )
    raw_kinds: list[str] = []
    items: list[Any] = []
    text: list[str] = []
    async for event in result.stream_events():
        if event.type == "raw_response_event":
            raw_kinds.append(event.data.type)
            if event.data.type == "response.output_text.delta":
                text.append(event.data.delta)
        elif event.type == "run_item_stream_event":
            items.append(event.item)
    assert result.final_output == ANSWER == "".join(text)
    assert runs == ["Paris"]
    [called] = [item for item in items if item.type == "tool_call_item"]
    assert orjson.loads(called.raw_item.arguments) == {"city": "Paris"}
    [output] = [item for item in items if item.type == "tool_call_output_item"]
    assert output.output == "21C and sunny in Paris"
    assert raw_kinds.count("response.completed") == 2
    assert "response.function_call_arguments.delta" in raw_kinds
    assert_the_upstream_saw_the_tool_round_trip(server.up)
    usage = result.context_wrapper.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 22, 14)
    rows = await server.ledger(2)
    assert [row.cost_usd for row in rows] == pytest.approx([COST, COST])
    assert all(request["stream"] for request in server.up.requests)


async def test_an_agent_chains_its_turns_by_previous_response_id(server: Server) -> None:
    # The SDK sends only each turn's new items; Areion keeps the conversation.
    script_the_model(server.up)
    runs: list[str] = []
    result = await Runner.run(
        weather_agent(runs),
        "Weather in Paris?",
        run_config=server.run_config(),
        auto_previous_response_id=True,
    )
    assert result.final_output == ANSWER and runs == ["Paris"]
    assert_the_upstream_saw_the_tool_round_trip(server.up)
    first, last = (raw.response_id for raw in result.raw_responses)
    assert last == result.last_response_id
    stored = await server.client().responses.retrieve(last)
    assert stored.previous_response_id == first  # the second turn continued the first
    # A later run continues where the first ended.
    server.up.then(Behaviour(text="You asked about Paris."))
    later = await Runner.run(
        weather_agent(runs),
        "What did I ask?",
        run_config=server.run_config(),
        previous_response_id=result.last_response_id,
    )
    assert later.final_output == "You asked about Paris."
    sent = server.up.requests[2]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[-2:] == [
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "What did I ask?"},
    ]
    await server.ledger(3)
