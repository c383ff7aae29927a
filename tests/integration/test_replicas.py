"""Three `areion serve` replicas sharing one PostgreSQL schema and one Redis prefix,
a client spreading requests over them round-robin, scripted upstreams behind: what one
replica enforces, learns or stores, every replica does."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.agent_upstream import AgentUpstream
from tests.pg import fresh_schema
from tests.replicas import Cluster, cluster
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import PrivateRedis, eventually, prefixed, serve_app

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


QUESTION = "How can I improve my English speaking skills?"
PARAPHRASE = "How do I improve my English speaking skills?"


async def test_a_cached_answer_is_served_by_every_replica_and_dropped_everywhere(
    pg_url: str, redis_url: str, upstream: Any, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="needs the semantic extra: pip install -e '.[dev]'")
    scripted, url = upstream
    scripted.default = Behaviour(text="Speak every day and record yourself.")
    config = base_config(
        pg_url,
        redis_url,
        [model(url)],
        cache={"exact": {"enabled": True}, "semantic": {"enabled": True}},
    )
    with cluster(config, tmp_path) as group:
        one, two, three = group.urls
        async with httpx.AsyncClient(timeout=60) as client:

            async def ask(base: str, text: str, tenant: str = "acme") -> str:
                response = await client.post(
                    base + "/v1/chat/completions",
                    json={"model": "fast", "temperature": 0,
                          "messages": [{"role": "user", "content": text}]},
                    headers=auth(tenant),
                )  # fmt: skip
                assert response.status_code == 200, response.text
                return response.headers["x-areion-cache"]

            async def probe(base: str, text: str) -> str:
                """The cache tier that answered, or the status of a refused miss."""
                response = await client.post(
                    base + "/v1/chat/completions",
                    json={"model": "fast", "temperature": 0,
                          "messages": [{"role": "user", "content": text}]},
                    headers=auth("acme"),
                )  # fmt: skip
                if response.status_code != 200:
                    return str(response.status_code)
                return response.headers["x-areion-cache"]

            assert await ask(one, QUESTION) == "miss"
            # Stored by replica one after its answer left: the others find it soon after.
            # Until they do, a miss reaches an upstream that refuses it, so no replica
            # stores an answer of its own meanwhile (only replica one's entry is there).
            scripted.default = Behaviour(status=400, text="not now")
            await eventually(lambda: _is(probe(two, QUESTION), "hit-exact"))
            await eventually(lambda: _is(probe(two, PARAPHRASE), "hit-semantic"))
            scripted.default = Behaviour(text="Speak every day and record yourself.")
            # Never another tenant's (its paraphrase first: its miss stores its own answer).
            assert await ask(two, PARAPHRASE, tenant="globex") == "miss"
            exact = await ask(three, QUESTION, tenant="globex")  # not acme's exact entry
            assert exact in ("miss", "hit-semantic")  # (its own paraphrase may answer)
            calls = scripted.calls

            dropped = await client.delete(three + "/v1/cache", headers=auth())
            assert dropped.status_code == 200 and dropped.json()["semantic"] == 1
            # Gone from one and two: both ask at once and both reach the upstream (held
            # there until both have, so neither can be answered by the other's new entry).
            gate = threading.Event()
            scripted.script.extend([Behaviour(text="again", hold=gate)] * 2)
            asked = asyncio.gather(ask(one, QUESTION), ask(two, PARAPHRASE))
            await eventually(lambda: _true(scripted.calls == calls + 2))
            gate.set()
            assert await asked == ["miss", "miss"]


async def _true(value: bool) -> bool:
    return value


async def _is(answer: Awaitable[Any], expected: Any) -> bool:
    return bool(await answer == expected)


async def test_a_key_made_on_one_replica_works_on_all_and_its_revocation_too(
    pg_url: str, redis_url: str, upstream: Any, tmp_path: Path
) -> None:
    _, url = upstream
    config = base_config(pg_url, redis_url, [model(url)])
    config["auth"]["key_cache_ttl_s"] = 1
    with cluster(config, tmp_path) as group:
        one, two, three = group.urls
        admin = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(timeout=60) as client:
            made = await client.post(
                one + "/v1/admin/keys", json={"tenant": "initech", "name": "web"}, headers=admin
            )
            assert made.status_code == 201
            key = {"authorization": f"Bearer {made.json()['key']}"}

            async def status(base: str) -> int:
                response = await client.post(
                    base + "/v1/chat/completions",
                    json={"model": "fast", "messages": HI},
                    headers=key,
                )
                return response.status_code

            assert [await status(base) for base in (two, three)] == [200, 200]  # at once
            revoked = await client.delete(one + "/v1/admin/keys/web", headers=admin)
            assert revoked.status_code == 200
            assert await status(one) == 401
            for base in (two, three):  # within auth.key_cache_ttl_s
                await eventually(lambda base=base: _is(status(base), 401), within=5)


async def test_a_run_whose_replica_dies_is_finished_by_another_by_itself(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    from tests.integration.test_agent_crash import billing_policy

    upstream = AgentUpstream(billing_policy)
    bank = tmp_path / "bank.db"
    with serve_app(upstream.app) as url:
        config = base_config(
            pg_url,
            redis_url,
            [model(url)],
            agents=[{"name": "billing", "path": "tests.replica_agent:agent"}],
            runs={"lease_ttl_s": 2},
        )
        env = {"AREION_TEST_BANK": str(bank)}
        with cluster(config, tmp_path, env=env) as group:
            one, two, _ = group.urls
            async with httpx.AsyncClient(timeout=60) as client:
                started = await client.post(
                    one + "/v1/runs", json={"agent": "billing", "input": "bill"}, headers=auth()
                )
                assert started.status_code == 202, started.text
                run = one + "/v1/runs/" + started.json()["id"]

                async def run_state(base: str = two) -> dict[str, Any]:
                    response = await client.get(run.replace(one, base), headers=auth())
                    return dict(response.json())

                await eventually(lambda: _true_async(run_state(), lambda r: r["steps"] >= 2))
                group.kill(0)  # between steps, or inside one: wherever it is
                # Nobody resumes it: another replica takes it over once the lease runs out.
                await eventually(
                    lambda: _true_async(run_state(), lambda r: r["status"] == "finished"),
                    within=60,
                )
                final = await run_state()
    assert final["output"] == "all customers billed"
    assert final["steps"] == 5
    charges = sqlite3.connect(bank).execute("SELECT account, amount FROM charges").fetchall()
    # Each charge took effect exactly once; a completed one never ran again.
    assert sorted(charges) == [("acct-1", 10), ("acct-2", 20), ("acct-3", 30)]
    attempts = (
        sqlite3.connect(bank).execute("SELECT key, COUNT(*) FROM attempts GROUP BY key").fetchall()
    )
    assert all(count <= 2 for _, count in attempts), attempts  # only one cut off mid-way
    assert sum(count for _, count in attempts) <= 4


async def _true_async(value: Awaitable[Any], check: Any) -> bool:
    try:
        return bool(check(await value))
    except (KeyError, TypeError):
        return False


async def test_redis_restarted_mid_burst_breaks_no_limit(
    pg_url: str, upstream: Any, tmp_path: Path
) -> None:
    _, url = upstream
    with PrivateRedis() as redis:
        # 60 a minute, refilled at 1 a second; globex's day fits ten calls.
        config = base_config(
            pg_url,
            prefixed(redis.url),
            [model(url)],
            tenants=[
                {"name": "acme", "rpm": 60},
                {"name": "globex", "budget_usd_per_day": 0.00025},
            ],
        )
        body = {"model": "fast", "messages": HI, "max_tokens": 10}
        statuses: list[int] = []
        spent: list[int] = []
        with cluster(config, tmp_path) as group:
            started = time.monotonic()
            for wave in range(30):
                if wave == 10:
                    redis.kill()  # everything Redis held is gone
                if wave == 20:
                    redis.start()
                statuses += [r.status_code for r in await burst(group, 5, body)]
                async with httpx.AsyncClient(timeout=60) as client:
                    answer = await client.post(
                        group.next_url() + "/v1/chat/completions", json=body,
                        headers=auth("globex"),
                    )  # fmt: skip
                    spent.append(answer.status_code)
            elapsed = time.monotonic() - started
    # While Redis is down calls are refused (the documented 503), never let through.
    assert set(statuses) <= {200, 429, 503} and set(spent) <= {200, 402, 503}
    assert statuses.count(503) > 0
    # The bucket allows 60 at once and 1 a second after: a restart adds nothing to it.
    assert statuses.count(200) <= 60 + elapsed + 1
    rows = [row for row in await ledger(pg_url) if row["tenant"] == "globex"]
    assert sum(row["cost_usd"] for row in rows) <= 0.00025 + 1e-12
    assert spent.count(200) == len(rows)


async def test_postgresql_down_mid_burst_loses_no_billed_call(
    redis_url: str, upstream: Any, tmp_path: Path
) -> None:
    from tests.pg import Proxy, require_postgres

    _, url = upstream
    async with fresh_schema() as direct:
        proxy = Proxy(require_postgres())
        await proxy.start()
        config = base_config(proxy.url(direct), redis_url, [model(url)])
        answered: list[str] = []
        statuses: list[int] = []
        with cluster(config, tmp_path) as group:
            for wave in range(30):
                if wave == 10:
                    await proxy.stop()  # PostgreSQL is gone: connections cut, none accepted
                if wave == 20:
                    await proxy.start()
                for response in await burst(group, 5, {"model": "fast", "messages": HI}):
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        answered.append(response.headers["x-request-id"])

            async def written() -> bool:
                return {row["request_id"] for row in await ledger(direct)} >= set(answered)

            await eventually(written, within=30)  # the rows kept meanwhile are written
        await proxy.stop()
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) >= 100  # served from memory while PostgreSQL was down


async def test_workers_share_one_port_and_one_limit(
    pg_url: str, redis_url: str, upstream: Any, tmp_path: Path
) -> None:
    _, url = upstream
    config = base_config(pg_url, redis_url, [model(url)], tenants=[{"name": "acme", "rpm": 20}])
    with cluster(config, tmp_path, replicas=1, args=("--workers", "2")) as group:
        statuses = [
            r.status_code for r in await burst(group, 60, {"model": "fast", "messages": HI})
        ]
    assert "2 workers" in group.log(0)
    assert 20 <= statuses.count(200) <= 21 and statuses.count(429) >= 39


def test_workers_need_shared_backends(tmp_path: Path) -> None:
    config = tmp_path / "areion.yaml"
    config.write_text("models: [{name: fast, provider: sim, model: sim-fast}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "areion.cli", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "store: postgresql://" in done.stderr and "shared: redis://" in done.stderr
