"""Experiments: what assignment adds per call, the statistics' honesty and power, and
the report's time at a million units.

- assignment: `assign()` for a two- and a five-variant experiment, p50 per call over
  100k units (target <= 5 µs), next to a bare hash of the same key;
- A/A false positives: 1,000 seeded experiments with no true difference, looked at after
  every 50 units up to 4,000 (80 looks), for success rates 0.1, 0.5 and 0.9: the share
  ever called significant (target <= 5%);
- power: a 10-point difference (0.50 against 0.60), found by 2,000 units per arm (target
  >= 80%), and by 1,000;
- the analysis of 1M units (two variants of 500k) from memory, and the whole report
  read from a SQLite store holding 1M units (2M ledger rows, made in bulk SQL).

Usage: python bench/experiments.py [--sims 1000] [--units 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile
from areion.config import ExperimentConfig
from areion.telemetry.experiments import Split
from areion.telemetry.sequential import UnitData, success_path
from areion.telemetry.verdicts import analyse


def _per_call_us(fn: object, units: list[str], rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for unit in units:
            fn(unit)  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - start) / len(units) / 1000.0)
    return percentile(samples, 50)


def bench_assignment(n: int) -> dict[str, float]:
    units = [f"session-{i}" for i in range(n)]
    two = [("control", 90.0), ("v2", 10.0)]
    five = [(f"v{i}", 20.0) for i in range(5)]
    return {
        "bare_hash_us": _per_call_us(
            lambda u: hashlib.blake2b(f"exp\x1f{u}".encode(), digest_size=8).digest(), units
        ),
        "two_variants_us": _per_call_us(Split("exp", two).variant, units),
        "five_variants_us": _per_call_us(Split("exp", five).variant, units),
    }


def _detected(rng: np.random.Generator, n: int, p_control: float, p_variant: float) -> int:
    in_variant = rng.random(n) < 0.5
    successes = (rng.random(n) < np.where(in_variant, p_variant, p_control)).astype(float)
    one = np.ones(n)
    data = UnitData(tasks=one, successes=successes, cost_usd=one, tokens=one, latency_s=one)
    looks = np.arange(50, n + 1, 50)
    _, low, high = success_path(in_variant, data, looks, alpha=0.05)
    hit = np.flatnonzero((low > 0) | (high < 0))
    return int(looks[hit[0]]) if hit.size else 0


def bench_statistics(sims: int) -> dict[str, float]:
    rng = np.random.default_rng(20261204)
    out: dict[str, float] = {}
    for p in (0.1, 0.5, 0.9):
        false = sum(_detected(rng, 4000, p, p) > 0 for _ in range(sims))
        out[f"aa_false_positive_rate_p{p}"] = false / sims
    found = [_detected(rng, 4000, 0.5, 0.6) for _ in range(sims)]
    out["power_by_2000_per_arm"] = sum(f > 0 for f in found) / sims
    out["power_by_1000_per_arm"] = sum(0 < f <= 2000 for f in found) / sims
    firsts = [f for f in found if f]
    out["median_units_to_detect"] = float(np.median(firsts)) if firsts else float("nan")
    return out


def bench_analysis(units: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    config = ExperimentConfig.model_validate(
        {
            "name": "bench",
            "applies_to": {"agent": "support"},
            "variants": [{"name": "control", "weight": 50}, {"name": "v2", "weight": 50}],
        }
    )
    half = units // 2

    def arm(p: float) -> UnitData:
        tasks = rng.integers(1, 4, half).astype(float)
        return UnitData(
            tasks=tasks,
            successes=rng.binomial(tasks.astype(int), p).astype(float),
            cost_usd=tasks * rng.gamma(2.0, 0.01, half),
            tokens=tasks * 900.0,
            latency_s=rng.lognormal(0.0, 0.3, half),
        )

    data = {"control": arm(0.60), "v2": arm(0.61)}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        report = analyse(config, data)
        times.append(time.perf_counter() - start)
    return {"analysis_ms_at_units": min(times) * 1000.0, "units": units, "verdict": report.verdict}  # type: ignore[dict-item]


def bench_store_report(units: int) -> dict[str, float]:
    """The whole report read from a SQLite store holding `units` units (sessions of a
    plain-call experiment, two calls each), made in bulk SQL."""
    import asyncio
    import sqlite3
    import tempfile

    from areion.store import SQLiteStore
    from areion.store.records import ExperimentState
    from areion.telemetry.experiments import Experiments
    from areion.telemetry.verdicts import Judge

    config = ExperimentConfig.model_validate(
        {
            "name": "bench",
            "applies_to": {"model": "fast"},
            "unit": "session",
            "variants": [{"name": "control", "weight": 50}, {"name": "v2", "weight": 50}],
            "metric": "cost",
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/bench.db"

        async def create() -> None:
            store = SQLiteStore(path)
            await store.set_experiment_state(ExperimentState(name="bench"))  # makes the tables
            await store.aclose()

        asyncio.run(create())
        split = Split("bench", [("control", 50.0), ("v2", 50.0)])
        rng = np.random.default_rng(3)
        with sqlite3.connect(path) as db:
            rows = []
            for i in range(units):
                variant = "bench:" + split.variant(f"s:s{i}")
                for call in range(2):
                    cost = float(rng.gamma(2.0, 0.0005))
                    rows.append((f"r{i}-{call}", "acme", "fast", "fast/m", "m", 100, 20, 0,
                                 cost, 0, 0.3, 1e9 + i, variant, f"s{i}"))  # fmt: skip
                if len(rows) >= 200_000:
                    db.executemany(_INSERT, rows)
                    rows = []
            db.executemany(_INSERT, rows)

        async def report() -> tuple[float, str]:
            store = SQLiteStore(path)
            try:
                judge = Judge(store, Experiments([config]))
                start = time.perf_counter()
                found = await judge.report("bench", carry_out=False)
                return time.perf_counter() - start, found.verdict
            finally:
                await store.aclose()

        seconds, verdict = asyncio.run(report())
    return {"store_report_s": seconds, "units": units, "verdict": verdict}  # type: ignore[dict-item]


_INSERT = (
    "INSERT INTO ledger (request_id, tenant, model, deployment, upstream_model, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_usd, estimated, latency_s, created, variant, "
    "session) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=1000)
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--assignments", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--store-units", type=int, default=1_000_000, help="units in the store (0: skip)"
    )
    args = parser.parse_args()
    result = {
        "assignment": bench_assignment(args.assignments),
        "statistics": bench_statistics(args.sims),
        "analysis": bench_analysis(args.units),
    }
    if args.store_units:
        result["store"] = bench_store_report(args.store_units)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    a = result["assignment"]
    print(
        f"assignment p50 per call: 2 variants {a['two_variants_us']:.2f} µs, "
        f"5 variants {a['five_variants_us']:.2f} µs (bare hash {a['bare_hash_us']:.2f} µs; "
        "target <= 5 µs)"
    )
    s = result["statistics"]
    for key, value in s.items():
        print(f"{key}: {value:.3f}")
    an = result["analysis"]
    print(
        f"analysis of {an['units']:,} units: {an['analysis_ms_at_units']:.0f} ms "
        f"(verdict: {an['verdict']})"
    )
    if "store" in result:
        st = result["store"]
        print(
            f"report read from SQLite at {st['units']:,} units ({2 * st['units']:,} ledger "
            f"rows): {st['store_report_s']:.2f} s (verdict: {st['verdict']})"
        )


if __name__ == "__main__":
    main()
