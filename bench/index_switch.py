"""Memory while a partition's index switches from exact search to HNSW.

An `AdaptiveIndex` with `--threshold` entries gets one more, which starts the graph
build (synchronously here, so the peak falls inside the measurement). The process's
peak resident memory (VmHWM, reset through /proc/self/clear_refs before each run) is
compared with its memory before the first insert, per entry, for the build from one
snapshot (`build_chunk` = all entries: how it was built before) and from chunks
freed as they are inserted (the default), side by side in one run, each in a fresh
child process so one run's freed memory cannot serve the other. Linux only.

    .venv/bin/python bench/index_switch.py [--threshold 5000]

Target (the cache quality issue): a lower peak than 6.7 KB per entry (2.0 KB steady).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} in /proc/self/status (Linux only)")


def child(threshold: int, chunk: int) -> dict[str, float]:
    import ctypes

    from areion.cache.index import AdaptiveIndex

    # Big blocks always mmapped and unmapped when freed (glibc otherwise raises its
    # threshold after the first big free and keeps freed memory in its heap).
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((threshold + 1, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.NamedTemporaryFile(suffix=".npy") as file:
        np.save(file, vectors)
        file.flush()
        data = np.load(file.name, mmap_mode="r")  # file-backed: not anonymous memory
    del vectors
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    index = AdaptiveIndex(threshold=threshold, build_chunk=chunk)
    index.add(-1, np.array(data[0]))  # the first insert's one-off allocations
    index.remove(-1)
    before = _status("VmRSS")
    for key in range(threshold):
        index.add(key, np.array(data[key]))
    exact = _status("VmRSS")
    index.add(threshold, np.array(data[threshold]))  # the switch, synchronous
    index.settle()
    assert not index.is_exact
    n = threshold + 1
    return {
        "exact_bytes_per_entry": (exact - before) / threshold,
        "peak_bytes_per_entry": (_status("VmHWM") - before) / n,
        "after_bytes_per_entry": (_status("VmRSS") - before) / n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=int, default=5000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.threshold, args.child)))
        return 0
    from areion.cache.index import BUILD_CHUNK

    print(f"{args.threshold} entries, then one more (the switch); KB per entry:")
    print(f"{'build':>28}  {'exact':>6}  {'peak':>6}  {'after':>6}")
    for name, chunk in (("one snapshot (before)", args.threshold + 1),
                        (f"chunks of {BUILD_CHUNK} (now)", BUILD_CHUNK)):  # fmt: skip
        out = subprocess.run(
            [sys.executable, __file__, "--threshold", str(args.threshold), "--child", str(chunk)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        row = json.loads(out.stdout)
        print(
            f"{name:>28}  {row['exact_bytes_per_entry'] / 1024:6.2f}  "
            f"{row['peak_bytes_per_entry'] / 1024:6.2f}  {row['after_bytes_per_entry'] / 1024:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
