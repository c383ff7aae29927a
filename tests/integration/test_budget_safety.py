"""Budgets hold whatever a call turns into: fallbacks to dearer models, `n` answers,
upstreams that ignore max_tokens, calls without max_tokens, clients that hang up.

Every test runs the real server over loopback against scripted upstreams, and checks
the ledger (what Areion will bill) against the budget.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import serve_app

HI = [{"role": "user", "content": "hi"}]
CHEAP = {"input": 1.0, "output": 2.0}  # USD per 1M tokens
DEAR = {"input": 100.0, "output": 200.0}  # a hundred times dearer


def spent(db: Path, tenant: str = "acme") -> float:
    """What the ledger books for `tenant`, read by another connection (as after a crash)."""
    with sqlite3.connect(db) as connection:
        (total,) = connection.execute(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM ledger WHERE tenant = ?", (tenant,)
        ).fetchone()
    return float(total)


def rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT request_id, model, completion_tokens, cost_usd, estimated, open FROM ledger"
        ).fetchall()


def serve(
    db: Path,
    models: list[dict[str, Any]],
    *,
    budget: float,
    fallbacks: dict[str, list[str]] | None = None,
    limits: dict[str, Any] | None = None,
) -> Any:
    config = parse_config(
        {
            "models": models,
            "fallbacks": fallbacks or {},
            "store": f"sqlite:///{db}",
            "cache": {"exact": {"enabled": False}},
            "auth": {
                "keys": [{"key": "sk-acme-0123456789", "tenant": "acme"}],
                "tenants": [{"name": "acme", "budget_usd_per_day": budget}],
            },
            "limits": limits or {},
        }
    )
    return serve_app(create_app(Runtime(config)))


AUTH = {"authorization": "Bearer sk-acme-0123456789"}


def model(name: str, url: str, price: dict[str, float]) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai",
        "model": f"m-{name}",
        "base_url": url + "/v1",
        "price": price,
    }


@pytest.fixture
def upstreams() -> Iterator[tuple[ScriptedUpstream, str, ScriptedUpstream, str]]:
    broken, working = ScriptedUpstream("cheap"), ScriptedUpstream("dear")
    with ExitStack() as stack:
        broken_url = stack.enter_context(serve_app(broken.app))
        working_url = stack.enter_context(serve_app(working.app))
        yield broken, broken_url, working, working_url


async def burst(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:

        async def one(body: dict[str, Any]) -> httpx.Response:
            response = await client.post("/v1/chat/completions", json=body)
            await response.aread()
            return response

        return await asyncio.gather(*(one(body) for body in bodies))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallback_to_a_dearer_model_is_covered_by_the_budget_or_refused(
    upstreams: Any, tmp_path: Path, stream: bool
) -> None:
    broken, broken_url, _, working_url = upstreams
    broken.default = Behaviour(status=500)
    db = tmp_path / "areion.db"
    # A strong call may cost (17 prompt tokens, 7 counted and a margin for the upstream's
    # tokenizer, * 100 + 10 * 200) / 1e6 = $0.0037, and books (11 * 100 + 7 * 200) / 1e6
    # = $0.0025: three spent and one more covered fit, no more.
    budget = 0.0113
    models = [model("fast", broken_url, CHEAP), model("strong", working_url, DEAR)]
    with serve(db, models, budget=budget, fallbacks={"fast": ["strong"]}) as url:
        body = {"model": "fast", "messages": HI, "max_tokens": 10, "stream": stream}
        answers = await burst(url, [body] * 40)
    statuses = sorted(response.status_code for response in answers)
    assert statuses.count(200) == 4, statuses
    assert set(statuses) == {200, 402}
    refused = next(r for r in answers if r.status_code == 402).json()["error"]
    assert "falling back to 'strong'" in refused["message"], refused["message"]
    assert spent(db) <= budget
    assert spent(db) == pytest.approx(4 * 0.0025)


async def test_n_answers_are_all_reserved(upstreams: Any, tmp_path: Path) -> None:
    _, _, working, working_url = upstreams
    db = tmp_path / "areion.db"
    # One answer of 50 tokens may cost ~$0.0001; five may cost ~$0.0005.
    with serve(db, [model("fast", working_url, CHEAP)], budget=0.0003) as url:
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            body = {"model": "fast", "messages": HI, "max_tokens": 50}
            five = await client.post("/v1/chat/completions", json={**body, "n": 5})
            one = await client.post("/v1/chat/completions", json=body)
    assert five.status_code == 402, five.text
    assert "may cost up to $0.0005" in five.json()["error"]["message"]
    assert one.status_code == 200
    assert working.calls == 1
    assert spent(db) <= 0.0003


async def test_a_stream_past_max_tokens_is_stopped_and_booked(
    upstreams: Any, tmp_path: Path
) -> None:
    _, _, working, working_url = upstreams
    # An upstream that ignores max_tokens: 2,000 words whatever was asked.
    working.default = Behaviour(text=" ".join(["word"] * 2000))
    db = tmp_path / "areion.db"
    with serve(db, [model("fast", working_url, CHEAP)], budget=10.0) as url:
        body = {"model": "fast", "messages": HI, "max_tokens": 50, "stream": True}
        async with (
            httpx.AsyncClient(base_url=url, headers=AUTH) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    chunks = [orjson.loads(event[6:]) for event in events]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert 50 <= len(text.split()) <= 50 * 1.25 + 16
    [(_, _, completion, _, estimated, still_open)] = rows(db)
    assert estimated and not still_open  # counted from what was received
    assert 50 <= completion <= 50 * 1.25 + 16


async def test_a_stream_stops_where_the_budget_does(upstreams: Any, tmp_path: Path) -> None:
    _, _, working, working_url = upstreams
    working.default = Behaviour(text=" ".join(["word"] * 5000), usage=None)
    db = tmp_path / "areion.db"
    # $0.0005 at $2 per 1M output tokens: about 250 tokens, far fewer than 5,000. The
    # call reserves 50 (its model's expected output): the rest is covered as it comes.
    limits = {"default_max_tokens": 50}
    with serve(db, [model("fast", working_url, CHEAP)], budget=0.0005, limits=limits) as url:
        body = {"model": "fast", "messages": HI, "stream": True}
        async with (
            httpx.AsyncClient(base_url=url, headers=AUTH) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines()]
    assert any('"finish_reason":"length"' in line for line in lines)
    assert spent(db) <= 0.0005
    [(_, _, completion, *_)] = rows(db)
    assert 100 < completion < 250


async def test_calls_without_max_tokens_reserve_what_the_model_produces(
    upstreams: Any, tmp_path: Path
) -> None:
    _, _, _, working_url = upstreams
    db = tmp_path / "areion.db"
    price = {"input": 1000.0, "output": 1000.0}  # $0.001 a token
    # 1,024 output tokens would reserve ~$1.03 a call: ten of 200 would fit at once.
    # Each really costs 18 tokens, $0.018: all 200 fit in $10.25.
    with serve(db, [model("fast", working_url, price)], budget=10.25) as url:
        answers = await burst(url, [{"model": "fast", "messages": HI}] * 200)
    assert [r.status_code for r in answers].count(200) == 200, [r.text for r in answers][:3]
    assert spent(db) == pytest.approx(200 * 0.018)


async def test_a_refusal_caused_by_calls_in_flight_says_so(upstreams: Any, tmp_path: Path) -> None:
    _, _, working, working_url = upstreams
    gate, arrived = threading.Event(), threading.Event()
    working.script.append(Behaviour(hold=gate, arrived=arrived))
    db = tmp_path / "areion.db"
    limits = {"budget_wait_s": 0}
    with serve(db, [model("fast", working_url, CHEAP)], budget=0.0003, limits=limits) as url:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
            body = {"model": "fast", "messages": HI, "max_tokens": 100}  # may cost ~$0.0002
            first = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            assert await asyncio.to_thread(arrived.wait, 30)
            second = await client.post("/v1/chat/completions", json=body)
            gate.set()
            assert (await first).status_code == 200
            third = await client.post("/v1/chat/completions", json=body)
    assert second.status_code == 402
    assert "reserved by calls in flight" in second.json()["error"]["message"]
    assert 1 <= int(second.headers["retry-after"]) <= 5
    assert third.status_code == 200  # the same call fits once the first has settled


def test_a_client_hanging_up_mid_stream_stops_the_upstream(tmp_path: Path) -> None:
    upstream = ScriptedUpstream()
    words = 50_000
    upstream.default = Behaviour(text=" ".join(["word"] * words))
    db = tmp_path / "areion.db"
    with (
        serve_app(upstream.app) as upstream_url,
        serve(db, [model("fast", upstream_url, CHEAP)], budget=100.0) as url,
    ):
        host, port = url.removeprefix("http://").split(":")
        body = orjson.dumps({"model": "fast", "messages": HI, "stream": True})
        with socket.create_connection((host, int(port))) as client:
            client.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: areion\r\n"
                b"authorization: Bearer sk-acme-0123456789\r\n"
                b"content-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        # The client is gone: the stream is closed and booked at what had arrived.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not rows(db) or rows(db)[0][5]):
            time.sleep(0.05)
    [(_, _, completion, _, estimated, still_open)] = rows(db)
    assert not still_open and estimated
    assert completion < words / 2
