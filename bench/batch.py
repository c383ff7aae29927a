"""Batches: lines per second through the self-run path, and interactive latency while a
batch runs on the same model group, next to idle.

In-process (one Runtime, its batch worker, SQLite in a temporary folder), against
`bench/upstream.py` (a separate process) with `--latency-ms` per call.

1. Throughput: the same `--lines` requests sent as plain `Runtime.chat` calls at
   `--concurrency` (the reference), then as one batch that the worker runs at the same
   concurrency (each line through `Runtime.answer` in the batch lane, its answer and
   ledger row in one transaction). Lines per second of each, and their ratio.
2. Interactive latency: the group serves `--capacity` calls at once (lanes: batch
   lines queue behind interactive calls, `interactive_reserve` keeps slots for them).
   `--clients` interactive clients call one after another, in `--rounds` alternating
   rounds: with nothing else running (idle), then while a part of a `--batch-lines`
   batch runs (the worker keeping `--batch-concurrency` lines in flight); the batch's
   lines per second alongside.
   Target: interactive p95 while the batch runs within 20% of idle.

    .venv/bin/python bench/batch.py            # about a minute
    .venv/bin/python bench/batch.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from _common import describe_environment, environment, fmt, percentile, run_main, table
from _common import upstream as bench_upstream
from areion import ChatRequest, Message, Runtime
from areion.config import parse_config
from areion.jobs import BatchRecord, LineRecord
from areion.server.batches import parse_line


def config(url: str, db: Path, *, capacity: int | None, concurrency: int, yielding: int = 4) -> Any:
    model: dict[str, Any] = {"name": "fast", "provider": "openai", "model": "m",
                             "base_url": url, "price": {"input": 1, "output": 2}}  # fmt: skip
    if capacity is not None:
        model["max_concurrency"] = capacity
    return parse_config(
        {
            "models": [model],
            "store": f"sqlite:///{db}",
            "cache": {"exact": {"enabled": False}},
            "jobs": {"worker": False, "concurrency": concurrency, "yield_concurrency": yielding},
        }
    )


def body(i: int) -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": f"question {i}"}],
            "max_tokens": 16}  # fmt: skip


async def submit(rt: Runtime, batch_id: str, lines: int) -> None:
    await rt.jobs.queue.create_batch(
        BatchRecord(batch_id=batch_id, tenant="default", endpoint="/v1/chat/completions",
                    input_file_id="-", total=lines, created=time.time(),
                    expires_at=time.time() + 86_400),
        [LineRecord(batch_id=batch_id, index=i, custom_id=f"c{i}", body=body(i))
         for i in range(lines)],
    )  # fmt: skip


def worker(rt: Runtime) -> Any:
    from areion.jobs.worker import BatchWorker

    return BatchWorker(rt, rt.jobs.queue, parse_line)


async def throughput(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, float]:
    rt = Runtime(config(url, workdir / "t.db", capacity=None, concurrency=args.concurrency))
    async with rt:
        limit = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> None:
            async with limit:
                await rt.chat(ChatRequest(model="fast", messages=[Message.from_openai(
                    body(i)["messages"][0])], max_tokens=16))  # fmt: skip

        await asyncio.gather(*(one(i) for i in range(50)))  # warm up connections
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.lines)))
        plain = args.lines / (time.perf_counter() - started)
        await submit(rt, "batch_throughput", args.lines)
        started = time.perf_counter()
        assert await worker(rt).run_once()
        batched = args.lines / (time.perf_counter() - started)
        done = await rt.jobs.queue.get_batch(None, "batch_throughput")
        assert done is not None and done.completed == args.lines, done
    return {"plain_calls_per_s": plain, "batch_lines_per_s": batched}


async def interactive(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, float]:
    rt = Runtime(config(url, workdir / "i.db", capacity=args.capacity,
                        concurrency=args.batch_concurrency,
                        yielding=args.yield_concurrency))  # fmt: skip
    question = ChatRequest(model="fast", messages=[Message(role="user", content="now")],
                           max_tokens=16)  # fmt: skip
    async with rt:

        async def clients(stop: asyncio.Event | None, calls: int) -> list[float]:
            out: list[float] = []

            async def client() -> None:
                while (stop is None and len(out) < calls) or (
                    stop is not None and not stop.is_set()
                ):
                    started = time.perf_counter()
                    await rt.chat(question)
                    out.append(time.perf_counter() - started)

            await asyncio.gather(*(client() for _ in range(args.clients)))
            return out

        await clients(None, 100)  # warm up
        # Alternating rounds (idle, then while a part of the batch runs), so a machine
        # busy with something else weighs on both alike.
        idle: list[float] = []
        loaded: list[float] = []
        elapsed = 0.0
        part = args.batch_lines // args.rounds
        for round_number in range(args.rounds):
            idle += await clients(None, args.interactive_calls // args.rounds)
            batch_id = f"batch_load_{round_number}"
            await submit(rt, batch_id, part)
            stop = asyncio.Event()
            started = time.perf_counter()
            running = asyncio.get_running_loop().create_task(worker(rt).run_once())
            measuring = asyncio.get_running_loop().create_task(clients(stop, 0))
            await running
            elapsed += time.perf_counter() - started
            stop.set()
            loaded += await measuring
            done = await rt.jobs.queue.get_batch(None, batch_id)
            assert done is not None and done.completed == part, done
    return {
        "idle_p50_ms": percentile(idle, 50) * 1000,
        "idle_p95_ms": percentile(idle, 95) * 1000,
        "loaded_p50_ms": percentile(loaded, 50) * 1000,
        "loaded_p95_ms": percentile(loaded, 95) * 1000,
        "loaded_calls": len(loaded),
        "idle_calls": len(idle),
        "batch_lines_per_s": part * args.rounds / elapsed,
    }


async def run(args: argparse.Namespace, workdir: Path) -> int:
    print(describe_environment(environment()))
    with bench_upstream(workdir, latency_ms=args.latency_ms) as (_, url):
        speed = await throughput(args, url, workdir)
        print(f"\n1. self-run throughput: {args.lines} requests at concurrency "
              f"{args.concurrency}, upstream {args.latency_ms} ms")  # fmt: skip
        print(table(["path", "per s"], [
            ["plain Runtime.chat calls", fmt(speed["plain_calls_per_s"], 1)],
            ["batch lines (worker)", fmt(speed["batch_lines_per_s"], 1)],
        ]))  # fmt: skip
        print(f"batch / plain: {speed['batch_lines_per_s'] / speed['plain_calls_per_s']:.2f}")
        lat = await interactive(args, url, workdir)
    print(f"\n2. interactive latency, {args.clients} clients, capacity {args.capacity}, while "
          f"a {args.batch_lines}-line batch runs (up to {args.batch_concurrency} lines in flight, "
          f"{args.yield_concurrency} while interactive calls run: "
          f"{lat['batch_lines_per_s']:.0f} lines/s)")  # fmt: skip
    print(table(["", "p50 ms", "p95 ms", "calls"], [
        ["idle", fmt(lat["idle_p50_ms"]), fmt(lat["idle_p95_ms"]), int(lat["idle_calls"])],
        ["batch running", fmt(lat["loaded_p50_ms"]), fmt(lat["loaded_p95_ms"]),
         int(lat["loaded_calls"])],
    ]))  # fmt: skip
    ratio = lat["loaded_p95_ms"] / lat["idle_p95_ms"]
    print(f"p95 batch running / idle: {ratio:.2f} (target <= 1.20)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--interactive-calls", type=int, default=400)
    parser.add_argument("--batch-lines", type=int, default=10_000)
    parser.add_argument("--batch-concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="idle and loaded rounds")
    parser.add_argument("--yield-concurrency", type=int, default=4, help="jobs.yield_concurrency")
    parser.add_argument("--quick", action="store_true", help="fewer lines and calls")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.lines, args.batch_lines, args.interactive_calls = 500, 2000, 150
    return run_main(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
