"""Criterion 1: the per-call overhead of Areion's in-process path, next to LiteLLM's.

Every contender calls the same local upstream (`bench/upstream.py`, a separate
process) from this one asyncio process:

    httpx           a bare `httpx.AsyncClient` POST; the JSON (or each SSE chunk) parsed
    areion          `Runtime.chat` / `Runtime.chat_stream`, provider `openai`
    litellm         `litellm.acompletion(model="openai/...", api_base=upstream)`
    litellm-router  `litellm.Router(model_list=[...]).acompletion(...)`

Overhead of a contender = its median latency minus bare httpx's median latency,
both measured in this run. The contenders are interleaved: each cell (concurrency
x stream) runs in rounds, and in every round each contender runs one batch of calls,
the order rotating from round to round, so drift on the machine hits all of them.

    .venv/bin/python bench/overhead.py            # a few minutes
    .venv/bin/python bench/overhead.py --quick    # well under a minute
    .venv/bin/python bench/overhead.py --profile 2000   # cProfile of Areion's path only

Criterion: areion overhead / litellm overhead <= 0.10.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import io
import logging
import os
import pstats
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before anything imports litellm: use the bundled cost map, no download at start-up.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import orjson

from _common import (
    Summary,
    describe_environment,
    environment,
    fmt,
    iqr_half_width,
    run_main,
    table,
    upstream,
    write_json,
)
from areion.config import parse_config
from areion.runtime import Runtime
from areion.types import ChatRequest, Message

GROUP = "bench"
UPSTREAM_MODEL = "bench-model"
SYSTEM = "You are a concise assistant."
USER = "Write one sentence about benchmarks."
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
]
TARGET_RATIO = 0.10
LITELLM_NAMES = ("litellm", "litellm-router")
# Longer than the ledger's flush interval, so background work lands in its own batch.
SETTLE_S = 0.06


class Contender:
    """One way of making the call."""

    name = ""

    async def call(self, stream: bool) -> str:
        """Make one call; return the answer text (checked once, ignored in the loop)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class Httpx(Contender):
    name = "httpx"

    def __init__(self, base_url: str) -> None:
        self._url = base_url + "/chat/completions"
        self._headers = {"content-type": "application/json", "authorization": "Bearer dummy"}
        # The same pool limits as Areion's provider client.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=5.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
        )

    async def call(self, stream: bool) -> str:
        body: dict[str, Any] = {"model": UPSTREAM_MODEL, "messages": MESSAGES}
        if not stream:
            response = await self._client.post(
                self._url, content=orjson.dumps(body), headers=self._headers
            )
            if response.status_code != 200:
                raise RuntimeError(f"upstream answered HTTP {response.status_code}")
            data = orjson.loads(response.content)
            return str(data["choices"][0]["message"]["content"])
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        async with self._client.stream(
            "POST", self._url, content=orjson.dumps(body), headers=self._headers
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(f"upstream answered HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    continue  # read on to the end of the body, so the connection is reused
                chunk = orjson.loads(payload)
                for choice in chunk["choices"]:
                    parts.append(choice["delta"].get("content") or "")
        return "".join(parts)

    async def aclose(self) -> None:
        await self._client.aclose()


class Aiohttp(Contender):
    """A bare aiohttp POST: a reference for what the HTTP client library alone costs."""

    name = "aiohttp"

    def __init__(self, base_url: str) -> None:
        import aiohttp

        self._url = base_url + "/chat/completions"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024),
            timeout=aiohttp.ClientTimeout(total=60),
            headers={"content-type": "application/json", "authorization": "Bearer dummy"},
        )

    async def call(self, stream: bool) -> str:
        body: dict[str, Any] = {"model": UPSTREAM_MODEL, "messages": MESSAGES}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        async with self._session.post(self._url, data=orjson.dumps(body)) as response:
            if response.status != 200:
                raise RuntimeError(f"upstream answered HTTP {response.status}")
            if not stream:
                data = orjson.loads(await response.read())
                return str(data["choices"][0]["message"]["content"])
            parts: list[str] = []
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    continue  # read on to the end of the body, so the connection is reused
                chunk = orjson.loads(payload)
                for choice in chunk["choices"]:
                    parts.append(choice["delta"].get("content") or "")
            return "".join(parts)

    async def aclose(self) -> None:
        await self._session.close()


class Areion(Contender):
    name = "areion"

    def __init__(self, base_url: str, db_path: Path) -> None:
        config = parse_config(
            {
                "models": [
                    {
                        "name": GROUP,
                        "provider": "openai",
                        "model": UPSTREAM_MODEL,
                        "base_url": base_url,
                        "api_key": "dummy",
                    }
                ],
                "store": f"sqlite:///{db_path}",
            },
            source="bench",
        )
        self.runtime = Runtime(config)

    async def call(self, stream: bool) -> str:
        request = ChatRequest(
            model=GROUP,
            messages=[Message(role="system", content=SYSTEM), Message(role="user", content=USER)],
        )
        if not stream:
            response = await self.runtime.chat(request)
            return response.message.text()
        parts: list[str] = []
        chat_stream = await self.runtime.chat_stream(request)
        async for chunk in chat_stream:
            parts.append(chunk.content or "")
        return "".join(parts)

    async def aclose(self) -> None:
        await self.runtime.aclose()


def import_litellm() -> Any:
    """litellm, quiet; None when it is not installed."""
    try:
        import litellm
    except ImportError:
        return None
    if hasattr(litellm, "telemetry"):
        litellm.telemetry = False
    litellm.suppress_debug_info = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="litellm")
    warnings.filterwarnings("ignore", module="pydantic")
    return litellm


async def _litellm_text(response: Any, stream: bool) -> str:
    if not stream:
        return str(response.choices[0].message.content)
    parts: list[str] = []
    async for chunk in response:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
    return "".join(parts)


class LiteLLM(Contender):
    name = "litellm"

    def __init__(self, litellm: Any, base_url: str) -> None:
        self._litellm = litellm
        self._base_url = base_url

    async def call(self, stream: bool) -> str:
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
        response = await self._litellm.acompletion(
            model=f"openai/{UPSTREAM_MODEL}",
            messages=[dict(message) for message in MESSAGES],
            api_base=self._base_url,
            api_key="dummy",
            stream=stream,
            **extra,
        )
        return await _litellm_text(response, stream)

    async def aclose(self) -> None:
        closer = getattr(self._litellm, "close_litellm_async_clients", None)
        if closer is not None:
            await closer()


class LiteLLMRouter(Contender):
    name = "litellm-router"

    def __init__(self, litellm: Any, base_url: str) -> None:
        self._router = litellm.Router(
            model_list=[
                {
                    "model_name": GROUP,
                    "litellm_params": {
                        "model": f"openai/{UPSTREAM_MODEL}",
                        "api_base": base_url,
                        "api_key": "dummy",
                    },
                }
            ]
        )

    async def call(self, stream: bool) -> str:
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
        response = await self._router.acompletion(
            model=GROUP,
            messages=[dict(message) for message in MESSAGES],
            stream=stream,
            **extra,
        )
        return await _litellm_text(response, stream)


# ---------------------------------------------------------------- measurement


@dataclass
class Samples:
    """What one contender measured in one cell."""

    latencies: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    calls: int = 0
    errors: int = 0
    last_error: str = ""


async def run_batch(
    contender: Contender, stream: bool, calls: int, concurrency: int, timeout_s: float
) -> tuple[list[float], int, str]:
    """`calls` calls through `concurrency` workers; latencies of the good ones, errors."""
    latencies: list[float] = []
    errors = 0
    last_error = ""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining, errors, last_error
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                await contender.call(stream)
            except Exception as error:
                errors += 1
                last_error = f"{type(error).__name__}: {error}"[:300]
                continue
            latencies.append(time.perf_counter() - started)

    async with asyncio.timeout(timeout_s):
        await asyncio.gather(*(worker() for _ in range(min(concurrency, calls))))
    return latencies, errors, last_error


def calls_per_round(concurrency: int, quick: bool) -> int:
    if quick:
        return max(10, 2 * concurrency)
    return max(25, 6 * concurrency) if concurrency < 64 else 4 * concurrency


async def measure_cell(
    contenders: list[Contender],
    *,
    concurrency: int,
    stream: bool,
    rounds: int,
    quick: bool,
    timeout_s: float,
) -> dict[str, Samples]:
    per_round = calls_per_round(concurrency, quick)
    results = {contender.name: Samples() for contender in contenders}
    for contender in contenders:  # warm-up: connections opened, caches filled
        await run_batch(contender, stream, max(2 * concurrency, 10), concurrency, timeout_s)
    await asyncio.sleep(SETTLE_S)
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for contender in order:
            samples = results[contender.name]
            cpu_before = time.process_time()
            latencies, errors, last_error = await run_batch(
                contender, stream, per_round, concurrency, timeout_s
            )
            # Background work a call leaves behind (ledger writes, logging callbacks)
            # is charged to its contender's CPU, not to the next batch's latencies.
            await asyncio.sleep(SETTLE_S)
            samples.cpu_s += time.process_time() - cpu_before
            samples.calls += per_round
            samples.errors += errors
            samples.last_error = last_error or samples.last_error
            samples.latencies += latencies
            if latencies:
                samples.round_medians.append(Summary.of(latencies).p50)
    return results


def cell_report(results: dict[str, Samples], *, concurrency: int, stream: bool) -> dict[str, Any]:
    base = results["httpx"]
    base_summary = Summary.of(base.latencies)
    base_cpu = base.cpu_s / base.calls * 1e6
    contenders: dict[str, Any] = {}
    for name, samples in results.items():
        summary = Summary.of(samples.latencies)
        round_overheads = [
            mine - theirs
            for mine, theirs in zip(samples.round_medians, base.round_medians, strict=False)
        ]
        cpu_us = samples.cpu_s / samples.calls * 1e6
        contenders[name] = {
            **summary.to_dict(),
            "overhead_ms": summary.p50 - base_summary.p50,
            "overhead_spread_ms": iqr_half_width(round_overheads),
            "cpu_us_per_call": cpu_us,
            "cpu_overhead_us": cpu_us - base_cpu,
            "errors": samples.errors,
            "last_error": samples.last_error,
        }
    ratios: dict[str, float | None] = {}
    cpu_ratios: dict[str, float | None] = {}
    if "areion" in contenders:
        mine = contenders["areion"]
        for other in LITELLM_NAMES:
            if other in contenders:
                theirs = contenders[other]
                # A ratio to an overhead that is not positive says nothing: left undefined.
                ratios[other] = (
                    mine["overhead_ms"] / theirs["overhead_ms"]
                    if theirs["overhead_ms"] > 0
                    else None
                )
                cpu_ratios[other] = (
                    mine["cpu_overhead_us"] / theirs["cpu_overhead_us"]
                    if theirs["cpu_overhead_us"] > 0
                    else None
                )
    # Bare httpx is the reference the criterion names, but its connection pool can
    # collapse under concurrency; then overheads measured against it mean nothing.
    degraded = "aiohttp" in contenders and base_summary.p50 > 2 * contenders["aiohttp"]["p50"]
    # Areion's providers use aiohttp, which is faster than bare httpx: measured over
    # httpx alone, Areion's own code could hide behind the faster transport. Its own
    # overhead is therefore also taken over the faster bare client of the cell.
    own_ms: float | None = None
    own_ratio: float | None = None
    if "areion" in contenders:
        bare = min(contenders[name]["p50"] for name in ("httpx", "aiohttp") if name in contenders)
        own_ms = contenders["areion"]["p50"] - bare
        litellm = contenders.get("litellm")
        if litellm is not None and litellm["overhead_ms"] > 0:
            own_ratio = own_ms / litellm["overhead_ms"]
    return {
        "concurrency": concurrency,
        "stream": stream,
        "contenders": contenders,
        "ratio_areion_over": ratios,
        "cpu_ratio_areion_over": cpu_ratios,
        "areion_own_overhead_ms": own_ms,
        "ratio_areion_own_over_litellm": own_ratio,
        "httpx_baseline_degraded": degraded,
    }


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def print_cells(cells: list[dict[str, Any]]) -> None:
    rows = []
    for cell in cells:
        for name, data in cell["contenders"].items():
            baseline = name == "httpx"
            rows.append(
                [
                    name,
                    cell["concurrency"],
                    "yes" if cell["stream"] else "no",
                    data["n"],
                    fmt(data["p50"]),
                    fmt(data["p99"]),
                    "-" if baseline else _signed(data["overhead_ms"], 3),
                    "-" if baseline else fmt(data["overhead_spread_ms"], 3),
                    f"{data['cpu_us_per_call']:.0f}",
                    "-" if baseline else _signed(data["cpu_overhead_us"], 0),
                    data["errors"],
                ]
            )
    headers = [
        "contender", "conc", "stream", "calls", "p50 ms", "p99 ms", "overhead ms",
        "+/- ms", "cpu us/call", "cpu over us", "errors",
    ]  # fmt: skip
    print(table(headers, rows))
    if any("areion" not in cell["contenders"] for cell in cells):
        return
    print()
    ratio_rows = []
    for cell in cells:
        contenders = cell["contenders"]
        ratio_rows.append(
            [
                cell["concurrency"],
                "yes" if cell["stream"] else "no",
                _signed(contenders["areion"]["overhead_ms"], 3),
                _signed(cell["areion_own_overhead_ms"], 3),
                *(
                    _signed(contenders[name]["overhead_ms"], 3) if name in contenders else "-"
                    for name in LITELLM_NAMES
                ),
                *(fmt(cell["ratio_areion_over"].get(name), 3) for name in LITELLM_NAMES),
                fmt(cell["ratio_areion_own_over_litellm"], 3),
                *(fmt(cell["cpu_ratio_areion_over"].get(name), 3) for name in LITELLM_NAMES),
            ]
        )
    headers = [
        "conc", "stream", "areion over ms", "areion own ms", "litellm over ms",
        "router over ms", "areion/litellm", "areion/router", "own/litellm",
        "cpu areion/litellm", "cpu areion/router",
    ]  # fmt: skip
    print(table(headers, ratio_rows))


def _cell_name(cell: dict[str, Any]) -> str:
    return f"c={cell['concurrency']} {'stream' if cell['stream'] else 'non-stream'}"


def verdict(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Criterion 1, against `litellm.acompletion`, in every cell where the ratio means something."""
    errors = sum(data["errors"] for cell in cells for data in cell["contenders"].values())
    judged: list[tuple[float, dict[str, Any]]] = []
    not_judged: list[str] = []
    for cell in cells:
        if "litellm" not in cell["contenders"]:
            continue
        ratio = cell["ratio_areion_over"].get("litellm")
        contenders = cell["contenders"]
        if cell["httpx_baseline_degraded"]:
            not_judged.append(
                f"{_cell_name(cell)} (bare httpx degraded: p50 {contenders['httpx']['p50']:.0f} ms"
                f" vs bare aiohttp {contenders['aiohttp']['p50']:.0f} ms)"
            )
        elif ratio is None:
            not_judged.append(f"{_cell_name(cell)} (litellm not slower than bare httpx)")
        else:
            # Judge on the stricter of: over bare httpx, and over the faster bare client.
            own = cell.get("ratio_areion_own_over_litellm")
            judged.append((ratio if own is None else max(ratio, own), cell))
    if not judged:
        return {"ratio_worst": None, "pass": None, "errors": errors, "not_judged": not_judged}
    worst, worst_cell = max(judged, key=lambda item: item[0])
    first = next(
        (ratio for ratio, cell in judged if cell["concurrency"] == 1 and not cell["stream"]),
        None,
    )
    return {
        "ratio_c1_non_stream": first,
        "ratio_worst": worst,
        "worst_cell": _cell_name(worst_cell),
        "per_cell": {_cell_name(cell): ratio for ratio, cell in judged},
        "not_judged": not_judged,
        "target": TARGET_RATIO,
        "pass": worst <= TARGET_RATIO and errors == 0,
        "errors": errors,
    }


def print_verdict(result: dict[str, Any]) -> None:
    if result["ratio_worst"] is None:
        print(f"criterion 1: areion overhead / litellm overhead = n/a (target <= {TARGET_RATIO})")
        return
    parts = []
    if result["ratio_c1_non_stream"] is not None:
        parts.append(f"{result['ratio_c1_non_stream']:.3f} at c=1 non-stream")
    parts.append(f"worst {result['ratio_worst']:.3f} at {result['worst_cell']}")
    parts.append("each the larger of areion over bare httpx and over bare aiohttp")
    status = "PASS" if result["pass"] else "FAIL"
    notes = []
    if result["not_judged"]:
        notes.append("not judged: " + "; ".join(result["not_judged"]))
    if result["errors"]:
        notes.append(f"{result['errors']} call errors")
    note = f" [{'; '.join(notes)}]" if notes else ""
    print(
        f"criterion 1: areion overhead / litellm overhead = {', '.join(parts)} "
        f"(target <= {TARGET_RATIO:.2f}) {status}{note}"
    )


# ---------------------------------------------------------------- profile


async def profile_areion(areion: Areion, calls: int, stream: bool) -> str:
    """cProfile of `calls` sequential Areion calls; the top functions as text."""
    for _ in range(20):
        await areion.call(stream)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        await areion.call(stream)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats("areion", 30)
    return out.getvalue()


# ---------------------------------------------------------------- main


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
    parser.add_argument("--uvloop", action="store_true", help="run this process on uvloop")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--no-aiohttp", action="store_true", help="leave out the bare-aiohttp reference contender"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="cap on one batch, seconds")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="CALLS",
        help="only profile CALLS sequential Areion calls with cProfile",
    )
    parser.add_argument("--json", metavar="FILE", help="save the results as JSON")
    return parser.parse_args()


async def run(args: argparse.Namespace, workdir: Path) -> int:
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    modes = {"both": [False, True], "yes": [True], "no": [False]}[args.stream]
    rounds = args.rounds or (3 if args.quick else 8)
    litellm = None if args.no_litellm else import_litellm()
    with upstream(
        workdir,
        latency_ms=args.latency_ms,
        chunks=args.chunks,
        chunk_interval_ms=args.chunk_interval_ms,
        jitter_ms=args.latency_jitter_ms,
    ) as (upstream_process, base_url):
        if args.profile:
            areion = Areion(base_url, workdir / "areion.db")
            try:
                for stream in modes:
                    print(f"== cProfile: {args.profile} Areion calls, stream={stream} ==")
                    print(await profile_areion(areion, args.profile, stream))
            finally:
                await areion.aclose()
            return 0

        contenders: list[Contender] = [Httpx(base_url), Areion(base_url, workdir / "areion.db")]
        if not args.no_aiohttp and importlib.util.find_spec("aiohttp") is not None:
            contenders.append(Aiohttp(base_url))
        if litellm is not None:
            contenders += [LiteLLM(litellm, base_url), LiteLLMRouter(litellm, base_url)]
        info = environment(["litellm", "openai", "aiohttp", "pydantic"])
        loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
        print(f"machine: {describe_environment(info)}")
        print(
            f"setup: upstream = bench/upstream.py (separate process, latency "
            f"{args.latency_ms:g} +/- {args.latency_jitter_ms:g} ms, {args.chunks} chunks/stream); "
            "contenders in this one "
            f"process on {loop_name}; {rounds} interleaved rounds per cell"
        )
        if litellm is None:
            print("litellm is not installed (or --no-litellm): no ratio can be computed")
        try:
            for contender in contenders:  # every contender gets the same answer
                for stream in modes:
                    text = await contender.call(stream)
                    if "quick brown fox" not in text:
                        raise RuntimeError(f"{contender.name} got an unexpected answer: {text!r}")
            cells = []
            upstream_cpu_before = upstream_process.cpu_seconds()
            started = time.perf_counter()
            for stream in modes:
                for concurrency in levels:
                    print(f"measuring concurrency {concurrency}, stream={stream} ...", flush=True)
                    results = await measure_cell(
                        contenders,
                        concurrency=concurrency,
                        stream=stream,
                        rounds=rounds,
                        quick=args.quick,
                        timeout_s=args.timeout,
                    )
                    cells.append(cell_report(results, concurrency=concurrency, stream=stream))
            elapsed = time.perf_counter() - started
            upstream_cpu_after = upstream_process.cpu_seconds()
        finally:
            for contender in contenders:
                await contender.aclose()

    print()
    print_cells(cells)
    upstream_cpu = (
        upstream_cpu_after - upstream_cpu_before
        if upstream_cpu_after is not None and upstream_cpu_before is not None
        else None
    )
    print(
        f"\nmeasured in {elapsed:.0f} s; upstream process used {fmt(upstream_cpu, 1)} CPU s. "
        "overhead = p50(contender) - p50(httpx); '+/-' = half the IQR of the per-round "
        "overheads; cpu = this process's CPU per call, background threads and the "
        f"{SETTLE_S * 1000:.0f} ms settle after each batch included."
    )
    result = verdict(cells)
    print_verdict(result)
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "overhead",
                "environment": info,
                "settings": {
                    "rounds": rounds,
                    "concurrency": levels,
                    "stream": modes,
                    "latency_ms": args.latency_ms,
                    "latency_jitter_ms": args.latency_jitter_ms,
                    "chunks": args.chunks,
                    "chunk_interval_ms": args.chunk_interval_ms,
                    "loop": loop_name,
                    "quick": args.quick,
                },
                "elapsed_s": elapsed,
                "upstream_cpu_s": upstream_cpu,
                "cells": cells,
                "verdict": result,
            },
        )
    return 0


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
