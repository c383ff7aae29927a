"""Shared helpers for the benchmarks: statistics, child processes, tables, reports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"

# Every benchmark connection is to loopback: never let a proxy setting reroute it.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


# ---------------------------------------------------------------- statistics


THIS_TREE = str(Path(__file__).resolve().parent.parent / "src")
"""This checkout's source tree, the first of those a bench with `--against` measures."""


def add_against(parser: argparse.ArgumentParser) -> None:
    """`--against SRC`: another tree measured beside this one (repeatable)."""
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="SRC",
        help="another tree's src directory, measured beside this one (repeatable)",
    )


def trees(parser: argparse.ArgumentParser, against: Sequence[str]) -> list[str]:
    """This tree, then those of `--against` (resolved), each checked to hold the areion
    package: else the server would import the installed one, this tree measured twice."""
    resolved = [str(Path(tree).resolve()) for tree in against]
    for tree in resolved:
        if not (Path(tree) / "areion" / "__init__.py").is_file():
            parser.error(f"--against {tree}: no areion package there (give a tree's src)")
    return [THIS_TREE, *resolved]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) of `values`, linearly interpolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(slots=True)
class Summary:
    """Latency figures of one sample, in milliseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        ms = [value * 1000.0 for value in seconds]
        return cls(
            n=len(ms),
            p50=percentile(ms, 50),
            p90=percentile(ms, 90),
            p99=percentile(ms, 99),
            mean=sum(ms) / len(ms) if ms else math.nan,
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def iqr_half_width(values: Sequence[float]) -> float:
    """Half the interquartile range: a robust "plus or minus" for a set of estimates."""
    if len(values) < 2:
        return math.nan
    return (percentile(values, 75) - percentile(values, 25)) / 2.0


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _get_ok(url: str, timeout: float) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class ChildProcess:
    """A server started for the benchmark, its output kept in a log file."""

    def __init__(
        self, name: str, command: list[str], log_path: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, url: str, *, timeout: float = 30.0) -> None:
        """Poll `url` until it answers 200; raise with the log tail if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if _get_ok(url, timeout=1.0):
                return
            time.sleep(0.1)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not become ready at {url}; its output:\n{tail}")

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time the process has used so far (Linux only)."""
        return process_cpu_seconds(self.pid)

    def tree_cpu_seconds(self) -> float | None:
        """The same, summed over the process and its live descendants (workers)."""
        return process_tree_cpu_seconds(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of `pid` from /proc, or None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def process_tree(pid: int) -> list[int]:
    """`pid` and every live process descended from it (a server's workers), from /proc."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone since the listing
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [pid], list(children.get(pid, []))
    while pending:
        child = pending.pop()
        tree.append(child)
        pending += children.get(child, [])
    return tree


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of `pid` and its live descendants, or None where there is no /proc.
    A descendant that exits takes its time with it: read the figure while workers run."""
    own = process_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(process_cpu_seconds(child) or 0.0 for child in process_tree(pid)[1:])


@contextlib.contextmanager
def upstream(
    workdir: Path,
    *,
    latency_ms: float,
    chunks: int = 8,
    chunk_interval_ms: float = 0.0,
    jitter_ms: float = 0.0,
    raw: bool = False,
) -> Iterator[tuple[ChildProcess, str]]:
    """Run `bench/upstream.py` on a free loopback port; yields it and its `/v1` base URL.
    `raw`: its lean mode (`--raw`: a plain protocol on uvloop instead of uvicorn)."""
    port = free_port()
    command = [
        sys.executable,
        str(BENCH_DIR / "upstream.py"),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        "--chunks",
        str(chunks),
        "--chunk-interval-ms",
        str(chunk_interval_ms),
        "--latency-jitter-ms",
        str(jitter_ms),
        *(["--raw"] if raw else []),
    ]
    child = ChildProcess("upstream", command, workdir / "upstream.log")
    try:
        child.wait_ready(f"http://{LOOPBACK}:{port}/healthz")
        yield child, f"http://{LOOPBACK}:{port}/v1"
    finally:
        child.stop()


# ---------------------------------------------------------------- reporting


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def environment(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """What the numbers were measured on."""
    packages = ["areion", "httpx", "uvicorn", "uvloop", "httptools", "orjson", *extra_packages]
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": {name: package_version(name) for name in packages},
    }


def describe_environment(info: dict[str, Any]) -> str:
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    return f"{info['cpus']} CPUs, Python {info['python']}, {info['platform']}; {packages}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))

    out = [line(list(headers)), "  ".join("-" * width for width in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(f"results written to {path}")


def run_main(run: Callable[[Any, Path], Awaitable[int]], args: Any) -> int:
    """Run a benchmark's `run(args, workdir)` in a temporary directory, on uvloop if asked."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with (
        tempfile.TemporaryDirectory(prefix="areion-bench-") as tmp,
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        return runner.run(run(args, Path(tmp)))


# ---------------------------------------------------------------- bulk SQLite ledger


def sqlite_bulk_ledger(
    db: Any, *, rows: int, start: float, span: float, run_id_sql: str, tags_sql: str
) -> None:
    """Insert `rows` synthetic ledger rows spread evenly over [start, start + span) in one
    SQL statement; `run_id_sql` and `tags_sql` are SQL expressions of the row index `i`."""
    db.execute(
        f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows - 1})
        INSERT INTO ledger (request_id, tenant, model, deployment, upstream_model,
            prompt_tokens, completion_tokens, cached_tokens, cost_usd, estimated, latency_s,
            created, cache, saved_usd, saved_s, open, client_request_id, kind, key_label,
            route, route_reason, run_id, agent, session, end_user, tags, variant)
        SELECT printf('r%010d', i), 't' || (i % 20), 'model-' || (i % 6), 'dep-' || (i % 12),
            'u', 100 + i % 900, 20 + i % 300, 0,
            CASE WHEN i % 10 = 0 THEN 0 ELSE (100 + i % 900) * 1e-6 END, 0,
            0.25 * (1 + (abs(random()) % 12)) * (1 + (abs(random()) % 3)),
            {start} + i * {span / rows}, CASE WHEN i % 10 = 0 THEN 'exact' ELSE '' END,
            CASE WHEN i % 10 = 0 THEN 0.0005 ELSE 0 END, 0, 0, '', 'chat',
            'k' || (i % 40), CASE i % 3 WHEN 0 THEN '' WHEN 1 THEN 'auto' ELSE 'cheap' END, '',
            CASE WHEN i % 4 = 0 THEN {run_id_sql} ELSE '' END,
            CASE WHEN i % 4 = 0 THEN 'agent-' || (i % 8) ELSE '' END, '',
            'user-' || (i % 1000), {tags_sql}, ''
        FROM n
        """
    )


def sqlite_bulk_runs(
    db: Any, *, runs: int, start: float, span: float, message_count: int, duration_s: float
) -> None:
    """Insert `runs` synthetic runs ('run-0'...) spread evenly over [start, start + span),
    each lasting `duration_s`, in one SQL statement."""
    db.execute(
        f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {runs - 1})
        INSERT INTO runs (run_id, tenant, agent, session, status, input, output, error,
            pause_reason, steps, prompt_tokens, completion_tokens, cost_usd, message_count,
            limits, created, updated)
        SELECT 'run-' || i, 't' || (i % 20), 'agent-' || (i % 8), NULL,
            CASE WHEN i % 10 = 0 THEN 'failed' WHEN i % 17 = 0 THEN 'paused'
                 ELSE 'finished' END, 'task', 'done', NULL, NULL, 1 + i % 6, 500, 100,
            (1 + i % 50) * 1e-4, {message_count}, '{{}}', {start} + i * {span / runs},
            {start} + i * {span / runs} + {duration_s}
        FROM n
        """
    )
