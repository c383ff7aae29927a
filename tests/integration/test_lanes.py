"""Priority lanes through the server: under overload interactive completes, batch waits or is
shed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import serve_app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with serve_app(upstream.app) as url:
        config = parse_config(
            {
                "models": [
                    {
                        "name": "fast",
                        "provider": "openai",
                        "model": "m",
                        "base_url": url + "/v1",
                        "max_concurrency": 2,
                    }
                ],
                "lanes": {
                    "batch": {"max_queued": 3},
                    "interactive_reserve": 0.5,  # one of the two slots is never batch's
                },
                "auth": {
                    "keys": [
                        {"key": "acme-key", "tenant": "acme"},
                        {"key": "nightly-key", "tenant": "acme", "priority": "batch"},
                    ],
                    "metrics_keys": ["metrics-key"],
                },
                "store": f"sqlite:///{tmp_path / 'lanes.db'}",
                "cache": {"exact": {"enabled": False}},
            }
        )
        with serve_app(create_app(Runtime(config))) as base:
            yield upstream, base


async def _ask(client: httpx.AsyncClient, key: str, **headers: str) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}", **headers},
    )


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for what the server does next, however long a busy machine takes to do it."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server never got there")


def test_overload_completes_interactive_and_queues_or_sheds_batch(server: Any) -> None:
    upstream, url = server
    gate = threading.Event()  # the model answers nothing until every call has arrived
    upstream.default = Behaviour(hold=gate)

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            # 10 batch calls (by the key's default lane) arrive first: one takes batch's
            # slot, three queue, six are shed. Then 4 interactive calls: one takes the
            # slot batch may never hold, three queue ahead of batch's three.
            batch = [asyncio.create_task(_ask(client, "nightly-key")) for _ in range(10)]
            await _until(lambda: sum(t.done() for t in batch) == 6 and upstream.calls == 1)
            interactive = [
                asyncio.create_task(
                    _ask(client, "acme-key", **{"x-areion-priority": "interactive"})
                )
                for _ in range(4)
            ]
            await _until(lambda: upstream.calls == 2)
            gate.set()
            return list(await asyncio.gather(*batch)), list(await asyncio.gather(*interactive))

    batch, interactive = asyncio.run(scenario())
    assert [r.status_code for r in interactive] == [200] * 4
    shed = [r for r in batch if r.status_code != 200]
    served = [r for r in batch if r.status_code == 200]
    assert (len(shed), len(served)) == (6, 4)  # queued ones were served, the rest shed
    for response in shed:
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "overloaded"
    assert upstream.calls == 4 + len(served)
    metrics = httpx.get(url + "/metrics", headers={"authorization": "Bearer metrics-key"}).text
    assert 'areion_lane_shed_total{lane="batch",model="fast"' in metrics
    assert 'areion_lane_queue_wait_seconds_count{lane="interactive",model="fast"} 4.0' in metrics


def test_a_bad_priority_is_a_400(server: Any) -> None:
    _, url = server
    response = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": "Bearer acme-key", "x-areion-priority": "urgent"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-areion-priority"
