"""Criterion 2: the latency the Areion server adds over calling the upstream directly.

Three processes on loopback: the upstream (`bench/upstream.py`), `areion serve`
with a config that points at it, and this load generator (one asyncio process,
aiohttp when installed, else httpx). At each concurrency the load generator sends
the same chat request, in interleaved rounds, either straight to the upstream
("direct") or through the Areion server ("areion"), and reports p50/p99 of both,
their difference and the throughput. Streams are timed to the first `data:` event
(TTFB) and to the end of the body (TTLB).

    .venv/bin/python bench/server_latency.py            # a few minutes
    .venv/bin/python bench/server_latency.py --quick

Criterion: at concurrency 16 (non-streaming) the server adds <= 2 ms p50 and <= 10 ms p99.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from _common import (
    LOOPBACK,
    ChildProcess,
    Summary,
    describe_environment,
    environment,
    fmt,
    free_port,
    run_main,
    table,
    upstream,
    write_json,
)

GROUP = "bench"
UPSTREAM_MODEL = "bench-model"
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Write one sentence about benchmarks."},
]
TARGET_CONCURRENCY = 16
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
SETTLE_S = 0.06


class LoadClient:
    """Sends one request and times it; implementations differ only in the HTTP library."""

    name = ""

    async def post(self, url: str, body: bytes) -> None:
        """A non-streamed call, the whole body read."""
        raise NotImplementedError

    async def post_stream(self, url: str, body: bytes) -> float:
        """A streamed call read to the end; returns `perf_counter()` at the first event."""
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class AiohttpClient(LoadClient):
    name = "aiohttp"

    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=1024),
            timeout=aiohttp.ClientTimeout(total=60),
            headers={"content-type": "application/json", "authorization": "Bearer dummy"},
        )

    async def post(self, url: str, body: bytes) -> None:
        async with self._session.post(url, data=body) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

    async def post_stream(self, url: str, body: bytes) -> float:
        first = math.nan
        async with self._session.post(url, data=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            async for line in response.content:
                if math.isnan(first) and line.startswith(b"data:"):
                    first = time.perf_counter()
        return first

    async def aclose(self) -> None:
        await self._session.close()


class HttpxClient(LoadClient):
    name = "httpx"

    def __init__(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=5.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024),
            headers={"content-type": "application/json", "authorization": "Bearer dummy"},
        )

    async def post(self, url: str, body: bytes) -> None:
        response = await self._client.post(url, content=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")

    async def post_stream(self, url: str, body: bytes) -> float:
        first = math.nan
        async with self._client.stream("POST", url, content=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if math.isnan(first) and line.startswith("data:"):
                    first = time.perf_counter()
        return first

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True)
class Target:
    """Where requests go, and the body they carry."""

    name: str
    url: str
    model: str

    def body(self, stream: bool) -> bytes:
        data: dict[str, Any] = {"model": self.model, "messages": MESSAGES}
        if stream:
            data["stream"] = True
            data["stream_options"] = {"include_usage": True}
        return orjson.dumps(data)


@dataclass
class Samples:
    total: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    calls: int = 0
    errors: int = 0
    last_error: str = ""


async def run_batch(
    client: LoadClient,
    target: Target,
    samples: Samples,
    *,
    stream: bool,
    calls: int,
    concurrency: int,
    timeout_s: float,
) -> None:
    body = target.body(stream)
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                if stream:
                    first = await client.post_stream(target.url, body)
                else:
                    await client.post(target.url, body)
                    first = math.nan
            except Exception as error:
                samples.errors += 1
                samples.last_error = f"{type(error).__name__}: {error}"[:300]
                continue
            ended = time.perf_counter()
            samples.total.append(ended - started)
            if stream:
                samples.first.append(first - started)

    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        await asyncio.gather(*(worker() for _ in range(min(concurrency, calls))))
    samples.wall_s += time.perf_counter() - started
    samples.calls += calls


def calls_per_round(concurrency: int, quick: bool) -> int:
    if quick:
        return max(10, 3 * concurrency)
    return max(25, 8 * concurrency) if concurrency < 64 else 4 * concurrency


async def measure_cell(
    client: LoadClient,
    targets: list[Target],
    *,
    stream: bool,
    concurrency: int,
    rounds: int,
    quick: bool,
    timeout_s: float,
    sent: dict[str, int],
) -> dict[str, Samples]:
    """Interleaved rounds of one cell; `sent` counts every call, warm-ups included."""
    per_round = calls_per_round(concurrency, quick)
    for target in targets:  # warm-up
        warm_up = max(2 * concurrency, 10)
        await run_batch(
            client, target, Samples(), stream=stream, calls=warm_up,
            concurrency=concurrency, timeout_s=timeout_s,
        )  # fmt: skip
        sent[target.name] = sent.get(target.name, 0) + warm_up + rounds * per_round
    results = {target.name: Samples() for target in targets}
    for round_index in range(rounds):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            await run_batch(
                client, target, results[target.name], stream=stream, calls=per_round,
                concurrency=concurrency, timeout_s=timeout_s,
            )  # fmt: skip
            await asyncio.sleep(SETTLE_S)
    return results


def cell_report(results: dict[str, Samples], *, concurrency: int, stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"concurrency": concurrency, "stream": stream, "targets": {}}
    for name, samples in results.items():
        out["targets"][name] = {
            "total": Summary.of(samples.total).to_dict(),
            "first_event": Summary.of(samples.first).to_dict() if stream else None,
            "throughput_rps": len(samples.total) / samples.wall_s if samples.wall_s else 0.0,
            "errors": samples.errors,
            "last_error": samples.last_error,
        }
    direct, areion = out["targets"]["direct"], out["targets"]["areion"]
    out["added_ms"] = {
        "p50": areion["total"]["p50"] - direct["total"]["p50"],
        "p99": areion["total"]["p99"] - direct["total"]["p99"],
    }
    if stream:
        out["added_first_event_ms"] = {
            "p50": areion["first_event"]["p50"] - direct["first_event"]["p50"],
            "p99": areion["first_event"]["p99"] - direct["first_event"]["p99"],
        }
    return out


def print_cells(cells: list[dict[str, Any]]) -> None:
    rows = []
    for cell in cells:
        direct, areion = cell["targets"]["direct"], cell["targets"]["areion"]
        rows.append(
            [
                cell["concurrency"],
                "yes" if cell["stream"] else "no",
                "last byte",
                direct["total"]["n"],
                fmt(direct["total"]["p50"]),
                fmt(areion["total"]["p50"]),
                f"{cell['added_ms']['p50']:+.2f}",
                fmt(direct["total"]["p99"]),
                fmt(areion["total"]["p99"]),
                f"{cell['added_ms']['p99']:+.2f}",
                f"{direct['throughput_rps']:.0f}",
                f"{areion['throughput_rps']:.0f}",
                direct["errors"] + areion["errors"],
            ]
        )
        if cell["stream"]:
            first_d, first_a = direct["first_event"], areion["first_event"]
            rows.append(
                [
                    "",
                    "",
                    "first event",
                    "",
                    fmt(first_d["p50"]),
                    fmt(first_a["p50"]),
                    f"{cell['added_first_event_ms']['p50']:+.2f}",
                    fmt(first_d["p99"]),
                    fmt(first_a["p99"]),
                    f"{cell['added_first_event_ms']['p99']:+.2f}",
                    "",
                    "",
                    "",
                ]
            )
    headers = [
        "conc", "stream", "time to", "calls", "direct p50", "areion p50", "added p50",
        "direct p99", "areion p99", "added p99", "direct rps", "areion rps", "errors",
    ]  # fmt: skip
    print(table(headers, rows))


def verdict(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    cell = next(
        (c for c in cells if c["concurrency"] == TARGET_CONCURRENCY and not c["stream"]), None
    )
    if cell is None:
        return None
    errors = sum(t["errors"] for t in cell["targets"].values())
    p50, p99 = cell["added_ms"]["p50"], cell["added_ms"]["p99"]
    return {
        "concurrency": TARGET_CONCURRENCY,
        "added_p50_ms": p50,
        "added_p99_ms": p99,
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "pass": p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS and errors == 0,
        "errors": errors,
    }


def write_config(workdir: Path, upstream_url: str) -> Path:
    path = workdir / "areion-bench.yaml"
    config = {
        "models": [
            {
                "name": GROUP,
                "provider": "openai",
                "model": UPSTREAM_MODEL,
                "base_url": upstream_url,
                "api_key": "dummy",
            }
        ],
        "store": f"sqlite:///{workdir / 'areion.db'}",
        "server": {"access_log": False},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (3 rounds, fewer calls)")
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 8, quick 3)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--stream", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="upstream model latency")
    parser.add_argument(
        "--latency-jitter-ms", type=float, default=0.0, help="upstream latency spread (+/-)"
    )
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per stream")
    parser.add_argument("--chunk-interval-ms", type=float, default=0.0)
    parser.add_argument(
        "--client",
        choices=["aiohttp", "httpx"],
        help="load generator HTTP library (default: aiohttp if installed)",
    )
    parser.add_argument("--uvloop", action="store_true", help="run the load generator on uvloop")
    parser.add_argument("--timeout", type=float, default=120.0, help="cap on one batch, seconds")
    parser.add_argument("--json", metavar="FILE", help="save the results as JSON")
    return parser.parse_args()


async def run(args: argparse.Namespace, workdir: Path) -> int:
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    modes = {"both": [False, True], "yes": [True], "no": [False]}[args.stream]
    rounds = args.rounds or (3 if args.quick else 8)
    client_name = args.client or (
        "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx"
    )
    client: LoadClient = AiohttpClient() if client_name == "aiohttp" else HttpxClient()
    info = environment(["aiohttp", "starlette"])
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    with upstream(
        workdir,
        latency_ms=args.latency_ms,
        chunks=args.chunks,
        chunk_interval_ms=args.chunk_interval_ms,
        jitter_ms=args.latency_jitter_ms,
    ) as (upstream_process, upstream_url):
        port = free_port()
        server = ChildProcess(
            "areion serve",
            [
                sys.executable,
                "-m",
                "areion.cli",
                "serve",
                "--config",
                str(write_config(workdir, upstream_url)),
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            workdir / "areion.log",
        )
        try:
            server.wait_ready(f"http://{LOOPBACK}:{port}/healthz")
            targets = [
                Target("direct", f"{upstream_url}/chat/completions", UPSTREAM_MODEL),
                Target("areion", f"http://{LOOPBACK}:{port}/v1/chat/completions", GROUP),
            ]
            print(f"machine: {describe_environment(info)}")
            print(
                f"setup: 3 processes sharing {info['cpus']} CPUs: upstream (bench/upstream.py, "
                f"latency {args.latency_ms:g} +/- {args.latency_jitter_ms:g} ms, {args.chunks} "
                "chunks/stream), `areion serve` "
                f"(uvicorn defaults), this load generator ({client_name} on {loop_name}); "
                f"{rounds} interleaved rounds per cell"
            )
            for target in targets:  # both answer before anything is timed
                await client.post(target.url, target.body(False))
                await client.post_stream(target.url, target.body(True))
            cells = []
            sent: dict[str, int] = {}
            server_cpu_before = server.cpu_seconds()
            upstream_cpu_before = upstream_process.cpu_seconds()
            started = time.perf_counter()
            for stream in modes:
                for concurrency in levels:
                    print(f"measuring concurrency {concurrency}, stream={stream} ...", flush=True)
                    results = await measure_cell(
                        client,
                        targets,
                        stream=stream,
                        concurrency=concurrency,
                        rounds=rounds,
                        quick=args.quick,
                        timeout_s=args.timeout,
                        sent=sent,
                    )
                    cells.append(cell_report(results, concurrency=concurrency, stream=stream))
            elapsed = time.perf_counter() - started
            server_cpu = _delta(server_cpu_before, server.cpu_seconds())
            upstream_cpu = _delta(upstream_cpu_before, upstream_process.cpu_seconds())
        finally:
            await client.aclose()
            server.stop()

    print()
    print_cells(cells)
    areion_calls = sent.get("areion", 0)
    all_calls = areion_calls + sent.get("direct", 0)
    server_cpu_per_call = server_cpu / areion_calls * 1e6 if server_cpu and areion_calls else None
    upstream_cpu_per_call = upstream_cpu / all_calls * 1e6 if upstream_cpu and all_calls else None
    print(
        f"\nmeasured in {elapsed:.0f} s. added = areion - direct, same percentile; "
        f"rps = completed calls / batch wall time (closed loop). CPU per call: areion server "
        f"{fmt(server_cpu_per_call, 0)} us, upstream {fmt(upstream_cpu_per_call, 0)} us "
        "(warm-up calls included)."
    )
    result = verdict(cells)
    if result is None:
        print(f"criterion 2: n/a (run with concurrency {TARGET_CONCURRENCY}, non-streaming)")
    else:
        status = "PASS" if result["pass"] else "FAIL"
        note = f" ({result['errors']} call errors!)" if result["errors"] else ""
        print(
            f"criterion 2: server adds p50 {result['added_p50_ms']:+.2f} ms "
            f"(target <= {TARGET_P50_MS:g}), p99 {result['added_p99_ms']:+.2f} ms "
            f"(target <= {TARGET_P99_MS:g}) at concurrency {TARGET_CONCURRENCY} {status}{note}"
        )
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "server_latency",
                "environment": info,
                "settings": {
                    "rounds": rounds,
                    "concurrency": levels,
                    "stream": modes,
                    "latency_ms": args.latency_ms,
                    "latency_jitter_ms": args.latency_jitter_ms,
                    "chunks": args.chunks,
                    "chunk_interval_ms": args.chunk_interval_ms,
                    "client": client_name,
                    "loop": loop_name,
                    "quick": args.quick,
                },
                "elapsed_s": elapsed,
                "server_cpu_us_per_call": server_cpu_per_call,
                "upstream_cpu_us_per_call": upstream_cpu_per_call,
                "cells": cells,
                "verdict": result,
            },
        )
    return 0


def _delta(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
