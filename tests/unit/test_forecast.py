"""The arrival forecast: a time-of-day and weekday profile from earlier days, a level."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable

import pytest

from areion.telemetry.forecast import BUCKET_S, ArrivalForecaster, bucket_of

UTC = zoneinfo.ZoneInfo("UTC")
MONDAY = dt.datetime(2026, 3, 2, tzinfo=UTC)  # a Monday


def at(day: dt.datetime, hour: int, minute: int = 0, *, days: int = 0) -> float:
    """Unix time of `hour:minute` on `day` + `days` (wall clock of `day`'s zone)."""
    return (day + dt.timedelta(days=days)).replace(hour=hour, minute=minute).timestamp()


def fill(
    forecaster: ArrivalForecaster,
    first: dt.datetime,
    days: int,
    per_minute: Callable[[dt.datetime], int],
    *,
    until: float | None = None,
) -> None:
    """Arrivals per minute from `first` for `days` days (stopping at `until`), by
    `per_minute(local time)`."""
    start = first.timestamp()
    end = start + days * 86_400 if until is None else until
    t = start
    while t < end:
        count = per_minute(dt.datetime.fromtimestamp(t, forecaster.zone))
        if count:
            forecaster.add(bucket_of(t), count)
        t += BUCKET_S


def office(local: dt.datetime) -> int:
    """60 a minute all day, 1,200 from 9:00 to 9:30 on weekdays."""
    if local.weekday() < 5 and local.hour == 9 and local.minute < 30:
        return 1200
    return 60


def test_a_weekday_surge_is_forecast_ahead_within_the_horizon() -> None:
    f = ArrivalForecaster(history_days=14)
    # Two weeks, then Monday until 8:45.
    fill(f, MONDAY, 14, office)
    fill(f, MONDAY + dt.timedelta(days=14), 1, office, until=at(MONDAY, 8, 45, days=14))
    early = f.forecast(at(MONDAY, 8, 30, days=14), 900)
    ahead = f.forecast(at(MONDAY, 8, 45, days=14), 900)
    assert early.rate == pytest.approx(1.0, rel=0.05)  # 60 a minute: nothing seen ahead
    assert ahead.recent_rate == pytest.approx(1.0)  # the surge has not started...
    assert ahead.rate > 10  # ...but the forecast sees it coming
    assert ahead.days == 2  # the two Mondays before
    assert ahead.level == pytest.approx(1.0, abs=0.01)


def test_a_monday_only_surge_is_learned_from_mondays() -> None:
    def mondays(local: dt.datetime) -> int:
        return 1200 if local.weekday() == 0 and local.hour == 9 else 60

    f = ArrivalForecaster(history_days=14)
    fill(f, MONDAY, 15, mondays, until=at(MONDAY, 8, 50, days=14))
    monday = f.forecast(at(MONDAY, 8, 50, days=14), 900)
    g = ArrivalForecaster(history_days=14)
    fill(g, MONDAY, 16, mondays, until=at(MONDAY, 8, 50, days=15))
    tuesday = g.forecast(at(MONDAY, 8, 50, days=15), 900)
    assert monday.rate > 10
    assert tuesday.rate == pytest.approx(1.0, rel=0.05)


def test_without_that_weekday_in_the_history_the_same_kind_of_day_is_used() -> None:
    # Monday to Saturday, then Sunday morning: no Sunday before; Saturday is a weekend day.
    f = ArrivalForecaster(history_days=14)
    fill(f, MONDAY, 7, office, until=at(MONDAY, 8, 50, days=6))
    sunday = f.forecast(at(MONDAY, 8, 50, days=6), 900)
    assert sunday.days == 1  # Saturday, not the five weekdays and their surge
    assert sunday.rate == pytest.approx(1.0, rel=0.05)
    # Tuesday to Sunday, then Monday morning: no Monday before; Tuesday to Friday are.
    g = ArrivalForecaster(history_days=14)
    fill(g, MONDAY + dt.timedelta(days=1), 7, office, until=at(MONDAY, 8, 50, days=7))
    monday = g.forecast(at(MONDAY, 8, 50, days=7), 900)
    assert monday.days == 4
    assert monday.rate > 10


def test_days_the_service_did_not_run_do_not_dilute_the_profile() -> None:
    f = ArrivalForecaster(history_days=14)
    fill(f, MONDAY, 1, office)  # Monday, then nothing until the Monday after
    fill(f, MONDAY + dt.timedelta(days=7), 1, office, until=at(MONDAY, 8, 50, days=7))
    found = f.forecast(at(MONDAY, 8, 50, days=7), 900)
    assert found.days == 1
    # The surge as it was (smoothed over 5 minutes), not a seventh of it.
    assert found.profile_rate == pytest.approx(20.0, rel=0.01)


def test_the_level_follows_traffic_that_outgrows_the_history() -> None:
    f = ArrivalForecaster(history_days=7)
    fill(f, MONDAY, 7, office)
    # This Monday has twice last Monday's traffic so far.
    fill(f, MONDAY + dt.timedelta(days=7), 1, lambda local: 2 * office(local),
         until=at(MONDAY, 8, 45, days=7))  # fmt: skip
    found = f.forecast(at(MONDAY, 8, 45, days=7), 900)
    assert found.level == pytest.approx(2.0, rel=0.05)
    assert found.rate == pytest.approx(2 * found.profile_rate, rel=0.01)


def test_a_few_stray_calls_do_not_move_the_level() -> None:
    f = ArrivalForecaster(history_days=7)
    fill(f, MONDAY, 7, lambda local: 1 if local.minute % 10 == 0 else 0)  # one every 10 min
    fill(f, MONDAY + dt.timedelta(days=7), 1, lambda local: 1 if local.minute % 5 == 0 else 0,
         until=at(MONDAY, 12, days=7))  # fmt: skip
    assert f.forecast(at(MONDAY, 12, days=7), 900).level < 1.2  # 6 calls where 3 were usual


def test_with_no_history_the_recent_rate_is_the_forecast() -> None:
    f = ArrivalForecaster()
    now = at(MONDAY, 10)
    f.add(bucket_of(now - 2 * BUCKET_S), 600)
    f.add(bucket_of(now - BUCKET_S), 30)
    f.add(bucket_of(now), 1000)  # the minute in progress is not read yet
    found = f.forecast(now + 1, 900)
    assert found.days == 0 and found.profile_rate is None
    assert found.rate == pytest.approx(0.5)  # the last complete minute: 30 calls


def test_a_surge_no_earlier_day_had_is_followed_as_it_happens() -> None:
    f = ArrivalForecaster(history_days=7)
    fill(f, MONDAY, 7, lambda local: 60)
    fill(f, MONDAY + dt.timedelta(days=7), 1, lambda local: 600 if local.hour == 14 else 60,
         until=at(MONDAY, 14, 10, days=7))  # fmt: skip
    assert f.forecast(at(MONDAY, 14, 10, days=7), 900).rate == pytest.approx(10.0)


def test_the_profile_follows_the_local_wall_clock_across_a_dst_change() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    before = dt.datetime(2026, 3, 16, tzinfo=paris)  # a Monday; clocks go forward on the 29th
    f = ArrivalForecaster(history_days=14, timezone="Europe/Paris")
    monday = before + dt.timedelta(days=14)  # 30 March, UTC+2 now
    fill(f, before, 15, office, until=at(monday, 7, 50))
    assert f.forecast(at(monday, 7, 50), 900).rate == pytest.approx(1.0, rel=0.05)
    fill(f, monday, 1, office, until=at(monday, 8, 50))
    assert f.forecast(at(monday, 8, 50), 900).rate > 10  # 9:00 in Paris


def test_replacing_a_range_takes_the_store_as_the_truth_and_old_minutes_go() -> None:
    f = ArrivalForecaster()
    f.add(0, 2)
    f.add(60, 3)
    f.add(120, 4)
    f.replace({60: 10, 180: 1}, since=60)
    assert dict(f.counts) == {0: 2, 60: 10, 180: 1}
    f.forget(120)
    assert dict(f.counts) == {180: 1}
