"""The server's CPU per call when it is the bottleneck, against another tree, side by side.

`hot_path.py` loads the server with an asyncio client at a fixed concurrency: on a
2-core machine that client and the upstream take a core of their own, and the server,
far from saturated, pays its event loop's per-turn costs over few calls. Here wrk
(Debian's `wrk`: C, a few microseconds a request) drives the server as hard as it
goes, against the lean upstream (`upstream.py --raw`, ~2 ms): the server's cost per
call where CPU is what limits it, the regime in which a gateway's CPU per call sets
its throughput. With `--against SRC` another source tree (an older checkout's `src`)
runs beside this one, in rotating rounds, each server on a SQLite file of its own.

    .venv/bin/python bench/saturated.py
    .venv/bin/python bench/saturated.py --against /tmp/old/src --rounds 6
    .venv/bin/python bench/saturated.py --stream
    .venv/bin/python bench/saturated.py --stream --chunks 16 --chunk-interval-ms 2

It prints, per tree, the median over the rounds of requests per second and of the
server's CPU per call (process CPU seconds, all threads, user + system, over the calls
wrk completed), and each tree's ratio to the first. Skipped, with a line saying why,
where wrk is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from _common import (
    LOOPBACK,
    ChildProcess,
    add_against,
    describe_environment,
    environment,
    fmt,
    process_tree_cpu_seconds,
    run_main,
    table,
    trees,
    upstream,
    write_json,
)
from _wrk import find_wrk, run_wrk, write_script
from server_latency import GROUP
from workers import serve, write_config

WARM_UP_S = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_against(parser)
    parser.add_argument("--connections", type=int, default=128, help="wrk's connections")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=2.0, help="upstream model latency")
    parser.add_argument("--stream", action="store_true", help="streamed calls")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per stream")
    parser.add_argument(
        "--chunk-interval-ms",
        type=float,
        default=0.0,
        help="pause between a stream's content chunks, so that each arrives on its own "
        "(served by the uvicorn upstream: the lean one sends them back to back)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.trees = trees(parser, args.against)
    return args


@dataclass
class Server:
    tree: str
    process: ChildProcess
    url: str
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "tree": self.tree,
            "rps": statistics.median(r["rps"] for r in self.rounds),
            "cpu_us_per_call": statistics.median(r["cpu_us_per_call"] for r in self.rounds),
            "p50_ms": statistics.median(r["p50_ms"] for r in self.rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in self.rounds),
            "errors": sum(r["errors"] for r in self.rounds),
            "rounds": self.rounds,
        }


def start(workdir: Path, upstream_url: str, tree: str, index: int) -> Server:
    name = f"tree{index}"
    config = write_config(workdir, upstream_url, f"sqlite:///{workdir / name}.db", None, name)
    process, port = serve(workdir, config, 1, name, src=tree)
    return Server(tree, process, f"http://{LOOPBACK}:{port}/v1/chat/completions")


async def run(args: argparse.Namespace, workdir: Path) -> int:
    wrk = find_wrk()
    if wrk is None:
        print("skipped: wrk is not installed (Debian: apt-get install wrk)")
        return 0
    body = {
        "model": GROUP,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        **({"stream": True} if args.stream else {}),
    }
    script = write_script(
        workdir / "call.lua", body=orjson.dumps(body), headers={"content-type": "application/json"}
    )
    spaced = args.chunk_interval_ms > 0
    with upstream(
        workdir,
        latency_ms=args.latency_ms,
        chunks=args.chunks,
        chunk_interval_ms=args.chunk_interval_ms,
        raw=not spaced,
    ) as (_, url):
        servers = [start(workdir, url, tree, index) for index, tree in enumerate(args.trees)]
        try:
            for server in servers:  # connections, pools and caches warm; not counted
                await _round(wrk, server, script, args, WARM_UP_S)
            for index in range(args.rounds):
                shift = index % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    server.rounds.append(await _round(wrk, server, script, args, args.duration))
                    last = server.rounds[-1]
                    print(
                        f"  round {index + 1} {server.tree}: {last['rps']:.0f} req/s, "
                        f"server {last['cpu_us_per_call']:.0f} us/call, "
                        f"p50 {last['p50_ms']:.1f} ms, p99 {last['p99_ms']:.1f} ms, "
                        f"{last['errors']} errors",
                        flush=True,
                    )
        finally:
            for server in servers:
                server.process.stop()
    summaries = [server.summary() for server in servers]
    first = summaries[0]
    print()
    print(
        f"saturated by wrk ({args.connections} connections, upstream {args.latency_ms:g} ms, "
        f"{f'streamed, {args.chunks} chunks' if args.stream else 'not streamed'}"
        f"{f' {args.chunk_interval_ms:g} ms apart' if args.stream and spaced else ''}), "
        f"median of {args.rounds} rounds "
        f"of {args.duration:g} s; {describe_environment(environment())}"
    )
    rows = [
        [
            s["tree"], f"{s['rps']:.0f}", f"{s['cpu_us_per_call']:.0f}", fmt(s["p50_ms"], 1),
            fmt(s["p99_ms"], 1), s["errors"], fmt(s["cpu_us_per_call"] / first["cpu_us_per_call"]),
            fmt(s["rps"] / first["rps"]),
        ]
        for s in summaries
    ]  # fmt: skip
    headers = ["tree", "req/s", "CPU us/call", "p50 ms", "p99 ms", "errors"]
    headers += ["CPU vs first", "req/s vs first"]
    print(table(headers, rows))
    if args.json:
        results = {"args": vars(args), "environment": environment(), "trees": summaries}
        write_json(args.json, results)
    return 0


async def _round(
    wrk: str, server: Server, script: Path, args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    before = process_tree_cpu_seconds(server.process.pid) or 0.0
    result = await asyncio.to_thread(
        run_wrk, wrk, server.url, script, connections=args.connections, duration_s=seconds
    )
    spent = (process_tree_cpu_seconds(server.process.pid) or 0.0) - before
    return {
        "rps": result.rps,
        "cpu_us_per_call": spent / max(result.requests, 1) * 1e6,
        "p50_ms": result.latency_ms["p50"],
        "p99_ms": result.latency_ms["p99"],
        "errors": result.error_count,
    }


if __name__ == "__main__":
    raise SystemExit(run_main(run, parse_args()))
