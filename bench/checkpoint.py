"""Checkpoint write latency and throughput of the SQLite store, and of the PostgreSQL
store next to it (`--postgres URL`).

Each agent run checkpoints once per step. A step's delta here is realistic: the
run row, 2 messages of about 500 bytes (an assistant tool call and the tool's
result), 2 events and 1 tool-call record. At concurrency C, C runs step in
parallel on one event loop, each in a closed loop (the next checkpoint starts
when the previous one returned), so writes pile up and are group-committed. A
run ends after `--run-steps` steps and a new one takes its place (its
`create_run` is not timed), so transcripts keep a realistic length.

A level written `C@S` is paced instead: C runs, each taking a step every S
seconds on average (jittered), as live agents waiting on their model calls do.
Its latency is what a checkpoint costs at that offered load, not under saturation.

A second pass repeats each level with one reader polling alongside (a cache hit,
a late reader's `run_events` tail, a `load_run` resume, then 1 ms of sleep), to
show what reads cost under write load and what they cost the writes.

    .venv/bin/python bench/checkpoint.py                   # about half a minute
    .venv/bin/python bench/checkpoint.py --quick
    .venv/bin/python bench/checkpoint.py --levels 1,10,100,1000,10000,10000@2 --json out.json
    .venv/bin/python bench/checkpoint.py --postgres postgresql://postgres@127.0.0.1:5432/test

With `--postgres`, the same levels run on each store in turn, in one process: SQLite
first, then PostgreSQL in a schema of its own (created, then dropped), and a last
table sets PostgreSQL's p50 and p99 beside SQLite's. PostgreSQL commits over a
socket and flushes its WAL on every commit, so its figures are what a replica pays
for a database it shares; group commit turns concurrency into bigger batches, not
into more transactions.

Latency runs from the call of `store.checkpoint()` (which includes serializing the
delta) until it returned, that is until the transaction is committed. The
database lives in a temporary directory (`--dir` to choose another file system).
Target: p50 <= 1 ms for a lone checkpoint (concurrency 1) on SQLite.

At 10,000 runs the p99 is mostly Python's cyclic garbage collector: a full
collection of the process's many live objects holds the GIL for tens of
milliseconds, and every checkpoint in flight waits for it. `--no-gc` turns the
collector off during the measurement, to see the store's own tail.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import Summary, describe_environment, environment, fmt, table, write_json
from areion.store.base import Store
from areion.store.records import Checkpoint, RunRecord, ToolCallRecord
from areion.store.sqlite import SQLiteStore

TARGET_P50_MS = 1.0

_PROSE = (
    "The quarterly figures show revenue up eleven percent against the same period last "
    "year, driven by the enterprise segment; churn in the self-serve tier rose slightly. "
)


def _text(size: int, seed: int) -> str:
    body = (f"[{seed}] " + _PROSE * (size // len(_PROSE) + 1))[:size]
    return body


class _Run:
    """One agent run stepping through checkpoints."""

    def __init__(self, index: int, tenant: str) -> None:
        now = time.time()
        self.record = RunRecord(
            run_id=f"run-{index:06d}-{os.getpid()}",
            tenant=tenant,
            agent="analyst",
            session=f"session-{index % 97}",
            input="Summarize the quarterly report and list the three biggest risks.",
            message_count=2,
            limits={"max_steps": 50, "max_cost_usd": 1.0},
            created=now,
            updated=now,
        )
        self.first_messages = [
            {"role": "system", "content": "You are a careful financial analyst."},
            {"role": "user", "content": self.record.input},
        ]

    def step(self) -> Checkpoint:
        """The delta of the run's next step."""
        run = self.record
        step = run.steps + 1
        call_id = f"call_{step:04d}"
        arguments = '{"query": "quarterly revenue by segment", "limit": 20}'
        messages: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": _text(330, step),
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "search_reports", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": _text(500, step)},
        ]
        now = time.time()
        self.record = replace(
            run,
            steps=step,
            prompt_tokens=run.prompt_tokens + 1_250,
            completion_tokens=run.completion_tokens + 140,
            cost_usd=run.cost_usd + 0.000_912_5,
            message_count=run.message_count + len(messages),
            updated=now,
        )
        events = [
            {"type": "tool_call", "call_id": call_id, "name": "search_reports", "step": step},
            {
                "type": "step",
                "step": step,
                "usage": {"prompt_tokens": 1_250, "completion_tokens": 140},
                "cost_usd": 0.000_912_5,
            },
        ]
        call = ToolCallRecord(
            tenant=run.tenant,
            run_id=run.run_id,
            call_id=call_id,
            name="search_reports",
            arguments=arguments,
            status="done",
            idempotency_key=f"{run.run_id}:{call_id}",
            result=_text(500, step),
            updated=now,
        )
        return Checkpoint(run=self.record, messages=messages, events=events, tool_calls=[call])


class _Slot:
    """One of the C concurrent runs: when a run is done, the next starts in its place."""

    def __init__(self, store: Store, index: int, run_steps: int) -> None:
        self.store = store
        self.index = index
        self.run_steps = run_steps
        self.serial = 0
        self.run = self._next()

    def _next(self) -> _Run:
        self.serial += 1
        return _Run(self.index * 1_000_000 + self.serial, tenant=f"tenant-{self.index % 10}")

    async def start(self) -> None:
        await self.store.create_run(self.run.record, self.run.first_messages)

    async def steps(self, count: int, latencies: list[float] | None, interval: float = 0.0) -> None:
        if interval:
            await asyncio.sleep(random.uniform(0.0, interval))  # runs started at random
        for _ in range(count):
            if interval:
                await asyncio.sleep(random.uniform(0.5, 1.5) * interval)
            if self.run.record.steps >= self.run_steps:
                self.run = self._next()
                await self.start()
            checkpoint = self.run.step()
            started = time.perf_counter()
            await self.store.checkpoint(checkpoint)
            if latencies is not None:
                latencies.append(time.perf_counter() - started)


async def _reader(
    store: Store, slots: list[_Slot], stop: asyncio.Event, latencies: dict[str, list[float]]
) -> None:
    """A poller reading while the runs write: a cache hit, a late event reader, a resume."""
    index = 0
    while not stop.is_set():
        record = slots[index % len(slots)].run.record
        index += 1
        for name, read in (
            ("cache_get", store.cache_get("bench-key")),
            ("run_events", store.run_events(record.run_id, after=2 * record.steps - 5)),
            ("load_run", store.load_run(record.run_id, tenant=record.tenant)),
        ):
            started = time.perf_counter()
            await read
            latencies[name].append(time.perf_counter() - started)
        await asyncio.sleep(0.001)


async def _phase(
    store: Store,
    slots: list[_Slot],
    steps: int,
    interval: float,
    reads: dict[str, list[float]] | None,
) -> dict[str, Any]:
    latencies: list[float] = []
    stop = asyncio.Event()
    reader = None
    if reads is not None:
        reader = asyncio.ensure_future(_reader(store, slots, stop, reads))
    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(slot.steps(steps, latencies, interval) for slot in slots))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    stop.set()
    if reader is not None:
        await reader
    return {
        "concurrency": len(slots),
        "interval_s": interval,
        "checkpoints": len(latencies),
        "latency_ms": Summary.of(latencies).to_dict(),
        "throughput_per_s": len(latencies) / wall,
        "cpu_us_per_checkpoint": cpu / len(latencies) * 1e6,
        "wall_s": wall,
    }


async def _level(
    store: Store, args: argparse.Namespace, level: str, first_slot: int
) -> dict[str, Any]:
    runs, _, pace = level.partition("@")
    concurrency = int(runs)
    interval = float(pace or 0)
    slots = [_Slot(store, first_slot + i, args.run_steps) for i in range(concurrency)]
    await asyncio.gather(*(slot.start() for slot in slots))
    await asyncio.gather(*(slot.steps(args.warmup, None) for slot in slots))

    closed_loop_steps = max(args.min_steps, -(-args.samples // concurrency))
    steps = args.paced_steps if interval else closed_loop_steps
    result = await _phase(store, slots, steps, interval, None)
    result["level"] = f"{concurrency} every {interval:g} s" if interval else str(concurrency)
    if not args.no_reads:
        reads: dict[str, list[float]] = {"cache_get": [], "run_events": [], "load_run": []}
        with_reads = await _phase(store, slots, steps, interval, reads)
        result["with_reader"] = {
            "checkpoint_latency_ms": with_reads["latency_ms"],
            "throughput_per_s": with_reads["throughput_per_s"],
            "read_latency_ms": {name: Summary.of(v).to_dict() for name, v in reads.items()},
        }

    # Every checkpoint is there, whole and in order.
    for slot in slots[:: max(1, concurrency // 20)]:
        record = slot.run.record
        snapshot = await store.load_run(record.run_id, tenant=record.tenant)
        assert snapshot is not None and snapshot.run == record
        assert len(snapshot.messages) == record.message_count == 2 + 2 * record.steps
        assert len(snapshot.tool_calls) == record.steps
        events = await store.run_events(record.run_id)
        assert [seq for seq, _ in events] == list(range(2 * record.steps))
    return result


def _folder_bytes(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).iterdir())


async def _levels(store: Store, args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    first_slot = 0
    await store.cache_put("bench-key", b"x" * 2000, ttl=3600)
    for level in args.levels.split(","):
        results.append(await _level(store, args, level, first_slot))
        first_slot += results[-1]["concurrency"]
    return results


async def _postgres(args: argparse.Namespace) -> dict[str, Any]:
    """The same levels on the PostgreSQL store, in a schema made for the run."""
    import asyncpg

    from areion.store.postgres import PostgresStore

    schema = f"areion_bench_{uuid.uuid4().hex[:12]}"
    separator = "&" if urlsplit(args.postgres).query else "?"
    store = PostgresStore(f"{args.postgres}{separator}schema={schema}")
    admin = await asyncpg.connect(args.postgres)
    try:
        server = await admin.fetchval("SHOW server_version")
        try:
            levels = await _levels(store, args)
        finally:
            await store.aclose()
    finally:
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()
    return {"levels": levels, "server": server}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="areion-bench-checkpoint-", dir=args.dir)
    try:
        store = SQLiteStore(str(Path(folder) / "areion.db"))
        try:
            results = await _levels(store, args)
        finally:
            await store.aclose()
        db_bytes = _folder_bytes(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report: dict[str, Any] = {"levels": results, "db_bytes": db_bytes}
    if args.postgres:
        report["postgres"] = await _postgres(args)
    return report


def _print_levels(name: str, levels: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = [
        (
            r["level"],
            r["checkpoints"],
            fmt(r["latency_ms"]["p50"], 3),
            fmt(r["latency_ms"]["p90"], 3),
            fmt(r["latency_ms"]["p99"], 3),
            fmt(r["latency_ms"]["mean"], 3),
            fmt(r["throughput_per_s"], 0),
            fmt(r["cpu_us_per_checkpoint"], 1),
        )
        for r in levels
    ]
    print(f"\n{name}:")
    print(
        table(
            ["concurrency", "checkpoints", "p50 ms", "p90 ms", "p99 ms", "mean ms",
             "checkpoints/s", "cpu us/ckpt"],
            rows,
        )
    )  # fmt: skip
    if args.no_reads:
        return
    read_rows = []
    for r in levels:
        extra = r["with_reader"]
        reads = extra["read_latency_ms"]
        read_rows.append(
            (
                r["level"],
                fmt(extra["checkpoint_latency_ms"]["p50"], 3),
                fmt(extra["throughput_per_s"], 0),
                *(
                    f"{fmt(reads[read]['p50'], 3)} / {fmt(reads[read]['p99'], 3)}"
                    for read in ("cache_get", "run_events", "load_run")
                ),
            )
        )
    print(f"\n{name}, the same load with one reader polling (read p50 / p99 ms):")
    print(
        table(
            ["concurrency", "ckpt p50 ms", "checkpoints/s", "cache_get", "run_events",
             "load_run"],
            read_rows,
        )
    )  # fmt: skip


def _print_side_by_side(sqlite: list[dict[str, Any]], postgres: list[dict[str, Any]]) -> None:
    rows = []
    for lite, pg in zip(sqlite, postgres, strict=True):
        a, b = lite["latency_ms"], pg["latency_ms"]
        rows.append(
            (
                lite["level"],
                f"{fmt(a['p50'], 3)} / {fmt(b['p50'], 3)}",
                fmt(b["p50"] / a["p50"], 1) + "x",
                f"{fmt(a['p99'], 3)} / {fmt(b['p99'], 3)}",
                fmt(b["p99"] / a["p99"], 1) + "x",
                f"{fmt(lite['throughput_per_s'], 0)} / {fmt(pg['throughput_per_s'], 0)}",
            )
        )
    print("\ncheckpoint writes, SQLite / PostgreSQL (ratio: PostgreSQL over SQLite):")
    print(
        table(
            ["concurrency", "p50 ms", "p50 ratio", "p99 ms", "p99 ratio", "checkpoints/s"],
            rows,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--levels",
        default="1,100,1000,10000@2",
        help="concurrency levels; C@S: C runs, each stepping every S seconds",
    )
    parser.add_argument("--samples", type=int, default=5000, help="checkpoints timed per level")
    parser.add_argument("--min-steps", type=int, default=10, help="timed steps per run, at least")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run first")
    parser.add_argument("--paced-steps", type=int, default=3, help="timed steps of C@S levels")
    parser.add_argument("--run-steps", type=int, default=40, help="steps before a run ends")
    parser.add_argument(
        "--no-reads", action="store_true", help="skip the second pass with a reader polling"
    )
    parser.add_argument("--no-gc", action="store_true", help="no cyclic GC while measuring")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--dir", default=None, help="where the temporary database goes")
    parser.add_argument("--json", default=None, metavar="FILE", help="save the results")
    parser.add_argument(
        "--postgres",
        default=None,
        metavar="URL",
        help="also measure the PostgreSQL store there (postgresql://user@host:port/db)",
    )
    args = parser.parse_args()
    if args.quick:
        args.samples = min(args.samples, 1500)
        args.min_steps = min(args.min_steps, 3)
        args.paced_steps = min(args.paced_steps, 2)

    env = environment()
    print(describe_environment(env))
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}")
    if args.no_gc:
        gc.disable()
    report = asyncio.run(_main(args))
    gc.enable()

    _print_levels("SQLite", report["levels"], args)
    if "postgres" in report:
        postgres = report["postgres"]
        _print_levels(f"PostgreSQL {postgres['server']}", postgres["levels"], args)
        _print_side_by_side(report["levels"], postgres["levels"])
    lone = next(
        (r for r in report["levels"] if r["concurrency"] == 1 and not r["interval_s"]), None
    )
    verdict: dict[str, Any] = {"target_ms": TARGET_P50_MS}
    if lone is None:
        print("\ncheckpoint p50: not judged (no concurrency-1 level in --levels)")
    else:
        p50 = lone["latency_ms"]["p50"]
        verdict.update(p50_ms=p50, passed=p50 <= TARGET_P50_MS)
        print(
            f"\nSQLite checkpoint p50 = {p50:.3f} ms (target <= {TARGET_P50_MS:g} ms) "
            f"{'PASS' if p50 <= TARGET_P50_MS else 'FAIL'}"
        )
    if args.json:
        write_json(
            args.json,
            {
                "settings": vars(args),
                "environment": env,
                "sqlite": sqlite3.sqlite_version,
                **report,
                "verdict": verdict,
            },
        )


if __name__ == "__main__":
    main()
