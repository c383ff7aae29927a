"""Agent runtime benchmarks: per-step overhead, checkpoint latency, memory, 10k runs.

    .venv/bin/python bench/agents.py            # the issue's figures (about a minute)
    .venv/bin/python bench/agents.py --quick    # smaller, for a smoke run

Every model call goes to the in-process `sim` provider (time-scaled), so what is
measured is Areion: the loop, the request path, tools, checkpoints to SQLite.
Not a test: it prints figures next to their targets and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from areion import Agent, ChatRequest, Message, Runtime, tool
from areion.config import parse_config
from areion.providers import sim as sim_provider
from areion.sim import SimEngine, SimProfile, builtin_profiles

T = TypeVar("T")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Timer:
    """Wraps an async callable and adds up the time spent in it."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def wrap(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        async def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.samples.append(time.perf_counter() - started)

        return timed

    @property
    def total(self) -> float:
        return sum(self.samples)


@tool
async def fetch(query: str) -> str:
    """Fetch a fact."""
    return f"fact about {query}"


AGENT = Agent(name="bench", model="agent", instructions="Answer with facts.", tools=[fetch])


def runtime(folder: Path, time_scale: float, ttft_ms: float) -> Runtime:
    # One engine per benchmark, registered as the process-wide engine for its time
    # scale, so the sim deployment uses this profile (3 steps: two tool rounds).
    profiles = builtin_profiles()
    profiles["sim-agent"] = SimProfile(
        name="sim-agent", ttft_ms=ttft_ms, tokens_per_s=2000, output_tokens=16,
        max_running=100_000, tool_rounds=2,
    )  # fmt: skip
    sim_provider._ENGINES[time_scale] = SimEngine(profiles, time_scale=time_scale)
    config = parse_config({
        "models": [{"name": "agent", "provider": "sim", "model": "sim-agent",
                    "time_scale": time_scale}],
        "store": f"sqlite:///{folder / 'bench.db'}",
    })  # fmt: skip
    return Runtime(config)


async def step_overhead(folder: Path, runs: int) -> dict[str, Any]:
    """Per-step time not spent in the model call or the store, over sequential runs."""
    rt = runtime(folder, time_scale=1e-4, ttft_ms=1.0)
    model, writes = Timer(), Timer()
    rt.chat = model.wrap(rt.chat)  # type: ignore[method-assign]
    store: Any = rt.store
    checkpoints = Timer()
    store.checkpoint = checkpoints.wrap(store.checkpoint)
    store.create_run = writes.wrap(store.create_run)
    store.record_tool_call = writes.wrap(store.record_tool_call)
    for _ in range(20):  # warm-up
        await rt.run(AGENT, "warm up")
    model.samples.clear()
    writes.samples.clear()
    checkpoints.samples.clear()
    steps = 0
    started = time.perf_counter()
    for index in range(runs):
        result = await rt.run(AGENT, f"question {index}")
        assert result.status == "finished", result
        steps += result.steps
    wall = time.perf_counter() - started
    bare: list[float] = []
    request = ChatRequest(model="agent", messages=[Message(role="user", content="question 1")])
    for _ in range(runs):
        t = time.perf_counter()
        await rt.chat(request)
        bare.append(time.perf_counter() - t)
    await rt.aclose()
    overhead = (wall - model.total - writes.total - checkpoints.total) / steps
    return {
        "runs": runs,
        "steps": steps,
        "per_step_overhead_us": overhead * 1e6,
        "model_call_p50_us": statistics.median(model.samples) * 1e6,
        "bare_model_call_p50_us": statistics.median(bare) * 1e6,
        "checkpoint_p50_ms": percentile(checkpoints.samples, 0.5) * 1e3,
        "checkpoint_p99_ms": percentile(checkpoints.samples, 0.99) * 1e3,
        "checkpoints": len(checkpoints.samples),
    }


async def idle_memory(folder: Path, runs: int) -> dict[str, Any]:
    """Memory held by runs that wait on their model call."""
    rt = runtime(folder, time_scale=1.0, ttft_ms=600_000.0)
    gc.collect()
    before = rss_bytes()
    tasks = [asyncio.create_task(rt.run(AGENT, f"idle {i}")) for i in range(runs)]
    await asyncio.sleep(0.5)
    while True:  # every run has created its row and is waiting on the model
        await asyncio.sleep(0.2)
        if all(not t.done() for t in tasks):
            load = sim_provider._ENGINES[1.0].load("sim-agent")
            if load.running >= runs:
                break
    gc.collect()
    after = rss_bytes()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await rt.aclose()
    return {"runs": runs, "rss_per_idle_run_kib": (after - before) / runs / 1024}


async def many_runs(folder: Path, runs: int, time_scale: float) -> dict[str, Any]:
    """`runs` concurrent 3-step runs: completion, peak RSS, event-loop lag."""
    rt = runtime(folder, time_scale=time_scale, ttft_ms=150.0)
    store: Any = rt.store
    checkpoints = Timer()
    store.checkpoint = checkpoints.wrap(store.checkpoint)
    lags: list[float] = []
    stop = asyncio.Event()

    async def watch_lag() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            lags.append(max(0.0, loop.time() - due))

    watcher = asyncio.create_task(watch_lag())
    started = time.perf_counter()
    results = await asyncio.gather(
        *(rt.run(AGENT, f"task {i}") for i in range(runs)), return_exceptions=True
    )
    elapsed = time.perf_counter() - started
    stop.set()
    await watcher
    await rt.aclose()
    finished = sum(
        1 for r in results if not isinstance(r, BaseException) and r.status == "finished"
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)][:3]
    steps = sum(r.steps for r in results if not isinstance(r, BaseException))
    return {
        "runs": runs,
        "finished": finished,
        "steps": steps,
        "elapsed_s": elapsed,
        "steps_per_s": steps / elapsed,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "loop_lag_p50_ms": percentile(lags, 0.5) * 1e3,
        "loop_lag_p99_ms": percentile(lags, 0.99) * 1e3,
        "checkpoint_p50_ms": percentile(checkpoints.samples, 0.5) * 1e3,
        "checkpoint_p99_ms": percentile(checkpoints.samples, 0.99) * 1e3,
        "errors": errors,
    }


async def main() -> tuple[dict[str, Any], str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--runs", type=int, default=None, help="concurrent runs (10000)")
    parser.add_argument("--time-scale", type=float, default=0.05, help="sim time scale")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    concurrent = args.runs or (1000 if args.quick else 10_000)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; sim time scale "
        f"{args.time_scale}; SQLite store in a temp dir",
        flush=True,
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "a").mkdir()
        (folder / "b").mkdir()
        (folder / "c").mkdir()
        results["step"] = await step_overhead(folder / "a", 200 if args.quick else 1000)
        step = results["step"]
        print(
            f"per-step overhead: {step['per_step_overhead_us']:.0f} us over the model call, "
            f"checkpoint excluded ({step['steps']} steps; model call p50 "
            f"{step['model_call_p50_us']:.0f} us, bare {step['bare_model_call_p50_us']:.0f} us)"
        )
        print(
            f"checkpoint write: p50 {step['checkpoint_p50_ms']:.3f} ms, "
            f"p99 {step['checkpoint_p99_ms']:.3f} ms ({step['checkpoints']} writes, one run "
            "at a time)",
            flush=True,
        )
        results["idle"] = await idle_memory(folder / "b", 500 if args.quick else 2000)
        print(
            f"memory per idle run (waiting on its model call): "
            f"{results['idle']['rss_per_idle_run_kib']:.1f} KiB",
            flush=True,
        )
        results["many"] = await many_runs(folder / "c", concurrent, args.time_scale)
    many = results["many"]
    print(
        f"{many['runs']} concurrent 3-step runs: {many['finished']} finished in "
        f"{many['elapsed_s']:.1f} s ({many['steps_per_s']:.0f} steps/s); peak RSS "
        f"{many['peak_rss_mib']:.0f} MiB; event-loop lag p50 {many['loop_lag_p50_ms']:.1f} ms, "
        f"p99 {many['loop_lag_p99_ms']:.1f} ms; checkpoint p50 "
        f"{many['checkpoint_p50_ms']:.2f} ms, p99 {many['checkpoint_p99_ms']:.2f} ms"
    )
    if many["errors"]:
        print("errors:", many["errors"])
    print()
    print(
        f"verdict: per-step overhead {step['per_step_overhead_us']:.0f} us (target <= 300); "
        f"checkpoint p50 {step['checkpoint_p50_ms']:.3f} ms (target <= 1); "
        f"{many['finished']}/{many['runs']} runs finished with peak RSS "
        f"{many['peak_rss_mib']:.0f} MiB (target <= 2048)"
    )
    return results, args.json


if __name__ == "__main__":
    measured, out = asyncio.run(main())
    if out:
        Path(out).write_text(json.dumps(measured, indent=2))
