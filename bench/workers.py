"""Distributed mode: `areion serve --workers 2` against `--workers 1`, side by side.

Two parts, on the same backends: a PostgreSQL store (a schema made for the run and
dropped after it) and Redis `shared` (a prefix of the run's own, deleted after it).

The latency part: both servers in front of the same upstream (`bench/upstream.py`).
The load generator sends the same non-streamed request, in interleaved rounds,
straight to the upstream ("direct") and to each server, at each concurrency, and
reports p50/p99, the latency each server adds over direct, and the throughput (closed
loop). On a 2-core machine the upstream, this load generator (aiohttp, dear per
request), PostgreSQL and Redis share the cores with the workers: the ratio says what a
second worker buys there, not on a machine with cores to spare.

The saturation part makes the server the bottleneck: wrk (`bench/_wrk.py`, a few µs of
CPU per request) keeps `--connections` keep-alive connections busy against the lean
upstream (`bench/upstream.py --raw`, `--saturate-latency-ms`), in interleaved rounds of
`--duration` seconds: 1 worker, 2 workers, and 1 worker on SQLite as a reference. It
reports the median requests/s of each, the ratio 2 workers / 1 (the median of the
rounds' ratios: a round's two runs are close in time, so drift in the machine's other
work falls on both), the server's CPU per call (its process tree, a settle after each
round included), each worker's share, and the cores every other process used meanwhile
(upstream, wrk, PostgreSQL, Redis, the idle servers, and the rest of the machine), so
that the reader sees where the two cores went. Without wrk it is skipped with a line saying so.

    .venv/bin/python bench/workers.py              # both parts, about 4 minutes
    .venv/bin/python bench/workers.py --saturate   # the saturation part alone, under 3
    .venv/bin/python bench/workers.py --quick      # both, short
    --postgres postgresql://postgres@127.0.0.1:5432/test  --redis redis://127.0.0.1:6379/0
    --connections 128  --duration 5  --rounds 8  --saturate-latency-ms 2  --no-sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
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
    process_cpu_seconds,
    process_tree,
    process_tree_cpu_seconds,
    run_main,
    table,
    upstream,
    write_json,
)
from _wrk import WrkResult, find_wrk, run_wrk, write_script
from server_latency import GROUP, UPSTREAM_MODEL, AiohttpClient, Target, measure_cell

# After each saturation round, before the server's CPU per call is read: the ledger rows
# a round leaves behind are written within it, so their cost is in the figure. The cores
# each process used are read when wrk ends, so that the idle settle does not dilute them.
SETTLE_S = 0.25
WARM_UP_S = 2.0
# Processes of the backends, by the name the kernel gives them (/proc/PID/comm).
BACKENDS = {"postgres": "postgres", "redis": "redis-server"}
# Whose CPU a saturation round reports; "rest" is the machine's busy time minus these.
GROUPS = ("server", "upstream", "wrk", "postgres", "redis", "idle servers")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter ones")
    parser.add_argument("--concurrency", default="16,64", help="the latency part's levels")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the latency part's")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--uvloop", action="store_true", help="run the load generator on uvloop")
    parser.add_argument("--saturate", action="store_true", help="only the saturation part (wrk)")
    parser.add_argument("--connections", type=int, default=128, help="wrk's connections")
    parser.add_argument("--duration", type=float, help="seconds per round (default 5, quick 3)")
    parser.add_argument("--rounds", type=int, help="saturation rounds (default 8, quick 2)")
    parser.add_argument(
        "--saturate-latency-ms", type=float, default=2.0, help="the lean upstream's latency"
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--no-sqlite", action="store_true", help="leave out the 1-worker SQLite reference"
    )
    return parser.parse_args()


def write_config(
    workdir: Path, upstream_url: str, store: str, shared: str | None, name: str
) -> Path:
    path = workdir / f"areion-{name}.yaml"
    config: dict[str, Any] = {
        "models": [
            {"name": GROUP, "provider": "openai", "model": UPSTREAM_MODEL,
             "base_url": upstream_url, "api_key": "dummy"}
        ],
        "store": store,
        "server": {"access_log": False},
    }  # fmt: skip
    if shared is not None:
        config["shared"] = shared
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def serve(
    workdir: Path, config: Path, workers: int, name: str, *, src: str | None = None
) -> tuple[ChildProcess, int]:
    """`areion serve` on a free port, ready; `src`: the areion of that tree's src instead
    of the installed one."""
    port = free_port()
    process = ChildProcess(
        f"areion serve --workers {workers}" + (f" ({src})" if src else ""),
        [sys.executable, "-m", "areion.cli", "serve", "--config", str(config), "--host",
         LOOPBACK, "--port", str(port), "--log-level", "warning", "--workers", str(workers)],
        workdir / f"areion-{name}.log",
        env={**os.environ, "PYTHONPATH": src} if src else None,
    )  # fmt: skip
    process.wait_ready(f"http://{LOOPBACK}:{port}/healthz")
    return process, port


async def run(args: argparse.Namespace, workdir: Path) -> int:
    import asyncpg

    from areion.store.redis import RedisShared

    schema = f"areion_bench_{uuid.uuid4().hex[:10]}"
    store = f"{args.postgres}?schema={schema}"
    shared = f"{args.redis}?prefix=areion-bench:{uuid.uuid4().hex}:"
    info = environment(["aiohttp", "starlette", "asyncpg", "redis"])
    print(f"machine: {describe_environment(info)}")
    report: dict[str, Any] = {"benchmark": "workers", "environment": info}
    try:
        if not args.saturate:
            report["cells"] = await latency_part(args, workdir, store, shared)
        wrk = find_wrk()
        if wrk is None:
            print("\nsaturation part skipped: wrk is not installed (Debian: apt-get install wrk)")
            report["saturation"] = {"skipped": "wrk is not installed"}
        else:
            report["saturation"] = await saturation_part(args, workdir, wrk, store, shared)
    finally:
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
    if args.json:
        write_json(args.json, report)
    return 0


# ---------------------------------------------------------------- latency part


async def latency_part(
    args: argparse.Namespace, workdir: Path, store: str, shared: str
) -> list[dict[str, Any]]:
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    rounds = 3 if args.quick else 6
    client = AiohttpClient()
    servers: list[ChildProcess] = []
    try:
        with upstream(workdir, latency_ms=args.latency_ms, chunks=8) as (_, upstream_url):
            config = write_config(workdir, upstream_url, store, shared, "latency")
            targets = [Target("direct", f"{upstream_url}/chat/completions", UPSTREAM_MODEL)]
            for workers in (1, 2):
                process, port = serve(workdir, config, workers, f"latency-w{workers}")
                servers.append(process)
                url = f"http://{LOOPBACK}:{port}/v1/chat/completions"
                targets.append(Target(f"workers={workers}", url, GROUP))
            print(
                f"latency part: upstream (latency {args.latency_ms:g} ms), `areion serve"
                " --workers 1` and `--workers 2` over one PostgreSQL schema and one Redis"
                f" prefix, this load generator; {rounds} interleaved rounds per cell"
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
    print(f"\nlatency part measured in {elapsed:.0f} s.")
    return cells


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


# ---------------------------------------------------------------- saturation part


@dataclass(slots=True, kw_only=True)
class Contender:
    """One server of the saturation part."""

    name: str
    process: ChildProcess
    url: str


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent outside idle and iowait since boot (/proc/stat), or
    None where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(int(value) for index, value in enumerate(fields[:8]) if index not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def named_processes_cpu(comm: str) -> dict[int, float]:
    """CPU seconds of every process the kernel names `comm`, by pid (any owner's: a
    PostgreSQL or Redis shared with other work counts that work too)."""
    out: dict[int, float] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return out
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != comm:
                continue
        except OSError:
            continue
        seconds = process_cpu_seconds(int(entry.name))
        if seconds is not None:
            out[int(entry.name)] = seconds
    return out


def worker_pids(pid: int) -> list[int]:
    """The worker processes of `areion serve --workers N` (uvicorn spawns them with
    multiprocessing; its resource tracker is not one)."""
    found = []
    for child in process_tree(pid)[1:]:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found


def _tree_cpu(process: ChildProcess) -> float:
    return process_tree_cpu_seconds(process.pid) or 0.0


@dataclass(slots=True)
class CpuSnapshot:
    """CPU seconds so far of every process a saturation round involves."""

    wall: float
    machine: float | None
    trees: dict[str, float]
    backends: dict[str, dict[int, float]]
    workers: dict[int, float]

    @classmethod
    def take(cls, trees: dict[str, ChildProcess], workers: list[int]) -> CpuSnapshot:
        return cls(
            wall=time.monotonic(),
            machine=machine_busy_seconds(),
            trees={name: _tree_cpu(process) for name, process in trees.items()},
            backends={name: named_processes_cpu(comm) for name, comm in BACKENDS.items()},
            workers={pid: process_cpu_seconds(pid) or 0.0 for pid in workers},
        )


def cpu_spent(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, Any]:
    """CPU seconds spent between two snapshots, by process group. A backend process
    that started in between counts whole; one that exited takes its time with it."""
    spent: dict[str, Any] = {"wall_s": after.wall - before.wall}
    for name, seconds in after.trees.items():
        spent[name] = seconds - before.trees[name]
    for name, processes in after.backends.items():
        spent[name] = sum(
            seconds - before.backends[name].get(pid, 0.0) for pid, seconds in processes.items()
        )
    spent["workers"] = [after.workers[pid] - before.workers[pid] for pid in before.workers]
    if before.machine is not None and after.machine is not None:
        spent["machine"] = after.machine - before.machine
    return spent


async def saturation_part(
    args: argparse.Namespace, workdir: Path, wrk: str, store: str, shared: str
) -> dict[str, Any]:
    rounds = args.rounds or (2 if args.quick else 8)
    duration = args.duration or (3.0 if args.quick else 5.0)
    script = write_script(
        workdir / "chat.lua",
        body=Target("areion", "", GROUP).body(stream=False),
        headers={"content-type": "application/json"},  # the config has no keys to send
    )
    contenders: list[Contender] = []
    with upstream(
        workdir, latency_ms=args.saturate_latency_ms, chunks=8, raw=True
    ) as (upstream_process, upstream_url):  # fmt: skip
        try:
            config = write_config(workdir, upstream_url, store, shared, "saturate")
            plan = [("workers=1", config, 1), ("workers=2", config, 2)]
            if not args.no_sqlite:
                sqlite = write_config(
                    workdir, upstream_url, f"sqlite:///{workdir / 'areion.db'}", None, "sqlite"
                )
                plan.append(("sqlite", sqlite, 1))
            for name, path, workers in plan:
                process, port = serve(workdir, path, workers, f"saturate-{name}")
                url = f"http://{LOOPBACK}:{port}/v1/chat/completions"
                contenders.append(Contender(name=name, process=process, url=url))
            print(
                f"\nsaturation part: wrk -t{args.wrk_threads} -c{args.connections}, "
                f"{rounds} interleaved rounds of {duration:g} s per server (order rotating),"
                f" against `upstream.py --raw` (latency {args.saturate_latency_ms:g} ms);"
                " `--workers 1` and `--workers 2` on one PostgreSQL schema and Redis prefix"
                + ("" if args.no_sqlite else ", and 1 worker on SQLite as a reference"),
                flush=True,
            )
            measured = await _saturate(
                args, wrk, script, contenders, upstream_process, rounds, duration
            )
        finally:
            for contender in contenders:
                contender.process.stop()
    settings = {
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "duration_s": duration,
        "rounds": rounds,
        "upstream_latency_ms": args.saturate_latency_ms,
        "settle_s": SETTLE_S,
        "load_average": os.getloadavg(),
    }
    return {"settings": settings, **measured}


async def _saturate(
    args: argparse.Namespace,
    wrk: str,
    script: Path,
    contenders: list[Contender],
    upstream_process: ChildProcess,
    rounds: int,
    duration: float,
) -> dict[str, Any]:
    async def measure(contender: Contender, seconds: float) -> tuple[WrkResult, dict[str, Any]]:
        trees = {"server": contender.process, "upstream": upstream_process}
        idle = [other.process for other in contenders if other is not contender]
        workers = worker_pids(contender.process.pid)
        before = CpuSnapshot.take(trees, workers)
        idle_before = sum(_tree_cpu(process) for process in idle)
        result = await asyncio.to_thread(
            run_wrk, wrk, contender.url, script, connections=args.connections,
            duration_s=seconds, threads=args.wrk_threads,
        )  # fmt: skip
        spent = cpu_spent(before, CpuSnapshot.take(trees, workers))
        spent["idle servers"] = sum(_tree_cpu(process) for process in idle) - idle_before
        spent["wrk"] = result.cpu_s
        await asyncio.sleep(SETTLE_S)
        spent["server_with_settle"] = _tree_cpu(contender.process) - before.trees["server"]
        return result, spent

    for contender in contenders:  # connections, pools and caches warm; not counted
        await measure(contender, WARM_UP_S)
    per_round: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
    for index in range(rounds):
        shift = index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            result, spent = await measure(contender, duration)
            per_round[contender.name].append({**result.to_dict(), "cpu_s": spent})
            rest = _rest(spent)
            print(
                f"  round {index + 1} {contender.name}: {result.rps:.0f} req/s, "
                f"p50 {result.latency_ms['p50']:.1f} ms, {result.error_count} errors; cores: "
                f"server {spent['server'] / spent['wall_s']:.2f}"
                + ("" if rest is None else f", rest {rest / spent['wall_s']:.2f}"),
                flush=True,
            )
    summary = {name: _summarize(samples) for name, samples in per_round.items()}
    ratios = [
        two["rps"] / one["rps"]
        for one, two in zip(per_round["workers=1"], per_round["workers=2"], strict=True)
        if one["rps"]
    ]
    one_rps, two_rps = summary["workers=1"]["rps"], summary["workers=2"]["rps"]
    of_medians = two_rps / one_rps if one_rps else None
    ratio = statistics.median(ratios) if ratios else None
    _print_saturation(summary, ratio, ratios, of_medians)
    return {"contenders": summary, "ratio_2w_1w": ratio, "ratio_of_medians": of_medians,
            "round_ratios": ratios, "rounds": per_round}  # fmt: skip


def _rest(spent: dict[str, Any]) -> float | None:
    """The machine's busy CPU seconds that none of the named processes used."""
    if "machine" not in spent:
        return None
    return float(spent["machine"] - sum(spent[group] for group in GROUPS))


def _summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over a contender's rounds: throughput, latency, CPU per call, cores used."""

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    out: dict[str, Any] = {
        "rps": median([s["rps"] for s in samples]),
        "p50_ms": median([s["latency_ms"]["p50"] for s in samples]),
        "p99_ms": median([s["latency_ms"]["p99"] for s in samples]),
        "errors": sum(sum(s["errors"].values()) for s in samples),
        "server_us_per_call": median(
            [
                s["cpu_s"]["server_with_settle"] / s["requests"] * 1e6
                for s in samples
                if s["requests"]
            ]
        ),
    }
    groups = ["server", "upstream", "wrk", "postgres", "redis", "idle servers"]
    cores = {
        name: median([s["cpu_s"][name] / s["cpu_s"]["wall_s"] for s in samples]) for name in groups
    }
    if all("machine" in s["cpu_s"] for s in samples):
        machine = median([s["cpu_s"]["machine"] / s["cpu_s"]["wall_s"] for s in samples])
        cores["machine"] = machine
        cores["rest"] = median(
            [(s["cpu_s"]["machine"] - sum(s["cpu_s"][g] for g in groups)) / s["cpu_s"]["wall_s"]
             for s in samples]
        )  # fmt: skip
    out["cores"] = cores
    shares = [s["cpu_s"]["workers"] for s in samples if len(s["cpu_s"]["workers"]) > 1]
    if shares:
        totals = [sum(share) or 1.0 for share in shares]
        out["worker_shares"] = [
            median([share[index] / total for share, total in zip(shares, totals, strict=True)])
            for index in range(len(shares[0]))
        ]
    return out


def _print_saturation(
    summary: dict[str, dict[str, Any]],
    ratio: float | None,
    ratios: list[float],
    of_medians: float | None,
) -> None:
    print()
    headers = ["server", "req/s", "p50 ms", "p99 ms", "err", "server us/call"]
    rows = [
        [name, f"{s['rps']:.0f}", fmt(s["p50_ms"]), fmt(s["p99_ms"]), s["errors"],
         f"{s['server_us_per_call']:.0f}"]
        for name, s in summary.items()
    ]  # fmt: skip
    print(table(headers, rows))
    print(
        "\ncores used while each server was loaded (CPU seconds / wall seconds of the wrk run,"
        " median of the rounds):"
    )
    groups = [*GROUPS, "rest", "machine"]
    present = [g for g in groups if all(g in s["cores"] for s in summary.values())]
    rows = [[name, *(fmt(s["cores"][g]) for g in present)] for name, s in summary.items()]
    print(table(["load on", *present], rows))
    print(
        f"(machine: all cores' busy time, out of {os.cpu_count()}; rest: machine minus the"
        " named processes: this script, work this /proc does not show (other containers),"
        " kernel time charged to no process)"
    )
    shares = summary["workers=2"].get("worker_shares")
    if shares:
        split = " / ".join(f"{share:.0%}" for share in shares)
        print(f"workers=2: the workers' shares of their CPU: {split}")
    if ratio is not None:
        spread = ", ".join(f"{value:.2f}" for value in ratios)
        print(
            f"saturated: 2 workers serve {ratio:.2f}x the requests per second of 1 (median"
            f" of the rounds' ratios: {spread}; ratio of the medians {fmt(of_medians)})"
        )
    one, two = summary["workers=1"]["cores"]["server"], summary["workers=2"]["cores"]["server"]
    print(f"the server's cores: {one:.2f} with 1 worker, {two:.2f} with 2")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
