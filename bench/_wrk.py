"""wrk, the lean load generator of the saturation runs: its Lua script, one run, its figures.

wrk (Debian: `apt-get install wrk`) keeps C keep-alive connections busy from one C
thread, for a few microseconds of CPU per request: unlike an asyncio client, it leaves
the cores to the server under test. The Lua script sets the method, body and headers,
and its `done` hook prints the summary as one JSON line, which is what is parsed (not
wrk's text report). wrk's own CPU comes from the kernel's accounting of the child when
it is reaped (`os.wait4`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["WrkResult", "find_wrk", "run_wrk", "write_script"]

_MARK = "AREION_WRK "
# Every latency figure wrk is asked for, by percentile.
_PERCENTILES = (50, 90, 99, 99.9)

_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
    .. '"latency_us":{"mean":%.1f,"max":%d,%s}}\\n',
    MARK, summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, PERCENTILES(latency)))
end
"""


def find_wrk() -> str | None:
    """wrk's path, or None when it is not installed."""
    return shutil.which("wrk")


def _lua_long_string(text: str) -> str:
    """`text` as a Lua long string, its level chosen so that the text cannot close it."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def write_script(path: Path, *, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk Lua script that POSTs `body` with `headers` on every request."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_long_string(body.decode())}"]
    lines += [
        f"wrk.headers[ {_lua_long_string(name)} ] = {_lua_long_string(value)}"
        for name, value in headers.items()
    ]
    lines.append(f"MARK = {_lua_long_string(_MARK)}")
    fields = ", ".join(
        f"string.format('\"p{q:g}\":%d', latency:percentile({q}))" for q in _PERCENTILES
    )
    lines.append(f"function PERCENTILES(latency) return table.concat({{{fields}}}, ',') end")
    path.write_text("\n".join(lines) + "\n" + _DONE, encoding="utf-8")
    return path


@dataclass(slots=True, kw_only=True)
class WrkResult:
    """One wrk run."""

    requests: int
    """Responses received (any status)."""
    duration_s: float
    """wrk's own measure of the run's length."""
    errors: dict[str, int]
    """connect, read, write, timeout, and status (answers other than 2xx and 3xx)."""
    latency_ms: dict[str, float]
    """mean, max, p50, p90, p99, p99.9."""
    cpu_s: float
    """wrk's own CPU seconds (user + system, all its threads)."""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "rps": self.rps,
            "errors": self.errors,
            "latency_ms": self.latency_ms,
            "cpu_s": self.cpu_s,
        }


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk against `url` for `duration_s` and wait for it (blocking: call it from a
    thread in async code); raise with its output if it fails."""
    command = [
        wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s",
        f"--timeout={timeout_s:g}s", "-s", str(script), url,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        # wait4, not wait: the kernel's CPU accounting of the child comes with it.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith(_MARK)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {process.returncode}): {' '.join(command)}\n{text}")
    data = orjson.loads(line[len(_MARK) :])
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=data["errors"],
        latency_ms={key: value / 1000.0 for key, value in data["latency_us"].items()},
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
