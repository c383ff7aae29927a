"""The scaling signal on a replayed multi-day trace: forecast against reactive.

A synthetic trace, Poisson arrivals per minute from a seeded generator: quiet nights
(0.5 req/s), working days (4 req/s), a surge every weekday at 9:00 for 45 minutes
(40 req/s, 60 on Mondays), calmer weekends, traffic growing `--growth` a day, and
one surge no earlier day had (a Wednesday 15:00, 30 req/s for 20 minutes). The first
`--history-days` days go into a real SQLite store as replicas would have added them;
the next `--days` are replayed minute by minute through `ScalingSignal` on a manual
clock (count the minute's arrivals, sync with the store, read the gauge from the
registry), side by side with two reactive signals: the same formula on the rate of the
last 5 complete minutes, and of the last one (what a current-rate autoscaler sees).

A replica is ready `--startup-min` minutes after the signal asks for it (scaling down
is immediate for both). Needed: ceil(the minute's actual rate x p95 / target). Printed
for each signal: how many minutes before each surge it asks for the surge's replicas
(median and worst over the surges), the replica-minutes and minutes under-provisioned,
the replica-minutes over-provisioned, and the replica-minutes run. Also what the signal
costs: the stage per call, and computing the gauge (a scrape) with the full history.

    .venv/bin/python bench/scaling.py            # about 1 minute
    .venv/bin/python bench/scaling.py --quick    # about 20 s
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import random
import statistics
import time
import zoneinfo
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from _common import describe_environment, environment, fmt, percentile, run_main, table, write_json
from areion.config import ScalingConfig
from areion.pipeline import Call, Result, compose
from areion.store import SQLiteStore
from areion.telemetry.forecast import BUCKET_S
from areion.telemetry.scaling import ScalingSignal
from areion.types import ChatRequest, ChatResponse, Choice, Message

UTC = zoneinfo.ZoneInfo("UTC")
FIRST_DAY = dt.datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
SURGE = (9, 0, 45)  # hour, minute, length in minutes
ONE_OFF = (2, 15, 20, 30.0)  # day of the replay (0 = its first), hour, minutes, req/s


def base_rate(local: dt.datetime) -> float:
    """Requests per second of an ordinary day at `local`."""
    weekday = local.weekday() < 5
    hour, minute, length = SURGE
    start = hour * 60 + minute
    now = local.hour * 60 + local.minute
    if weekday and start <= now < start + length:
        return 60.0 if local.weekday() == 0 else 40.0
    if 7 <= local.hour < 19:
        return 4.0 if weekday else 2.0
    return 0.5


def poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def trace(args: Any, rng: random.Random) -> list[tuple[int, float, int]]:
    """(minute start, expected req/s, arrivals) for every minute of the whole trace."""
    out = []
    replay_start = args.history_days
    day, hour, length, rate = ONE_OFF
    for m in range((args.history_days + args.days) * 1440):
        local = FIRST_DAY + dt.timedelta(minutes=m)
        expected = base_rate(local) * (1 + args.growth) ** (m // 1440)
        if m // 1440 == replay_start + day and hour * 60 <= m % 1440 < hour * 60 + length:
            expected = max(expected, rate)
        out.append((int(local.timestamp()), expected, poisson(rng, expected * 60)))
    return out


def needed(rate: float, p95: float, target: float, floor: int) -> int:
    return max(floor, math.ceil(rate * p95 / target - 1e-9))


async def replay(args: Any, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    minutes = trace(args, rng)
    store = SQLiteStore(str(workdir / "areion.db"))
    history = minutes[: args.history_days * 1440]
    await store.add_arrivals({start: count for start, _, count in history if count})
    config = ScalingConfig(
        target_concurrency_per_replica=args.target, horizon_s=args.horizon_min * 60,
        history_days=args.history_days, min_replicas=1, max_replicas=1000,
    )  # fmt: skip
    clock_now = [float(minutes[len(history)][0])]
    signal = ScalingSignal(config, store, clock=lambda: clock_now[0])
    registry = CollectorRegistry()
    signal.register(registry)
    for _ in range(1024):
        signal.times.add(rng.uniform(0.2, 1.0))
    p95 = signal.times.p95()
    forecast: list[int] = []
    reactive: list[int] = []
    reactive_1m: list[int] = []
    last = [count for _, _, count in history[-5:]]
    scrape_s: list[float] = []
    for start, _, count in minutes[len(history) :]:
        clock_now[0] = start
        began = time.perf_counter()
        value = registry.get_sample_value("areion_desired_replicas")
        scrape_s.append(time.perf_counter() - began)
        assert value is not None
        forecast.append(int(value))
        reactive.append(needed(sum(last) / 300, p95, args.target, config.min_replicas))
        reactive_1m.append(needed(last[-1] / 60, p95, args.target, config.min_replicas))
        last = [*last[1:], count]
        signal.arrive(count)
        clock_now[0] = start + BUCKET_S - 1
        await signal.sync()
    await store.aclose()
    replayed = minutes[len(history) :]
    need = [needed(count / 60, p95, args.target, config.min_replicas) for _, _, count in replayed]
    surges = [
        i
        for i, (start, _, _) in enumerate(replayed)
        if (local := dt.datetime.fromtimestamp(start, UTC)).weekday() < 5
        and (local.hour, local.minute) == SURGE[:2]
    ]
    day, hour, length, _ = ONE_OFF
    first = day * 1440 + hour * 60
    one_off = range(first, first + length + args.startup_min)
    results = {}
    signals = (("forecast", forecast), ("reactive", reactive), ("reactive_1m", reactive_1m))
    for name, signal_values in signals:
        results[name] = judge(signal_values, need, replayed, surges, args, p95, one_off)
    results["scrape_us_p50"] = percentile(scrape_s, 50) * 1e6
    results["p95_s"] = p95
    results["surges"] = len(surges)
    return results


def judge(
    values: list[int],
    need: list[int],
    replayed: list[tuple[int, float, int]],
    surges: list[int],
    args: Any,
    p95: float,
    one_off: range,
) -> dict[str, Any]:
    """Provisioning of one signal against what each minute needed."""
    delay = args.startup_min
    ready = [min(v, values[max(0, i - delay)]) for i, v in enumerate(values)]
    under = [max(0, n - r) for n, r in zip(need, ready, strict=True)]
    over = [max(0, r - n) for n, r in zip(need, ready, strict=True)]
    leads = []
    for i in surges:
        surge_need = needed(replayed[i][1], p95, args.target, 1)
        window = range(max(0, i - 120), min(len(values), i + SURGE[2]))
        asked = next((m for m in window if values[m] >= surge_need), None)
        leads.append(i - asked if asked is not None else -SURGE[2])
    return {
        "lead_min_median": statistics.median(leads) if leads else math.nan,
        "lead_min_worst": min(leads) if leads else math.nan,
        "under_replica_min": sum(under),
        "under_minutes": sum(1 for u in under if u),
        "under_one_off_replica_min": sum(under[m] for m in one_off if m < len(under)),
        "over_replica_min": sum(over),
        "replica_min": sum(ready),
    }


async def stage_cost(args: Any, workdir: Path) -> dict[str, float]:
    """The stage's cost per call: a terminal that answers at once, with and without it."""
    store = SQLiteStore(str(workdir / "stage.db"))
    signal = ScalingSignal(ScalingConfig(), store)
    response = ChatResponse(id="x", model="m", created=0,
                            choices=[Choice(index=0, message=Message(role="assistant",
                                                                     content="ok"))])  # fmt: skip

    async def terminal(call: Call) -> Result:
        return response

    handlers = {"off": terminal, "stage": compose([signal], terminal)}
    request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
    timings: dict[str, list[float]] = {name: [] for name in handlers}
    for _ in range(args.stage_rounds):
        for name, handler in handlers.items():
            for _ in range(2000):
                call = Call(request=request, tenant="t", request_id="r", started=0.0)
                began = time.perf_counter()
                await handler(call)
                timings[name].append(time.perf_counter() - began)
    await store.aclose()
    return {name: percentile(values, 50) * 1e6 for name, values in timings.items()}


async def run(args: Any, workdir: Path) -> int:
    print(describe_environment(environment()))
    print(
        f"trace: {args.history_days} days of history, {args.days} replayed; seed {args.seed}; "
        f"horizon {args.horizon_min} min; replicas ready {args.startup_min} min after asked; "
        f"target {args.target} calls in flight per replica"
    )
    results = await replay(args, workdir)
    print(f"p95 service time {results['p95_s']:.2f} s; {results['surges']} weekday surges\n")
    rows = []
    names = {"forecast": "forecast", "reactive": "reactive (last 5 min)",
             "reactive_1m": "reactive (last minute)"}  # fmt: skip
    for key, name in names.items():
        r = results[key]
        rows.append([name, fmt(r["lead_min_median"], 0), fmt(r["lead_min_worst"], 0),
                     r["under_replica_min"], r["under_minutes"], r["under_one_off_replica_min"],
                     r["over_replica_min"], r["replica_min"]])  # fmt: skip
    print(table(["signal", "asks ahead (min, median)", "worst", "under (replica-min)",
                 "under (min)", "of which one-off", "over (replica-min)", "run (replica-min)"],
                rows))  # fmt: skip
    f = results["forecast"]
    print()
    for key in ("reactive", "reactive_1m"):
        r = results[key]
        print(
            f"forecast / {names[key]}: under-provisioning "
            f"{f['under_replica_min'] / max(1, r['under_replica_min']):.2f} (replica-min), "
            f"{f['under_minutes'] / max(1, r['under_minutes']):.2f} (minutes); "
            f"over-provisioning {f['over_replica_min'] / max(1, r['over_replica_min']):.2f}; "
            f"replica-minutes run {f['replica_min'] / max(1, r['replica_min']):.3f}"
        )
    cost = await stage_cost(args, workdir)
    print(
        f"\ncost: the stage adds {cost['stage'] - cost['off']:.2f} µs per call at p50 "
        f"({cost['stage']:.2f} with, {cost['off']:.2f} without); a scrape computes the gauge "
        f"in {results['scrape_us_p50']:.0f} µs at p50 with {args.history_days} days of history"
    )
    if args.json:
        write_json(args.json, {"replay": results, "stage_us_p50": cost})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history-days", type=int, default=14)
    parser.add_argument("--days", type=int, default=7, help="days replayed after the history")
    parser.add_argument("--horizon-min", type=int, default=15)
    parser.add_argument("--startup-min", type=int, default=5)
    parser.add_argument("--target", type=float, default=8.0)
    parser.add_argument("--growth", type=float, default=0.01, help="traffic growth per day")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--stage-rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.quick:
        args.history_days, args.days, args.stage_rounds = 7, 3, 3
    return run_main(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
