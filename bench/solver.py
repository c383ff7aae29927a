"""The solver shortcut: how fast `solve()` answers, how fast it declines, and whether it
ever fires on a prompt that is not a computation.

Measured here, one `solve(text)` call at a time (`time.perf_counter_ns` around each):

    fires       computations it answers (arithmetic, unit conversion, dates)
    declines    every prompt of the shared routing data sets (RouterBench ARC-Challenge,
                MBPP, Winogrande; MMLU): questions that need reasoning, many of them
                numeric; none may fire
    short       the declines of at most `MAX_CHARS` characters: the ones actually parsed
    long        the same prompts made longer than `MAX_CHARS` (refused unread)
    quora       (information) the Quora questions of the cache data set: real user
                questions; the few that fire are listed so a reader can judge them

    .venv/bin/python bench/solver.py                 # about 10 seconds
    .venv/bin/python bench/solver.py --quick
    .venv/bin/python bench/solver.py --rounds 10 --json out.json

Target: p50 < 1 ms on fires and on declines; zero fires on the routing prompts.
The data is read from `../shared/data/` (from the project root); without it, only the
built-in prompts are timed.
"""

from __future__ import annotations

import argparse
import csv
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import Summary, describe_environment, environment, fmt, table, write_json
from areion.routing.solver import MAX_CHARS, solve

TARGET_P50_MS = 1.0
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

COMPUTATIONS = [
    "What is 17.5% of 2,340?",
    "12*(3+4.5)/7",
    "compute 2^10 - 1",
    "what is the square root of 144",
    "Could you please calculate (1+2)*(3+4)?",
    "2^0.5 * 10^20",
    "what is 15 percent of 80?",
    "convert 5 km to miles",
    "how many ounces in 2.5 pounds",
    "100 °F in Celsius",
    "how many seconds are there in a day?",
    "60 mph to km/h",
    "5 GB to MB",
    "what date is 45 days after 2024-03-01?",
    "how many days between 2024-01-01 and 2024-12-25?",
    "what day of the week was 1969-07-20?",
    "45 days before March 1, 2024",
]

# Without ../shared, declines are timed on these.
NON_COMPUTATIONS = [
    "Who won the 1998 World Cup?",
    "Write a function that adds 2 numbers",
    "If a train travels 60 miles in 1.5 hours, what is its average speed?",
    "What's 2+2? Explain your reasoning.",
    "(1+i)^10 =\nA. 1\nB. i\nC. 32\nD. 32i\nAnswer:",
    "How many days until Christmas?",
    "24/7",
]


def _prompts(path: Path, column: str | None) -> list[str]:
    csv.field_size_limit(1 << 30)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [column] if column else [name for name in reader.fieldnames or [] if name]
        return [row[name] for row in reader for name in columns]


def _time(texts: Sequence[str], rounds: int) -> tuple[list[float], int]:
    """Seconds per call over `rounds` passes (at least 2000 calls, so that a p99 rests on
    20 samples), and how many texts fired in one pass."""
    rounds = max(rounds, -(-2000 // max(len(texts), 1)))
    for text in texts:  # warm-up
        solve(text)
    fired = sum(solve(text) is not None for text in texts)
    samples: list[float] = []
    gc.disable()  # a collection landing in one call is not the solver's cost
    try:
        for _ in range(rounds):
            for text in texts:
                started = time.perf_counter_ns()
                solve(text)
                samples.append((time.perf_counter_ns() - started) / 1e9)
    finally:
        gc.enable()
    return samples, fired


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over each prompt set")
    parser.add_argument("--quick", action="store_true", help="one pass")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data directory")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds

    routing = sorted((args.data / "routing").glob("*/*.csv"))
    declines = [prompt for path in routing for prompt in _prompts(path, "prompt")]
    source = f"{len(routing)} files under {args.data / 'routing'}"
    if not declines:
        declines, source = NON_COMPUTATIONS, "built-in prompts (no shared data found)"
    long = [(text + " ") * (MAX_CHARS // max(len(text), 1) + 1) for text in COMPUTATIONS]
    quora_path = args.data / "cache" / "quora_pairs_val.csv"
    quora: list[str] = []
    if quora_path.is_file():
        quora = sorted(set(_prompts(quora_path, "question1") + _prompts(quora_path, "question2")))

    print(f"solve() on {describe_environment(environment())}")
    print(f"declines: {len(declines)} prompts from {source}; {rounds} round(s)\n")
    sets: list[tuple[str, Sequence[str], bool]] = [
        ("fires", COMPUTATIONS, True),
        ("declines", declines, False),
        ("short", [text for text in declines if len(text) <= MAX_CHARS], False),
        ("long", long, False),
    ]
    if quora:
        sets.append(("quora", quora, False))
    rows: list[list[object]] = []
    results: dict[str, Any] = {"environment": environment(), "rounds": rounds, "sets": {}}
    failures: list[str] = []
    for name, texts, should_fire in sets:
        samples, fired = _time(texts, rounds)
        summary = Summary.of(samples)
        expected = len(texts) if should_fire else 0
        rows.append(
            [
                name,
                len(texts),
                fired,
                expected if name != "quora" else "-",
                fmt(summary.p50 * 1000, 1),
                fmt(summary.p99 * 1000, 1),
                fmt(max(samples) * 1e3, 3),
                fmt(summary.p50 / TARGET_P50_MS, 4),
            ]
        )
        results["sets"][name] = {"prompts": len(texts), "fired": fired, **summary.to_dict()}
        if name != "quora" and fired != expected:
            failures.append(f"{name}: {fired} fired, expected {expected}")
        if name != "quora" and summary.p50 >= TARGET_P50_MS:
            failures.append(f"{name}: p50 {summary.p50:.3f} ms")
    print(
        table(
            ["set", "prompts", "fired", "expected", "p50 us", "p99 us", "max ms", "p50/target"],
            rows,
        )
    )
    if quora:
        print("\nquora questions that fired (judge them: each should be a computation):")
        for text in quora:
            solution = solve(text)
            if solution is not None:
                print(f"  {text!r} -> {solution.answer!r}")
    verdict = "PASS" if not failures else "FAIL (" + "; ".join(failures) + ")"
    print(
        f"\nsolver: zero fires on {len(declines)} non-computations, p50 < {TARGET_P50_MS} ms "
        f"on fires and declines: {verdict}"
    )
    if args.json:
        results["verdict"] = verdict
        write_json(args.json, results)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
