"""The simulated model: determinism, lengths, tool calls, queueing, faults and pacing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from areion.config import ModelConfig
from areion.errors import (
    ConfigError,
    RateLimitedError,
    RequestError,
    UnknownModelError,
    UpstreamError,
)
from areion.providers.base import Provider
from areion.providers.sim import SimProvider
from areion.sim import SimEngine, SimProfile, builtin_profiles, load_profiles
from areion.types import ChatRequest, Message, StreamChunk, ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "note": {"type": "string"},
            },
            "required": ["city", "days", "metric"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}


def ask(text: str, model: str = "sim-test", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


def engine(*extra: SimProfile, time_scale: float = 0.01, seed: int | None = 0) -> SimEngine:
    profiles = builtin_profiles()
    profiles["sim-test"] = SimProfile(
        name="sim-test", ttft_ms=100, tokens_per_s=100, output_tokens=40
    )
    for profile in extra:
        profiles[profile.name] = profile
    return SimEngine(profiles, time_scale=time_scale, seed=seed)


async def collect(chunks: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in chunks]


async def test_same_prompt_gives_same_answer_and_another_prompt_another() -> None:
    sim = engine()
    first = await sim.complete(ask("What is the capital of France?"))
    again = await engine(seed=99).complete(ask("What is the capital of France?"))
    other = await sim.complete(ask("Write a haiku about queues."))
    assert first.message.text()
    assert again.message.text() == first.message.text()
    assert other.message.text() != first.message.text()
    assert first.choices[0].finish_reason == "stop"


async def test_length_follows_profile_and_varies_with_prompt() -> None:
    sim = engine()
    lengths = set()
    for index in range(8):
        response = await sim.complete(ask(f"question number {index}"))
        assert response.usage is not None
        assert 30 <= response.usage.completion_tokens <= 50  # 40 +- 25%
        lengths.add(response.usage.completion_tokens)
    assert len(lengths) > 1


async def test_max_tokens_cuts_the_answer_with_finish_length() -> None:
    sim = engine()
    full = await sim.complete(ask("Tell me a story."))
    cut = await sim.complete(ask("Tell me a story.", max_tokens=5))
    assert cut.usage is not None and cut.usage.completion_tokens == 5
    assert cut.choices[0].finish_reason == "length"
    assert full.message.text().startswith(cut.message.text())
    assert len(cut.message.text().split()) == 5
    generous = await sim.complete(ask("Tell me a story.", max_tokens=10_000))
    assert generous.choices[0].finish_reason == "stop"
    assert generous.message.text() == full.message.text()


async def test_usage_estimates_prompt_tokens_from_characters() -> None:
    response = await engine().complete(ask("x" * 400))
    assert response.usage is not None
    assert 100 <= response.usage.prompt_tokens <= 110
    assert response.usage.cached_tokens == 0


async def test_stream_yields_role_content_finish_then_usage_only() -> None:
    sim = engine()
    whole = await sim.complete(ask("stream me"))
    chunks = await collect(sim.stream(ask("stream me")))
    assert chunks[0].role == "assistant"
    assert "".join(chunk.content or "" for chunk in chunks) == whole.message.text()
    assert chunks[-2].finish_reason == "stop"
    last = chunks[-1]
    assert last.usage is not None and last.usage == whole.usage
    assert last.content is None and last.finish_reason is None and last.role is None
    assert len({chunk.id for chunk in chunks}) == 1


async def test_stream_paces_tokens_and_batches_when_fast() -> None:
    paced = SimProfile(name="sim-paced", ttft_ms=0, tokens_per_s=100, output_tokens=5)
    request = ask("pace", model="sim-paced", max_tokens=5)
    start = time.monotonic()
    chunks = await collect(engine(paced, time_scale=1.0).stream(request))
    elapsed = time.monotonic() - start
    assert sum(1 for chunk in chunks if chunk.content) == 5  # 10 ms a token: one per chunk
    assert elapsed >= 0.035  # four gaps of 10 ms after the first token

    hurried = await collect(engine(paced, time_scale=0.01).stream(request))
    assert sum(1 for chunk in hurried if chunk.content) == 1  # 0.1 ms a token: batched


async def test_time_scale_shrinks_every_delay() -> None:
    sim = SimEngine(time_scale=0.01, seed=0)
    start = time.monotonic()
    response = await sim.complete(ask("a long answer please", model="sim-strong"))
    elapsed = time.monotonic() - start
    assert response.usage is not None
    # sim-strong: 400 ms to the first token, then 60 tokens/s.
    natural = 0.4 + (response.usage.completion_tokens - 1) / 60
    assert natural > 2.0
    assert natural * 0.01 * 0.9 <= elapsed < natural * 0.5  # far from the unscaled time


async def test_tool_call_to_first_tool_with_required_arguments() -> None:
    response = await engine().complete(ask("weather in Paris?", tools=[WEATHER, SEARCH]))
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "sim", "days": 1, "metric": True}
    assert call.id


async def test_named_tool_choice_picks_that_tool() -> None:
    choice = {"type": "function", "function": {"name": "search"}}
    response = await engine().complete(ask("find it", tools=[WEATHER, SEARCH], tool_choice=choice))
    calls = response.message.tool_calls
    assert calls is not None and calls[0].name == "search"
    assert json.loads(calls[0].arguments) == {"query": "sim"}

    missing = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(RequestError, match="nope"):
        await engine().complete(ask("find it", tools=[WEATHER], tool_choice=missing))


async def test_no_tool_call_when_choice_none_or_after_tool_result() -> None:
    sim = engine()
    plain = await sim.complete(ask("weather?", tools=[WEATHER], tool_choice="none"))
    assert plain.message.tool_calls is None and plain.choices[0].finish_reason == "stop"

    call = ToolCall(id="call_1", name="get_weather", arguments='{"city":"sim"}')
    after = ChatRequest(
        model="sim-test",
        messages=[
            Message(role="user", content="weather?"),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id="call_1", content="sunny"),
        ],
        tools=[WEATHER],
    )
    answer = await sim.complete(after)
    assert answer.message.tool_calls is None
    assert answer.message.text() and answer.choices[0].finish_reason == "stop"


async def test_streamed_tool_call_reassembles() -> None:
    chunks = await collect(engine().stream(ask("weather?", tools=[WEATHER])))
    deltas = [delta for chunk in chunks for delta in chunk.tool_calls or ()]
    assert deltas[0].id and deltas[0].name == "get_weather"
    arguments = "".join(delta.arguments for delta in deltas)
    assert json.loads(arguments) == {"city": "sim", "days": 1, "metric": True}
    assert chunks[-2].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None


async def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="sim-fast"):
        await engine().complete(ask("hi", model="gpt-nothing"))
    with pytest.raises(UnknownModelError):
        await collect(engine().stream(ask("hi", model="gpt-nothing")))


async def test_requests_beyond_max_running_wait_in_a_queue() -> None:
    narrow = SimProfile(name="sim-narrow", ttft_ms=5000, output_tokens=1, max_running=2)
    sim = engine(narrow, time_scale=0.01)  # 50 ms per request
    start = time.monotonic()
    tasks = [
        asyncio.create_task(sim.complete(ask(f"q{index}", model="sim-narrow")))
        for index in range(5)
    ]
    # Ticks of the loop, not a sleep: each request holds its slot for 50 ms of real
    # time, which a busy machine could spend before a timed check.
    for _ in range(100):
        load = sim.load("sim-narrow")
        if load.running + load.waiting == 5:
            break
        await asyncio.sleep(0)
    assert (load.running, load.waiting, load.max_running) == (2, 3, 2)
    assert 0 < load.kv_cache_usage < 1
    await asyncio.gather(*tasks)
    # Five requests through two slots take three rounds.
    assert time.monotonic() - start >= 0.14
    idle = sim.load("sim-narrow")
    assert (idle.running, idle.waiting, idle.kv_cache_usage) == (0, 0, 0.0)


async def test_closing_a_stream_early_frees_its_slot() -> None:
    sim = engine()
    stream = sim.stream(ask("long one", max_tokens=40))
    await anext(stream)
    assert sim.load("sim-test").running == 1
    await stream.aclose()
    assert sim.load("sim-test").running == 0


async def test_faults_follow_the_rates_and_replay_with_a_seed() -> None:
    async def outcomes(seed: int) -> list[str]:
        sim = SimEngine(time_scale=0.001, seed=seed)
        seen = []
        for index in range(200):
            try:
                await sim.complete(ask(f"p{index}", model="sim-flaky", max_tokens=1))
                seen.append("ok")
            except RateLimitedError as error:
                assert error.retry_after == builtin_profiles()["sim-flaky"].retry_after_s
                seen.append("429")
            except UpstreamError as error:
                assert error.upstream_status == 500
                seen.append("500")
        return seen

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert first != await outcomes(8)
    assert 8 <= first.count("429") <= 35  # rate 0.1 of 200
    assert 22 <= first.count("500") <= 60  # rate 0.2 of 200


async def test_faulty_stream_fails_before_its_first_chunk() -> None:
    broken = SimProfile(name="sim-broken", error_rate=1.0)
    limited = SimProfile(name="sim-limited", rate_limit_rate=1.0, retry_after_s=3)
    sim = engine(broken, limited)
    with pytest.raises(UpstreamError, match="injected"):
        await anext(sim.stream(ask("x", model="sim-broken")))
    with pytest.raises(RateLimitedError) as caught:
        await anext(sim.stream(ask("x", model="sim-limited")))
    assert caught.value.retry_after == 3
    assert sim.load("sim-broken").running == 0


def test_builtin_profiles() -> None:
    profiles = builtin_profiles()
    fast, strong, flaky = profiles["sim-fast"], profiles["sim-strong"], profiles["sim-flaky"]
    assert fast.ttft_ms < strong.ttft_ms and fast.tokens_per_s > strong.tokens_per_s
    assert (flaky.error_rate, flaky.rate_limit_rate) == (0.2, 0.1)
    assert fast.error_rate == 0 and strong.error_rate == 0


def test_load_profiles_adds_and_overrides(tmp_path: Path) -> None:
    file = tmp_path / "profiles.yaml"
    file.write_text(
        "- name: sim-fast\n  ttft_ms: 10\n- name: sim-tiny\n  tokens_per_s: 500\n  max_running: 2\n"
    )
    profiles = load_profiles(file)
    assert profiles["sim-fast"].ttft_ms == 10
    assert profiles["sim-fast"].tokens_per_s == builtin_profiles()["sim-fast"].tokens_per_s
    assert profiles["sim-tiny"].max_running == 2 and profiles["sim-tiny"].tokens_per_s == 500
    assert "sim-strong" in profiles


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("- name: x\n  error_rate: 1.5\n", "error_rate"),
        ("- name: x\n  tokens_per_s: 0\n", "tokens_per_s"),
        ("- name: x\n  max_running: 2.5\n", "max_running"),
        ("- name: x\n  ttft_ms: fast\n", "ttft_ms"),
        ("- name: x\n  speed: 3\n", "speed"),
        ("- ttft_ms: 3\n", "name"),
    ],
)
def test_load_profiles_names_the_bad_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml_text)
    with pytest.raises(ValueError, match=field):
        load_profiles(file)


def test_profiles_file_must_be_a_list(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("name: x\n")
    with pytest.raises(ValueError, match="list"):
        load_profiles(file)


async def test_sim_provider_answers_in_process_and_reports_load() -> None:
    sim = engine(SimProfile(name="sim-one", ttft_ms=3000, output_tokens=2, max_running=1))
    config = ModelConfig(name="group", provider="sim", model="sim-one")
    provider = SimProvider(config, deployment="d1", engine=sim)
    assert isinstance(provider, Provider)
    first = asyncio.create_task(provider.complete(ask("a", model="group")))
    second = asyncio.create_task(provider.complete(ask("b", model="group")))
    for _ in range(100):  # ticks, not a sleep: the first holds its slot only 30 ms
        load = provider.load()
        if load.running + load.waiting == 2:
            break
        await asyncio.sleep(0)
    assert (load.running, load.waiting) == (1, 1)
    response, _ = await asyncio.gather(first, second)
    assert response.model == "sim-one"
    chunks = await collect(provider.stream(ask("a", model="group")))
    assert "".join(chunk.content or "" for chunk in chunks) == response.message.text()
    await provider.aclose()


def test_sim_provider_uses_profile_and_rejects_unknown() -> None:
    config = ModelConfig(name="g", provider="sim", model="ignored", profile="sim-fast")
    assert SimProvider(config, deployment="d").load().model == "sim-fast"
    with pytest.raises(ConfigError, match="sim-fast"):
        SimProvider(ModelConfig(name="g", provider="sim", model="gpt-x"), deployment="d")


async def test_tool_rounds_sets_how_many_turns_call_tools() -> None:
    sim = engine(SimProfile(name="sim-3", ttft_ms=10, output_tokens=5, tool_rounds=2))
    messages = [Message(role="user", content="plan a trip")]
    names = []
    for _ in range(3):
        request = ChatRequest(model="sim-3", messages=list(messages), tools=[WEATHER, SEARCH])
        message = (await sim.complete(request)).choices[0].message
        messages.append(message)
        for call in message.tool_calls or ():
            names.append(call.name)
            messages.append(Message(role="tool", tool_call_id=call.id, content="ok"))
    assert names == ["get_weather", "search"]  # two rounds, then text
    assert messages[-1].tool_calls is None and messages[-1].content
