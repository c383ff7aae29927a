"""Priority lanes: what a free slot costs, and interactive latency under 2x overload.

In-process, no network. Two parts, each measured side by side in one run:

1. Admission overhead on the fast path (a slot is free): the same call through a
   terminal that answers at once, with no stage (`off`), through `Lanes` alone,
   through rate limits and budgets (`Admission`, every limit configured, as in
   `bench/admission.py`), and through both. Interleaved in rounds; each call timed
   on its own. Targets: limits + lanes + budgets <= 50 µs at p50, and the lanes'
   own share small.

2. Interactive latency under overload. A fake model group serves `--capacity` calls
   at once (a FIFO queue in front, like a model server's own), each taking
   `--service-ms` ± 20%. Open-loop Poisson arrivals, in alternating rounds:
   - `unloaded`: interactive traffic alone (`--interactive-share` of capacity),
     through `Lanes`;
   - `2x lanes`: the same interactive traffic plus batch traffic, so the offered
     load is `--overload` x capacity, through `Lanes` capped at the capacity;
   - `2x fifo`: the same overload without lanes, every call queued at the model
     (the reference: what the overload does to interactive calls unprotected).
   Latency runs from a call's scheduled arrival to its answer, queue wait included.
   Target: interactive p95 under 2x overload (lanes) <= 1.2 x unloaded.

    .venv/bin/python bench/lanes.py            # about 40 s
    .venv/bin/python bench/lanes.py --quick    # about 12 s
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    describe_environment,
    environment,
    fmt,
    percentile,
    run_main,
    table,
    write_json,
)
from admission import admission as build_admission
from admission import new_call as admission_call
from admission import terminal as instant
from areion.control.lanes import LaneLimits, Lanes, OverloadedError
from areion.pipeline import Call, Handler, Result, compose
from areion.types import ChatResponse, Choice, Message

# -- part 1: the fast path -----------------------------------------------------------


async def timed_batch(handler: Handler, n: int, out: list[float]) -> None:
    for _ in range(n):
        call = admission_call()  # built outside the timing, as the runtime does
        start = time.perf_counter_ns()
        await handler(call)
        out.append((time.perf_counter_ns() - start) / 1000.0)


async def fast_path(args: argparse.Namespace) -> dict[str, Any]:
    # A capacity no call reaches: every call finds a slot free (the fast path).
    lanes = Lanes({"fast": 1_000_000})
    handlers: dict[str, Handler] = {
        "off": instant,
        "lanes": compose([lanes], instant),
        "admission": compose([build_admission()], instant),
        "admission+lanes": compose([build_admission(), lanes], instant),
    }
    samples: dict[str, list[float]] = {name: [] for name in handlers}
    for handler in handlers.values():
        await timed_batch(handler, 2000, [])  # warm: tokenizer loaded, policies cached
    names = list(handlers)
    gc.disable()  # a collection inside one timed call would be noise, not admission
    try:
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                await timed_batch(handlers[name], args.batch, samples[name])
            gc.collect()
    finally:
        gc.enable()
    p50 = {name: percentile(values, 50) for name, values in samples.items()}
    rows = [
        [
            name,
            len(values),
            fmt(p50[name]),
            fmt(percentile(values, 99)),
            fmt(p50[name] - p50["off"]),
        ]
        for name, values in samples.items()
    ]
    print(table(["path", "calls", "p50 µs", "p99 µs", "added p50 µs"], rows))
    lanes_share = p50["lanes"] - p50["off"]
    together = p50["admission+lanes"] - p50["off"]
    print(
        f"fast path: lanes add {fmt(lanes_share)} µs at p50; limits + lanes + budgets add "
        f"{fmt(together)} µs (target <= 50 µs: " + ("met" if together <= 50 else "NOT met") + ")"
    )
    return {"p50_us": p50, "lanes_added_us": lanes_share, "all_added_us": together}


# -- part 2: overload ----------------------------------------------------------------


def reply() -> ChatResponse:
    return ChatResponse(
        id="chatcmpl-bench",
        model="m",
        created=0,
        choices=[Choice(message=Message(role="assistant", content="ok"))],
    )


class Model:
    """A model server: `capacity` calls at once, the rest in its own FIFO queue."""

    def __init__(self, capacity: int, service_s: float, rng: random.Random) -> None:
        self._gate = asyncio.Semaphore(capacity)
        self._service_s = service_s
        self._rng = rng

    async def __call__(self, call: Call) -> Result:
        async with self._gate:
            await asyncio.sleep(self._service_s * self._rng.uniform(0.8, 1.2))
        return reply()


def new_call(priority: str, tenant: str) -> Call:
    call = admission_call()
    call.request.model = "m"
    call.tenant = tenant
    call.annotations["priority"] = priority
    return call


async def overload_round(
    handler: Handler,
    *,
    duration_s: float,
    interactive_rate: float,
    batch_rate: float,
    rng: random.Random,
) -> dict[str, Any]:
    """Open-loop Poisson arrivals for `duration_s`; waits until every call is answered."""
    latencies: dict[str, list[float]] = {"interactive": [], "batch": []}
    shed: dict[str, int] = {"interactive": 0, "batch": 0}

    async def one(priority: str, due: float) -> None:
        try:
            await handler(new_call(priority, rng.choice(("a", "b", "c"))))
        except OverloadedError:
            shed[priority] += 1
        else:
            latencies[priority].append(time.perf_counter() - due)

    arrivals: list[tuple[float, str]] = []
    for priority, rate in (("interactive", interactive_rate), ("batch", batch_rate)):
        at = 0.0
        while rate > 0:
            at += rng.expovariate(rate)
            if at >= duration_s:
                break
            arrivals.append((at, priority))
    arrivals.sort()
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for at, priority in arrivals:
        due = start + at
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(priority, due)))
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "shed": shed}


async def overload(args: argparse.Namespace) -> dict[str, Any]:
    capacity, service_s = args.capacity, args.service_ms / 1000.0
    full_rate = capacity / service_s  # calls per second the group serves
    interactive_rate = args.interactive_share * full_rate
    batch_rate = max(0.0, args.overload - args.interactive_share) * full_rate
    rng = random.Random(args.seed)

    def lanes_over(model: Model) -> Handler:
        lanes = Lanes(
            {"m": capacity},
            batch=LaneLimits(max_queued=4 * capacity, max_wait_s=None),
            interactive_reserve=args.reserve,
        )
        return compose([lanes], model)

    contenders: dict[str, tuple[Callable[[Model], Handler], float]] = {
        "unloaded": (lanes_over, 0.0),
        "2x lanes": (lanes_over, batch_rate),
        "2x fifo": (lambda model: model, batch_rate),
    }
    results: dict[str, dict[str, list[float]]] = {
        name: {"interactive": [], "batch": []} for name in contenders
    }
    sheds: dict[str, dict[str, int]] = {name: {"interactive": 0, "batch": 0} for name in contenders}
    names = list(contenders)
    for round_ in range(args.overload_rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            build, batch = contenders[name]
            handler = build(Model(capacity, service_s, rng))
            out = await overload_round(
                handler,
                duration_s=args.round_s,
                interactive_rate=interactive_rate,
                batch_rate=batch,
                rng=rng,
            )
            for lane in ("interactive", "batch"):
                results[name][lane] += out["latencies"][lane]
                sheds[name][lane] += out["shed"][lane]
    rows = []
    for name in names:
        for lane in ("interactive", "batch"):
            values = [v * 1000.0 for v in results[name][lane]]
            if not values and not sheds[name][lane]:
                continue
            rows.append(
                [
                    name,
                    lane,
                    len(values),
                    sheds[name][lane],
                    fmt(percentile(values, 50)),
                    fmt(percentile(values, 95)),
                    fmt(percentile(values, 99)),
                ]
            )
    print(
        f"\n{capacity} slots, {args.service_ms:g} ms ± 20% per call; offered: interactive "
        f"{args.interactive_share:g}x capacity, batch {args.overload - args.interactive_share:g}x "
        f"(total {args.overload:g}x); interactive_reserve {args.reserve:g}; "
        f"{args.overload_rounds} rounds of {args.round_s:g} s each"
    )
    print(table(["contender", "lane", "answered", "shed", "p50 ms", "p95 ms", "p99 ms"], rows))
    p95 = {name: percentile(results[name]["interactive"], 95) for name in names}
    ratio = p95["2x lanes"] / p95["unloaded"]
    fifo = p95["2x fifo"] / p95["unloaded"]
    complete = sheds["2x lanes"]["interactive"] == 0
    print(
        f"interactive p95 under {args.overload:g}x overload / unloaded = {fmt(ratio, 3)} "
        f"with lanes ({fmt(fifo, 1)} without); target <= 1.20: "
        + ("met" if ratio <= 1.2 and complete else "NOT met")
        + ("" if complete else " (interactive calls were shed)")
    )
    return {
        "p95_ms": {name: value * 1000.0 for name, value in p95.items()},
        "ratio": ratio,
        "fifo_ratio": fifo,
        "shed": sheds,
    }


async def run(args: argparse.Namespace, workdir: Path) -> int:
    del workdir
    info = environment()
    print(f"environment: {describe_environment(info)}")
    report: dict[str, Any] = {"settings": vars(args), "environment": info}
    report["fast_path"] = await fast_path(args)
    report["overload"] = await overload(args)
    if args.json:
        write_json(args.json, report)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="fast-path rounds")
    parser.add_argument("--batch", type=int, default=2500, help="fast-path calls per round")
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--interactive-share", type=float, default=0.25)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--reserve", type=float, default=0.25, help="interactive_reserve")
    parser.add_argument("--overload-rounds", type=int, default=4)
    parser.add_argument("--round-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batch, args.overload_rounds, args.round_s = 4, 1000, 2, 1.0
    return run_main(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
