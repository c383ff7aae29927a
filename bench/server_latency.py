"""The latency a gateway server adds over calling the upstream directly: Areion and peers.

Processes on loopback: the upstream (`bench/upstream.py`); the contenders, each in
front of it: `areion serve` with one worker (SQLite store), with one worker on the
PostgreSQL store and Redis `shared` ("areion-pg"), and with two on them
(`--workers 2`, "areion-2w"; each a schema and prefix of its own), so that what a
second worker adds is measured on the same backends; and,
when installed, LiteLLM's proxy and Portkey's gateway (`bench/contenders.py`); and
this load generator (one asyncio process, aiohttp when installed, else httpx). At
each concurrency the load generator sends the same chat request, in interleaved
rounds, straight to the upstream ("direct") and through each contender, and reports
p50/p99 of each, what each adds over direct, the throughput, the ratio of each
contender's added latency to Areion's (one worker), and each server's CPU per call
(its process tree): per cell (`cpu us`: over its timed batches, each with the settle
after it) and over the whole run, warm-ups included. Streams are timed to the first
`data:` event (TTFB) and to the end of the body (TTLB). A contender that cannot run
here is skipped with a line saying why.

    .venv/bin/python bench/server_latency.py            # about 5 minutes with both peers
    .venv/bin/python bench/server_latency.py --quick    # about 2 minutes

Targets: one worker at concurrency 64 (non-streaming) adds <= 8 ms p50, keeps
>= 75% of the direct throughput and spends <= 200 us of CPU per call; criterion 2: at
concurrency 16 (non-streaming) the server adds <= 2 ms p50 and <= 10 ms p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from _common import (
    ChildProcess,
    Summary,
    describe_environment,
    environment,
    fmt,
    iqr_half_width,
    percentile,
    process_tree,
    run_main,
    table,
    upstream,
    write_json,
)
from contenders import (
    GROUP,
    UPSTREAM_MODEL,
    Server,
    Skipped,
    areion_config,
    find_litellm_python,
    find_portkey,
    shared_backends,
    start_areion,
    start_floor,
    start_litellm,
    start_portkey,
)

__all__ = ["GROUP", "UPSTREAM_MODEL"]  # re-exported: workers.py and ingress.py take them from here

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Write one sentence about benchmarks."},
]
TARGET_CONCURRENCY = 16
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
# Issue 19's targets, for one worker at concurrency 64, non-streaming.
LOAD_CONCURRENCY = 64
LOAD_P50_MS = 8.0
LOAD_THROUGHPUT_SHARE = 0.75
LOAD_CPU_US = 200.0  # server CPU per call there
SETTLE_S = 0.06
# The load generator drops a connection idle this long. Under the 5 s after which the
# servers close an idle one (uvicorn's default, Areion's `idle_timeout_s`, Node's):
# with slow peers in the rounds a contender can sit idle about that long, and a call
# sent on a connection the server is closing fails ("Server disconnected").
CLIENT_KEEPALIVE_S = 3.0
AREION = "areion"  # one worker: the reference the ratios divide by
OPTIONAL = ("floor", "areion-pg", "areion-2w", "litellm", "portkey")

Headers = dict[str, str] | None


class LoadClient:
    """Sends one request and times it; implementations differ only in the HTTP library."""

    name = ""

    async def post(self, url: str, body: bytes, headers: Headers = None) -> None:
        """A non-streamed call, the whole body read; `headers` add to (or replace) the
        defaults (JSON content type, `authorization: Bearer dummy`)."""
        raise NotImplementedError

    async def post_stream(self, url: str, body: bytes, headers: Headers = None) -> float:
        """A streamed call read to the end; returns `perf_counter()` at the first event."""
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class AiohttpClient(LoadClient):
    name = "aiohttp"

    def __init__(self, *, keepalive_s: float = CLIENT_KEEPALIVE_S) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=1024, limit_per_host=1024, keepalive_timeout=keepalive_s
            ),
            timeout=aiohttp.ClientTimeout(total=60),
            headers={"content-type": "application/json", "authorization": "Bearer dummy"},
        )

    async def post(self, url: str, body: bytes, headers: Headers = None) -> None:
        async with self._session.post(url, data=body, headers=headers) as response:
            content = await response.read()
            if response.status != 200:
                raise _status_error(response.status, content)

    async def post_stream(self, url: str, body: bytes, headers: Headers = None) -> float:
        first = math.nan
        async with self._session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise _status_error(response.status, await response.read())
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
            limits=httpx.Limits(
                max_connections=1024,
                max_keepalive_connections=1024,
                keepalive_expiry=CLIENT_KEEPALIVE_S,
            ),
            headers={"content-type": "application/json", "authorization": "Bearer dummy"},
        )

    async def post(self, url: str, body: bytes, headers: Headers = None) -> None:
        response = await self._client.post(url, content=body, headers=headers)
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content)

    async def post_stream(self, url: str, body: bytes, headers: Headers = None) -> float:
        first = math.nan
        async with self._client.stream("POST", url, content=body, headers=headers) as response:
            if response.status_code != 200:
                raise _status_error(response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if math.isnan(first) and line.startswith("data:"):
                    first = time.perf_counter()
        return first

    async def aclose(self) -> None:
        await self._client.aclose()


def _status_error(status: int, content: bytes) -> RuntimeError:
    """An answer other than 200, with the start of its body (the server's reason)."""
    return RuntimeError(f"HTTP {status}: {content[:200].decode(errors='replace')}")


@dataclass(frozen=True)
class Target:
    """Where requests go, and the body they carry."""

    name: str
    url: str
    model: str
    headers: tuple[tuple[str, str], ...] = ()
    """Headers of this target's own (a peer's key or provider routing)."""
    cpu: Callable[[], float | None] | None = field(default=None, compare=False)
    """The CPU seconds its server has used so far (its process tree); None for direct."""

    def request_headers(self) -> Headers:
        return dict(self.headers) or None

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
    round_ends: list[int] = field(default_factory=list)
    """len(total) after each round: the rounds' own samples, for their spread."""
    cpu_s: float | None = None
    """The server's CPU seconds over the timed batches, each with the settle after it
    (where the work a batch left behind, such as ledger writes, lands)."""

    def rounds(self) -> list[list[float]]:
        starts = [0, *self.round_ends[:-1]]
        return [self.total[start:end] for start, end in zip(starts, self.round_ends, strict=True)]


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
    headers = target.request_headers()
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                if stream:
                    first = await client.post_stream(target.url, body, headers)
                else:
                    await client.post(target.url, body, headers)
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
            samples = results[target.name]
            cpu_before = target.cpu() if target.cpu else None
            await run_batch(
                client, target, samples, stream=stream, calls=per_round,
                concurrency=concurrency, timeout_s=timeout_s,
            )  # fmt: skip
            samples.round_ends.append(len(samples.total))
            await asyncio.sleep(SETTLE_S)
            cpu_after = target.cpu() if target.cpu else None
            if cpu_before is not None and cpu_after is not None:
                samples.cpu_s = (samples.cpu_s or 0.0) + cpu_after - cpu_before
    return results


def cell_report(results: dict[str, Samples], *, concurrency: int, stream: bool) -> dict[str, Any]:
    """Each target's figures, and each contender's added latency over `direct`."""
    out: dict[str, Any] = {"concurrency": concurrency, "stream": stream, "targets": {}}
    for name, samples in results.items():
        out["targets"][name] = {
            "total": Summary.of(samples.total).to_dict(),
            "first_event": Summary.of(samples.first).to_dict() if stream else None,
            "throughput_rps": len(samples.total) / samples.wall_s if samples.wall_s else 0.0,
            "errors": samples.errors,
            "last_error": samples.last_error,
            "cpu_us_per_call": (
                samples.cpu_s / samples.calls * 1e6
                if samples.cpu_s is not None and samples.calls
                else None
            ),
        }
    direct = out["targets"]["direct"]
    for name, target in out["targets"].items():
        if name == "direct":
            continue
        target["added_ms"] = _added(target["total"], direct["total"])
        target["added_p50_spread_ms"] = _round_spread(results[name], results["direct"])
        target["added_first_event_ms"] = (
            _added(target["first_event"], direct["first_event"]) if stream else None
        )
        target["throughput_share"] = (
            target["throughput_rps"] / direct["throughput_rps"] if direct["throughput_rps"] else 0
        )
    areion = out["targets"][AREION]
    out["added_ms"] = areion["added_ms"]  # the single-worker figures, as before peers
    if stream:
        out["added_first_event_ms"] = areion["added_first_event_ms"]
    return out


def _round_spread(samples: Samples, direct: Samples) -> float:
    """Half the interquartile range of the rounds' added p50 (each round's p50 minus
    direct's p50 of the same round): how far the cell's figure can be trusted."""
    pairs = zip(samples.rounds(), direct.rounds(), strict=False)
    added = [percentile(own, 50) - percentile(ref, 50) for own, ref in pairs if own and ref]
    return iqr_half_width(added) * 1000.0


def _added(summary: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    return {"p50": summary["p50"] - direct["p50"], "p99": summary["p99"] - direct["p99"]}


def print_cells(cells: list[dict[str, Any]]) -> None:
    rows: list[list[object]] = []
    for cell in cells:
        for name, target in cell["targets"].items():
            added, first = target.get("added_ms"), target["first_event"]
            added_first = target.get("added_first_event_ms")
            rows.append(
                [
                    cell["concurrency"],
                    "yes" if cell["stream"] else "no",
                    name,
                    target["total"]["n"],
                    fmt(target["total"]["p50"]),
                    fmt(target["total"]["p99"]),
                    _signed(added["p50"]) if added else "",
                    fmt(target["added_p50_spread_ms"]) if added else "",
                    _signed(added["p99"]) if added else "",
                    fmt(first["p50"]) if first else "",
                    _signed(added_first["p50"]) if added_first else "",
                    _signed(added_first["p99"]) if added_first else "",
                    f"{target['throughput_rps']:.0f}",
                    f"{target['throughput_share']:.0%}" if added else "",
                    fmt(target["cpu_us_per_call"], 0),
                    target["errors"],
                ]
            )
    headers = [
        "conc", "stream", "server", "calls", "p50", "p99", "added p50", "+/-", "added p99",
        "ttfb p50", "ttfb +p50", "ttfb +p99", "rps", "of direct", "cpu us", "err",
    ]  # fmt: skip
    print(table(headers, rows))
    for cell in cells:
        for name, target in cell["targets"].items():
            if target["errors"]:
                print(
                    f"{name} at concurrency {cell['concurrency']}, stream={cell['stream']}: "
                    f"{target['errors']} failed calls, the last: {target['last_error']}"
                )


def ratios(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each other contender's added latency over Areion's (one worker), per cell; None
    where Areion's is not above zero (the ratio would mean nothing)."""
    out = []
    for cell in cells:
        areion = cell["targets"][AREION]
        for name, target in cell["targets"].items():
            if name in ("direct", AREION):
                continue
            row: dict[str, Any] = {
                "concurrency": cell["concurrency"],
                "stream": cell["stream"],
                "server": name,
                "p50": _ratio(target["added_ms"]["p50"], areion["added_ms"]["p50"]),
                "p99": _ratio(target["added_ms"]["p99"], areion["added_ms"]["p99"]),
                "first_event_p50": None,
                "throughput": _ratio(target["throughput_rps"], areion["throughput_rps"]),
            }
            if cell["stream"]:
                row["first_event_p50"] = _ratio(
                    target["added_first_event_ms"]["p50"], areion["added_first_event_ms"]["p50"]
                )
            out.append(row)
    return out


def _ratio(value: float, reference: float) -> float | None:
    if math.isnan(value) or math.isnan(reference) or reference <= 0:
        return None
    return value / reference


def print_ratios(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table_rows = [
        [
            row["concurrency"],
            "yes" if row["stream"] else "no",
            row["server"],
            _times(row["p50"]),
            _times(row["p99"]),
            _times(row["first_event_p50"]) if row["stream"] else "",
            _times(row["throughput"]),
        ]
        for row in rows
    ]
    headers = ["conc", "stream", "server", "added p50", "added p99", "ttfb +p50", "rps"]
    print("\neach server against areion (1 worker): its added latency / areion's; rps / areion's")
    print(table(headers, table_rows))


def workers_scaling(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell, what the second worker adds on the same backends: areion-2w's
    throughput over areion-pg's (one worker on PostgreSQL and Redis), and each one's
    added p50. Empty unless both ran."""
    rows = []
    for cell in cells:
        one, two = cell["targets"].get("areion-pg"), cell["targets"].get("areion-2w")
        if one is None or two is None or not one["throughput_rps"]:
            continue
        rows.append(
            {
                "concurrency": cell["concurrency"],
                "stream": cell["stream"],
                "rps_ratio": two["throughput_rps"] / one["throughput_rps"],
                "one_added_p50_ms": one["added_ms"]["p50"],
                "two_added_p50_ms": two["added_ms"]["p50"],
            }
        )
    return rows


def print_workers(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table_rows = [
        [
            row["concurrency"],
            "yes" if row["stream"] else "no",
            _times(row["rps_ratio"]),
            _signed(row["one_added_p50_ms"]),
            _signed(row["two_added_p50_ms"]),
        ]
        for row in rows
    ]
    headers = ["conc", "stream", "rps 2w / 1w", "1w added p50", "2w added p50"]
    print("\ntwo workers against one, both on PostgreSQL + Redis (areion-2w / areion-pg)")
    print(table(headers, table_rows))


def print_cpu(cpu: dict[str, dict[str, Any]]) -> None:
    rows = [
        [
            name,
            entry["processes"],
            entry["calls"],
            fmt(entry["cpu_s"]),
            fmt(entry["us_per_call"], 0),
        ]
        for name, entry in cpu.items()
    ]
    print("\nserver CPU per call (user + system, summed over the process tree; warm-up included)")
    print(table(["server", "processes", "calls", "cpu s", "us/call"], rows))


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def verdict(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Criterion 2: one worker at concurrency 16, non-streaming."""
    cell = _cell(cells, TARGET_CONCURRENCY)
    if cell is None:
        return None
    errors = cell["targets"]["direct"]["errors"] + cell["targets"][AREION]["errors"]
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


def load_verdict(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Issue 19: one worker at concurrency 64, non-streaming: added p50 and throughput."""
    cell = _cell(cells, LOAD_CONCURRENCY)
    if cell is None:
        return None
    areion = cell["targets"][AREION]
    errors = cell["targets"]["direct"]["errors"] + areion["errors"]
    p50, share = areion["added_ms"]["p50"], areion["throughput_share"]
    cpu = areion["cpu_us_per_call"]
    floor = cell["targets"].get("floor")
    return {
        "cpu_us_per_call": cpu,
        # Areion's HTTP stack alone, in the same cell: the part no change to Areion's own
        # work can cut.
        "floor_cpu_us_per_call": None if floor is None else floor["cpu_us_per_call"],
        "target_cpu_us_per_call": LOAD_CPU_US,
        "cpu_met": cpu is not None and cpu <= LOAD_CPU_US,
        "concurrency": LOAD_CONCURRENCY,
        "added_p50_ms": p50,
        "target_p50_ms": LOAD_P50_MS,
        "p50_met": p50 <= LOAD_P50_MS and errors == 0,
        "throughput_share": share,
        "target_throughput_share": LOAD_THROUGHPUT_SHARE,
        "throughput_met": share >= LOAD_THROUGHPUT_SHARE and errors == 0,
        "errors": errors,
    }


def _cell(cells: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((c for c in cells if c["concurrency"] == concurrency and not c["stream"]), None)


def write_config(workdir: Path, upstream_url: str) -> Path:
    """The single-worker config: SQLite in `workdir`."""
    return areion_config(
        workdir, upstream_url, store=f"sqlite:///{workdir / 'areion.db'}", shared=None
    )


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
    parser.add_argument(
        "--without",
        default="",
        help=f"comma-separated contenders to leave out, of: {', '.join(OPTIONAL)}",
    )
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="the 2-worker server's store (a schema of the run's own, dropped after it)",
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        help="the 2-worker server's `shared` (a prefix of the run's own, deleted after it)",
    )
    parser.add_argument(
        "--portkey",
        metavar="PATH",
        help="Portkey's gateway package folder or start script (default: $AREION_BENCH_PORTKEY,"
        " else bench/peers/node_modules/@portkey-ai/gateway)",
    )
    parser.add_argument("--node", default="node", help="the Node.js that runs Portkey's gateway")
    parser.add_argument(
        "--litellm-python",
        metavar="PATH",
        help="the Python with litellm[proxy] (default: $AREION_BENCH_LITELLM_PYTHON, else"
        " bench/peers/litellm/bin/python from `make bench-peers`, else this one)",
    )
    parser.add_argument(
        "--peer-timeout", type=float, default=120.0, help="seconds a peer may take to start"
    )
    parser.add_argument("--json", metavar="FILE", help="save the results as JSON")
    args = parser.parse_args()
    unknown = {name for name in args.without.split(",") if name.strip()} - set(OPTIONAL)
    if unknown:
        parser.error(f"--without: unknown {', '.join(sorted(unknown))}; one of {OPTIONAL}")
    return args


async def start_contenders(
    args: argparse.Namespace, workdir: Path, upstream_url: str, stack: contextlib.AsyncExitStack
) -> tuple[list[Server], dict[str, str]]:
    """Areion (one worker) and every optional contender that can run; the others with
    the reason each was skipped. Each started server is stopped when `stack` closes."""
    without = {name.strip() for name in args.without.split(",") if name.strip()}
    servers: list[Server] = []
    skipped: dict[str, str] = {}

    def keep(server: Server) -> None:
        stack.callback(server.process.stop)
        servers.append(server)

    keep(start_areion(AREION, workdir, write_config(workdir, upstream_url)))
    for name in OPTIONAL:
        if name in without:
            skipped[name] = "left out (--without)"
            continue
        print(f"starting {name} ...", flush=True)
        started = time.perf_counter()
        try:
            if name == "floor":
                keep(start_floor(workdir, upstream_url))
            elif name in ("areion-pg", "areion-2w"):  # each with a schema and prefix of its own
                store, shared = await stack.enter_async_context(
                    shared_backends(args.postgres, args.redis)
                )
                config = areion_config(workdir, upstream_url, store=store, shared=shared)
                keep(start_areion(name, workdir, config, workers=2 if name == "areion-2w" else 1))
            elif name == "litellm":
                python = find_litellm_python(args.litellm_python)
                keep(
                    start_litellm(
                        workdir, upstream_url, python=python, ready_timeout=args.peer_timeout
                    )
                )
            else:
                script = find_portkey(args.portkey)
                keep(
                    start_portkey(
                        workdir, upstream_url, script=script, node=args.node,
                        ready_timeout=args.peer_timeout,
                    )
                )  # fmt: skip
        except Skipped as error:
            skipped[name] = str(error)
            print(f"{name}: skipped: {error}", flush=True)
            continue
        print(f"{name}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    return servers, skipped


async def probe(client: LoadClient, target: Target) -> str | None:
    """One call of each kind; the error, if either fails."""
    try:
        await client.post(target.url, target.body(False), target.request_headers())
        await client.post_stream(target.url, target.body(True), target.request_headers())
    except Exception as error:
        return f"{type(error).__name__}: {error}"[:300]
    return None


async def run(args: argparse.Namespace, workdir: Path) -> int:
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    modes = {"both": [False, True], "yes": [True], "no": [False]}[args.stream]
    rounds = args.rounds or (3 if args.quick else 8)
    client_name = args.client or (
        "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx"
    )
    client: LoadClient = AiohttpClient() if client_name == "aiohttp" else HttpxClient()
    info = environment(["aiohttp", "starlette", "asyncpg", "redis", "litellm"])
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        upstream_process, upstream_url = stack.enter_context(
            upstream(
                workdir,
                latency_ms=args.latency_ms,
                chunks=args.chunks,
                chunk_interval_ms=args.chunk_interval_ms,
                jitter_ms=args.latency_jitter_ms,
            )
        )
        servers, skipped = await start_contenders(args, workdir, upstream_url, stack)
        targets = [Target("direct", f"{upstream_url}/chat/completions", UPSTREAM_MODEL)]
        running: list[Server] = []
        for server in servers:  # every contender answers before anything is timed
            target = Target(
                server.name, server.url, server.model, server.headers,
                cpu=server.process.tree_cpu_seconds,
            )  # fmt: skip
            error = await probe(client, target)
            if error is not None:
                if server.name == AREION:
                    raise RuntimeError(f"areion serve failed its first calls: {error}")
                skipped[server.name] = f"its first calls failed: {error}"
                print(f"{server.name}: skipped: its first calls failed: {error}", flush=True)
                server.process.stop()
                continue
            targets.append(target)
            running.append(server)
        print(f"machine: {describe_environment(info)}")
        print(
            f"setup: {len(targets) + 1} processes sharing {info['cpus']} CPUs: upstream "
            f"(bench/upstream.py, latency {args.latency_ms:g} +/- {args.latency_jitter_ms:g} ms, "
            f"{args.chunks} chunks/stream), this load generator ({client_name} on {loop_name}), "
            + "; ".join(f"{server.name} = {server.note}" for server in running)
            + f". {rounds} interleaved rounds per cell"
        )
        cells = []
        sent: dict[str, int] = {}
        cpu_before = {server.name: server.process.tree_cpu_seconds() for server in running}
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
        cpu = {
            server.name: _cpu(server.process, cpu_before[server.name], sent.get(server.name, 0))
            for server in running
        }
        cpu["upstream"] = _cpu(
            upstream_process, upstream_cpu_before, sum(sent.values()), tree=False
        )

    print()
    print_cells(cells)
    ratio_rows = ratios(cells)
    print_ratios(ratio_rows)
    scaling = workers_scaling(cells)
    print_workers(scaling)
    print_cpu(cpu)
    for name, reason in skipped.items():
        print(f"not measured: {name}: {reason}")
    print(
        f"\nmeasured in {elapsed:.0f} s. added = server - direct, same percentile (ttfb: to the "
        "first `data:` event); rps = completed calls / batch wall time (closed loop); "
        "`of direct` = rps / direct's rps. A ratio is `-` where areion's own figure is not "
        "above zero."
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
    load = load_verdict(cells)
    if load is None:
        print(f"issue 19 targets: n/a (run with concurrency {LOAD_CONCURRENCY}, non-streaming)")
    else:
        note = f" ({load['errors']} call errors!)" if load["errors"] else ""
        print(
            f"issue 19 targets, areion (1 worker) at concurrency {LOAD_CONCURRENCY}, "
            f"non-streaming: adds p50 {load['added_p50_ms']:+.2f} ms (target <= "
            f"{LOAD_P50_MS:g}) {_met(load['p50_met'])}; throughput "
            f"{load['throughput_share']:.0%} of direct (target >= "
            f"{LOAD_THROUGHPUT_SHARE:.0%}) {_met(load['throughput_met'])}; server CPU "
            f"{fmt(load['cpu_us_per_call'], 0)} us per call (target <= {LOAD_CPU_US:g}) "
            f"{_met(load['cpu_met'])}{note}"
        )
        if load["floor_cpu_us_per_call"] is not None:
            print(
                f"  (the HTTP floor, Areion's HTTP stack alone, spent "
                f"{fmt(load['floor_cpu_us_per_call'], 0)} us per call in the same cell)"
            )
        print(
            "  (this load generator and the upstream share the machine's cores with the "
            "server; bench/saturated.py measures its CPU per call where the server is the "
            "bottleneck)"
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
                    "servers": {server.name: server.note for server in running},
                },
                "skipped": skipped,
                "elapsed_s": elapsed,
                "cpu": cpu,
                "server_cpu_us_per_call": cpu[AREION]["us_per_call"],
                "upstream_cpu_us_per_call": cpu["upstream"]["us_per_call"],
                "cells": cells,
                "ratios_to_areion": ratio_rows,
                "workers_scaling": scaling,
                "verdict": result,
                "load_verdict": load,
            },
        )
    return 0


def _cpu(
    process: ChildProcess, before: float | None, calls: int, *, tree: bool = True
) -> dict[str, Any]:
    after = process.tree_cpu_seconds() if tree else process.cpu_seconds()
    seconds = after - before if before is not None and after is not None else None
    return {
        "processes": len(process_tree(process.pid)) if tree else 1,
        "calls": calls,
        "cpu_s": seconds,
        "us_per_call": seconds / calls * 1e6 if seconds is not None and calls else None,
    }


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
