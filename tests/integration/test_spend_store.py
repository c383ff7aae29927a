"""The spend rollups on both stores: they agree with the ledger for every grouping and
time range, streams' open rows included, and databases from before them migrate."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from areion.store import SQLiteStore, Store
from areion.store.postgres_schema import VERSION
from areion.store.rollups import DIMENSIONS, SpendQuery, merge
from areion.types import LedgerEntry
from tests.pg import fresh_schema

DAY = 86400.0
T0 = 1_700_000_000.0 - 1_700_000_000.0 % DAY  # a UTC midnight


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        found: Store = SQLiteStore(str(tmp_path / "areion.db"))
        yield found
        await found.aclose()
        return
    from areion.store.postgres import PostgresStore

    async with fresh_schema() as url:
        found = PostgresStore(url)
        try:
            yield found
        finally:
            await found.aclose()


def _entry(rng: random.Random, i: int) -> LedgerEntry:
    cached = rng.random() < 0.2
    return LedgerEntry(
        request_id=f"r{i}",
        tenant=rng.choice(["acme", "globex"]),
        model=rng.choice(["fast", "strong"]),
        deployment=rng.choice(["d1", "d2"]) if not cached else "cache:exact",
        upstream_model="u",
        prompt_tokens=rng.randrange(1, 500),
        completion_tokens=rng.randrange(0, 200),
        cached_tokens=0,
        cost_usd=0.0 if cached else rng.randrange(1, 1000) / 1e6,
        estimated=False,
        latency_s=rng.lognormvariate(-1.0, 1.2),
        created=T0 + rng.uniform(0, 3 * DAY),
        cache="exact" if cached else "",
        saved_usd=rng.randrange(1, 100) / 1e6 if cached else 0.0,
        key_label=rng.choice(["", "k1", "k2"]),
        route=rng.choice(["", "auto"]),
        run_id=rng.choice(["", "run-1", "run-2"]),
        agent=rng.choice(["", "researcher"]),
        end_user=rng.choice(["", "u1"]),
        tags=tuple(rng.sample(["eu", "beta", "vip"], rng.randrange(0, 3))),
    )


def _expected(rows: list[LedgerEntry], query: SpendQuery) -> dict[tuple[Any, ...], Any]:
    sums: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0, 0.0])
    for row in rows:
        if not query.since <= row.created < query.until:
            continue
        if query.tenant is not None and row.tenant != query.tenant:
            continue
        keys: list[list[Any]] = [[]]
        for name in query.group_by:
            if name == "tag":
                values: list[Any] = list(row.tags) or [""]
            elif name in ("hour", "day"):
                period = 3600 if name == "hour" else 86400
                values = [int(row.created // period * period)]
            else:
                values = [getattr(row, DIMENSIONS[name])]
            keys = [[*key, value] for key in keys for value in values]
        for key in keys:
            total = sums[tuple(key)]
            total[0] += 1
            total[1] += row.prompt_tokens
            total[2] += row.completion_tokens
            total[3] += row.cost_usd
            total[4] += 1 if row.cache else 0
            total[5] += row.saved_usd
    return sums


async def _check(store: Store, rows: list[LedgerEntry], query: SpendQuery) -> None:
    found = merge(await store.spend(query), len(query.group_by))
    expected = _expected(rows, query)
    assert set(found) == set(expected), query
    for key, totals in found.items():
        calls, prompt, completion, cost, hits, saved = expected[key]
        assert (totals.calls, totals.input_tokens, totals.output_tokens) == (
            calls,
            prompt,
            completion,
        )
        assert totals.cost_usd == pytest.approx(cost, abs=1e-9)
        assert (totals.cache_hits, totals.saved_usd) == (hits, pytest.approx(saved, abs=1e-9))
        assert sum(totals.histogram) == calls


QUERIES = [
    ("tenant",),
    ("model", "key"),
    ("route", "agent"),
    ("day", "tenant"),
    ("hour",),
    ("tag",),
    ("run", "user"),
    ("deployment", "cache"),
    (),
]


async def test_rollups_agree_with_the_ledger_for_every_grouping(store: Store) -> None:
    rng = random.Random(7)
    rows = [_entry(rng, i) for i in range(600)]
    # Streams: some rows land open at their bound and close later with real figures,
    # some in another batch, some in the same, one never (a crash: counted at its bound).
    opened = [dataclasses.replace(r, open=True, cost_usd=r.cost_usd * 3) for r in rows[:60]]
    await store.append_ledger(rows[60:300] + opened[:40])
    await store.append_ledger(
        rows[300:] + opened[40:],
        closing=[dataclasses.replace(r, created=r.created + 1800.0) for r in rows[:30]],
    )
    await store.append_ledger(
        [], closing=[dataclasses.replace(r, created=r.created + 7.0) for r in rows[30:59]]
    )
    final = (
        [dataclasses.replace(r, created=r.created + 1800.0) for r in rows[:30]]
        + [dataclasses.replace(r, created=r.created + 7.0) for r in rows[30:59]]
        + [opened[59]]
        + rows[60:]
    )
    assert len(await store.ledger(limit=10_000)) == len(final)
    spans = [
        (0.0, 2e9),  # all time
        (T0 + 3 * 3600 + 17.5, T0 + 2 * DAY + 5 * 3600 + 3.25),  # edges inside hours
        (T0 + DAY, T0 + 2 * DAY),  # exactly one day
        (T0 + 600.0, T0 + 1200.0),  # within an hour
    ]
    for since, until in spans:
        for group_by in QUERIES:
            await _check(store, final, SpendQuery(group_by=group_by, since=since, until=until))
    await _check(store, final, SpendQuery(group_by=("model",), since=0, until=2e9, tenant="acme"))


# -- databases from before the rollups -----------------------------------------------------

_OLD_ROWS = [
    ("a1", "acme", "fast", "d1", "u", 10, 5, 0, 0.25, 0, 0.5, T0 + 100.0, "", 0.0, 0.0, 0, ""),
    ("a2", "acme", "fast", "cache:exact", "u", 0, 0, 0, 0.0, 0, 0.01, T0 + 4000.0, "exact", 0.25,
     0.5, 0, "client-id"),
    ("g1", "globex", "strong", "d2", "u", 20, 8, 0, 0.75, 1, 1.5, T0 + DAY + 5.0, "", 0.0, 0.0,
     0, ""),
]  # fmt: skip


async def _check_migrated(store: Store) -> None:
    rows = {r.request_id: r for r in await store.ledger()}
    assert set(rows) == {"a1", "a2", "g1"}
    assert rows["a2"].client_request_id == "client-id" and rows["a2"].cache == "exact"
    assert (rows["a1"].kind, rows["a1"].run_id, rows["a1"].tags, rows["a1"].key_label) == (
        "chat",
        "",
        (),
        "",
    )
    # The rollups were filled from the old rows, and go on from there.
    await store.append_ledger(
        [dataclasses.replace(rows["g1"], request_id="g2", agent="researcher", tags=("eu",))]
    )
    groups = merge(await store.spend(SpendQuery(group_by=("tenant",), since=0, until=2e9)), 1)
    assert groups[("acme",)].cost_usd == pytest.approx(0.25)
    assert groups[("acme",)].cache_hits == 1 and groups[("acme",)].saved_usd == 0.25
    assert groups[("globex",)].cost_usd == pytest.approx(1.5)
    assert groups[("globex",)].calls == 2
    by_agent = merge(await store.spend(SpendQuery(group_by=("agent",), since=0, until=2e9)), 1)
    assert by_agent[("researcher",)].calls == 1


async def test_a_sqlite_ledger_from_before_attribution_migrates(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE ledger (request_id TEXT NOT NULL, tenant TEXT NOT NULL,
            model TEXT NOT NULL, deployment TEXT NOT NULL, upstream_model TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL, estimated INTEGER NOT NULL,
            latency_s REAL NOT NULL, created REAL NOT NULL, cache TEXT NOT NULL DEFAULT '',
            saved_usd REAL NOT NULL DEFAULT 0, saved_s REAL NOT NULL DEFAULT 0,
            open INTEGER NOT NULL DEFAULT 0, client_request_id TEXT NOT NULL DEFAULT '');
        CREATE INDEX ledger_tenant ON ledger (tenant, created);
        CREATE INDEX ledger_request ON ledger (request_id);
        """
    )
    old.executemany(f"INSERT INTO ledger VALUES ({', '.join('?' * 17)})", _OLD_ROWS)
    old.commit()
    old.close()
    store = SQLiteStore(str(path))
    try:
        await _check_migrated(store)
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    columns = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
    db.close()
    assert {"run_id", "agent", "session", "end_user", "key_label", "route", "tags"} <= columns


async def test_a_postgres_schema_at_version_2_migrates() -> None:
    import asyncpg

    from areion.store.postgres import PostgresStore
    from areion.store.postgres_schema import MIGRATIONS

    async with fresh_schema() as url:
        schema = url.partition("schema=")[2].partition("&")[0]
        admin = await asyncpg.connect(url.partition("?")[0])
        try:
            await admin.execute(f'CREATE SCHEMA "{schema}"; SET search_path TO "{schema}"')
            for migration in MIGRATIONS[:2]:  # the previous version's tables and function
                await admin.execute(migration)
            await admin.execute("CREATE TABLE schema_version (version integer)")
            await admin.execute("INSERT INTO schema_version VALUES (2)")
            # Written as that version wrote them: through its batch function.
            rows = [
                (*row[:9], bool(row[9]), *row[10:15], bool(row[15]), row[16]) for row in _OLD_ROWS
            ]
            await admin.execute(
                "SELECT areion_write(gen_random_uuid(), 0, NULL, NULL, NULL, NULL, NULL, NULL, "
                "NULL, $1::areion_ledger_row[], NULL, NULL)",
                rows,
            )
        finally:
            await admin.close()
        store = PostgresStore(url)
        try:
            await _check_migrated(store)
        finally:
            await store.aclose()
        # A replica still on version 2 writes through the old function: its rows land,
        # and reach the rollups.
        admin = await asyncpg.connect(url.partition("?")[0])
        try:
            await admin.execute(f'SET search_path TO "{schema}"')
            late = ("a3", "acme", "fast", "d1", "u", 1, 1, 0, 0.5, False, 0.2, T0 + 50.0, "",
                    0.0, 0.0, False, "")  # fmt: skip
            await admin.execute(
                "SELECT areion_write(gen_random_uuid(), 0, NULL, NULL, NULL, NULL, NULL, NULL, "
                "NULL, $1::areion_ledger_row[], NULL, NULL)",
                [late],
            )
            assert await admin.fetchval("SELECT max(version) FROM schema_version") == VERSION
        finally:
            await admin.close()
        store = PostgresStore(url)
        try:
            query = SpendQuery(group_by=("tenant",), since=0, until=2e9, tenant="acme")
            assert merge(await store.spend(query), 1)[("acme",)].cost_usd == pytest.approx(0.75)
        finally:
            await store.aclose()
