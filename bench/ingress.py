"""The ingress APIs side by side: what `/v1/responses` and `/v1/messages` add over
`/v1/chat/completions` for the same upstream call, through one `areion serve`.

The load generator sends, in interleaved rounds, the same question through each API
(and straight to the upstream, for reference) at each concurrency, and reports p50/p99
of each, each API's difference from chat completions, and the server's CPU time per
call of each API (read from the process around each batch: on a 2-core machine it is
the steadier figure, as latency moves by a millisecond or two between runs). Each API
translates the body in and the answer out; the request path behind them is the same.

    .venv/bin/python bench/ingress.py            # about a minute
    .venv/bin/python bench/ingress.py --quick

Target: each within 0.3 ms (p50) of chat completions at concurrency 16. A response is
kept in the store (a second durable write per call) unless the request says `store:
false`: both are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

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
from server_latency import (
    GROUP,
    MESSAGES,
    SETTLE_S,
    UPSTREAM_MODEL,
    AiohttpClient,
    LoadClient,
    Samples,
    Target,
    calls_per_round,
    run_batch,
    write_config,
)

TARGET_CONCURRENCY = 16
TARGET_P50_MS = 0.3
QUESTION = MESSAGES[-1]["content"]
SYSTEM = MESSAGES[0]["content"]


@dataclass(frozen=True)
class Responses(Target):
    store: bool = True

    def body(self, stream: bool) -> bytes:
        data: dict[str, Any] = {"model": self.model, "instructions": SYSTEM, "input": QUESTION}
        if stream:
            data["stream"] = True
        if not self.store:
            data["store"] = False  # the translation alone: no conversation kept
        return orjson.dumps(data)


@dataclass(frozen=True)
class Messages(Target):
    def body(self, stream: bool) -> bytes:
        data: dict[str, Any] = {
            "model": self.model,
            "system": SYSTEM,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": QUESTION}],
        }
        if stream:
            data["stream"] = True
        return orjson.dumps(data)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer calls")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--uvloop", action="store_true", help="run the load generator on uvloop")
    parser.add_argument("--json", metavar="FILE")
    return parser.parse_args()


async def run(args: argparse.Namespace, workdir: Path) -> int:
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    rounds = 3 if args.quick else 8
    info = environment(["aiohttp", "starlette"])
    client = AiohttpClient()
    cells: list[dict[str, Any]] = []
    with upstream(workdir, latency_ms=args.latency_ms, chunks=8) as (_, upstream_url):
        port = free_port()
        server = ChildProcess(
            "areion serve",
            [sys.executable, "-m", "areion.cli", "serve", "--config",
             str(write_config(workdir, upstream_url)), "--host", LOOPBACK, "--port", str(port),
             "--log-level", "warning"],
            workdir / "areion.log",
        )  # fmt: skip
        try:
            server.wait_ready(f"http://{LOOPBACK}:{port}/healthz")
            base = f"http://{LOOPBACK}:{port}/v1"
            targets = [
                Target("direct", f"{upstream_url}/chat/completions", UPSTREAM_MODEL),
                Target("chat", f"{base}/chat/completions", GROUP),
                Responses("responses", f"{base}/responses", GROUP),
                Responses("responses (store: false)", f"{base}/responses", GROUP, store=False),
                Messages("messages", f"{base}/messages", GROUP),
            ]
            print(f"machine: {describe_environment(info)}")
            print(
                f"setup: upstream (latency {args.latency_ms:g} ms), one `areion serve`, this "
                f"load generator; {rounds} interleaved rounds per cell"
            )
            started = time.perf_counter()
            for stream in (False, True):
                for concurrency in levels:
                    print(f"measuring concurrency {concurrency}, stream={stream} ...", flush=True)
                    results, cpu = await _measure(
                        client, server, targets, stream=stream, concurrency=concurrency,
                        rounds=rounds, quick=args.quick, timeout_s=args.timeout,
                    )  # fmt: skip
                    cells.append(_cell(concurrency, stream, results, cpu))
            elapsed = time.perf_counter() - started
        finally:
            await client.aclose()
            server.stop()
    rows = []
    for cell in cells:
        chat = cell["apis"]["chat"]
        for name in ("chat", "responses", "responses (store: false)", "messages"):
            api = cell["apis"][name]
            rows.append(
                [cell["concurrency"], "yes" if cell["stream"] else "no", name, api["n"],
                 fmt(api["p50"]), fmt(api["p99"]), f"{api['p50'] - chat['p50']:+.2f}",
                 f"{api['p99'] - chat['p99']:+.2f}", fmt(api["cpu_us"], 0),
                 f"{api['cpu_us'] - chat['cpu_us']:+.0f}", api["errors"]]
            )  # fmt: skip
    print()
    print(table(["conc", "stream", "api", "calls", "p50 ms", "p99 ms", "vs chat p50",
                 "vs chat p99", "cpu us/call", "vs chat cpu", "err"], rows))  # fmt: skip
    print(f"\nmeasured in {elapsed:.0f} s (streams timed to their last byte).")
    for cell in cells:
        if cell["concurrency"] == TARGET_CONCURRENCY and not cell["stream"]:
            chat = cell["apis"]["chat"]["p50"]
            chat_cpu = cell["apis"]["chat"]["cpu_us"]
            for name in ("responses", "responses (store: false)", "messages"):
                added = cell["apis"][name]["p50"] - chat
                cpu = cell["apis"][name]["cpu_us"] - chat_cpu
                verdict = "PASS" if added <= TARGET_P50_MS else "FAIL"
                print(
                    f"{name}: {added:+.2f} ms p50 over chat completions at concurrency "
                    f"{TARGET_CONCURRENCY} (target <= {TARGET_P50_MS}) {verdict}; "
                    f"{cpu:+.0f} us of server CPU per call"
                )
    if args.json:
        write_json(args.json, {"benchmark": "ingress", "environment": info, "cells": cells})
    return 0


async def _measure(
    client: LoadClient,
    server: ChildProcess,
    targets: list[Target],
    *,
    stream: bool,
    concurrency: int,
    rounds: int,
    quick: bool,
    timeout_s: float,
) -> tuple[dict[str, Samples], dict[str, float]]:
    """Interleaved rounds (the order rotating), the server's CPU read around each batch."""
    per_round = calls_per_round(concurrency, quick)
    for target in targets:  # warm-up
        await run_batch(
            client, target, Samples(), stream=stream, calls=max(2 * concurrency, 10),
            concurrency=concurrency, timeout_s=timeout_s,
        )  # fmt: skip
    results = {target.name: Samples() for target in targets}
    cpu = dict.fromkeys(results, 0.0)
    for index in range(rounds):
        shift = index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            before = server.cpu_seconds() or 0.0
            await run_batch(
                client, target, results[target.name], stream=stream, calls=per_round,
                concurrency=concurrency, timeout_s=timeout_s,
            )  # fmt: skip
            await asyncio.sleep(SETTLE_S)  # the server's work after the last answer too
            cpu[target.name] += (server.cpu_seconds() or 0.0) - before
    return results, {name: cpu[name] / (rounds * per_round) * 1e6 for name in cpu}


def _cell(
    concurrency: int, stream: bool, results: dict[str, Samples], cpu: dict[str, float]
) -> dict[str, Any]:
    apis = {}
    for name, samples in results.items():
        summary = Summary.of(samples.total).to_dict()
        apis[name] = {
            "n": summary["n"],
            "p50": summary["p50"],
            "p99": summary["p99"],
            "cpu_us": cpu[name],
            "errors": samples.errors,
        }
    return {"concurrency": concurrency, "stream": stream, "apis": apis}


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
