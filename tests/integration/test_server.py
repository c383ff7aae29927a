"""The OpenAI-compatible server, driven by the official `openai` SDK over loopback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import free_port, serve_app

USER_KEY = "sk-acme-test-key-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-9876543210"
METRICS_KEY = "metrics-scraper-key-0123"
AUTH = {"keys": [{"key": USER_KEY, "tenant": "acme"}], "metrics_keys": [METRICS_KEY]}


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream()
    with serve_app(up.app) as url:
        yield up, url


def areion_config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "fast",
                "provider": "openai",
                "model": "gpt-test",
                "base_url": url + "/v1",
                "api_key": UPSTREAM_KEY,
                "price": {"input": 0.15, "output": 0.60},
            },
            {
                "name": "dead",
                "provider": "openai",
                "model": "x",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",
            },
        ],
        "store": "sqlite:///:memory:",
        "retry": {"max_attempts": 2, "backoff_base": 0.01},
        **extra,
    }


@pytest.fixture
def server(upstream: Any) -> Iterator[tuple[ScriptedUpstream, str]]:
    up, url = upstream
    config = parse_config(areion_config(url, auth=AUTH))
    with serve_app(create_app(Runtime(config))) as areion_url:
        yield up, areion_url


def client(url: str, key: str = USER_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def test_chat_completion_through_the_sdk(server: Any) -> None:
    up, url = server
    raw = await client(url).chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], temperature=0, seed=7
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from upstream."
    assert completion.usage is not None and completion.usage.total_tokens == 18
    assert raw.headers["x-areion-model"] == "fast/gpt-test"
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx((11 * 0.15 + 7 * 0.6) / 1e6)
    sent = up.requests[0]
    assert sent["model"] == "gpt-test" and sent["seed"] == 7 and sent["temperature"] == 0
    assert up.headers[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_streaming_through_the_sdk(server: Any) -> None:
    _, url = server
    stream = await client(url).chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from upstream."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


async def test_stream_without_usage_option_has_no_usage_chunk(server: Any) -> None:
    _, url = server
    stream = await client(url).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


async def test_stream_broken_mid_way_ends_with_an_error_event(server: Any) -> None:
    up, url = server
    gate = threading.Event()
    up.default = Behaviour(text="one two three four", break_after=2, break_gate=gate)
    stream = await client(url).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
            if "".join(seen) == "one two":
                gate.set()
    assert "".join(seen) == "one two"


async def test_tool_calls_pass_through_the_server(server: Any) -> None:
    up, url = server
    up.default = Behaviour(
        tool_calls=[
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "x"}'},
            }
        ]
    )
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Find.",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    completion = await client(url).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "find x"}], tools=tools
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.id == "call_9" and call.function.name == "lookup"  # type: ignore[union-attr]
    assert up.requests[0]["tools"] == tools
    # The tool result goes back upstream in the next turn.
    await client(url).chat.completions.create(
        model="fast",
        messages=[
            {"role": "user", "content": "find x"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "found"},
        ],
        tools=tools,
    )
    assert up.requests[1]["messages"][2] == {
        "role": "tool",
        "content": "found",
        "tool_call_id": "call_9",
    }


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return dict(body["error"])


async def test_structured_output_through_parse(server: Any) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    up, url = server
    up.default = Behaviour(text='{"name": "Paris", "population": 2100000}')
    completion = await client(url).chat.completions.parse(
        model="fast",
        messages=[{"role": "user", "content": "The capital of France?"}],
        response_format=City,
    )
    assert completion.choices[0].message.parsed == City(name="Paris", population=2100000)
    sent = up.requests[-1]["response_format"]  # the schema reached the model
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City"


async def test_error_statuses(server: Any) -> None:
    up, url = server
    auth = {"authorization": f"Bearer {USER_KEY}"}
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/chat/completions", content=b"{not json", headers=auth)
        assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]
        r = await http.post(
            "/v1/chat/completions",
            headers=auth,
            json={
                "model": "fast",
                "messages": [{"role": "user", "content": "x"}],
                "temperature": 5,
            },
        )
        assert r.status_code == 400 and error_of(r)["param"] == "temperature"
        r = await http.post("/v1/chat/completions", headers=auth, json={"model": "fast"})
        assert r.status_code == 400 and error_of(r)["param"] == "messages"
        r = await http.post("/v1/chat/completions", headers=auth, json=[1, 2])
        assert r.status_code == 400
        body = {"model": "fast", "messages": [{"role": "user", "content": "x"}]}
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
        r = await http.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        r = await http.post("/v1/chat/completions", headers=auth, json={**body, "model": "nope"})
        assert r.status_code == 404 and "fast" in error_of(r)["message"]
        up.default = Behaviour(status=429, retry_after="42")
        r = await http.post("/v1/chat/completions", headers=auth, json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "42"
        assert error_of(r)["type"] == "rate_limit_error"
        up.default = Behaviour(status=500)
        r = await http.post("/v1/chat/completions", headers=auth, json=body)
        assert r.status_code == 502
        r = await http.post("/v1/chat/completions", headers=auth, json={**body, "model": "dead"})
        assert r.status_code == 503 and "retry-after" in r.headers
        up.default = Behaviour(delay=3)
        r = await http.get("/v1/nothing-here")
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"
        r = await http.get("/v1/chat/completions")
        assert r.status_code == 405


async def test_upstream_timeout_is_504(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(delay=2)
    config = areion_config(url)
    config["models"][0].update(first_byte_timeout=0.2, total_timeout=1)
    config["retry"] = {"max_attempts": 1}
    with serve_app(create_app(Runtime(parse_config(config)))) as areion_url:
        async with httpx.AsyncClient(base_url=areion_url) as http:
            r = await http.post(
                "/v1/chat/completions",
                json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 504 and error_of(r)["type"] == "timeout_error"


async def test_models_health_and_metrics(server: Any) -> None:
    _, url = server
    models = await client(url).models.list()
    assert sorted(m.id for m in models.data) == ["dead", "fast"]
    await client(url).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}]
    )
    scraper = {"authorization": f"Bearer {METRICS_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=scraper) as http:
        health = (await http.get("/healthz")).json()
        assert health["status"] == "ok" and "fast/gpt-test" in health["deployments"]
        text = (await http.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("deployment", "fast/gpt-test"), ("model", "fast"))
    assert samples[("areion_requests_total", (*labels, ("outcome", "ok")))] == 1
    genai = (
        ("deployment", "fast/gpt-test"),
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "fast"),
    )
    assert samples[("gen_ai_client_operation_duration_seconds_count", genai)] == 1
    input_tokens = (*genai, ("gen_ai_token_type", "input"))
    assert samples[("gen_ai_client_token_usage_sum", input_tokens)] == 11
    assert samples[("areion_tokens_total", (*labels, ("type", "output")))] == 7
    cost_key = (
        "areion_cost_usd_total",
        (("deployment", "fast/gpt-test"), ("model", "fast"), ("tenant", "acme")),
    )
    assert samples[cost_key] == pytest.approx((11 * 0.15 + 7 * 0.6) / 1e6)


async def test_keys_never_appear_in_logs(upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    up, url = upstream
    caplog.set_level(logging.DEBUG)
    config = parse_config(areion_config(url, auth=AUTH))
    runtime = Runtime(config)
    with serve_app(create_app(runtime)) as areion_url:
        ok = client(areion_url)
        await ok.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
        stream = await ok.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            pass
        with pytest.raises(openai.AuthenticationError):
            await client(areion_url, key=USER_KEY + "x").chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "x"}]
            )
        up.default = Behaviour(status=401)
        with pytest.raises(openai.APIStatusError):
            await ok.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "x"}]
            )
        scraper = {"authorization": f"Bearer {METRICS_KEY}"}
        async with httpx.AsyncClient(base_url=areion_url, headers=scraper) as http:
            exposed = (await http.get("/metrics")).text + (await http.get("/healthz")).text
    logged = caplog.text + repr(config) + str(config)
    assert caplog.records, "debug logging captured nothing; the test would prove nothing"
    for secret in (USER_KEY, UPSTREAM_KEY, METRICS_KEY):
        assert secret not in logged
        assert secret not in exposed
