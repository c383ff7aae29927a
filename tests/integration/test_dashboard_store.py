"""The dashboard's store queries on SQLite and PostgreSQL: pages of runs by cursor (every
run once, newest first, filtered, one tenant's only) and a run's model calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from areion.store import SQLiteStore, Store
from areion.store.records import RunRecord
from areion.store.run_pages import RunPageQuery, RunRow
from areion.types import LedgerEntry
from tests.pg import fresh_schema

T0 = 1_764_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: Store
    if request.param == "sqlite":
        opened = SQLiteStore(str(tmp_path / "areion.db"))
        yield opened
        await opened.aclose()
        return
    async with fresh_schema() as url:
        from areion.store.postgres import PostgresStore

        opened = PostgresStore(url)
        try:
            yield opened
        finally:
            await opened.aclose()


def _run(run_id: str, tenant: str, created: float, **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "run_id": run_id,
        "tenant": tenant,
        "agent": "analyst",
        "input": "task",
        "created": created,
        "updated": created + 5,
    }
    values.update(fields)
    return RunRecord(**values)


async def _fill(store: Store) -> None:
    # Two runs share a creation time (the cursor must still take each once), and
    # tenant beta has a run of the same id as one of acme's.
    for i in range(10):
        status = "paused" if i % 3 == 0 else "finished"
        agent = "analyst" if i % 2 == 0 else "writer"
        created = T0 + (i if i != 5 else 4)
        await store.create_run(
            _run(f"r{i}", "acme", created, status=status, agent=agent, cost_usd=i / 100), []
        )
    await store.create_run(_run("r3", "beta", T0 + 3.5, cost_usd=9.0), [])


async def _walk(store: Store, query: RunPageQuery) -> list[RunRow]:
    rows: list[RunRow] = []
    after = None
    while True:
        page = await store.run_page(
            RunPageQuery(
                tenant=query.tenant, status=query.status, agent=query.agent, after=after, limit=3
            )
        )
        rows += page
        if len(page) < 3:
            return rows
        after = (page[-1].created, page[-1].tenant, page[-1].run_id)


async def test_pages_of_runs_by_cursor(store: Store) -> None:
    await _fill(store)
    acme = await _walk(store, RunPageQuery(tenant="acme"))
    assert [r.run_id for r in acme] == ["r9", "r8", "r7", "r6", "r5", "r4", "r3", "r2", "r1", "r0"]
    assert {r.tenant for r in acme} == {"acme"}
    everyone = await _walk(store, RunPageQuery())
    assert len(everyone) == 11 and ("beta", "r3") in {(r.tenant, r.run_id) for r in everyone}
    paused = await _walk(store, RunPageQuery(tenant="acme", status="paused"))
    assert [r.run_id for r in paused] == ["r9", "r6", "r3", "r0"]
    assert {r.status for r in paused} == {"paused"}
    writers = await _walk(store, RunPageQuery(tenant="acme", agent="writer", status="paused"))
    assert [r.run_id for r in writers] == ["r9", "r3"]
    assert await store.run_page(RunPageQuery(tenant="nobody")) == []
    costliest = await store.run_page(RunPageQuery(order="cost", limit=2, since=T0, until=T0 + 100))
    assert [(r.tenant, r.run_id) for r in costliest] == [("beta", "r3"), ("acme", "r9")]
    mine = await store.run_page(RunPageQuery(tenant="acme", order="cost", limit=1))
    assert mine[0].run_id == "r9" and mine[0].cost_usd == pytest.approx(0.09)
    first = acme[0]
    assert (first.agent, first.status, first.steps, first.updated) == (
        "writer",
        "paused",
        0,
        T0 + 9 + 5,
    )


def _entry(request_id: str, tenant: str, run_id: str, created: float, cost: float) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id,
        tenant=tenant,
        model="fast",
        deployment="fast/m",
        upstream_model="m",
        prompt_tokens=100,
        completion_tokens=20,
        cached_tokens=0,
        cost_usd=cost,
        estimated=False,
        latency_s=0.5,
        created=created,
        run_id=run_id,
        agent="analyst",
    )


async def test_a_runs_model_calls(store: Store) -> None:
    await store.append_ledger(
        [
            _entry("a", "acme", "r1", T0 + 1, 0.01),
            _entry("b", "acme", "r1", T0 + 2, 0.02),
            _entry("c", "acme", "r2", T0 + 2, 0.5),  # another run
            _entry("d", "beta", "r1", T0 + 2, 0.7),  # another tenant's run of the same id
            _entry("e", "acme", "r1", T0 + 900, 0.9),  # outside the run's window
        ]
    )
    calls = await store.run_calls("r1", tenant="acme", since=T0, until=T0 + 10)
    assert [(c.created, c.cost_usd) for c in calls] == [(T0 + 1, 0.01), (T0 + 2, 0.02)]
    assert (calls[0].model, calls[0].prompt_tokens, calls[0].completion_tokens) == ("fast", 100, 20)
    assert calls[0].kind == "chat" and calls[0].cache == ""
