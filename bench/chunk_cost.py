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
import re
import statistics
import tempfile
from typing import NamedTuple

from _common import add_against, table, trees
from hot_path import MEDIAN_CPU, run_tree

_INSTRUCTIONS = re.compile(r"instructions per call: ([\d,]+) \(event loop ([\d,]+)\)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_against(parser)
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
    args.trees = trees(parser, args.against)
    return args


def measure(tree: str, chunks: int, args: argparse.Namespace) -> tuple[float, float | None]:
    """One `hot_path.py` run of `tree` at `chunks` content chunks a stream: CPU seconds
    per call in us (or instructions, with --callgrind), and the event loop's
    instructions (None without --callgrind)."""
    options = [
        "--stream", "--chunks", str(chunks),
        "--calls", str(args.calls), "--concurrency", str(args.concurrency), "--repeat", "1",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="areion-chunk-cost-") as directory:
        if args.callgrind:
            options += ["--warm-up", "200", "--callgrind", directory]
        out = run_tree(tree, options)
    if args.callgrind:
        found = _INSTRUCTIONS.search(out)
        if found is None:
            raise SystemExit(f"no instruction count in hot_path.py's output:\n{out}")
        return float(found[1].replace(",", "")), float(found[2].replace(",", ""))
    found = MEDIAN_CPU.search(out)
    if found is None:
        raise SystemExit(f"no CPU figure in hot_path.py's output:\n{out}")
    return float(found[1]), None


class Round(NamedTuple):
    """One tree's two runs in a round: the per-call figures at --low and --high chunks
    (CPU us, or instructions), and the event loop's instructions (None without
    --callgrind)."""

    low: float
    high: float
    loop_low: float | None
    loop_high: float | None


def main() -> int:
    args = parse_args()
    unit = "instructions" if args.callgrind else "us CPU"
    spread = args.high - args.low
    runs: dict[str, list[Round]] = {tree: [] for tree in args.trees}
    for round_no in range(args.rounds):
        for tree in args.trees if round_no % 2 == 0 else args.trees[::-1]:
            (low, loop_low), (high, loop_high) = (
                measure(tree, chunks, args) for chunks in (args.low, args.high)
            )
            run = Round(low, high, loop_low, loop_high)
            runs[tree].append(run)
            print(
                f"round {round_no + 1}, {tree}: {run.low:,.0f} / {run.high:,.0f} {unit} per "
                f"call at {args.low} / {args.high} chunks: "
                f"{(run.high - run.low) / spread:,.1f} per chunk",
                flush=True,
            )
    head = [
        "tree",
        f"{unit} per call, {args.low} chunks",
        f"{unit} per call, {args.high} chunks",
        f"{unit} per chunk",
        *(["event loop's per chunk"] if args.callgrind else []),
        "per chunk / first",
    ]
    rows = []
    first = None
    for tree, rounds in runs.items():
        per_chunk = statistics.median((run.high - run.low) / spread for run in rounds)
        first = per_chunk if first is None else first
        row = [
            tree,
            f"{statistics.median(run.low for run in rounds):,.0f}",
            f"{statistics.median(run.high for run in rounds):,.0f}",
            f"{per_chunk:,.1f}",
        ]
        if args.callgrind:
            loop = statistics.median(
                (run.loop_high or 0.0) - (run.loop_low or 0.0) for run in rounds
            )
            row.append(f"{loop / spread:,.0f}")
        rows.append([*row, f"{per_chunk / first:.2f}x"])
    print()
    print(table(head, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
