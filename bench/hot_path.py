"""The server's CPU per call, alone: what `areion serve` spends on one chat completion.

`bench/server_latency.py` times the server against the upstream; this script only
counts the server process's CPU seconds (user + system, from /proc) over a fixed
number of calls at one concurrency, warm-up excluded, so a change on the hot path can
be compared on a shared, noisy machine: CPU time moves far less with the load than
latency does. With `--profile FILE` it also records the server under load with
py-spy (a dev tool: `pip install py-spy`), as a flame graph or speedscope file.

    .venv/bin/python bench/hot_path.py                       # non-streamed, c=64
    .venv/bin/python bench/hot_path.py --stream --calls 3000
    .venv/bin/python bench/hot_path.py --profile /tmp/areion.svg
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import LOOPBACK, ChildProcess, free_port, run_main, upstream
from server_latency import GROUP, AiohttpClient, Samples, Target, run_batch, write_config


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
    parser.add_argument("--uvloop", action="store_true", help="run the load generator on uvloop")
    parser.add_argument("--profile", metavar="FILE", help="py-spy record the server to FILE")
    parser.add_argument("--format", default="flamegraph", help="py-spy's --format")
    parser.add_argument("--strace", metavar="FILE", help="count the server's system calls (strace -c)")
    parser.add_argument(
        "--callgrind",
        metavar="DIR",
        help="run the server under valgrind's callgrind and count the instructions of the "
        "measured calls (each run's profile is written to DIR); slow, but steady on a busy "
        "machine",
    )
    return parser.parse_args()


async def run(args: argparse.Namespace, workdir: Path) -> int:
    client = AiohttpClient()
    with upstream(workdir, latency_ms=args.latency_ms, chunks=args.chunks) as (_, upstream_url):
        port = free_port()
        wrapper: list[str] = []
        if args.callgrind:
            Path(args.callgrind).mkdir(parents=True, exist_ok=True)
            wrapper = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                f"--callgrind-out-file={Path(args.callgrind).resolve()}/callgrind.out.%p",
            ]  # fmt: skip
        server = ChildProcess(
            "areion serve",
            [
                *wrapper,
                sys.executable, "-m", "areion.cli", "serve",
                "--config", str(write_config(workdir, upstream_url)),
                "--host", LOOPBACK, "--port", str(port), "--log-level", "warning",
            ],
            workdir / "areion.log",
        )  # fmt: skip
        target = Target("areion", f"http://{LOOPBACK}:{port}/v1/chat/completions", GROUP)
        spy: subprocess.Popen[bytes] | None = None
        try:
            server.wait_ready(
                f"http://{LOOPBACK}:{port}/healthz", timeout=300.0 if args.callgrind else 30.0
            )
            batch = {"stream": args.stream, "concurrency": args.concurrency, "timeout_s": 600.0}
            await run_batch(client, target, Samples(), calls=args.warm_up, **batch)  # type: ignore[arg-type]
            if args.strace:
                spy = subprocess.Popen(
                    ["strace", "-c", "-f", "-o", args.strace, "-p", str(server.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)
            if args.profile:
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                spy = subprocess.Popen(
                    [py_spy, "record", "--pid", str(server.pid), "--output", args.profile,
                     "--format", args.format, "--rate", "200", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)
            per_call = []
            for _ in range(args.repeat):
                samples = Samples()
                before = server.cpu_seconds() or 0.0
                threads_before = thread_cpu_seconds(server.pid)
                if args.callgrind:
                    callgrind_control("--zero", server.pid)
                    callgrind_control("--instr=on", server.pid)
                await run_batch(client, target, samples, calls=args.calls, **batch)  # type: ignore[arg-type]
                if args.callgrind:
                    callgrind_control("--instr=off", server.pid)
                    main, instructions = callgrind_dump(server.pid, Path(args.callgrind))
                    print(
                        f"instructions per call: {instructions / args.calls:,.0f} "
                        f"(event loop {main / args.calls:,.0f})"
                    )
                used = (server.cpu_seconds() or 0.0) - before
                threads = thread_cpu_seconds(server.pid)
                main = threads.get(server.pid, 0.0) - threads_before.get(server.pid, 0.0)
                per_call.append(used / args.calls * 1e6)
                rps = len(samples.total) / samples.wall_s
                print(
                    f"{args.calls} calls, c={args.concurrency}, stream={args.stream}: "
                    f"server CPU {per_call[-1]:.0f} us/call (event loop {main / args.calls * 1e6:.0f}, "
                    f"other threads {(used - main) / args.calls * 1e6:.0f}), {rps:.0f} req/s, "
                    f"{samples.errors} errors",
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
    raise SystemExit(run_main(run, parse_args()))
