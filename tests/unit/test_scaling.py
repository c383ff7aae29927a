"""`areion_desired_replicas`: a replayed week of traffic with a morning surge, the
in-flight floor, and arrivals shared through the store."""

from __future__ import annotations

import datetime as dt
import math
import random
import zoneinfo
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from areion.config import ScalingConfig, parse_config
from areion.errors import ConfigError
from areion.store import SQLiteStore
from areion.telemetry.forecast import BUCKET_S
from areion.telemetry.scaling import ScalingSignal, ServiceTimes
from tests.support import ManualClock

UTC = zoneinfo.ZoneInfo("UTC")
MONDAY = dt.datetime(2026, 3, 2, tzinfo=UTC)
SEED = 14


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's for small means, the normal approximation above 30)."""
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def rate_at(local: dt.datetime) -> float:
    """Requests per second: quiet nights, a working day, a surge 9:00-9:45 on weekdays."""
    if local.weekday() < 5 and local.hour == 9 and local.minute < 45:
        return 40.0
    if 7 <= local.hour < 19:
        return 4.0
    return 0.5


def trace(first: dt.datetime, minutes: int, rng: random.Random) -> dict[int, int]:
    """Arrivals per minute from `first`."""
    start = int(first.timestamp())
    return {
        start + m * BUCKET_S: poisson(rng, 60 * rate_at(first + dt.timedelta(minutes=m)))
        for m in range(minutes)
    }


def signal_for(store: SQLiteStore, clock: ManualClock, **settings: float) -> ScalingSignal:
    config = ScalingConfig(
        target_concurrency_per_replica=8, horizon_s=900, history_days=7, max_replicas=20,
        **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    return ScalingSignal(config, store, clock=clock)


def gauge(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("areion_desired_replicas")
    assert value is not None
    return value


async def test_a_replayed_week_raises_the_signal_before_the_monday_surge(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    store = SQLiteStore(str(tmp_path / "areion.db"))
    # Last week, as every replica added it to the store (a new replica starts from it).
    await store.add_arrivals(trace(MONDAY, 7 * 1440, rng))
    monday = MONDAY + dt.timedelta(days=7)
    today = trace(monday, 12 * 60, rng)
    clock = ManualClock(monday.timestamp())
    signal = signal_for(store, clock)
    registry = CollectorRegistry()
    signal.register(registry)
    for _ in range(200):  # calls take 0.2 to 1 s: p95 about 0.96 s
        signal.times.add(rng.uniform(0.2, 1.0))
    seen: dict[str, float] = {}
    reactive: dict[str, float] = {}
    for start, count in sorted(today.items()):
        clock.now = start
        minute = dt.datetime.fromtimestamp(start, UTC).strftime("%H:%M")
        seen[minute] = gauge(registry)
        reactive[minute] = signal.desired().forecast.recent_rate
        signal.arrive(count)
        clock.now = start + BUCKET_S - 1
        await signal.sync()
    await store.aclose()

    def during(first: str, last: str) -> Sequence[float]:
        return [value for minute, value in seen.items() if first <= minute <= last]

    surge = 40 * signal.times.p95() / 8  # replicas the surge needs
    assert max(during("07:30", "08:30")) == 1  # a working morning: one replica
    rise = min(minute for minute, value in seen.items() if value > 1)
    assert "08:30" < rise <= "08:45"  # ahead of 9:00 by up to the horizon, no sooner
    assert reactive["08:45"] < 5  # what is arriving at 8:45 is still the morning's
    assert seen["08:45"] >= 3
    assert min(during("09:00", "09:40")) >= math.floor(surge)
    assert max(during("09:50", "11:59")) == 1  # back within minutes of the surge's end


async def test_it_never_reads_0_while_calls_are_in_flight(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "areion.db"))
    clock = ManualClock(MONDAY.replace(hour=3).timestamp())
    signal = signal_for(store, clock, min_replicas=0)
    registry = CollectorRegistry()
    signal.register(registry)
    assert gauge(registry) == 0  # nothing arriving, nothing expected: scale to zero
    signal.in_flight = 1
    assert gauge(registry) == 1
    signal.in_flight = 17  # more than the forecast says: what is in flight needs 3
    assert gauge(registry) == 3
    signal.in_flight = 999
    assert gauge(registry) == 20  # max_replicas
    signal.elsewhere = lambda: 4  # other replicas' calls count too
    signal.in_flight = 5
    assert gauge(registry) == 2
    await store.aclose()


async def test_min_replicas_holds_when_nothing_arrives(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "areion.db"))
    signal = signal_for(store, ManualClock(MONDAY.timestamp()), min_replicas=2)
    assert signal.desired().replicas == 2
    await store.aclose()


async def test_replicas_forecast_from_each_others_arrivals(tmp_path: Path) -> None:
    path = str(tmp_path / "areion.db")
    stores = [SQLiteStore(path), SQLiteStore(path)]
    clock = ManualClock(MONDAY.replace(hour=10).timestamp())
    first, second = (signal_for(store, clock) for store in stores)
    for minute in range(5):
        clock.now = MONDAY.replace(hour=10, minute=minute).timestamp()
        first.arrive(600)
        second.arrive(1200)
        await first.sync()
        await second.sync()
    clock.now = MONDAY.replace(hour=10, minute=5).timestamp()
    await first.sync()
    for signal in (first, second):
        assert signal.desired().forecast.recent_rate == pytest.approx(30.0)  # 1,800 a minute
    # A replica started now (or restarted) knows them from the store.
    third = signal_for(SQLiteStore(path), clock)
    await third.load()
    assert third.desired().forecast.recent_rate == pytest.approx(30.0)
    for store in [*stores, third.store]:
        await store.aclose()


class DownStore(SQLiteStore):
    """A real SQLite store that refuses arrivals while `down`."""

    down = True

    async def add_arrivals(
        self, counts: Mapping[int, int], *, forget_before: int | None = None
    ) -> None:
        if self.down:
            raise OSError("disk I/O error")
        await super().add_arrivals(counts, forget_before=forget_before)


async def test_counts_the_store_refused_are_kept_for_the_next_sync(tmp_path: Path) -> None:
    store = DownStore(str(tmp_path / "areion.db"))
    clock = ManualClock(MONDAY.replace(hour=10).timestamp())
    signal = signal_for(store, clock)
    signal.arrive(300)
    with pytest.raises(OSError):
        await signal.sync()
    clock.advance(BUCKET_S)
    assert signal.desired().forecast.recent_rate == pytest.approx(5.0)  # still counted here
    store.down = False
    await signal.sync()
    assert await store.arrivals(since=0) == {int(MONDAY.replace(hour=10).timestamp()): 300}
    assert signal.desired().forecast.recent_rate == pytest.approx(5.0)  # and not twice
    await store.aclose()


def test_the_p95_service_time_is_of_the_latest_calls() -> None:
    times = ServiceTimes(size=100, default_s=2.5)
    assert times.p95() == 2.5  # before any call finished: the configured guess
    for i in range(1, 101):
        times.add(i / 100)
    assert times.p95() == 0.95
    for _ in range(100):
        times.add(0.1)  # the old ones age out
    assert times.p95() == 0.1


@pytest.mark.parametrize(
    ("scaling", "complaint"),
    [
        ({"timezone": "Mars/Olympus"}, "'Mars/Olympus' is not a known time zone"),
        ({"min_replicas": 5, "max_replicas": 2}, "min_replicas must not exceed max_replicas"),
        ({"target_concurrency_per_replica": 0}, "target_concurrency_per_replica"),
    ],
)
def test_bad_scaling_settings_say_what_is_wrong(scaling: dict[str, object], complaint: str) -> None:
    settings = {"models": [{"name": "fast", "provider": "sim"}], "scaling": scaling}
    with pytest.raises(ConfigError, match=complaint):
        parse_config(settings)
