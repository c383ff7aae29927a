"""`areion_desired_replicas` on a real server's /metrics, fed by real calls."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from areion import Runtime
from areion.config import parse_config
from areion.errors import RateLimitExceededError
from areion.server import create_app
from areion.store import SQLiteStore
from areion.types import ChatRequest, Message
from tests.pg import fresh_schema
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import (
    REDIS_URL,
    ManualClock,
    _missing,
    eventually,
    free_port,
    prefixed,
    require_redis,
    serve_app,
    wait_for_prometheus,
)

NOON = 1_772_452_800.0  # Monday 2 March 2026, 12:00 UTC: a minute's start


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    with serve_app(scripted.app) as url:
        yield scripted, url


def settings(url: str, db: Path, **extra: Any) -> dict[str, Any]:
    return {
        "models": [{"name": "fast", "provider": "openai", "model": "m", "base_url": url + "/v1",
                    "price": {"input": 1, "output": 2}}],
        "store": f"sqlite:///{db}",
        "scaling": {"min_replicas": 0, "target_concurrency_per_replica": 1},
        **extra,
    }  # fmt: skip


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    r = await http.get("/metrics")
    assert r.status_code == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
        if sample.name in ("areion_desired_replicas", "areion_arrival_rate_forecast")
    }


async def test_the_server_exposes_it_and_it_follows_calls_in_flight(
    upstream: tuple[ScriptedUpstream, str], tmp_path: Path
) -> None:
    scripted, url = upstream
    hold = threading.Event()
    arrived = [threading.Event() for _ in range(3)]
    scripted.script.extend(Behaviour(hold=hold, arrived=event) for event in arrived)
    runtime = Runtime(parse_config(settings(url, tmp_path / "areion.db")))
    assert runtime.scaling is not None
    runtime.scaling.clock = ManualClock(NOON)  # the arrivals' minute, and no call takes time
    chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    with serve_app(create_app(runtime)) as server:
        async with httpx.AsyncClient(base_url=server, timeout=30) as http:
            assert await scrape(http) == {
                "areion_desired_replicas": 0.0,  # min_replicas 0, nothing arriving
                "areion_arrival_rate_forecast": 0.0,
            }
            calls = [asyncio.create_task(http.post("/v1/chat/completions", json=chat))
                     for _ in arrived]  # fmt: skip
            for event in arrived:
                await asyncio.to_thread(event.wait, 30)
            assert (await scrape(http))["areion_desired_replicas"] == 3.0  # 3 in flight / 1
            hold.set()
            assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 3
            assert (await scrape(http))["areion_desired_replicas"] == 0.0
    # Shut down: the arrivals are in the store, for the other replicas and a restart.
    store = SQLiteStore(str(tmp_path / "areion.db"))
    try:
        assert await store.arrivals(since=0) == {int(NOON): 3}
    finally:
        await store.aclose()


async def test_a_stream_is_in_flight_and_timed_until_it_ends(tmp_path: Path) -> None:
    config = parse_config(
        {
            "models": [{"name": "fast", "provider": "sim", "model": "sim-fast"}],
            "store": f"sqlite:///{tmp_path / 'areion.db'}",
            "tenants": [{"name": "team", "rpm": 2}],
            "scaling": {"min_replicas": 0, "target_concurrency_per_replica": 1},
        }
    )
    async with Runtime(config) as rt:
        assert rt.scaling is not None
        clock = rt.scaling.clock = ManualClock(NOON)
        request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
        stream = await rt.chat_stream(request, tenant="team")
        clock.advance(3.0)
        assert rt.scaling.desired().replicas == 1  # the stream is still being read
        async for _ in stream:
            pass
        assert rt.scaling.desired().replicas == 0
        await rt.chat(request, tenant="team")
        assert len(rt.scaling.times) == 2 and rt.scaling.times.p95() == 3.0
        with pytest.raises(RateLimitExceededError):
            await rt.chat(request, tenant="team")  # refused: an arrival, not a service time
        assert len(rt.scaling.times) == 2
        clock.advance(60.0)
        assert rt.scaling.desired().forecast.recent_rate == pytest.approx(3 / 60)


async def test_scaling_off_leaves_no_signal(tmp_path: Path) -> None:
    config = parse_config(
        {
            "models": [{"name": "fast", "provider": "sim", "model": "sim-fast"}],
            "store": f"sqlite:///{tmp_path / 'areion.db'}",
            "scaling": {"enabled": False},
        }
    )
    async with Runtime(config) as rt:
        assert rt.scaling is None
        assert b"areion_desired_replicas" not in rt.metrics.exposition()


async def test_replicas_on_one_postgresql_store_forecast_from_all_arrivals() -> None:
    async with fresh_schema() as url:
        config = parse_config(
            {
                "models": [{"name": "fast", "provider": "sim", "model": "sim-fast",
                            "time_scale": 0.01}],
                "store": url,
            }
        )  # fmt: skip
        clock = ManualClock(NOON)
        request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
        async with Runtime(config) as first, Runtime(config) as second:
            for replica, calls in ((first, 3), (second, 5)):
                assert replica.scaling is not None
                replica.scaling.clock = clock
                for _ in range(calls):
                    await replica.chat(request)
            clock.advance(60.0)
            for replica in (first, second):
                assert replica.scaling is not None
                await replica.scaling.sync()
            await first.scaling.sync()  # after the second's counts landed
            for replica in (first, second):
                assert replica.scaling.desired().forecast.recent_rate == pytest.approx(8 / 60)
        async with Runtime(config) as later:  # a replica started afterwards
            assert later.scaling is not None
            later.scaling.clock = clock
            await later.scaling.load()
            assert later.scaling.desired().forecast.recent_rate == pytest.approx(8 / 60)


async def test_calls_in_flight_on_another_replica_keep_the_signal_up(
    upstream: tuple[ScriptedUpstream, str],
) -> None:
    require_redis()
    scripted, url = upstream
    hold = threading.Event()
    arrived = [threading.Event() for _ in range(2)]
    scripted.script.extend(Behaviour(hold=hold, arrived=event) for event in arrived)
    async with fresh_schema() as pg_url:
        config = parse_config(
            {
                **settings(url, Path("unused.db")),
                "store": pg_url,
                "shared": prefixed(REDIS_URL),
                "scaling": {"min_replicas": 0, "target_concurrency_per_replica": 8},
            }
        )
        chat = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
        async with Runtime(config) as busy, Runtime(config) as idle:
            assert idle.scaling is not None
            idle.scaling.clock = ManualClock(NOON)  # its own minute: nothing arrived
            await idle.start()
            calls = [asyncio.create_task(busy.chat(chat)) for _ in arrived]
            for event in arrived:
                await asyncio.to_thread(event.wait, 30)

            async def counted(calls: int, replicas: int) -> bool:
                assert idle.scaling is not None
                found = idle.scaling.desired()
                return found.in_flight == calls and found.replicas == replicas

            await eventually(lambda: counted(2, 1))  # the busy replica's two calls
            hold.set()
            await asyncio.gather(*calls)
            await eventually(lambda: counted(0, 0))


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        _missing("Debian's prometheus is not installed (apt-get install prometheus)")
    assert found is not None
    return found


@contextlib.contextmanager
def prometheus(binary: str, target: str, folder: Path) -> Iterator[int]:
    """A real Prometheus scraping `target` (job `areion`) every second; yields its port."""
    scrape_config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "areion",
                            "static_configs": [{"targets": [target.split("//")[1]]}]}],
    }  # fmt: skip
    (folder / "prometheus.yml").write_text(yaml.safe_dump(scrape_config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_prometheus(f"http://127.0.0.1:{port}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_the_keda_query_reads_it_through_a_real_prometheus(
    upstream: tuple[ScriptedUpstream, str], tmp_path: Path, prometheus_binary: str
) -> None:
    scripted, url = upstream
    hold = threading.Event()
    arrived = [threading.Event() for _ in range(3)]
    scripted.script.extend(Behaviour(hold=hold, arrived=event) for event in arrived)
    runtime = Runtime(parse_config(settings(url, tmp_path / "areion.db")))
    assert runtime.scaling is not None
    runtime.scaling.clock = ManualClock(NOON)
    chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    with (
        serve_app(create_app(runtime)) as server,
        prometheus(prometheus_binary, server, tmp_path) as port,
    ):
        async with httpx.AsyncClient(base_url=server, timeout=30) as http:
            calls = [asyncio.create_task(http.post("/v1/chat/completions", json=chat))
                     for _ in arrived]  # fmt: skip
            for event in arrived:
                await asyncio.to_thread(event.wait, 30)

            async def keda_reads(value: str) -> bool:
                # The ScaledObject's query (docs/scaling.md): one element, the signal.
                async with httpx.AsyncClient(timeout=10) as api:
                    answer = await api.get(
                        f"http://127.0.0.1:{port}/api/v1/query",
                        params={"query": 'max(areion_desired_replicas{job="areion"})'},
                    )
                result = answer.json()["data"]["result"]
                return len(result) == 1 and result[0]["value"][1] == value

            await eventually(lambda: keda_reads("3"), within=60)  # 3 in flight / 1
            hold.set()
            assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 3
            await eventually(lambda: keda_reads("0"), within=60)
