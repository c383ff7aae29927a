"""The server's CPU per call, alone: what `areion serve` spends on one chat completion.

`bench/server_latency.py` times the server against the upstream; this script only
counts the server process's CPU seconds (user + system, from /proc) over a fixed
number of calls at one concurrency, warm-up excluded, so a change on the hot path can
be compared on a shared, noisy machine: CPU time moves far less with the load than
latency does. It still moves (measured: ~225 us a call with other work on the cores,
~265 quiet, as the ledger writer's batches shrink when it has a core to itself), so
compare trees side by side in one run, alternated. It prints the event loop's and the
kernel's shares apart, and the context switches of the event loop and of the other
threads per call. With `--profile FILE` it also records the server under load with
py-spy (a dev tool: `pip install py-spy`), as a flame graph or speedscope file; with
`--perf FILE`, with Linux perf, whose CPU-clock samples also show the kernel's share and
each thread's (the ledger writer's wake-ups, the loopback TCP stack). `--round N` sends
the calls in rounds of N, `--idle` seconds apart, as the full bench does: each round but
the first (which follows the warm-up at once) then opens new client and upstream
connections; `--client-keepalive` keeps the client's instead, to tell idle from new
connections.
`--floor` measures `bench/floor_server.py` instead: Areion's HTTP stack forwarding each
call with none of Areion's work, what every call costs before that work starts.
`--against SRC` measures another tree's `src` (an older checkout's) beside this one: each
of `--repeat` measurements runs this script once per tree, alternating which goes first
(one server per run), and the end gives
each tree's median and its ratio to this tree's, the before-and-after of a change
measured in one run on one machine.

    .venv/bin/python bench/hot_path.py                       # non-streamed, c=64
    .venv/bin/python bench/hot_path.py --floor               # the HTTP stack alone
    .venv/bin/python bench/hot_path.py --stream --calls 3000
    .venv/bin/python bench/hot_path.py --profile /tmp/areion.svg
    .venv/bin/python bench/hot_path.py --calls 2560 --round 256 --repeat 1   # bench rounds
    git worktree add /tmp/old <rev> && .venv/bin/python bench/hot_path.py --against /tmp/old/src
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from _common import (
    LOOPBACK,
    ChildProcess,
    add_against,
    free_port,
    process_cpu_seconds,
    process_tree,
    process_tree_cpu_seconds,
    run_main,
    table,
    trees,
    upstream,
)
from contenders import floor_command
from server_latency import (
    CLIENT_KEEPALIVE_S,
    GROUP,
    AiohttpClient,
    Samples,
    Target,
    run_batch,
    write_config,
)


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def context_switches(pid: int) -> dict[int, int]:
    """Context switches (voluntary and not) of each thread of `pid`, by thread id (Linux)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue
        out[int(task.name)] = sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return out


def kernel_cpu_seconds(pid: int) -> float:
    """System (kernel) CPU seconds of `pid`, all its threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def callgrind_dump(pid: int, directory: Path) -> tuple[int, int]:
    """Dump the counts so far; the instructions (Ir) in the new dump: the main thread's
    (the event loop's) and all threads'."""
    before = set(directory.iterdir())
    callgrind_control("--dump", pid)
    main = total = 0
    for path in set(directory.iterdir()) - before:
        count = 0
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                count = max(count, int(line.split()[1]))
        total += count
        if path.name.endswith("-01"):
            main = count
    return main, total


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls measured (after warm-up)")
    parser.add_argument("--warm-up", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="streamed calls")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per stream")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="upstream model latency")
    parser.add_argument("--repeat", type=int, default=3, help="measurements, each of --calls")
    parser.add_argument(
        "--round",
        type=int,
        metavar="N",
        help="send each measurement's calls in rounds of N, --idle seconds apart (the "
        "full bench's pattern: server_latency.py's rounds)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        help="seconds between rounds (past the load generator's keep-alive it opens new "
        "connections, past 5 s the upstream has closed the server's; default 5.5)",
    )
    parser.add_argument(
        "--client-keepalive",
        type=float,
        default=CLIENT_KEEPALIVE_S,
        metavar="S",
        help=f"how long the load generator keeps an idle connection (default "
        f"{CLIENT_KEEPALIVE_S:g} s, as server_latency.py's)",
    )
    parser.add_argument("--uvloop", action="store_true", help="run the load generator on uvloop")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="measure bench/floor_server.py (Areion's HTTP stack alone) instead of areion serve",
    )
    parser.add_argument("--profile", metavar="FILE", help="py-spy record the server to FILE")
    parser.add_argument("--format", default="flamegraph", help="py-spy's --format")
    parser.add_argument("--rate", type=int, default=200, help="py-spy's samples per second")
    parser.add_argument(
        "--postgres", metavar="DSN", help="a PostgreSQL store (a schema of the run's own)"
    )
    parser.add_argument("--redis", metavar="URL", help="Redis `shared` (a prefix of the run's own)")
    parser.add_argument("--workers", type=int, default=1, help="--workers (needs both above)")
    parser.add_argument(
        "--strace", metavar="FILE", help="count the server's system calls (strace -c)"
    )
    parser.add_argument(
        "--perf",
        metavar="FILE",
        help="record the server with Linux perf (CPU clock, call graphs, kernel included) "
        "to FILE; read it with `perf report -i FILE --sort pid,dso`",
    )
    parser.add_argument(
        "--callgrind",
        metavar="DIR",
        help="run the server under valgrind's callgrind and count the instructions of the "
        "measured calls (each run's profile is written to DIR); slow, but steady on a busy "
        "machine",
    )
    add_against(parser)
    args = parser.parse_args()
    if args.idle is not None and args.round is None:
        parser.error("--idle needs --round")
    if args.against:
        alone = [f"--{name}" for name in _ALONE if getattr(args, name)]
        if alone:
            parser.error(f"{alone[0]} watches or replaces one server: not with --against")
    args.trees = trees(parser, args.against)
    if args.idle is None:
        args.idle = 5.5
    return args


_ALONE = ("floor", "profile", "perf", "strace", "callgrind")
"""Options that watch or replace one server, which `--against` does not combine with."""

MEDIAN_CPU = re.compile(r"median CPU per call: (\d+) us")
"""The figure a run of this script ends with (CPU us per call, the median of its runs)."""


def run_tree(tree: str, options: list[str]) -> str:
    """What a run of this script with `options` prints, `tree` (a source tree's `src`)
    first on its PYTHONPATH, so that the server it starts runs that tree's code; exits,
    naming the tree, if the run fails."""
    command = [sys.executable, str(Path(__file__).resolve()), *options]
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"hot_path.py failed for {tree}:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def against(args: argparse.Namespace) -> int:
    """Each tree measured by a run of this script of its own (`run_tree`), `--repeat`
    times, the trees' order alternating; each tree's median and its ratio to this
    tree's."""
    options = [
        "--calls", str(args.calls), "--warm-up", str(args.warm_up),
        "--concurrency", str(args.concurrency), "--chunks", str(args.chunks),
        "--latency-ms", str(args.latency_ms), "--client-keepalive", str(args.client_keepalive),
        "--workers", str(args.workers), "--repeat", "1",
    ]  # fmt: skip
    for flag, value in (
        ("--round", args.round),
        ("--idle", args.idle if args.round else None),
        ("--postgres", args.postgres),
        ("--redis", args.redis),
    ):
        if value is not None:
            options += [flag, str(value)]
    options += ["--stream"] * args.stream + ["--uvloop"] * args.uvloop
    per_call: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for run_no in range(args.repeat):
        for tree in args.trees if run_no % 2 == 0 else args.trees[::-1]:
            out = run_tree(tree, options)
            found = MEDIAN_CPU.search(out)
            if found is None:
                raise SystemExit(f"no CPU figure in hot_path.py's output for {tree}:\n{out}")
            per_call[tree].append(float(found[1]))
            print(f"measurement {run_no + 1}, {tree}: {found[1]} us/call", flush=True)
    medians = {tree: statistics.median(values) for tree, values in per_call.items()}
    first = medians[args.trees[0]]
    rows = [[tree, f"{median:.0f}", f"{median / first:.2f}x"] for tree, median in medians.items()]
    print()
    print(table(["tree", "median CPU us/call", "to the first"], rows))
    return 0


def write_shared_config(workdir: Path, upstream_url: str, args: argparse.Namespace) -> Path:
    """`server_latency`'s config with the store and shared state asked for."""
    path = write_config(workdir, upstream_url)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if args.postgres:
        config["store"] = f"{args.postgres}?schema={SCHEMA}"
    if args.redis:
        config["shared"] = f"{args.redis}?prefix=areion-hot-path:{uuid.uuid4().hex}:"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


SCHEMA = f"areion_hot_path_{uuid.uuid4().hex[:10]}"


def backend_counts(args: argparse.Namespace) -> tuple[int, int]:
    """Redis commands processed and PostgreSQL transactions committed so far (0 for a
    backend not in use), server-wide: run nothing else against them meanwhile."""
    commands = commits = 0
    if args.redis:
        out = subprocess.run(
            ["redis-cli", "-u", args.redis, "info", "stats"], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("total_commands_processed:"):
                commands = int(line.split(":")[1])
    if args.postgres:
        out = subprocess.run(
            ["psql", args.postgres, "-Atc",
             "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        commits = int(out.strip() or 0)
    return commands, commits


def rounds(calls: int, size: int | None) -> list[int]:
    """`calls` in rounds of `size` (the last one shorter); one round if no size."""
    if not size:
        return [calls]
    return [min(size, calls - start) for start in range(0, calls, size)]


async def run(args: argparse.Namespace, workdir: Path) -> int:
    try:
        return await _run(args, workdir)
    finally:
        if args.postgres:
            _drop_schema(args.postgres)


def _drop_schema(dsn: str) -> None:
    drop = f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'
    subprocess.run(["psql", dsn, "-qc", drop], capture_output=True)


def _callgrind_wrapper(directory: str | None) -> list[str]:
    """The valgrind command line the server runs under, if asked for."""
    if not directory:
        return []
    Path(directory).mkdir(parents=True, exist_ok=True)
    return [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
        f"--callgrind-out-file={Path(directory).resolve()}/callgrind.out.%p",
    ]  # fmt: skip


def _watch(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes] | None:
    """strace, perf or py-spy attached to the server, if asked for."""
    for tool, package, asked in (
        ("strace", "strace", args.strace),
        ("perf", "linux-perf", args.perf),
    ):
        if asked and shutil.which(tool) is None:
            raise SystemExit(f"--{tool} needs {tool} on PATH (Debian: apt-get install {package})")
    if args.strace:
        command = ["strace", "-c", "-f", "-o", args.strace, "-p", str(pid)]
    elif args.perf:
        command = [
            "perf", "record", "--event", "cpu-clock", "--freq", "999", "--call-graph", "fp",
            "--pid", str(pid), "--output", args.perf,
        ]  # fmt: skip
    elif args.profile:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [
            py_spy, "record", "--pid", str(pid), "--output", args.profile,
            "--format", args.format, "--rate", str(args.rate), "--nonblocking",
        ]  # fmt: skip
    else:
        return None
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _run(args: argparse.Namespace, workdir: Path) -> int:
    client = AiohttpClient(keepalive_s=args.client_keepalive)
    with upstream(workdir, latency_ms=args.latency_ms, chunks=args.chunks) as (_, upstream_url):
        port = free_port()
        wrapper = _callgrind_wrapper(args.callgrind)
        if args.floor:
            name = "the HTTP floor"
            command = floor_command(port, upstream_url)
        else:
            name = "areion serve"
            command = [
                sys.executable, "-m", "areion.cli", "serve",
                "--config", str(write_shared_config(workdir, upstream_url, args)),
                "--host", LOOPBACK, "--port", str(port), "--log-level", "warning",
                "--workers", str(args.workers),
            ]  # fmt: skip
        server = ChildProcess(name, [*wrapper, *command], workdir / "server.log")
        target = Target("areion", f"http://{LOOPBACK}:{port}/v1/chat/completions", GROUP)
        spy: subprocess.Popen[bytes] | None = None
        try:
            server.wait_ready(
                f"http://{LOOPBACK}:{port}/healthz", timeout=300.0 if args.callgrind else 30.0
            )
            batch = {"stream": args.stream, "concurrency": args.concurrency, "timeout_s": 600.0}
            await run_batch(client, target, Samples(), calls=args.warm_up, **batch)  # type: ignore[arg-type]
            spy = _watch(args, server.pid)
            if spy is not None:
                await asyncio.sleep(1.0)  # attached before the calls
            per_call = []
            for _ in range(args.repeat):
                samples = Samples()
                workers_before = {
                    pid: process_cpu_seconds(pid) or 0.0 for pid in process_tree(server.pid)[1:]
                }
                before = process_tree_cpu_seconds(server.pid) or 0.0
                threads_before = thread_cpu_seconds(server.pid)
                kernel_before = kernel_cpu_seconds(server.pid)
                switches_before = context_switches(server.pid)
                counts_before = backend_counts(args)
                if args.callgrind:
                    callgrind_control("--zero", server.pid)
                    callgrind_control("--instr=on", server.pid)
                for i, calls in enumerate(rounds(args.calls, args.round)):
                    if i:
                        await asyncio.sleep(args.idle)
                    await run_batch(client, target, samples, calls=calls, **batch)  # type: ignore[arg-type]
                if args.callgrind:
                    callgrind_control("--instr=off", server.pid)
                    main, instructions = callgrind_dump(server.pid, Path(args.callgrind))
                    print(
                        f"instructions per call: {instructions / args.calls:,.0f} "
                        f"(event loop {main / args.calls:,.0f})"
                    )
                used = (process_tree_cpu_seconds(server.pid) or 0.0) - before
                threads = thread_cpu_seconds(server.pid)
                kernel_us = (kernel_cpu_seconds(server.pid) - kernel_before) / args.calls * 1e6
                main = threads.get(server.pid, 0.0) - threads_before.get(server.pid, 0.0)
                switches = context_switches(server.pid)
                loop_switches = switches.get(server.pid, 0) - switches_before.get(server.pid, 0)
                other_switches = (
                    sum(n - switches_before.get(tid, 0) for tid, n in switches.items())
                    - loop_switches
                )
                counts = backend_counts(args)
                if args.workers > 1:
                    shares = [
                        (process_cpu_seconds(pid) or 0.0) - spent
                        for pid, spent in workers_before.items()
                    ]
                    print("CPU seconds of each worker: " + ", ".join(f"{s:.2f}" for s in shares))
                if args.redis or args.postgres:
                    print(
                        f"per call: {(counts[0] - counts_before[0]) / args.calls:.2f} Redis "
                        f"commands, {(counts[1] - counts_before[1]) / args.calls:.2f} "
                        "PostgreSQL commits"
                    )
                per_call.append(used / args.calls * 1e6)
                rps = len(samples.total) / samples.wall_s
                loop_us, other_us = main / args.calls * 1e6, (used - main) / args.calls * 1e6
                print(
                    f"{args.calls} calls, c={args.concurrency}, stream={args.stream}: "
                    f"server CPU {per_call[-1]:.0f} us/call (event loop {loop_us:.0f}, "
                    f"other threads {other_us:.0f}; in the kernel {kernel_us:.0f}), "
                    f"context switches {loop_switches / args.calls:.2f} + "
                    f"{other_switches / args.calls:.2f}/call, "
                    f"{rps:.0f} req/s, "
                    f"{samples.errors} errors {samples.last_error}",
                    flush=True,
                )
            print(f"median CPU per call: {sorted(per_call)[len(per_call) // 2]:.0f} us")
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its file
                spy.wait(timeout=60)
            await client.aclose()
            server.stop()
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.against:
        raise SystemExit(against(arguments))
    raise SystemExit(run_main(run, arguments))
