"""Spend reports at scale: `GET /v1/spend` and the rollup queries over 1M and 10M ledger rows.

For each row count, a fresh store is filled in bulk SQL (a recursive CTE in SQLite,
generate_series in PostgreSQL): N ledger rows spread evenly over the last 30 days,
20 tenants, 40 keys, 6 models, 3 routes, 8 agents, a tenth of them cache hits, log-
spread latencies (0.25 to 9 s), a run id per 5 rows, 1,000 end users, tags; and N / 50 agent runs.
The rollups are then filled by the statement a migration runs (its time is printed:
what upgrading a ledger of that size costs once). Then, side by side:

- `store`: the report's query in process (`areion.spend.spend`: SQL + merge),
- `http`: the same through `GET /v1/spend` of a real `areion serve` on the store,
- `ledger scan`: the same sums computed from the raw ledger (what a report without
  rollups reads), for the ratio,

for 30-day queries by tenant, tenant x model, agent, key x route, by day, by hour,
one tenant's, cost per task, and the dimensions only the ledger keeps (user over a day,
run over a day). Target (the issue's): a 30-day query at 10M rows under 200 ms.

    .venv/bin/python bench/spend.py --rows 1000000
    .venv/bin/python bench/spend.py --rows 1000000,10000000
    .venv/bin/python bench/spend.py --rows 1000000 --postgres postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    ChildProcess,
    describe_environment,
    environment,
    fmt,
    free_port,
    run_main,
    sqlite_bulk_ledger,
    sqlite_bulk_runs,
    table,
    write_json,
)
from areion import spend
from areion.store import Store, open_store
from areion.store.rollups import SpendQuery, spend_sql

DAY = 86400.0
SPAN = 30 * DAY

# name, group_by, span in days, tenant-scoped
QUERIES: list[tuple[str, tuple[str, ...], float, bool]] = [
    ("total, 30 d", (), 30, False),
    ("by tenant, 30 d", ("tenant",), 30, False),
    ("tenant x model, 30 d", ("tenant", "model"), 30, False),
    ("by agent, 30 d", ("agent",), 30, False),
    ("key x route, 30 d", ("key", "route"), 30, False),
    ("by day, 30 d", ("day",), 30, False),
    ("by hour, 30 d", ("hour",), 30, False),
    ("one tenant by model, 30 d", ("model",), 30, True),
    ("by user, 1 d (ledger)", ("user",), 1, False),
    ("by run, 1 d (ledger)", ("run",), 1, False),
]


def _sqlite_fill(path: str, rows: int, end: float) -> float:
    """N ledger rows and N / 50 runs in bulk SQL; then the rollups. Returns the seconds
    the rollups took to fill."""
    from areion.store.sqlite_schema import FILL_ROLLUPS

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    start = end - SPAN
    db.execute("BEGIN")
    sqlite_bulk_ledger(
        db,
        rows=rows,
        start=start,
        span=SPAN,
        run_id_sql="'run-' || (i / 5)",
        tags_sql="CASE WHEN i % 7 = 0 THEN '[\"eu\"]' ELSE '[]' END",
    )
    runs = max(1, rows // 50)
    sqlite_bulk_runs(db, runs=runs, start=start, span=SPAN, message_count=4, duration_s=0)
    db.execute("COMMIT")
    began = time.perf_counter()
    db.execute("BEGIN")
    db.execute("DELETE FROM spend_rollup")
    db.execute(FILL_ROLLUPS)
    db.execute("COMMIT")
    filled = time.perf_counter() - began
    db.execute("ANALYZE")
    db.close()
    return filled


async def _postgres_fill(url: str, rows: int, end: float) -> float:
    import asyncpg

    from areion.store.postgres_schema import _ROLLED
    from areion.store.rollups import rollup_upsert

    schema = url.partition("schema=")[2].partition("&")[0]
    db = await asyncpg.connect(url.partition("?")[0])
    try:
        await db.execute(f'SET search_path TO "{schema}"')
        start = end - SPAN
        step = SPAN / rows
        await db.execute(
            f"""
            INSERT INTO ledger (request_id, tenant, model, deployment, upstream_model,
                prompt_tokens, completion_tokens, cached_tokens, cost_usd, estimated,
                latency_s, created, cache, saved_usd, saved_s, open, client_request_id, kind,
                key_label, route, route_reason, run_id, agent, session, end_user, tags, variant)
            SELECT 'r' || i, 't' || (i % 20), 'model-' || (i % 6), 'dep-' || (i % 12), 'u',
                100 + i % 900, 20 + i % 300, 0,
                CASE WHEN i % 10 = 0 THEN 0 ELSE (100 + i % 900) * 1e-6 END, false,
                0.25 * (1 + floor(random() * 12)) * (1 + floor(random() * 3)),
                {start} + i * {step}, CASE WHEN i % 10 = 0 THEN 'exact' ELSE '' END,
                CASE WHEN i % 10 = 0 THEN 0.0005 ELSE 0 END, 0, false, '', 'chat',
                'k' || (i % 40),
                CASE i % 3 WHEN 0 THEN '' WHEN 1 THEN 'auto' ELSE 'cheap' END, '',
                CASE WHEN i % 4 = 0 THEN 'run-' || (i / 5) ELSE '' END,
                CASE WHEN i % 4 = 0 THEN 'agent-' || (i % 8) ELSE '' END, '',
                'user-' || (i % 1000), CASE WHEN i % 7 = 0 THEN '["eu"]' ELSE '[]' END, ''
            FROM generate_series(0, {rows - 1}) AS i
            """
        )
        runs = max(1, rows // 50)
        await db.execute(
            f"""
            INSERT INTO runs (run_id, tenant, agent, session, status, input, output, error,
                pause_reason, steps, prompt_tokens, completion_tokens, cost_usd, message_count,
                limits, created, updated)
            SELECT 'run-' || i, 't' || (i % 20), 'agent-' || (i % 8), NULL,
                CASE WHEN i % 10 = 0 THEN 'failed' WHEN i % 17 = 0 THEN 'paused'
                     ELSE 'finished' END, 'task', 'done', NULL, NULL, 1 + i % 6, 500, 100,
                (1 + i % 50) * 1e-4, 4, '{{}}', {start} + i * {SPAN / runs},
                {start} + i * {SPAN / runs}
            FROM generate_series(0, {runs - 1}) AS i
            """
        )
        began = time.perf_counter()
        await db.execute("DELETE FROM spend_rollup")
        await db.execute(rollup_upsert(f"SELECT {_ROLLED} FROM ledger AS l", "postgres"))
        filled = time.perf_counter() - began
        await db.execute("ANALYZE")
        return filled
    finally:
        await db.close()


async def _time(work: Any, repeat: int) -> float:
    """The median seconds of `repeat` runs of `work()` after one warm-up."""
    await work()
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        await work()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def _get(url: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=300) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


async def _measure(
    store: Store, store_url: str, workdir: Path, rows: int, end: float, repeat: int, scan: bool
) -> list[dict[str, Any]]:
    port = free_port()
    config = workdir / f"areion-{rows}.yaml"
    config.write_text(
        "models:\n  - {name: fast, provider: sim, model: sim-fast}\n" + f"store: {store_url}\n"
    )
    server = ChildProcess(
        "areion",
        [sys.executable, "-m", "areion.cli", "serve", "--config", str(config), "--port",
         str(port), "--log-level", "warning"],
        workdir / f"areion-{rows}.log",
    )  # fmt: skip
    base = f"http://{LOOPBACK}:{port}"
    dialect: Any = "sqlite" if store_url.startswith("sqlite") else "postgres"
    results: list[dict[str, Any]] = []
    try:
        server.wait_ready(base + "/healthz", timeout=120)
        for name, group_by, days, scoped in QUERIES:
            query = SpendQuery(
                group_by=group_by,
                since=end - days * DAY,
                until=end,
                tenant="t3" if scoped else None,
            )
            answer = await spend.spend(store, query)
            in_store = await _time(lambda q=query: spend.spend(store, q), repeat)
            params = {"since": str(query.since), "until": str(query.until)}
            if group_by:
                params["group_by"] = ",".join(group_by)
            if scoped:
                params["tenant"] = "t3"
            url = base + "/v1/spend?" + urllib.parse.urlencode(params)
            over_http = await _time(lambda u=url: asyncio.to_thread(_get, u), repeat)
            scanned = None
            if scan and not RAW_ONLY.intersection(group_by):
                sql, args = spend_sql(query, dialect, ledger_only=True)
                scanned = await _time(lambda s=sql, a=args: _raw(store, s, a), 1)
            results.append(
                {
                    "query": name,
                    "groups": len(answer["data"]),
                    "calls": answer["total"]["calls"],
                    "store_ms": in_store * 1000,
                    "http_ms": over_http * 1000,
                    "scan_ms": None if scanned is None else scanned * 1000,
                }
            )
        tasks_params = urllib.parse.urlencode({"since": str(end - SPAN), "until": str(end)})
        in_store = await _time(lambda: spend.tasks(store, since=end - SPAN, until=end), repeat)
        over_http = await _time(
            lambda: asyncio.to_thread(_get, base + "/v1/spend/tasks?" + tasks_params), repeat
        )
        results.append(
            {
                "query": "cost per task, 30 d",
                "groups": 8,
                "calls": rows // 50,
                "store_ms": in_store * 1000,
                "http_ms": over_http * 1000,
                "scan_ms": None,
            }
        )
    finally:
        server.stop()
    return results


RAW_ONLY = frozenset(("user", "run", "deployment", "tag"))


async def _raw(store: Store, sql: str, args: list[Any]) -> None:
    from areion.store.postgres import PostgresStore
    from areion.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        await store._read(lambda db: db.execute(sql, args).fetchall())
    elif isinstance(store, PostgresStore):
        await store._fetch(sql, *args)


async def run(args: argparse.Namespace, workdir: Path) -> int:
    counts = [int(text) for text in args.rows.split(",")]
    info = environment(["asyncpg"])
    print(f"environment: {describe_environment(info)}")
    report: dict[str, Any] = {"environment": info, "runs": []}
    end = time.time()
    backends = ["sqlite"] + (["postgres"] if args.postgres else [])
    for backend in backends:
        for rows in counts:
            if backend == "sqlite":
                url = f"sqlite:///{workdir / f'spend-{rows}.db'}"
                made = open_store(url)
                await made.ledger(limit=1)  # creates the tables
                await made.aclose()
                began = time.perf_counter()
                filled = await asyncio.to_thread(
                    _sqlite_fill, url.removeprefix("sqlite:///"), rows, end
                )
            else:
                schema = f"areion_bench_{uuid.uuid4().hex[:10]}"
                url = f"{args.postgres}?schema={schema}"
                made = open_store(url)
                await made.ledger(limit=1)
                await made.aclose()
                began = time.perf_counter()
                filled = await _postgres_fill(url, rows, end)
            loaded = time.perf_counter() - began
            store = open_store(url)
            try:
                rollup_rows = await _count_rollups(store)
                print(
                    f"\n{backend}, {rows:,} ledger rows ({rows // 50:,} runs): generated in "
                    f"{loaded:.1f} s, rollups filled from the ledger in {filled:.1f} s "
                    f"({rollup_rows:,} rollup rows)"
                )
                results = await _measure(
                    store, url, workdir, rows, end, args.repeat, not args.no_scan
                )
            finally:
                await store.aclose()
                if backend == "postgres":
                    await _drop(args.postgres, url)
            print(
                table(
                    [
                        "query",
                        "groups",
                        "store p50 ms",
                        "http p50 ms",
                        "ledger scan ms",
                        "scan / store",
                    ],
                    [
                        [
                            r["query"],
                            r["groups"],
                            fmt(r["store_ms"], 1),
                            fmt(r["http_ms"], 1),
                            fmt(r["scan_ms"], 0),
                            "-" if r["scan_ms"] is None else f"{r['scan_ms'] / r['store_ms']:.0f}x",
                        ]
                        for r in results
                    ],
                )
            )
            spends = [r for r in results if "30 d" in r["query"] and "task" not in r["query"]]
            worst = max(spends, key=lambda r: r["http_ms"])
            print(
                f"slowest 30-day spend query over HTTP: {worst['query']}, "
                f"{worst['http_ms']:.1f} ms (target: < 200 ms at 10M rows)"
            )
            report["runs"].append(
                {"backend": backend, "rows": rows, "fill_s": filled, "results": results}
            )
    if args.json:
        write_json(args.json, report)
    return 0


async def _count_rollups(store: Store) -> int:
    from areion.store.postgres import PostgresStore
    from areion.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return int(
            await store._read(
                lambda db: db.execute("SELECT count(*) FROM spend_rollup").fetchone()[0]
            )
        )
    if isinstance(store, PostgresStore):
        return int(await store._fetchval("SELECT count(*) FROM spend_rollup"))
    return 0


async def _drop(base: str, url: str) -> None:
    import asyncpg

    schema = url.partition("schema=")[2].partition("&")[0]
    db = await asyncpg.connect(base)
    try:
        await db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000000", help="ledger rows, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query")
    parser.add_argument("--postgres", help="also measure the PostgreSQL store at this URL")
    parser.add_argument("--no-scan", action="store_true", help="skip the raw ledger scans")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--uvloop", action="store_true")
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
