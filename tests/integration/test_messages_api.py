"""POST /v1/messages driven by the official `anthropic` SDK over loopback, in front of an
OpenAI-compatible upstream (scripted), an Anthropic one (scripted) and `areion sim`."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from areion.sim.engine import SimEngine
from areion.sim.server import create_sim_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import serve_app

KEY = "sk-acme-messages-0123456789"
PRICE = {"input": 0.15, "output": 0.60}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL = {
    "id": "call_7",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def cost(prompt: int, completion: int) -> float:
    return (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6


def openai_model(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai",
        "model": f"{name}-upstream",
        "base_url": url + "/v1",
        "price": PRICE,
        **extra,
    }


def config(models: list[dict[str, Any]], db: Path, **extra: Any) -> dict[str, Any]:
    return {
        "models": models,
        "store": f"sqlite:///{db}",
        "retry": {"max_attempts": 2, "backoff_base": 0.01},
        "auth": {"keys": [{"key": KEY, "tenant": "acme"}]},
        **extra,
    }


def ledger(db: Path, request_id: str) -> list[tuple[Any, ...]]:
    """The ledger rows of a request, once closed (a stream's row is closed when it ends,
    by a background writer)."""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(db) as connection:
            found = connection.execute(
                "SELECT model, prompt_tokens, completion_tokens, cost_usd, open FROM ledger "
                "WHERE request_id = ?",
                (request_id,),
            ).fetchall()
        if found and not any(row[-1] for row in found):
            return [row[:-1] for row in found]
        assert time.monotonic() < deadline, f"no closed ledger row for {request_id}: {found}"
        time.sleep(0.02)


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream()
    with serve_app(up.app) as url:
        yield up, url


@pytest.fixture
def server(upstream: Any, tmp_path: Path) -> Iterator[tuple[ScriptedUpstream, str, Path]]:
    up, url = upstream
    db = tmp_path / "areion.db"
    runtime = Runtime(parse_config(config([openai_model("fast", url)], db)))
    with serve_app(create_app(runtime)) as areion_url:
        yield up, areion_url, db


def client(url: str, key: str = KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)


async def test_a_tool_round_trip_with_messages_create(server: Any) -> None:
    up, url, db = server
    up.then(Behaviour(tool_calls=[CALL]), Behaviour(text="It rains in Paris."))
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    raw = await client(url).messages.with_raw_response.create(
        model="fast", max_tokens=200, system="Be brief.", messages=ask, tools=[WEATHER]
    )
    first = await raw.parse()
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use"
    assert (use.id, use.name, use.input) == ("call_7", "get_weather", {"city": "Paris"})
    assert (first.usage.input_tokens, first.usage.output_tokens) == (11, 7)
    assert raw.headers["x-areion-model"] == "fast/fast-upstream"
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(cost(11, 7))
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    # What the OpenAI-compatible upstream was asked.
    sent = up.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert sent["max_tokens"] == 200
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    # The tool's result goes back, and the model answers.
    second = await client(url).messages.with_raw_response.create(
        model="fast",
        max_tokens=200,
        system="Be brief.",
        tools=[WEATHER],
        messages=[
            *ask,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Rain"}],
            },
        ],
    )
    final = await second.parse()
    assert final.stop_reason == "end_turn"
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == "It rains in Paris."  # type: ignore[union-attr]
    assert up.requests[1]["messages"][2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "Rain", "tool_call_id": "call_7"},
    ]
    # One ledger row per upstream call, at what it cost.
    for reply in (raw, second):
        [row] = ledger(db, reply.headers["x-request-id"])
        assert row == ("fast", 11, 7, pytest.approx(cost(11, 7)))
    assert up.calls == 2


async def test_a_tool_round_trip_streamed(server: Any) -> None:
    up, url, db = server
    up.then(
        Behaviour(tool_calls=[CALL]),
        Behaviour(text="It rains in Paris today."),
    )
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    async with client(url).messages.stream(
        model="fast", max_tokens=200, messages=ask, tools=[WEATHER]
    ) as stream:
        kinds = [event.type async for event in stream]
        first = await stream.get_final_message()
        first_id = stream.response.headers["x-request-id"]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "input_json" in kinds and "message_delta" in kinds
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use"
    assert (use.id, use.name, use.input) == ("call_7", "get_weather", {"city": "Paris"})
    assert up.requests[0]["stream"] is True
    async with client(url).messages.stream(
        model="fast",
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            *ask,
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Rain"}],
            },
        ],
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
        final_id = stream.response.headers["x-request-id"]
        assert stream.response.headers["x-areion-model"] == "fast/fast-upstream"
    assert text == "It rains in Paris today."
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)
    assert up.requests[1]["messages"][-1] == {
        "role": "tool",
        "content": "Rain",
        "tool_call_id": "call_7",
    }
    for request_id in (first_id, final_id):
        [row] = ledger(db, request_id)
        assert row == ("fast", 11, 7, pytest.approx(cost(11, 7)))


async def test_the_stream_says_what_it_cost(server: Any) -> None:
    _, url, _ = server
    async with (
        httpx.AsyncClient(base_url=url, headers={"x-api-key": KEY}) as http,
        http.stream(
            "POST",
            "/v1/messages",
            json={
                "model": "fast",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ) as response,
    ):
        body = (await response.aread()).decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = body.strip().split("\n\n")
    assert frames[-2] == f": x-areion-cost-usd={cost(11, 7):.8f}"
    assert frames[-1] == 'event: message_stop\ndata: {"type":"message_stop"}'
    assert frames[0].startswith('event: message_start\ndata: {"type":"message_start"')


async def test_a_stream_broken_mid_way_ends_with_an_error_event(server: Any) -> None:
    up, url, _ = server
    gate = threading.Event()
    up.default = Behaviour(text="one two three four", break_after=2, break_gate=gate)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="mid-stream"):
        async with client(url).messages.stream(
            model="fast", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for piece in stream.text_stream:
                seen.append(piece)
                if "".join(seen) == "one two":
                    gate.set()
    assert "".join(seen) == "one two"


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    return dict(body["error"])


async def test_errors_on_the_messages_route_are_anthropic_shaped(server: Any) -> None:
    up, url, _ = server
    hi = {"model": "fast", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=url) as http:
        key = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        r = await http.post("/v1/messages", json=hi)
        assert r.status_code == 401 and _error(r)["type"] == "authentication_error"
        assert "x-api-key" in _error(r)["message"]
        r = await http.post("/v1/messages", json=hi, headers={"x-api-key": "sk-wrong"})
        assert r.status_code == 401 and _error(r)["type"] == "authentication_error"
        r = await http.post("/v1/messages", json={**hi, "model": "nope"}, headers=key)
        assert r.status_code == 404 and _error(r)["type"] == "not_found_error"
        assert "'nope' does not exist" in _error(r)["message"]
        bad = {k: v for k, v in hi.items() if k != "max_tokens"}
        r = await http.post("/v1/messages", json=bad, headers=key)
        assert r.status_code == 400 and _error(r)["type"] == "invalid_request_error"
        assert _error(r)["message"] == "invalid parameter 'max_tokens': Field required"
        bad = {**hi, "messages": [{"role": "user", "content": [{"type": "video"}]}]}
        r = await http.post("/v1/messages", json=bad, headers=key)
        assert r.status_code == 400
        assert "'messages.0.content.0.type'" in _error(r)["message"]
        r = await http.post("/v1/messages", json={**hi, "temperature": 1.5}, headers=key)
        assert r.status_code == 400 and "'temperature'" in _error(r)["message"]
        r = await http.post("/v1/messages", json={**hi, "service_tier": "auto"}, headers=key)
        assert r.status_code == 400 and "'service_tier'" in _error(r)["message"]
        r = await http.post("/v1/messages", content=b"{not json", headers=key)
        assert r.status_code == 400 and "not valid JSON" in _error(r)["message"]
        r = await http.get("/v1/messages", headers=key)
        assert r.status_code == 405 and _error(r)["type"] == "invalid_request_error"
        up.default = Behaviour(status=500)
        r = await http.post("/v1/messages", json=hi, headers=key)
        assert r.status_code == 502 and _error(r)["type"] == "api_error"
        # Every other route keeps OpenAI's shape.
        r = await http.post("/v1/chat/completions", json={"model": "nope"}, headers=key)
        assert r.status_code == 400 and set(r.json()) == {"error"}
    # The SDK raises its own error classes for them.
    with pytest.raises(anthropic.NotFoundError):
        await client(url).messages.create(model="nope", max_tokens=5, messages=hi["messages"])
    with pytest.raises(anthropic.AuthenticationError):
        await client(url, key="sk-wrong").messages.create(**hi)


async def test_a_bearer_key_works_too(server: Any) -> None:
    _, url, _ = server
    authorized = anthropic.AsyncAnthropic(base_url=url, auth_token=KEY, max_retries=0)
    message = await authorized.messages.create(
        model="fast", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "Hello from upstream."  # type: ignore[union-attr]


async def test_the_exact_cache_and_a_tenant_budget_apply(upstream: Any, tmp_path: Path) -> None:
    up, url = upstream
    db = tmp_path / "areion.db"
    settings = config([openai_model("fast", url)], db)
    poor = "sk-poor-messages-0123456789"
    settings["auth"]["keys"].append({"key": poor, "tenant": "poor"})
    settings["tenants"] = [{"name": "poor", "budget_usd_per_day": 0.000001}]
    with serve_app(create_app(Runtime(parse_config(settings)))) as areion_url:
        ask: dict[str, Any] = {
            "model": "fast",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            # This SDK no longer names sampling parameters; the API still takes them.
            "extra_body": {"temperature": 0},
        }
        first = await client(areion_url).messages.with_raw_response.create(**ask)
        again = await client(areion_url).messages.with_raw_response.create(**ask)
        assert first.headers["x-areion-cache"] == "miss"
        assert again.headers["x-areion-cache"] == "hit-exact"
        assert float(again.headers["x-areion-cost-usd"]) == 0
        assert (await again.parse()).content == (await first.parse()).content
        assert up.calls == 1
        with pytest.raises(anthropic.APIStatusError) as refused:
            await client(areion_url, key=poor).messages.create(**ask)
    assert refused.value.status_code == 402
    body: Any = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    assert "budget" in body["error"]["message"].lower()
    assert up.calls == 1


# -- an Anthropic deployment ------------------------------------------------------------


class ScriptedAnthropic:
    """An Anthropic Messages endpoint that records what it was sent and answers text, or
    a tool call when the request offers tools and carries no tool result yet."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    def _content(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        last = body["messages"][-1]["content"]
        answered = isinstance(last, list) and any(b["type"] == "tool_result" for b in last)
        if body.get("tools") and not answered:
            return [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ]
        return [{"type": "text", "text": "Snow in Oslo."}]

    async def _messages(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        content = self._content(body)
        stop = "tool_use" if content[-1]["type"] == "tool_use" else "end_turn"
        usage = {"input_tokens": 30, "output_tokens": 9, "cache_read_input_tokens": 10}
        if not body.get("stream"):
            message = {
                "id": "msg_upstream_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-test-1",
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return Response(orjson.dumps(message), media_type="application/json")
        return StreamingResponse(self._events(content, stop, usage), media_type="text/event-stream")

    async def _events(
        self, content: list[dict[str, Any]], stop: str, usage: dict[str, int]
    ) -> AsyncIterator[bytes]:
        def event(data: dict[str, Any]) -> bytes:
            return f"event: {data['type']}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"

        start = {
            "id": "msg_upstream_2",
            "type": "message",
            "role": "assistant",
            "model": "claude-test-1",
            "content": [],
            "stop_reason": None,
            "usage": {**usage, "output_tokens": 1},
        }
        yield event({"type": "message_start", "message": start})
        for index, block in enumerate(content):
            if block["type"] == "text":
                opened = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                opened = {**block, "input": {}}
                delta = {
                    "type": "input_json_delta",
                    "partial_json": orjson.dumps(block["input"]).decode(),
                }
            yield event({"type": "content_block_start", "index": index, "content_block": opened})
            yield event({"type": "content_block_delta", "index": index, "delta": delta})
            yield event({"type": "content_block_stop", "index": index})
        yield event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        )
        yield event({"type": "message_stop"})


@pytest.fixture
def claude(tmp_path: Path) -> Iterator[tuple[ScriptedAnthropic, str, Path]]:
    upstream = ScriptedAnthropic()
    db = tmp_path / "areion.db"
    with serve_app(upstream.app) as url:
        model = {
            "name": "claude",
            "provider": "anthropic",
            "model": "claude-test-1",
            "base_url": url,
            "api_key": "sk-ant-upstream-0123456789",
            "price": {"input": 3.0, "output": 15.0, "cached_input": 0.3},
            "reasoning": True,
        }
        with serve_app(create_app(Runtime(parse_config(config([model], db))))) as areion_url:
            yield upstream, areion_url, db


@pytest.mark.parametrize("stream", [False, True])
async def test_an_anthropic_deployment_answers_messages(claude: Any, stream: bool) -> None:
    upstream, url, db = claude
    request: dict[str, Any] = {
        "model": "claude",
        "max_tokens": 3000,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "extra_body": {"top_k": 5},
    }
    if stream:
        async with client(url).messages.stream(**request) as events:
            first = await events.get_final_message()
            request_id = events.response.headers["x-request-id"]
    else:
        raw = await client(url).messages.with_raw_response.create(**request)
        first = await raw.parse()
        request_id = raw.headers["x-request-id"]
    assert first.stop_reason == "tool_use"
    assert [block.type for block in first.content] == ["text", "tool_use"]
    use = first.content[1]
    assert use.type == "tool_use"
    assert (use.id, use.name, use.input) == ("toolu_1", "get_weather", {"city": "Oslo"})
    # Anthropic's input_tokens leave out the cache reads, as the upstream said.
    assert first.usage.input_tokens == 30 and first.usage.cache_read_input_tokens == 10
    assert first.usage.output_tokens == 9
    # The Anthropic deployment was asked what the client asked, through the internal shape.
    sent = upstream.bodies[0]
    assert sent["model"] == "claude-test-1"
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [{"role": "user", "content": "Weather in Oslo?"}]
    assert sent["tools"] == [WEATHER]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (sent["top_k"], sent["stop_sequences"]) == (5, ["END"])
    assert sent["metadata"] == {"user_id": "user-42"}
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] == 3000
    assert upstream.headers[0]["x-api-key"] == "sk-ant-upstream-0123456789"
    [row] = ledger(db, request_id)
    assert row[:3] == ("claude", 40, 9)
    assert row[3] == pytest.approx((30 * 3.0 + 10 * 0.3 + 9 * 15.0) / 1e6)
    # The tool's result goes back as a tool_result block, is_error and all.
    final = await client(url).messages.create(
        **{key: value for key, value in request.items() if key != "messages"},
        messages=[
            *request["messages"],
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "no station",
                        "is_error": True,
                    }
                ],
            },
        ],
    )
    assert final.content[0].text == "Snow in Oslo."  # type: ignore[union-attr]
    assert upstream.bodies[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Error: no station"}
            ],
        },
    ]


async def test_areion_sim_answers_messages_as_an_anthropic_deployment(tmp_path: Path) -> None:
    sim = create_sim_app(SimEngine(time_scale=0.01, seed=1))
    with serve_app(sim) as sim_url:
        model = {
            "name": "claude",
            "provider": "anthropic",
            "model": "sim-fast",
            "base_url": sim_url,
            "price": PRICE,
        }
        settings = config([model], tmp_path / "areion.db")
        with serve_app(create_app(Runtime(parse_config(settings)))) as url:
            async with client(url).messages.stream(
                model="claude", max_tokens=40, messages=[{"role": "user", "content": "Hello"}]
            ) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                message = await stream.get_final_message()
    assert text and message.content[0].text == text  # type: ignore[union-attr]
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


# -- thinking -------------------------------------------------------------------------


async def test_thinking_needs_a_reasoning_model(upstream: Any, tmp_path: Path) -> None:
    up, url = upstream
    models = [openai_model("fast", url), openai_model("o-think", url, reasoning=True)]
    settings = config(models, tmp_path / "areion.db")
    settings["routes"] = [{"name": "auto", "candidates": ["fast", "o-think"]}]
    ask: dict[str, Any] = {
        "max_tokens": 8000,
        "messages": [{"role": "user", "content": "Prove it."}],
        "thinking": {"type": "enabled", "budget_tokens": 5000},
    }
    with serve_app(create_app(Runtime(parse_config(settings)))) as areion_url:
        await client(areion_url).messages.create(model="o-think", **ask)
        assert up.requests[-1]["reasoning_effort"] == "medium"
        assert "thinking" not in up.requests[-1]
        for model in ("fast", "auto"):  # a route may pick a model that cannot think
            with pytest.raises(anthropic.BadRequestError, match="reasoning: true"):
                await client(areion_url).messages.create(model=model, **ask)
        await client(areion_url).messages.create(
            model="fast", **{**ask, "thinking": {"type": "disabled"}}
        )
    assert up.calls == 2


def test_a_client_hanging_up_mid_stream_stops_the_upstream(tmp_path: Path) -> None:
    """The stream goes out through the same `EventStream` as chat completions: the
    upstream request is closed when the client goes, and what arrived is booked."""
    up = ScriptedUpstream()
    words = 50_000
    up.default = Behaviour(text=" ".join(["word"] * words))
    db = tmp_path / "areion.db"
    with serve_app(up.app) as upstream_url:
        runtime = Runtime(parse_config(config([openai_model("fast", upstream_url)], db)))
        with serve_app(create_app(runtime)) as url:
            host, port = url.removeprefix("http://").split(":")
            body = orjson.dumps(
                {
                    "model": "fast",
                    "max_tokens": 100_000,
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
            )
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(
                    b"POST /v1/messages HTTP/1.1\r\nhost: areion\r\n"
                    + f"x-api-key: {KEY}\r\ncontent-type: application/json\r\n".encode()
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                head = connection.recv(4096)
                assert head.startswith(b"HTTP/1.1 200")
            request_id = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-request-id:")
            )
            [(_, _, completion, _)] = ledger(db, request_id)
    assert 0 < completion < words / 2
