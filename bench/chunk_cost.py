"""The server's CPU per streamed chunk, against other trees, side by side.

`hot_path.py --stream` gives the CPU of a whole streamed call: its fixed part (the
request, the upstream call, the ledger's open row and its closing, the answer's head)
and its chunks together. Here each tree streams answers of `--low` and of `--high`
content chunks (the upstream sends a stream's events back to back), and the CPU per
chunk is the difference of the two per-call figures over the difference of chunks:
what one more chunk costs the server. The runs of each round alternate the trees and
the two lengths, each a `hot_path.py` run of its own; the table gives each tree's
medians over the rounds and its ratio to the first tree's. With `--callgrind` the
server runs under valgrind and instructions are counted instead of CPU seconds:
slower, but the same on a busy machine from one run to the next.

    .venv/bin/python bench/chunk_cost.py
    .venv/bin/python bench/chunk_cost.py --against /tmp/old/src --rounds 4
    .venv/bin/python bench/chunk_cost.py --against /tmp/old/src --callgrind --rounds 1
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import table

HOT_PATH = Path(__file__).resolve().parent / "hot_path.py"
THIS_TREE = str(Path(__file__).resolve().parent.parent / "src")

_CPU = re.compile(r"median CPU per call: (\d+) us")
_INSTRUCTIONS = re.compile(r"instructions per call: ([\d,]+) \(event loop ([\d,]+)\)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="SRC",
        help="another tree's src directory, measured beside this one (repeatable)",
    )
    parser.add_argument("--low", type=int, default=4, help="content chunks of the short streams")
    parser.add_argument(
        "--high",
        type=int,
        default=68,
        help="content chunks of the long streams (many more than --low: a chunk costs a few "
        "us of CPU, and a call's CPU moves by tens of us from one run to the next)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="streamed calls per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions under valgrind instead"
    )
    args = parser.parse_args()
    if args.high <= args.low:
        parser.error("--high must be more chunks than --low")
    args.against = [str(Path(tree).resolve()) for tree in args.against]
    for tree in args.against:
        if not (Path(tree) / "areion").is_dir():
            parser.error(f"--against {tree}: no areion package there (give a tree's src)")
    return args


def measure(tree: str, chunks: int, args: argparse.Namespace) -> tuple[float, float | None]:
    """One `hot_path.py` run of `tree` at `chunks` content chunks a stream: CPU seconds
    per call in us (or instructions, with --callgrind), and the event loop's
    instructions (None without --callgrind)."""
    command = [
        sys.executable, str(HOT_PATH), "--stream", "--chunks", str(chunks),
        "--calls", str(args.calls), "--concurrency", str(args.concurrency), "--repeat", "1",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="areion-chunk-cost-") as directory:
        if args.callgrind:
            command += ["--warm-up", "200", "--callgrind", directory]
        env = {**os.environ, "PYTHONPATH": tree}
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"hot_path.py failed for {tree}:\n{out.stdout}\n{out.stderr}")
    if args.callgrind:
        found = _INSTRUCTIONS.search(out.stdout)
        if found is None:
            raise SystemExit(f"no instruction count in hot_path.py's output:\n{out.stdout}")
        return float(found[1].replace(",", "")), float(found[2].replace(",", ""))
    found = _CPU.search(out.stdout)
    if found is None:
        raise SystemExit(f"no CPU figure in hot_path.py's output:\n{out.stdout}")
    return float(found[1]), None


def main() -> int:
    args = parse_args()
    trees = [THIS_TREE, *args.against]
    unit = "instructions" if args.callgrind else "us CPU"
    # per tree: per round, (low, high, loop low, loop high)
    runs: dict[str, list[tuple[float, float, float | None, float | None]]] = {t: [] for t in trees}
    for round_no in range(args.rounds):
        order = trees if round_no % 2 == 0 else trees[::-1]
        for tree in order:
            low, loop_low = measure(tree, args.low, args)
            high, loop_high = measure(tree, args.high, args)
            runs[tree].append((low, high, loop_low, loop_high))
            per_chunk = (high - low) / (args.high - args.low)
            print(
                f"round {round_no + 1}, {tree}: {low:,.0f} / {high:,.0f} {unit} per call at "
                f"{args.low} / {args.high} chunks: {per_chunk:,.1f} per chunk",
                flush=True,
            )
    rows = []
    first: float | None = None
    for tree in trees:
        spread = args.high - args.low
        per_chunk = statistics.median((high - low) / spread for low, high, _, _ in runs[tree])
        if first is None:
            first = per_chunk
        row = [
            tree,
            f"{statistics.median(low for low, _, _, _ in runs[tree]):,.0f}",
            f"{statistics.median(high for _, high, _, _ in runs[tree]):,.0f}",
            f"{per_chunk:,.1f}",
        ]
        if args.callgrind:
            loop = statistics.median(
                (high - low) / spread
                for _, _, low, high in runs[tree]
                if low is not None and high is not None
            )
            row.append(f"{loop:,.0f}")
        row.append(f"{per_chunk / first:.2f}x")
        rows.append(row)
    head = [
        "tree",
        f"{unit} per call, {args.low} chunks",
        f"{unit} per call, {args.high} chunks",
        f"{unit} per chunk",
    ]
    if args.callgrind:
        head.append("event loop's per chunk")
    head.append("per chunk / first")
    print()
    print(table(head, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
