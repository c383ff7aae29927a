"""`areion sim` over HTTP, driven by the official OpenAI and Anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from areion.sim import SimEngine, SimProfile, builtin_profiles
from areion.sim.server import create_sim_app
from tests.support import serve_app

WEATHER_OPENAI: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
WEATHER_ANTHROPIC: Any = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "input_schema": WEATHER_OPENAI["function"]["parameters"],
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    profiles = builtin_profiles()
    for profile in (
        SimProfile(name="sim-test", ttft_ms=500, tokens_per_s=100, output_tokens=20),
        SimProfile(name="sim-429", rate_limit_rate=1.0, retry_after_s=2),
        SimProfile(name="sim-500", error_rate=1.0),
        # 1 s a request: long enough that four sent together are all in at once, even
        # on a busy machine.
        SimProfile(name="sim-slow", ttft_ms=100_000, output_tokens=2, max_running=2),
    ):
        profiles[profile.name] = profile
    with serve_app(create_sim_app(SimEngine(profiles, time_scale=0.01, seed=0))) as base:
        yield base


def openai_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def anthropic_client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0)


async def test_openai_non_stream(url: str) -> None:
    async with openai_client(url) as client:
        response = await client.chat.completions.create(
            model="sim-test", messages=[{"role": "user", "content": "hello there"}]
        )
        cut = await client.chat.completions.create(
            model="sim-test", messages=[{"role": "user", "content": "hello there"}], max_tokens=3
        )
    assert response.model == "sim-test"
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    assert response.usage is not None and 15 <= response.usage.completion_tokens <= 25
    assert response.usage.prompt_tokens > 0
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 3
    assert choice.message.content.startswith(cut.choices[0].message.content or "-")


async def test_openai_stream_with_and_without_usage(url: str) -> None:
    messages: Any = [{"role": "user", "content": "stream please"}]
    async with openai_client(url) as client:
        whole = await client.chat.completions.create(model="sim-test", messages=messages)
        stream = await client.chat.completions.create(
            model="sim-test",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        bare = await client.chat.completions.create(
            model="sim-test", messages=messages, stream=True
        )
        bare_chunks = [chunk async for chunk in bare]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert all(chunk.usage is None for chunk in bare_chunks)
    assert "".join(c.choices[0].delta.content or "" for c in bare_chunks if c.choices) == text


async def test_openai_tool_call_round_trip(url: str) -> None:
    messages: Any = [{"role": "user", "content": "weather in Oslo?"}]
    async with openai_client(url) as client:
        response = await client.chat.completions.create(
            model="sim-test", messages=messages, tools=[WEATHER_OPENAI]
        )
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        call: Any = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "sim"}

        stream = await client.chat.completions.create(
            model="sim-test", messages=messages, tools=[WEATHER_OPENAI], stream=True
        )
        pieces = [
            tc.function.arguments or ""
            async for chunk in stream
            if chunk.choices
            for tc in chunk.choices[0].delta.tool_calls or ()
            if tc.function is not None
        ]
        assert json.loads("".join(pieces)) == {"city": "sim"}

        follow_up = [
            *messages,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        final = await client.chat.completions.create(
            model="sim-test", messages=follow_up, tools=[WEATHER_OPENAI]
        )
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


async def test_openai_errors(url: str) -> None:
    async with openai_client(url) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model="gpt-nothing", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="sim-500", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="sim-500", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="sim-429", messages=[{"role": "user", "content": "hi"}]
            )
    assert "sim-fast" in str(missing.value)
    async with httpx.AsyncClient(base_url=url) as http:
        bad = await http.post("/v1/chat/completions", content=b"{not json")
        wrong = await http.post("/v1/chat/completions", json={"model": "sim-test"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages"


async def test_rate_limit_sends_retry_after_on_both_apis(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": "sim-429", "messages": [{"role": "user", "content": "hi"}]},
        )
        messages = await http.post(
            "/v1/messages",
            json={
                "model": "sim-429",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert chat.status_code == 429 and chat.headers["retry-after"] == "2"
    error = chat.json()["error"]
    assert error["type"] == "rate_limit_error" and error["message"]
    assert messages.status_code == 429 and messages.headers["retry-after"] == "2"
    assert messages.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": messages.json()["error"]["message"]},
    }


async def test_anthropic_non_stream(url: str) -> None:
    async with anthropic_client(url) as client:
        message = await client.messages.create(
            model="sim-test",
            max_tokens=100,
            system="You are terse.",
            messages=[{"role": "user", "content": "hello there"}],
        )
        cut = await client.messages.create(
            model="sim-test",
            max_tokens=3,
            system=[{"type": "text", "text": "You are terse."}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "sim-test"
    assert message.stop_reason == "end_turn"
    block: Any = message.content[0]
    assert block.type == "text" and block.text
    assert message.usage.input_tokens > 0 and 15 <= message.usage.output_tokens <= 25
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    assert block.text.startswith(cut.content[0].text)  # type: ignore[union-attr]


async def test_anthropic_stream_gives_text_final_message_and_usage(url: str) -> None:
    async with anthropic_client(url) as client:
        whole = await client.messages.create(
            model="sim-test", max_tokens=100, messages=[{"role": "user", "content": "stream it"}]
        )
        async with client.messages.stream(
            model="sim-test", max_tokens=100, messages=[{"role": "user", "content": "stream it"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text == whole.content[0].text  # type: ignore[union-attr]
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == whole.usage.input_tokens > 0
    assert final.usage.output_tokens == whole.usage.output_tokens


async def test_anthropic_tool_use_round_trip(url: str) -> None:
    question: Any = {"role": "user", "content": "weather in Oslo?"}
    async with anthropic_client(url) as client:
        message = await client.messages.create(
            model="sim-test", max_tokens=100, messages=[question], tools=[WEATHER_ANTHROPIC]
        )
        assert message.stop_reason == "tool_use"
        use: Any = message.content[-1]
        assert use.type == "tool_use" and use.name == "get_weather"
        assert use.input == {"city": "sim"} and use.id.startswith("toolu_")

        async with client.messages.stream(
            model="sim-test", max_tokens=100, messages=[question], tools=[WEATHER_ANTHROPIC]
        ) as stream:
            streamed = await stream.get_final_message()
        streamed_use: Any = streamed.content[-1]
        assert streamed.stop_reason == "tool_use"
        assert streamed_use.type == "tool_use" and streamed_use.input == {"city": "sim"}

        result: Any = {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        }
        final = await client.messages.create(
            model="sim-test",
            max_tokens=100,
            messages=[question, {"role": "assistant", "content": message.content}, result],
            tools=[WEATHER_ANTHROPIC],
        )
    assert final.stop_reason == "end_turn"
    assert [block.type for block in final.content] == ["text"]


async def test_anthropic_errors(url: str) -> None:
    async with anthropic_client(url) as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(
                model="claude-nothing", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(anthropic.InternalServerError):
            await client.messages.create(
                model="sim-500", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(anthropic.RateLimitError):
            async with client.messages.stream(
                model="sim-429", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                await stream.get_final_message()
    async with httpx.AsyncClient(base_url=url) as http:
        no_max = await http.post(
            "/v1/messages",
            json={"model": "sim-test", "messages": [{"role": "user", "content": "x"}]},
        )
    assert no_max.status_code == 400
    error = no_max.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in error["error"]["message"]


def gauges(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels["model_name"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_show_running_and_waiting_while_in_flight(url: str) -> None:
    body: Any = {"model": "sim-slow", "messages": [{"role": "user", "content": "slow"}]}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        idle = gauges((await http.get("/metrics")).text)
        assert idle[("vllm:num_requests_running", "sim-fast")] == 0
        calls = [
            asyncio.create_task(http.post("/v1/chat/completions", json=body)) for _ in range(4)
        ]
        deadline = time.monotonic() + 10
        busy = idle
        while time.monotonic() < deadline:
            busy = gauges((await http.get("/metrics")).text)
            if busy[("vllm:num_requests_waiting", "sim-slow")] == 2:
                break
            await asyncio.sleep(0.01)
        answers = await asyncio.gather(*calls)
        after = gauges((await http.get("/metrics")).text)
    assert busy[("vllm:num_requests_running", "sim-slow")] == 2
    assert busy[("vllm:num_requests_waiting", "sim-slow")] == 2
    kv = busy[("vllm:kv_cache_usage_perc", "sim-slow")]
    assert 0 < kv <= 1 and busy[("vllm:gpu_cache_usage_perc", "sim-slow")] == kv
    assert busy[("vllm:num_requests_running", "sim-fast")] == 0
    assert all(answer.status_code == 200 for answer in answers)
    assert after[("vllm:num_requests_running", "sim-slow")] == 0
    assert after[("vllm:kv_cache_usage_perc", "sim-slow")] == 0


async def test_models_and_healthz(url: str) -> None:
    async with openai_client(url) as client:
        listed = [model.id async for model in client.models.list()]
    assert {"sim-fast", "sim-strong", "sim-flaky", "sim-test"} <= set(listed)
    async with httpx.AsyncClient(base_url=url) as http:
        health = await http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_the_openai_sdk_runs_a_batch_on_the_sim(url: str) -> None:
    sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    lines = [
        {"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]}},
        {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "no-such", "messages": [{"role": "user", "content": "hi"}]}},
    ]  # fmt: skip
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = sdk.files.create(file=("in.jsonl", content), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 30
    while batch.status != "completed":
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.05)
        batch = sdk.batches.retrieve(batch.id)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    assert batch.output_file_id is not None and batch.error_file_id is not None
    (answer,) = [json.loads(x) for x in sdk.files.content(batch.output_file_id).text.splitlines()]
    assert answer["custom_id"] == "ok" and answer["response"]["body"]["usage"]["total_tokens"] > 0
    (error,) = [json.loads(x) for x in sdk.files.content(batch.error_file_id).text.splitlines()]
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 404


def test_the_anthropic_sdk_runs_a_message_batch_on_the_sim(url: str) -> None:
    sdk = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    batch = sdk.messages.batches.create(
        requests=[
            {"custom_id": "ok", "params": {"model": "sim-fast", "max_tokens": 8, "messages": hi}},
            {"custom_id": "bad", "params": {"model": "no-such", "max_tokens": 8, "messages": hi}},
        ]
    )
    assert batch.type == "message_batch" and batch.processing_status == "in_progress"
    deadline = time.monotonic() + 30
    while batch.processing_status != "ended":
        assert time.monotonic() < deadline, batch.processing_status
        time.sleep(0.05)
        batch = sdk.messages.batches.retrieve(batch.id)
    counts = batch.request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (1, 1, 0)
    assert batch.results_url is not None and batch.ended_at is not None
    results = {r.custom_id: r.result for r in sdk.messages.batches.results(batch.id)}
    ok, bad = results["ok"], results["bad"]
    assert ok.type == "succeeded" and ok.message.usage.output_tokens > 0
    assert ok.message.content[0].type == "text" and ok.message.content[0].text
    assert bad.type == "errored" and bad.error.error.type == "not_found_error"
    assert batch.id in [b.id for b in sdk.messages.batches.list(limit=100)]


def test_a_cancelled_message_batch_ends_its_unanswered_requests_canceled(url: str) -> None:
    sdk = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    requests: Any = [
        {"custom_id": f"r{i}", "params": {"model": "sim-slow", "max_tokens": 2,
                                          "messages": [{"role": "user", "content": "hi"}]}}
        for i in range(40)
    ]  # fmt: skip
    batch = sdk.messages.batches.create(requests=requests)
    cancelled = sdk.messages.batches.cancel(batch.id)
    assert cancelled.processing_status == "canceling" and cancelled.cancel_initiated_at
    deadline = time.monotonic() + 60
    while batch.processing_status != "ended":
        assert time.monotonic() < deadline, batch.processing_status
        time.sleep(0.05)
        batch = sdk.messages.batches.retrieve(batch.id)
    kinds = [r.result.type for r in sdk.messages.batches.results(batch.id)]
    # The requests under way when the cancel came are answered; the rest are not.
    assert len(kinds) == 40 and kinds.count("canceled") == batch.request_counts.canceled > 0
    assert kinds.count("succeeded") == batch.request_counts.succeeded


def test_a_message_batch_that_is_not_one_is_refused(url: str) -> None:
    for body in ({"requests": []}, {"requests": [{"custom_id": "a"}]}, {"nope": 1}):
        answer = httpx.post(url + "/v1/messages/batches", json=body)
        assert answer.status_code == 400 and answer.json()["type"] == "error"
    assert httpx.get(url + "/v1/messages/batches/msgbatch_none").status_code == 404
