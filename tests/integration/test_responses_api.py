"""The Responses API (`/v1/responses`) driven by the official `openai` SDK over loopback,
with a scripted OpenAI-compatible upstream behind Areion."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from areion.store import SQLiteStore
from areion.types import LedgerEntry
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import eventually, serve_app

KEY = "sk-acme-responses-0123456789"
OTHER_KEY = "sk-other-responses-0123456789"
POOR_KEY = "sk-poor-responses-0123456789"
PRICE = {"input": 0.15, "output": 0.60}
COST = (11 * 0.15 + 7 * 0.60) / 1e6  # the scripted upstream's usage at PRICE

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
WEATHER_CALL = {
    "id": "call_w1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


class Server:
    def __init__(self, up: ScriptedUpstream, url: str, db: Path) -> None:
        self.up = up
        self.url = url
        self.db = db

    def client(self, key: str = KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)

    async def ledger(self, tenant: str = "acme") -> list[LedgerEntry]:
        """The tenant's ledger rows, oldest first, read as another process would."""
        store = SQLiteStore(str(self.db))
        try:
            return list(reversed(await store.ledger(tenant=tenant)))
        finally:
            await store.aclose()

    async def closed_ledger(self, rows: int, tenant: str = "acme") -> list[LedgerEntry]:
        """The tenant's rows once there are `rows` and streams have closed theirs (rows
        that book no money, and the closing of a stream's row, are written in the
        background)."""

        async def closed() -> bool:
            found = await self.ledger(tenant)
            return len(found) == rows and not any(row.open for row in found)

        await eventually(closed)
        return await self.ledger(tenant)


def config(url: str, db: Path) -> dict[str, Any]:
    deployment = {"provider": "openai", "base_url": url + "/v1", "price": PRICE}
    return {
        "models": [
            {"name": "fast", "model": "gpt-test", **deployment},
            {"name": "thinker", "model": "o-test", "reasoning": True, **deployment},
        ],
        "store": f"sqlite:///{db}",
        "retry": {"max_attempts": 1},
        "auth": {
            "keys": [
                {"key": KEY, "tenant": "acme"},
                {"key": OTHER_KEY, "tenant": "other"},
                {"key": POOR_KEY, "tenant": "poor"},
            ],
            # A day's budget smaller than any call's estimate: every call is refused.
            "tenants": [{"name": "poor", "budget_usd_per_day": 1e-9}],
        },
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    up = ScriptedUpstream()
    db = tmp_path / "areion.db"
    with serve_app(up.app) as upstream_url:
        runtime = Runtime(parse_config(config(upstream_url, db)))
        with serve_app(create_app(runtime)) as url:
            yield Server(up, url, db)


async def test_a_response_through_the_sdk(server: Server) -> None:
    raw = await server.client().responses.with_raw_response.create(
        model="fast",
        input="Hello?",
        instructions="Be brief.",
        temperature=0.5,
        top_p=0.9,
        max_output_tokens=64,
        metadata={"ticket": "T-1"},
        user="user-7",
        extra_headers={"x-request-id": "client-1"},
    )
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == "Hello from upstream."
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 7)
    assert response.usage.total_tokens == 18
    assert response.model == "gpt-test" and response.metadata == {"ticket": "T-1"}
    assert response.instructions == "Be brief." and response.max_output_tokens == 64
    assert raw.headers["x-areion-model"] == "fast/gpt-test"
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(COST)
    assert raw.headers["x-areion-cache"] == "miss"
    assert raw.headers["x-client-request-id"] == "client-1"

    [sent] = server.up.requests
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
    ]
    assert (sent["model"], sent["temperature"], sent["top_p"]) == ("gpt-test", 0.5, 0.9)
    assert (sent["max_tokens"], sent["user"]) == (64, "user-7")
    # What the Responses API keeps to itself does not go upstream.
    assert not {"metadata", "store", "input", "instructions"} & set(sent)

    [row] = await server.ledger()
    assert row.request_id == raw.headers["x-request-id"]
    assert row.client_request_id == "client-1"
    assert (row.prompt_tokens, row.completion_tokens) == (11, 7)
    assert row.cost_usd == pytest.approx(COST)


async def test_a_streamed_response_through_the_sdk(server: Server) -> None:
    server.up.default = Behaviour(text="one two three")
    stream = await server.client().responses.create(model="fast", input="Count.", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "one two three"
    assert completed.response.usage is not None
    assert (completed.response.usage.input_tokens, completed.response.usage.output_tokens) == (
        11,
        7,
    )
    # Stored before the client had it whole, with its usage.
    stored = await server.client().responses.retrieve(completed.response.id)
    assert stored.output_text == "one two three" and stored.usage == completed.response.usage
    # The SDK's own accumulator puts the same answer back together from the events.
    async with server.client().responses.stream(model="fast", input="Count.") as again:
        final = await again.get_final_response()
    assert final.output_text == "one two three" and final.status == "completed"
    assert final.id != completed.response.id

    rows = await server.closed_ledger(2)
    assert rows[0].cost_usd == pytest.approx(COST)
    assert server.up.requests[0]["stream"] is True


async def test_a_stream_says_what_it_cost_and_who_answered(server: Server) -> None:
    async with (
        httpx.AsyncClient(base_url=server.url) as http,
        http.stream(
            "POST",
            "/v1/responses",
            headers={"authorization": f"Bearer {KEY}"},
            json={"model": "fast", "input": "hi", "stream": True},
        ) as reply,
    ):
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["x-areion-model"] == "fast/gpt-test"
        assert reply.headers["x-areion-cache"] == "miss"
        lines = [line async for line in reply.aiter_lines()]
    assert lines[0] == "event: response.created"
    [cost] = [line for line in lines if line.startswith(": x-areion-cost-usd=")]
    assert float(cost.partition("=")[2]) == pytest.approx(COST)
    # The cost comes before the last event, which a client may stop reading at.
    assert lines.index(cost) < lines.index("event: response.completed")


async def test_a_stream_broken_mid_way_ends_failed_not_truncated(server: Server) -> None:
    gate = threading.Event()
    server.up.default = Behaviour(text="one two three four", break_after=2, break_gate=gate)
    stream = await server.client().responses.create(model="fast", input="hi", stream=True)
    seen: list[str] = []
    events = []
    async for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta":
            seen.append(event.delta)
            if "".join(seen) == "one two":
                gate.set()
    assert "".join(seen) == "one two"
    error, failed = events[-2:]
    assert error.type == "error" and "mid-stream" in error.message
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.output[0].type == "message"
    [row] = await server.closed_ledger(1)  # paid for what it received
    assert 0 < row.completion_tokens < 1024 and row.estimated


async def test_a_client_hanging_up_mid_stream_stops_the_upstream(server: Server) -> None:
    words = 50_000
    server.up.default = Behaviour(text=" ".join(["word"] * words))
    host, port = server.url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": "fast", "input": "talk", "stream": True})
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/responses HTTP/1.1\r\nhost: areion\r\n"
        + f"authorization: Bearer {KEY}\r\ncontent-type: application/json\r\n".encode()
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert (await reader.read(4096)).startswith(b"HTTP/1.1 200")
    writer.close()
    await writer.wait_closed()
    # The client is gone: the stream is closed and booked at what had arrived.
    [row] = await server.closed_ledger(1)
    assert row.estimated and row.completion_tokens < words / 2


async def test_a_function_tool_round_trip(server: Server) -> None:
    server.up.then(Behaviour(tool_calls=[WEATHER_CALL]), Behaviour(text="It is 21C in Paris."))
    client = server.client()
    raw = await client.responses.with_raw_response.create(
        model="fast", input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="auto"
    )
    first = raw.parse()
    [call] = first.output
    assert call.type == "function_call"
    assert (call.name, call.call_id) == ("get_weather", "call_w1")
    assert orjson.loads(call.arguments) == {"city": "Paris"}
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(COST)
    sent = server.up.requests[0]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        }
    ]
    assert sent["tool_choice"] == "auto"

    # The client runs the tool and sends the whole conversation back (stateless).
    second = await client.responses.create(
        model="fast",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": "call_w1", "output": "21C, sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "It is 21C in Paris."
    assert server.up.requests[1]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "21C, sunny", "tool_call_id": "call_w1"},
    ]
    assert len(await server.ledger()) == 2


async def test_a_streamed_tool_call(server: Server) -> None:
    server.up.default = Behaviour(tool_calls=[WEATHER_CALL])
    async with server.client().responses.stream(
        model="fast", input="Weather in Paris?", tools=[WEATHER_TOOL]
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [orjson.loads(e.arguments) for e in done] == [{"city": "Paris"}]
    [call] = final.output
    assert call.type == "function_call" and call.call_id == "call_w1"
    assert call.name == "get_weather" and call.status == "completed"


async def test_previous_response_id_continues_a_conversation(server: Server) -> None:
    server.up.then(
        Behaviour(text="Hello Ada."),
        Behaviour(tool_calls=[WEATHER_CALL]),
        Behaviour(text="Sunny, Ada."),
    )
    client = server.client()
    first = await client.responses.create(model="fast", input="I am Ada.", instructions="Be brief.")
    # Only the new turn is sent; the instructions of the first are not carried over.
    second = await client.responses.create(
        model="fast",
        input="Weather in Paris?",
        previous_response_id=first.id,
        instructions="Be terse.",
        tools=[WEATHER_TOOL],
    )
    assert second.output[0].type == "function_call"
    third = await client.responses.create(
        model="fast",
        input=[{"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}],
        previous_response_id=second.id,
        tools=[WEATHER_TOOL],
    )
    assert third.output_text == "Sunny, Ada." and third.previous_response_id == second.id
    assert server.up.requests[1]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "I am Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert server.up.requests[2]["messages"] == [
        {"role": "user", "content": "I am Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_w1"},
    ]
    # A stored response can be read back by its tenant.
    again = await client.responses.retrieve(second.id)
    assert again.id == second.id and again.output[0].type == "function_call"
    assert again.usage is not None and again.usage.output_tokens == 7
    assert len(await server.ledger()) == 3


async def test_another_tenants_response_is_a_404_that_tells_nothing(server: Server) -> None:
    mine = await server.client().responses.create(model="fast", input="secret plan")
    theirs = server.client(OTHER_KEY)
    with pytest.raises(openai.NotFoundError) as caught:
        await theirs.responses.create(model="fast", input="go on", previous_response_id=mine.id)
    assert caught.value.body == {
        "message": f"no response '{mine.id}' found",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "not_found",
    }
    with pytest.raises(openai.NotFoundError) as read:
        await theirs.responses.retrieve(mine.id)
    never = "resp_" + "0" * 48
    with pytest.raises(openai.NotFoundError) as unknown:
        await theirs.responses.retrieve(never)
    # The same answer as for an id nobody has.
    assert str(read.value).replace(mine.id, "ID") == str(unknown.value).replace(never, "ID")
    assert server.up.calls == 1  # neither attempt reached a model
    assert await server.ledger("other") == []


async def test_store_false_keeps_nothing_to_continue(server: Server) -> None:
    client = server.client()
    unstored = await client.responses.create(model="fast", input="hi", store=False)
    assert unstored.store is False and unstored.output_text == "Hello from upstream."
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="fast", input="go", previous_response_id=unstored.id)
    streamed = await client.responses.create(model="fast", input="hi", store=False, stream=True)
    [completed] = [e async for e in streamed if e.type == "response.completed"]
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(completed.response.id)
    # A stored response may be continued without storing the continuation.
    stored = await client.responses.create(model="fast", input="hi")
    branch = await client.responses.create(
        model="fast", input="more", previous_response_id=stored.id, store=False
    )
    assert branch.previous_response_id == stored.id
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(branch.id)
    assert server.up.calls == 4


class Person(BaseModel):
    name: str
    age: int


async def test_text_format_json_schema_reaches_the_upstream(server: Server) -> None:
    server.up.default = Behaviour(text='{"name": "Ada", "age": 36}')
    parsed = await server.client().responses.parse(
        model="fast", input="Who wrote the first program?", text_format=Person
    )
    assert parsed.output_parsed == Person(name="Ada", age=36)
    response_format = server.up.requests[0]["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]
    assert schema["name"] == "Person" and schema["strict"] is True
    assert schema["schema"]["properties"] == {
        "name": {"title": "Name", "type": "string"},
        "age": {"title": "Age", "type": "integer"},
    }
    await server.client().responses.create(
        model="fast", input="JSON please", text={"format": {"type": "json_object"}}
    )
    assert server.up.requests[1]["response_format"] == {"type": "json_object"}


async def test_reasoning_effort_on_a_reasoning_model(server: Server) -> None:
    response = await server.client().responses.create(
        model="thinker", input="Think.", reasoning={"effort": "low"}
    )
    assert response.reasoning is not None and response.reasoning.effort == "low"
    assert server.up.requests[0]["reasoning_effort"] == "low"


async def test_the_exact_cache_answers_a_repeated_response(server: Server) -> None:
    client = server.client()
    asked: dict[str, Any] = {"model": "fast", "input": "Capital of France?", "temperature": 0}
    first = await client.responses.with_raw_response.create(**asked)
    again = await client.responses.with_raw_response.create(**asked)
    assert first.headers["x-areion-cache"] == "miss"
    assert again.headers["x-areion-cache"] == "hit-exact"
    assert float(again.headers["x-areion-cost-usd"]) == 0
    assert again.parse().output_text == first.parse().output_text == "Hello from upstream."
    assert again.parse().id != first.parse().id  # a new response, continuable on its own
    streamed = await client.responses.create(**asked, stream=True)
    [completed] = [e async for e in streamed if e.type == "response.completed"]
    assert completed.response.output_text == "Hello from upstream."
    assert server.up.calls == 1
    paid, *hits = await server.closed_ledger(3)  # free rows are written in the background
    assert paid.cache == "" and paid.cost_usd == pytest.approx(COST)
    assert [(hit.cache, hit.cost_usd) for hit in hits] == [("exact", 0.0), ("exact", 0.0)]


async def test_a_tenant_budget_refuses_a_response_with_402(server: Server) -> None:
    poor = server.client(POOR_KEY)
    with pytest.raises(openai.APIStatusError) as caught:
        await poor.responses.create(model="fast", input="hi")
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as streamed:
        await poor.responses.create(model="fast", input="hi", stream=True)
    assert streamed.value.status_code == 402
    assert server.up.calls == 0
    assert await server.ledger("poor") == []


# -- what Areion cannot honour ---------------------------------------------------------

CALLED = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}


def answer(call_id: str) -> dict[str, str]:
    return {"type": "function_call_output", "call_id": call_id, "output": "x"}


def user_parts(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"input": [{"role": "user", "content": list(parts)}]}


FILE_SEARCH = {"type": "file_search", "vector_store_ids": ["vs_1"]}
REASONING_ITEM = {"type": "reasoning", "id": "rs_1", "summary": []}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER_TOOL, FILE_SEARCH]}, "tools[1].type"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"input": [{"role": "user", "content": "x"}, REASONING_ITEM]}, "input[1].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (user_parts({"type": "input_file", "file_id": "f"}), "input[0].content[0].type"),
        (user_parts({"type": "input_image", "file_id": "f"}), "input[0].content[0].file_id"),
        ({"input": [answer("c9")]}, "input[0].call_id"),
        ({"input": [CALLED, answer("c2")]}, "input[1].call_id"),
        ({"include": ["reasoning.encrypted_content"]}, "include[0]"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"truncation": "auto"}, "truncation"),
        ({"top_logprobs": 5}, "top_logprobs"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": "10"}, "max_output_tokens"),
        ({"input": None}, "input"),
        ({"input": []}, "input"),
        ({"modalities": ["audio"]}, "modalities"),
    ],
)
async def test_what_areion_cannot_honour_is_a_400_naming_it(
    server: Server, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "fast", "input": "hi", **fields}
    async with httpx.AsyncClient(base_url=server.url) as http:
        reply = await http.post(
            "/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"}
        )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert param.partition("[")[0].partition(".")[0] in error["message"]
    assert server.up.calls == 0


async def test_requests_that_are_not_responses(server: Server) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/v1/responses", content=b"{nope", headers=auth)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = await http.post("/v1/responses", content=b"", headers=auth)
        assert r.status_code == 400
        r = await http.post("/v1/responses", json={"model": "fast", "input": "x"})
        assert r.status_code == 401
        r = await http.post("/v1/responses", json={"model": "nope", "input": "x"}, headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await http.get("/v1/responses/resp_x")
        assert r.status_code == 401
    assert server.up.calls == 0
