"""Distributed mode: `areion serve --workers 2` against `--workers 1`, side by side.

Both servers use the same config: a PostgreSQL store (a schema made for the run and
dropped after it) and Redis `shared` (a prefix of the run's own, deleted after it), in
front of the same upstream (`bench/upstream.py`). The load generator sends the same
non-streamed request, in interleaved rounds, straight to the upstream ("direct") and
to each server, at each concurrency, and reports p50/p99, the latency each server adds
over direct, and the throughput (closed loop). On a 2-core machine the upstream, the
load generator, PostgreSQL and Redis share the cores with the workers: the ratio says
what a second worker buys there, not on a machine with cores to spare.

    .venv/bin/python bench/workers.py            # about 2 minutes
    .venv/bin/python bench/workers.py --quick
    --postgres postgresql://postgres@127.0.0.1:5432/test  --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from _common import (
    LOOPBACK,
    ChildProcess,
    describe_environment,
    environment,
    fmt,
    free_port,
    run_main,
    table,
    upstream,
    write_json,
)
from server_latency import GROUP, UPSTREAM_MODEL, AiohttpClient, Target, measure_cell


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer calls")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--uvloop", action="store_true", help="run the load generator on uvloop")
    return parser.parse_args()


def write_config(workdir: Path, upstream_url: str, store: str, shared: str) -> Path:
    path = workdir / "areion-workers.yaml"
    config = {
        "models": [
            {"name": GROUP, "provider": "openai", "model": UPSTREAM_MODEL,
             "base_url": upstream_url, "api_key": "dummy"}
        ],
        "store": store,
        "shared": shared,
        "server": {"access_log": False},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def serve(workdir: Path, config: Path, workers: int) -> tuple[ChildProcess, int]:
    port = free_port()
    process = ChildProcess(
        f"areion serve --workers {workers}",
        [sys.executable, "-m", "areion.cli", "serve", "--config", str(config), "--host",
         LOOPBACK, "--port", str(port), "--log-level", "warning", "--workers", str(workers)],
        workdir / f"areion-w{workers}.log",
    )  # fmt: skip
    process.wait_ready(f"http://{LOOPBACK}:{port}/healthz")
    return process, port


async def run(args: argparse.Namespace, workdir: Path) -> int:
    import asyncpg

    from areion.store.redis import RedisShared

    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    rounds = 3 if args.quick else 6
    schema = f"areion_bench_{uuid.uuid4().hex[:10]}"
    store = f"{args.postgres}?schema={schema}"
    shared = f"{args.redis}?prefix=areion-bench:{uuid.uuid4().hex}:"
    info = environment(["aiohttp", "starlette", "asyncpg", "redis"])
    client = AiohttpClient()
    servers: list[ChildProcess] = []
    try:
        with upstream(workdir, latency_ms=args.latency_ms, chunks=8) as (_, upstream_url):
            config = write_config(workdir, upstream_url, store, shared)
            targets = [Target("direct", f"{upstream_url}/chat/completions", UPSTREAM_MODEL)]
            for workers in (1, 2):
                process, port = serve(workdir, config, workers)
                servers.append(process)
                url = f"http://{LOOPBACK}:{port}/v1/chat/completions"
                targets.append(Target(f"workers={workers}", url, GROUP))
            print(f"machine: {describe_environment(info)}")
            print(
                f"setup: upstream (latency {args.latency_ms:g} ms), `areion serve --workers 1`"
                " and `--workers 2` over one PostgreSQL schema and one Redis prefix, this load"
                f" generator; {rounds} interleaved rounds per cell"
            )
            cells = []
            sent: dict[str, int] = {}
            started = time.perf_counter()
            for concurrency in levels:
                print(f"measuring concurrency {concurrency} ...", flush=True)
                results = await measure_cell(
                    client, targets, stream=False, concurrency=concurrency, rounds=rounds,
                    quick=args.quick, timeout_s=args.timeout, sent=sent,
                )  # fmt: skip
                cells.append(_report(concurrency, results))
            elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
        for process in servers:
            process.stop()
        connection = await asyncpg.connect(args.postgres)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()
        cleaner = RedisShared(shared)
        try:
            await cleaner.delete_all()
        finally:
            await cleaner.aclose()
    rows = []
    for cell in cells:
        for name in ("workers=1", "workers=2"):
            target = cell["targets"][name]
            rows.append(
                [cell["concurrency"], name, target["n"], fmt(target["p50"]), fmt(target["p99"]),
                 f"{target['added_p50']:+.2f}", f"{target['added_p99']:+.2f}",
                 f"{target['rps']:.0f}", target["errors"]]
            )  # fmt: skip
    print()
    headers = [
        "conc",
        "server",
        "calls",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "rps",
        "err",
    ]
    print(table(headers, rows))
    for cell in cells:
        one, two = cell["targets"]["workers=1"], cell["targets"]["workers=2"]
        print(
            f"concurrency {cell['concurrency']}: 2 workers serve {two['rps'] / one['rps']:.2f}x "
            f"the requests per second of 1 (direct: {cell['direct_rps']:.0f} rps)"
        )
    print(f"\nmeasured in {elapsed:.0f} s.")
    if args.json:
        write_json(args.json, {"benchmark": "workers", "environment": info, "cells": cells})
    return 0


def _report(concurrency: int, results: dict[str, Any]) -> dict[str, Any]:
    from _common import Summary

    direct = Summary.of(results["direct"].total).to_dict()
    cell: dict[str, Any] = {
        "concurrency": concurrency,
        "direct_rps": len(results["direct"].total) / results["direct"].wall_s,
        "targets": {},
    }
    for name in ("workers=1", "workers=2"):
        samples = results[name]
        summary = Summary.of(samples.total).to_dict()
        cell["targets"][name] = {
            "n": summary["n"],
            "p50": summary["p50"],
            "p99": summary["p99"],
            "added_p50": summary["p50"] - direct["p50"],
            "added_p99": summary["p99"] - direct["p99"],
            "rps": len(samples.total) / samples.wall_s if samples.wall_s else 0.0,
            "errors": samples.errors,
        }
    return cell


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
