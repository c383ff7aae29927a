"""The gateway over real loopback HTTP: failover, breakers, Retry-After, timeouts, fallbacks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from areion import (
    ChatRequest,
    Message,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    RequestError,
    Runtime,
    StreamInterruptedError,
    UpstreamError,
)
from areion.config import parse_config
from areion.gateway import BreakerState
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import FirstChoice, ManualClock, free_port, serve_app


def ask(model: str = "fast", text: str = "hi", **kwargs: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **kwargs)


def deployment(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai",
        "model": f"m-{name}",
        "base_url": url + "/v1",
        "price": {"input": 1.0, "output": 2.0, "cached_input": 0.5},
        **extra,
    }


def runtime(models: list[dict[str, Any]], **extra: Any) -> Runtime:
    config = parse_config({"models": models, "store": "sqlite:///:memory:", **extra})
    return Runtime(config)


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream("a")
    with serve_app(up.app) as url:
        yield up, url


@pytest.fixture
def second() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream("b")
    with serve_app(up.app) as url:
        yield up, url


async def test_failover_when_a_deployment_is_dead(upstream: Any) -> None:
    up, url = upstream
    dead = f"http://127.0.0.1:{free_port()}"
    models = [deployment("fast", dead, id="dead"), deployment("fast", url, id="alive")]
    async with runtime(models, breaker={"failure_threshold": 2, "reset_timeout": 60}) as rt:
        rt.gateway.rng = FirstChoice()  # ties go to the dead one, until its breaker opens
        answers = [await rt.chat(ask()) for _ in range(10)]
        assert {a.deployment for a in answers} == {"alive"}
        assert up.calls == 10
        dead_one = rt.gateway.deployments["dead"]
        assert dead_one.breaker.state is BreakerState.OPEN


async def test_breaker_opens_then_probes_and_closes(upstream: Any) -> None:
    up, url = upstream
    up.then(*[Behaviour(status=500)] * 3)
    models = [deployment("fast", url, id="only")]
    config = {
        "breaker": {"failure_threshold": 3, "reset_timeout": 0.3},
        "retry": {"max_attempts": 1},
    }
    async with runtime(models, **config) as rt:
        clock = rt.gateway.clock = ManualClock()  # the breaker's time moves only below
        for _ in range(3):
            with pytest.raises(UpstreamError):
                await rt.chat(ask())
        assert rt.gateway.deployments["only"].breaker.state is BreakerState.OPEN
        # While open, calls are refused without reaching the upstream.
        with pytest.raises(ProviderUnavailableError) as refused:
            await rt.chat(ask())
        assert up.calls == 3
        assert refused.value.retry_after == pytest.approx(0.3)
        clock.advance(0.3)
        answer = await rt.chat(ask())  # the half-open probe succeeds
        assert answer.message.content == "Hello from upstream."
        assert rt.gateway.deployments["only"].breaker.state is BreakerState.CLOSED
        assert up.calls == 4


async def test_retry_after_is_honoured(upstream: Any) -> None:
    up, url = upstream
    up.then(Behaviour(status=429, retry_after="1"))
    async with runtime([deployment("fast", url)]) as rt:
        answer = await rt.chat(ask())
        assert answer.message.content == "Hello from upstream."
        assert up.calls == 2
        assert up.times[1] - up.times[0] >= 0.95  # a sleep lasts at least as asked


async def test_long_retry_after_is_reported_not_waited(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(status=429, retry_after="30")
    async with runtime([deployment("fast", url)]) as rt:
        with pytest.raises(RateLimitedError) as error:
            await rt.chat(ask())
        assert error.value.retry_after == 30
        assert up.calls == 1  # no wait: a wait would have been followed by a retry


async def test_rate_limited_deployment_is_passed_over(upstream: Any, second: Any) -> None:
    (a, url_a), (_, url_b) = upstream, second
    a.default = Behaviour(status=429, retry_after="20")
    models = [deployment("fast", url_a, id="a"), deployment("fast", url_b, id="b")]
    async with runtime(models) as rt:
        rt.gateway.rng = FirstChoice()  # the idle pair's tie goes to a: it is asked first
        for _ in range(6):
            assert (await rt.chat(ask())).deployment == "b"
        assert a.calls == 1  # cooled down after its first 429, not asked again


async def test_fallback_to_another_group(upstream: Any, second: Any) -> None:
    (a, url_a), (b, url_b) = upstream, second
    a.default = Behaviour(status=503)
    b.default = Behaviour(text="from strong")
    models = [deployment("fast", url_a), deployment("strong", url_b)]
    async with runtime(models, fallbacks={"fast": ["strong"]}) as rt:
        answer = await rt.chat(ask())
        assert answer.message.content == "from strong"
        assert answer.deployment == "strong/m-strong"
        assert a.calls == 3  # max_attempts in the first group, then the fallback
        assert b.requests[0]["model"] == "m-strong"


async def test_caller_errors_are_not_retried(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(status=400)
    async with runtime([deployment("fast", url)]) as rt:
        with pytest.raises(RequestError):
            await rt.chat(ask())
        assert up.calls == 1


async def test_first_byte_timeout(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(delay=2.0)
    models = [deployment("fast", url, first_byte_timeout=0.2, total_timeout=5)]
    async with runtime(models, retry={"max_attempts": 1}) as rt:
        # Without the first-byte timeout the answer would come, after 2 s.
        with pytest.raises(ProviderTimeoutError, match="first-byte timeout"):
            await rt.chat(ask())


async def test_total_timeout(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(delay=2.0)
    models = [deployment("fast", url, first_byte_timeout=0.3, total_timeout=0.3)]
    async with runtime(models, retry={"max_attempts": 1}) as rt:
        with pytest.raises(ProviderTimeoutError):
            await rt.chat(ask())


async def test_stream_retries_before_the_first_byte(upstream: Any) -> None:
    up, url = upstream
    up.then(Behaviour(status=500))
    async with runtime([deployment("fast", url)]) as rt:
        stream = await rt.chat_stream(ask())
        text = "".join([chunk.content or "" async for chunk in stream])
        assert text == "Hello from upstream."
        assert up.calls == 2
        assert stream.usage is not None and stream.usage.prompt_tokens == 11
        assert stream.cost_usd == pytest.approx((11 * 1.0 + 7 * 2.0) / 1e6)


async def test_stream_failure_after_first_byte_is_explicit(upstream: Any) -> None:
    up, url = upstream
    gate = threading.Event()
    up.default = Behaviour(text="one two three four", break_after=2, break_gate=gate)
    async with runtime([deployment("fast", url)]) as rt:
        stream = await rt.chat_stream(ask())
        seen: list[str] = []
        with pytest.raises(StreamInterruptedError):
            async for chunk in stream:
                seen.append(chunk.content or "")
                if "".join(seen) == "one two":
                    gate.set()
        assert "".join(seen) == "one two"
        assert up.calls == 1  # never retried once output was sent
        # The partial output is still paid for, with estimated usage.
        assert stream.usage is not None and stream.usage.estimated
        await rt.ledger.flush()
        [entry] = await rt.store.ledger()
        assert entry.estimated and entry.completion_tokens == 2


async def test_stream_total_timeout_mid_stream(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(text="a b c d e f g h", chunk_delay=0.2)
    models = [deployment("fast", url, first_byte_timeout=0.5, total_timeout=0.5)]
    async with runtime(models) as rt:
        stream = await rt.chat_stream(ask())
        with pytest.raises(StreamInterruptedError, match="total timeout"):
            async for _ in stream:
                pass


async def test_tool_calls_pass_through(upstream: Any) -> None:
    up, url = upstream
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    up.default = Behaviour(tool_calls=calls)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with runtime([deployment("fast", url)]) as rt:
        answer = await rt.chat(ask(tools=tools, tool_choice="auto"))
        assert answer.choices[0].finish_reason == "tool_calls"
        [call] = answer.message.tool_calls or []
        assert (call.id, call.name, call.arguments) == (
            "call_1",
            "get_weather",
            '{"city": "Paris"}',
        )
        assert up.requests[0]["tools"] == tools and up.requests[0]["tool_choice"] == "auto"
        stream = await rt.chat_stream(ask(tools=tools))
        pieces = [c async for c in stream]
        fragments = [d for c in pieces for d in (c.tool_calls or [])]
        assert fragments[0].id == "call_1" and fragments[0].name == "get_weather"
        assert "".join(f.arguments for f in fragments) == '{"city": "Paris"}'
        assert stream.finish_reason == "tool_calls"


async def test_cost_uses_cached_tokens_and_reaches_the_ledger(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(
        usage={
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 400},
        }
    )
    async with runtime([deployment("fast", url)]) as rt:
        answer = await rt.chat(ask(), tenant="acme", request_id="req-1")
        expected = (600 * 1.0 + 400 * 0.5 + 200 * 2.0) / 1e6
        assert answer.cost_usd == pytest.approx(expected, rel=1e-12)
        await rt.ledger.flush()
        [entry] = await rt.store.ledger(request_id="req-1")
        assert (entry.tenant, entry.model, entry.deployment) == ("acme", "fast", "fast/m-fast")
        assert entry.cached_tokens == 400 and not entry.estimated
        assert entry.cost_usd == pytest.approx(expected, rel=1e-12)


async def test_missing_usage_is_counted_with_the_tokenizer(upstream: Any) -> None:
    up, url = upstream
    up.default = Behaviour(text="hello world", usage=None)
    async with runtime([deployment("fast", url)]) as rt:
        answer = await rt.chat(ask(text="hello world"))
        assert answer.usage is not None and answer.usage.estimated
        assert answer.usage.completion_tokens == 2  # "hello world" in cl100k_base
        assert answer.usage.prompt_tokens > 2
        assert answer.cost_usd == pytest.approx((answer.usage.prompt_tokens * 1.0 + 2 * 2.0) / 1e6)


async def test_least_outstanding_spreads_concurrent_calls(upstream: Any, second: Any) -> None:
    (a, url_a), (b, url_b) = upstream, second
    # Every answer is held until all 20 calls have picked a deployment: each pick sees
    # the others outstanding, however slowly the machine runs them.
    gate = threading.Event()
    a.default = b.default = Behaviour(hold=gate)
    models = [deployment("fast", url_a, id="a"), deployment("fast", url_b, id="b")]
    async with runtime(models) as rt:
        calls = asyncio.gather(*(rt.chat(ask()) for _ in range(20)))
        for _ in range(6000):
            if a.calls + b.calls == 20:
                break
            await asyncio.sleep(0.01)
        gate.set()
        answers = await calls
        assert sorted(x.deployment for x in answers).count("a") == 10
        assert a.calls == 10 and b.calls == 10


async def test_connect_timeout_fails_over(upstream: Any) -> None:
    import socket

    _up, url = upstream
    # A listener whose accept queue is full: the kernel drops new SYNs, so connect hangs.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    port = stuck.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        models = [
            deployment(
                "fast",
                f"http://127.0.0.1:{port}",
                id="stuck",
                connect_timeout=0.2,
                first_byte_timeout=5,
                total_timeout=5,  # if connecting never timed out, this would: not "connect"
            ),
            deployment("fast", url, id="ok"),
        ]
        async with runtime(models, breaker={"failure_threshold": 1, "reset_timeout": 60}) as rt:
            alone = runtime([models[0]], retry={"max_attempts": 1})
            with pytest.raises(ProviderTimeoutError, match="connect timed out"):
                await alone.chat(ask())
            await alone.aclose()
            answers = [await rt.chat(ask()) for _ in range(4)]
            assert {a.deployment for a in answers} == {"ok"}
    finally:
        for filler in fillers:
            filler.close()
        stuck.close()
