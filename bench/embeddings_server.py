"""Embeddings through the server: the local MiniLM model, micro-batched against unbatched.

`bench/embedding.py` measures the embedder in process; this measures what a client of
`POST /v1/embeddings` sees. Two `areion serve` processes run side by side, each with
one `provider: local` model, the same but for the shared embedder's
`cache.semantic.embed_max_batch`: 64 (micro-batched, the default) and 1 (every call
runs on its own). Requests send `x-areion-cache: no-store`, so the embedding cache
never answers and every request runs the model. Measured, in rounds that alternate
the two servers (drift on the machine falls on both):

    single input   one request at a time, one short text each: latency p50/p99
    concurrency    C callers in a closed loop, one short text each: requests/s,
                   latency p50/p99
    cache hit      (micro-batched server only) the same text again without no-store:
                   what an embedding-cache hit costs end to end

    .venv/bin/python bench/embeddings_server.py              # about a minute
    .venv/bin/python bench/embeddings_server.py --quick
    --concurrency 32   --calls 1024   --singles 300   --rounds 3   --json FILE
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
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
    write_json,
)
from embedding import QUERIES

MODEL = "mini"
MODES = {"micro-batched": 64, "one run per call": 1}  # embed_max_batch


class Client:
    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=0),
            headers={"content-type": "application/json"},
        )

    async def embed(self, text: str, *, cached: bool = False) -> float:
        """Seconds of one request for `text`'s vector (read and parsed)."""
        headers = {} if cached else {"x-areion-cache": "no-store"}
        body = orjson.dumps({"model": MODEL, "input": text, "encoding_format": "float"})
        started = time.perf_counter()
        async with self._session.post(self.url, data=body, headers=headers) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        if len(orjson.loads(data)["data"][0]["embedding"]) != 384:
            raise RuntimeError("not a 384-dimension vector")
        return time.perf_counter() - started

    async def aclose(self) -> None:
        await self._session.close()


def write_config(workdir: Path, name: str, max_batch: int) -> Path:
    path = workdir / f"{name}.yaml"
    config = {
        "models": [{"name": MODEL, "provider": "local"}],
        "store": f"sqlite:///{workdir / name}.db",
        "server": {"access_log": False},
        "cache": {"semantic": {"embed_threads": 1, "embed_max_batch": max_batch}},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def singles(client: Client, count: int, offset: int) -> list[float]:
    return [await client.embed(QUERIES[(offset + i) % len(QUERIES)]) for i in range(count)]


async def closed_loop(
    client: Client, concurrency: int, calls: int, limit_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    remaining = calls

    async def caller(offset: int) -> None:
        nonlocal remaining
        i = offset
        while remaining > 0:
            remaining -= 1
            latencies.append(await client.embed(QUERIES[i % len(QUERIES)]))
            i += 1

    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(caller(k) for k in range(concurrency))), timeout=limit_s
    )
    wall = time.perf_counter() - started
    return {"requests_per_s": calls / wall, "latency_ms": Summary.of(latencies).to_dict()}


async def run(args: argparse.Namespace, workdir: Path) -> int:
    info = environment(["aiohttp", "onnxruntime", "tokenizers", "numpy"])
    servers: dict[str, ChildProcess] = {}
    clients: dict[str, Client] = {}
    try:
        for name, max_batch in MODES.items():
            port = free_port()
            slug = name.replace(" ", "-")
            servers[name] = ChildProcess(
                f"areion serve ({name})",
                [sys.executable, "-m", "areion.cli", "serve",
                 "--config", str(write_config(workdir, slug, max_batch)),
                 "--host", LOOPBACK, "--port", str(port), "--log-level", "warning"],
                workdir / f"{slug}.log",
            )  # fmt: skip
            clients[name] = Client(f"http://{LOOPBACK}:{port}/v1/embeddings")
        for name, server in servers.items():
            server.wait_ready(clients[name].url.replace("/v1/embeddings", "/healthz"), timeout=90)
        print(f"machine: {describe_environment(info)}")
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for client in clients.values():  # warm-up: connections, ORT buffers, allocator
            await singles(client, 40, 0)
            await closed_loop(client, args.concurrency, args.concurrency * 4, args.timeout)
        single: dict[str, list[float]] = {name: [] for name in MODES}
        loops: dict[str, list[dict[str, Any]]] = {name: [] for name in MODES}
        hits: list[float] = []
        first = next(iter(MODES))
        for round_ in range(args.rounds):
            order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
            for name in order:
                single[name] += await singles(clients[name], args.singles, round_)
                loops[name].append(
                    await closed_loop(clients[name], args.concurrency, args.calls, args.timeout)
                )
            text = QUERIES[round_ % len(QUERIES)]
            await clients[first].embed(text, cached=True)  # stored; then hits
            hits += [await clients[first].embed(text, cached=True) for _ in range(args.singles)]

        results: dict[str, Any] = {"single": {}, "concurrency": {}}
        rows = []
        for name in MODES:
            s = Summary.of(single[name])
            results["single"][name] = s.to_dict()
            rows.append((name, "no-store", s.n, fmt(s.p50, 3), fmt(s.p90, 3), fmt(s.p99, 3)))
        h = Summary.of(hits)
        results["single"]["cache hit"] = h.to_dict()
        rows.append((first, "cache hit", h.n, fmt(h.p50, 3), fmt(h.p90, 3), fmt(h.p99, 3)))
        print("\nsingle input, one request at a time (ms):")
        print(table(["server", "request", "n", "p50", "p90", "p99"], rows))

        rows = []
        for name in MODES:
            ordered = sorted(loops[name], key=lambda r: r["requests_per_s"])
            median = ordered[len(ordered) // 2]  # the median round by throughput
            results["concurrency"][name] = {
                **median,
                "rounds_rps": [r["requests_per_s"] for r in loops[name]],
            }
            latency = median["latency_ms"]
            rows.append(
                (name, fmt(median["requests_per_s"], 0), fmt(latency["p50"]), fmt(latency["p99"]))
            )
        print(
            f"\n{args.concurrency} concurrent callers, {args.calls} requests a round, median of "
            f"{args.rounds} rounds:"
        )
        print(table(["server", "requests/s", "p50 ms", "p99 ms"], rows))
        batched, plain = (results["concurrency"][name]["requests_per_s"] for name in MODES)
        ratio = batched / plain
        results["throughput_ratio"] = ratio
        print(f"micro-batching: x{ratio:.2f} requests/s at {args.concurrency} concurrent callers")
        if args.json:
            write_json(args.json, {"environment": info, "args": vars(args), **results})
    finally:
        for client in clients.values():
            await client.aclose()
        for server in servers.values():
            server.stop()
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, one round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--calls", type=int, default=1024, help="requests per concurrent round")
    parser.add_argument("--singles", type=int, default=300, help="single requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternated")
    parser.add_argument("--timeout", type=float, default=120.0, help="cap on one round, s")
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    parser.add_argument("--json", metavar="FILE", help="save the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.singles, args.rounds = 256, 100, 1
    return args


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
