"""OpenTelemetry traces over the wire: a real runtime (and a real server) exporting over
OTLP HTTP/protobuf to a real receiver (`tests/otlp_receiver.py`), the model a scripted
OpenAI-compatible upstream on loopback that records the headers it receives."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from areion import Agent, Runtime, tool
from areion.config import parse_config
from areion.errors import AreionError
from areion.server import create_app
from areion.types import ChatRequest, EmbeddingRequest, Message
from tests.agent_upstream import AgentUpstream, call, model_turns, say
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.scripted import EMBEDDING_DIMENSIONS, Behaviour, ScriptedUpstream
from tests.support import serve_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

# The two lookups each wait for the other to have started: both can finish only if
# they run at the same time. One barrier per event loop (the tests' and the server's).
_MEETINGS: dict[asyncio.AbstractEventLoop, asyncio.Barrier] = {}


async def meet() -> None:
    barrier = _MEETINGS.setdefault(asyncio.get_running_loop(), asyncio.Barrier(2))
    async with asyncio.timeout(10):
        await barrier.wait()


@tool
async def lookup_a(key: str) -> str:
    """Look a key up in A."""
    await meet()
    return f"a-{key}"


@tool
async def lookup_b(key: str) -> str:
    """Look a key up in B."""
    await meet()
    return f"b-{key}"


RESEARCHER = Agent(
    name="researcher",
    model="fast",
    instructions="Look things up, then answer.",
    tools=[lookup_a, lookup_b],
    temperature=0,  # the exact cache answers a repeated request
)


def two_lookups(body: dict[str, Any]) -> dict[str, Any]:
    if not body.get("tools"):
        return say("hello there")
    if model_turns(body) == 0:
        return call(("lookup_a", {"key": "x"}), ("lookup_b", {"key": "y"}))
    return say("x is a-x and y is b-y")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


@pytest.fixture
def upstream() -> Iterator[tuple[AgentUpstream, str]]:
    scripted = AgentUpstream(two_lookups)
    with serve_app(scripted.app) as url:
        yield scripted, url


def make_config(url: str, tmp_path: Path, **extra: Any) -> Any:
    return parse_config(
        {
            "models": [
                {
                    "name": "fast",
                    "provider": "openai",
                    "model": "m-upstream",
                    "base_url": url + "/v1",
                    "price": {"input": 1.0, "output": 2.0},
                }
            ],
            "store": f"sqlite:///{tmp_path / 'areion.db'}",
            **extra,
        }
    )


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.span_id: span for span in spans}


def traceparent_of(headers: dict[str, str]) -> tuple[str, str]:
    """(trace id, parent span id) of a traceparent header."""
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, parent_id


async def test_one_run_is_one_trace_with_parallel_tools_and_a_cache_hit(
    receiver: OtlpReceiver, upstream: tuple[AgentUpstream, str], tmp_path: Path
) -> None:
    scripted, url = upstream
    config = make_config(url, tmp_path, tracing={"enabled": True, "endpoint": receiver.endpoint})
    async with Runtime(config) as rt:
        first = await rt.run(RESEARCHER, "find x and y")
        # The same task again: both model calls are answered by the exact cache.
        second = await rt.run(RESEARCHER, "find x and y")
    assert first.status == second.status == "finished"
    assert len(scripted.requests) == 2  # the second run never reached the upstream

    traces = receiver.traces()
    assert len(traces) == 2  # one trace per run, nothing else
    for run in (first, second):
        roots = [
            s for s in receiver.named("invoke_agent") if s.attributes["areion.run_id"] == run.run_id
        ]
        assert len(roots) == 1
        root = roots[0]
        spans = traces[root.trace_id]
        assert root.parent_span_id == ""
        assert root.name == "invoke_agent researcher" and root.kind == "INTERNAL"
        assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert root.attributes["gen_ai.agent.name"] == "researcher"
        assert root.attributes["areion.run.status"] == "finished"
        assert root.attributes["areion.run.steps"] == 2
        assert root.resource["service.name"] == "areion"
        assert sorted(s.name for s in spans) == [
            "chat fast",
            "chat fast",
            "execute_tool lookup_a",
            "execute_tool lookup_b",
            "invoke_agent researcher",
        ]
        # Model calls and tools are children of the run's span, each its own.
        for span in spans:
            if span is not root:
                assert span.parent_span_id == root.span_id, span.name
        tools = [s for s in spans if s.name.startswith("execute_tool")]
        assert {t.attributes["gen_ai.tool.name"] for t in tools} == {"lookup_a", "lookup_b"}
        assert len({t.attributes["gen_ai.tool.call.id"] for t in tools}) == 2
        for span in tools:
            assert span.kind == "INTERNAL" and not span.error
            assert span.attributes["gen_ai.operation.name"] == "execute_tool"
            assert "gen_ai.tool.call.arguments" not in span.attributes  # content is opt-in
            assert "gen_ai.tool.call.result" not in span.attributes
        chats = sorted((s for s in spans if s.name == "chat fast"), key=lambda s: s.start_ns)
        for span in chats:
            attributes = span.attributes
            assert span.kind == "CLIENT" and not span.error
            assert attributes["gen_ai.operation.name"] == "chat"
            assert attributes["gen_ai.provider.name"] == "openai"
            assert attributes["gen_ai.request.model"] == "fast"
            assert attributes["gen_ai.response.model"] == "m-upstream"
            assert attributes["gen_ai.usage.input_tokens"] == 100
            assert attributes["gen_ai.usage.output_tokens"] == 20
            assert attributes["areion.retries"] == 0
            assert "gen_ai.input.messages" not in attributes  # content is opt-in
            assert "gen_ai.output.messages" not in attributes
        assert chats[0].attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
        assert chats[1].attributes["gen_ai.response.finish_reasons"] == ["stop"]

    (first_trace,) = {
        s.trace_id
        for s in receiver.named("invoke_agent")
        if s.attributes["areion.run_id"] == first.run_id
    }
    misses = [s for s in traces[first_trace] if s.name == "chat fast"]
    hits = [
        s for t, spans in traces.items() if t != first_trace for s in spans if s.name == "chat fast"
    ]
    for span in misses:
        assert span.attributes["areion.cache"] == "miss"
        assert span.attributes["areion.deployment"] == "fast/m-upstream"
        assert span.attributes["areion.cost_usd"] == pytest.approx(100 * 1e-6 + 20 * 2e-6)
    for span in hits:
        assert span.attributes["areion.cache"] == "hit-exact"
        assert span.attributes["areion.cost_usd"] == 0.0
    # Each upstream call carried its own span's context: same trace, the chat span as parent.
    assert sorted(traceparent_of(h) for h in scripted.headers) == sorted(
        (span.trace_id, span.span_id) for span in misses
    )


async def test_prompts_completions_and_tool_io_only_when_opted_in(
    receiver: OtlpReceiver, upstream: tuple[AgentUpstream, str], tmp_path: Path
) -> None:
    _, url = upstream
    tracing = {"enabled": True, "endpoint": receiver.endpoint, "capture_content": True}
    async with Runtime(make_config(url, tmp_path, tracing=tracing)) as rt:
        result = await rt.run(RESEARCHER, "find x and y")
    assert result.status == "finished"
    chats = sorted(receiver.named("chat fast"), key=lambda s: s.start_ns)
    assert "find x and y" in chats[0].attributes["gen_ai.input.messages"]
    assert "Look things up" in chats[0].attributes["gen_ai.input.messages"]
    assert "lookup_a" in chats[0].attributes["gen_ai.output.messages"]
    assert "a-x" in chats[1].attributes["gen_ai.input.messages"]  # the tool's result
    assert "x is a-x and y is b-y" in chats[1].attributes["gen_ai.output.messages"]
    (tool_a,) = receiver.named("execute_tool lookup_a")
    assert tool_a.attributes["gen_ai.tool.call.arguments"] == '{"key":"x"}'
    assert tool_a.attributes["gen_ai.tool.call.result"] == "a-x"


AGENTS = [{"name": "researcher", "path": "tests.integration.test_tracing:RESEARCHER"}]


def test_an_incoming_traceparent_is_continued_and_passed_upstream(
    receiver: OtlpReceiver, upstream: tuple[AgentUpstream, str], tmp_path: Path
) -> None:
    scripted, url = upstream
    config = make_config(
        url,
        tmp_path,
        tracing={"enabled": True, "endpoint": receiver.endpoint},
        agents=AGENTS,
        cache={"exact": {"enabled": False}},
    )
    incoming = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    with (
        serve_app(create_app(Runtime(config))) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        answer = client.post("/v1/chat/completions", json=chat, headers=incoming)
        assert answer.status_code == 200, answer.text
        streamed = client.post(
            "/v1/chat/completions", json={**chat, "stream": True}, headers=incoming
        )
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        message = {"model": "fast", "max_tokens": 50, "messages": chat["messages"]}
        anthropic = client.post("/v1/messages", json=message, headers=incoming)
        assert anthropic.status_code == 200, anthropic.text
        responses = client.post(
            "/v1/responses", json={"model": "fast", "input": "hi"}, headers=incoming
        )
        assert responses.status_code == 200, responses.text
        legacy = client.post(
            "/v1/completions", json={"model": "fast", "prompt": "hi"}, headers=incoming
        )
        assert legacy.status_code == 200, legacy.text
        run = client.post(
            "/v1/runs",
            json={"agent": "researcher", "input": "find x and y", "wait": True},
            headers=incoming,
        )
        assert run.status_code == 200, run.text
        untraced = client.post("/v1/chat/completions", json=chat)  # no traceparent
        assert untraced.status_code == 200
    # The server's shutdown closed the runtime, which flushed the exporter.
    spans = list(receiver)
    chats = sorted(receiver.named("chat fast"), key=lambda s: s.start_ns)
    assert len(chats) == 8  # five calls, two in the run, one untraced
    (agent,) = receiver.named("invoke_agent")
    direct = [c for c in chats if c.parent_span_id == PARENT_ID]
    # chat, stream, messages, responses, completions: children of the caller's span
    assert len(direct) == 5
    assert agent.trace_id == TRACE_ID and agent.parent_span_id == PARENT_ID
    in_run = [c for c in chats if c.parent_span_id == agent.span_id]
    assert len(in_run) == 2
    (alone,) = [c for c in chats if c not in direct and c not in in_run]
    assert alone.trace_id != TRACE_ID and alone.parent_span_id == ""
    assert all(s.trace_id == TRACE_ID for s in spans if s is not alone)
    assert direct[1].attributes["areion.ttft_s"] > 0
    assert direct[1].attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert direct[1].attributes["gen_ai.usage.output_tokens"] == 20
    # Every upstream call carried the trace, with the span of its own call as parent,
    # and the caller's tracestate.
    assert len(scripted.headers) == 8
    parents = {span.span_id: span for span in chats}
    for headers in scripted.headers:
        trace_id, parent_id = traceparent_of(headers)
        assert parents[parent_id].trace_id == trace_id
        if trace_id == TRACE_ID:
            assert headers["tracestate"] == "vendor=abc"


async def test_with_tracing_off_nothing_is_exported(
    receiver: OtlpReceiver,
    upstream: tuple[AgentUpstream, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripted, url = upstream
    # The endpoint is set, but the config turns tracing off.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    async with Runtime(make_config(url, tmp_path, tracing={"enabled": False})) as rt:
        assert rt.tracing is None
        result = await rt.run(RESEARCHER, "find x and y")
    assert result.status == "finished"
    assert receiver.requests == 0
    assert all("traceparent" not in headers for headers in scripted.headers)


async def test_the_standard_environment_variables_configure_it(
    receiver: OtlpReceiver,
    upstream: tuple[AgentUpstream, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = upstream
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=agents")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "support-bot")
    async with Runtime(make_config(url, tmp_path)) as rt:  # no tracing: section at all
        assert rt.tracing is not None
        await rt.run(RESEARCHER, "find x and y")
    assert receiver.requests >= 1
    assert all(h["x-team"] == "agents" for h in receiver.headers)
    assert {span.resource["service.name"] for span in receiver} == {"support-bot"}
    assert len(receiver.traces()) == 1

    # A sampler that keeps nothing: spans are made, none is exported.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    before = receiver.requests
    async with Runtime(make_config(url, tmp_path)) as rt:
        await rt.run(RESEARCHER, "find x and z")
    assert receiver.requests == before


def test_tracing_off_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    program = (
        "import asyncio, sys\n"
        "from areion import Runtime\n"
        "from areion.server import create_app\n"
        "from areion.types import ChatRequest, Message\n"
        "async def main():\n"
        "    async with Runtime() as rt:\n"
        "        create_app(rt)\n"
        "        hi = [Message(role='user', content='hi')]\n"
        "        request = ChatRequest(model='fast', messages=hi)\n"
        "        await rt.chat(request)\n"
        "        assert rt.tracing is None\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def anthropic_upstream() -> tuple[Starlette, list[dict[str, str]]]:
    """A Messages API upstream that answers one text and records each request's headers."""
    seen: list[dict[str, str]] = []

    async def messages(request: Request) -> Response:
        seen.append(dict(request.headers))
        answer = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-upstream",
            "content": [{"type": "text", "text": "hello"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 9, "output_tokens": 3},
        }
        return JSONResponse(answer)

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])]), seen


async def test_retries_routes_failures_and_anthropic_upstreams_on_the_span(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    openai = ScriptedUpstream().then(Behaviour(status=503), Behaviour(), Behaviour(status=400))
    claude, claude_headers = anthropic_upstream()
    with serve_app(openai.app) as openai_url, serve_app(claude) as claude_url:
        config = parse_config(
            {
                "models": [
                    {
                        "name": "small",
                        "provider": "openai",
                        "model": "s",
                        "base_url": openai_url + "/v1",
                    },
                    {
                        "name": "claude",
                        "provider": "anthropic",
                        "model": "c",
                        "base_url": claude_url,
                    },
                ],
                "routes": [
                    {
                        "name": "auto",
                        "candidates": ["small", "claude"],
                        "solver": False,
                        "rules": [{"when": {"tier": "batch"}, "model": "small"}],
                    }
                ],
                "retry": {"backoff_base": 0.001, "backoff_max": 0.001},
                "store": f"sqlite:///{tmp_path / 'areion.db'}",
                "tracing": {"enabled": True, "endpoint": receiver.endpoint},
            }
        )
        hi = [Message(role="user", content="hi")]
        async with Runtime(config) as rt:
            routed = await rt.chat(ChatRequest(model="auto", messages=hi), tier="batch")
            assert routed.deployment == "small/s"
            with pytest.raises(AreionError):
                await rt.chat(ChatRequest(model="small", messages=hi))
            answer = await rt.chat(ChatRequest(model="claude", messages=hi))
            assert answer.message.text() == "hello"
    first, failed, anthropic = sorted(receiver.named("chat"), key=lambda s: s.start_ns)
    assert first.name == "chat auto"
    assert first.attributes["areion.retries"] == 1  # the 503, then an answer
    assert first.attributes["areion.route"] == "auto"
    assert first.attributes["areion.route.reason"] == "rule:0"  # the first rule: tier batch
    assert first.attributes["areion.deployment"] == "small/s"
    assert not first.error
    assert failed.error and failed.attributes["error.type"] == "invalid_request"
    assert anthropic.attributes["gen_ai.provider.name"] == "anthropic"
    assert anthropic.attributes["gen_ai.response.model"] == "claude-upstream"
    assert anthropic.attributes["gen_ai.usage.input_tokens"] == 9
    assert anthropic.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    (sent,) = claude_headers
    assert traceparent_of(sent) == (anthropic.trace_id, anthropic.span_id)
    assert [traceparent_of(h)[0] for h in openai.headers] == [
        first.trace_id,
        first.trace_id,
        failed.trace_id,
    ]


async def test_an_embeddings_call_has_its_span(receiver: OtlpReceiver, tmp_path: Path) -> None:
    upstream = ScriptedUpstream().then(Behaviour(status=503))  # one retry, then vectors
    with serve_app(upstream.app) as url:
        config = parse_config(
            {
                "models": [
                    {"name": "emb", "provider": "openai", "model": "e", "base_url": url + "/v1"}
                ],
                "retry": {"backoff_base": 0.001, "backoff_max": 0.001},
                "store": f"sqlite:///{tmp_path / 'areion.db'}",
                "tracing": {"enabled": True, "endpoint": receiver.endpoint},
            }
        )
        async with Runtime(config) as rt:
            await rt.embed(EmbeddingRequest(model="emb", input=["red apple", "green pear"]))
            # The same inputs again: the embedding cache answers, no upstream call.
            await rt.embed(EmbeddingRequest(model="emb", input=["red apple", "green pear"]))
    assert upstream.calls == 2
    called, cached = sorted(receiver.named("embeddings"), key=lambda s: s.start_ns)
    for span in (called, cached):
        assert span.name == "embeddings emb" and span.kind == "CLIENT"
        assert span.attributes["gen_ai.operation.name"] == "embeddings"
        assert span.attributes["gen_ai.embeddings.dimension.count"] == EMBEDDING_DIMENSIONS
        assert span.attributes["areion.inputs"] == 2
    assert called.attributes["areion.cache"] == "miss"
    assert called.attributes["areion.retries"] == 1
    assert called.attributes["gen_ai.usage.input_tokens"] == 4
    assert called.attributes["gen_ai.response.model"] == "e"
    assert cached.attributes["areion.cache"] == "hit-embedding"
    assert cached.attributes["areion.cost_usd"] == 0.0
    assert [traceparent_of(h)[1] for h in upstream.headers] == [called.span_id] * 2


async def test_a_trace_left_out_by_sampling_exports_nothing_and_says_so_upstream(
    receiver: OtlpReceiver, upstream: tuple[AgentUpstream, str], tmp_path: Path
) -> None:
    scripted, url = upstream
    tracing = {"enabled": True, "endpoint": receiver.endpoint, "sample_ratio": 0.0}
    async with Runtime(make_config(url, tmp_path, tracing=tracing)) as rt:
        result = await rt.run(RESEARCHER, "find x and y")
    assert result.status == "finished"
    assert receiver.requests == 0
    # The upstream is told the trace is not sampled (the flags' low bit), so it records
    # none either.
    assert len(scripted.headers) == 2
    assert [int(h["traceparent"][-2:], 16) & 1 for h in scripted.headers] == [0, 0]
