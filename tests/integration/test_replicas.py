"""Three `areion serve` replicas sharing one PostgreSQL schema and one Redis prefix,
a client spreading requests over them round-robin, scripted upstreams behind: what one
replica enforces, learns or stores, every replica does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.pg import fresh_schema
from tests.replicas import Cluster, cluster
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import eventually, serve_app

KEYS = {"acme": "acme-key", "globex": "globex-key"}
ADMIN = "admin-key"
METRICS = "metrics-key"
HI = [{"role": "user", "content": "hi"}]


def auth(tenant: str = "acme") -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_schema() as url:
        yield url


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    with serve_app(scripted.app) as url:
        yield scripted, url


def base_config(
    pg_url: str, redis_url: str, models: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "models": models,
        "store": pg_url,
        "shared": redis_url,
        "auth": {
            "keys": [{"key": key, "tenant": tenant} for tenant, key in KEYS.items()],
            "admin_keys": [ADMIN],
            "metrics_keys": [METRICS],
        },
        **extra,
    }


def model(url: str, name: str = "fast", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai",
        "model": f"m-{name}",
        "base_url": url + "/v1",
        "price": {"input": 1.0, "output": 2.0},
        **extra,
    }


async def ledger(pg_url: str) -> list[dict[str, Any]]:
    """The ledger as PostgreSQL holds it (read apart from every replica)."""
    import asyncpg

    base, _, query = pg_url.partition("?")
    schema = parse_qs(query)["schema"][0]
    connection = await asyncpg.connect(base)
    try:
        rows = await connection.fetch(
            f'SELECT request_id, tenant, cost_usd, open FROM "{schema}".ledger'
        )
    finally:
        await connection.close()
    return [dict(row) for row in rows]


async def burst(group: Cluster, count: int, body: dict[str, Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> httpx.Response:
            return await client.post(
                group.next_url() + "/v1/chat/completions", json=body, headers=auth()
            )

        return await asyncio.gather(*(one() for _ in range(count)))


async def test_a_rate_limit_and_a_budget_hold_over_all_replicas(
    pg_url: str, redis_url: str, upstream: Any, tmp_path: Path
) -> None:
    _, url = upstream
    # A call books (11 * 1 + 7 * 2) / 1e6 = $0.000025: the day's budget fits ten.
    config = base_config(
        pg_url,
        redis_url,
        [model(url)],
        tenants=[
            {"name": "acme", "rpm": 30},
            {"name": "globex", "budget_usd_per_day": 0.00025},
        ],
    )
    with cluster(config, tmp_path) as group:
        limited = await burst(group, 100, {"model": "fast", "messages": HI})
        statuses = [r.status_code for r in limited]
        assert 30 <= statuses.count(200) <= 31, statuses  # not 30 per replica
        assert set(statuses) <= {200, 429, 402}
        assert statuses.count(429) >= 60

        async with httpx.AsyncClient(timeout=60) as client:

            async def spend(i: int) -> httpx.Response:
                return await client.post(
                    group.urls[i % 3] + "/v1/chat/completions",
                    json={"model": "fast", "messages": HI, "max_tokens": 10},
                    headers=auth("globex"),
                )

            budgeted = await asyncio.gather(*(spend(i) for i in range(64)))
        assert {r.status_code for r in budgeted} <= {200, 402}
    rows = [row for row in await ledger(pg_url) if row["tenant"] == "globex"]
    assert sum(row["cost_usd"] for row in rows) <= 0.00025 + 1e-12
    assert [r.status_code for r in budgeted].count(200) == len(rows) <= 10


async def test_a_breaker_opened_by_one_replica_stops_the_others_sending(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    dead, alive = ScriptedUpstream("dead"), ScriptedUpstream("alive")
    dead.default = Behaviour(status=500)
    with serve_app(dead.app) as dead_url, serve_app(alive.app) as alive_url:
        config = base_config(
            pg_url,
            redis_url,
            [model(dead_url, id="dead"), model(alive_url, id="alive")],
            breaker={"failure_threshold": 2, "reset_timeout": 60},
        )
        with cluster(config, tmp_path) as group:
            async with httpx.AsyncClient(timeout=60) as client:

                async def ask(url: str) -> None:
                    response = await client.post(
                        url + "/v1/chat/completions",
                        json={"model": "fast", "messages": HI},
                        headers=auth(),
                    )
                    assert response.status_code == 200  # retried on the live one

                # Through replica 0 until its breaker for the dead deployment opens.
                while dead.calls < 2:
                    await ask(group.urls[0])

                async def open_on(url: str) -> bool:
                    health = await client.get(
                        url + "/healthz", headers={"authorization": f"Bearer {METRICS}"}
                    )
                    return bool(health.json()["deployments"]["dead"] == "open")

                for url in group.urls[1:]:
                    await eventually(lambda url=url: open_on(url), within=5)
                seen = dead.calls
                for _ in range(10):
                    for url in group.urls[1:]:
                        await ask(url)
        assert dead.calls == seen  # the other replicas never tried it
