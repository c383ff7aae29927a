"""The scheduler's choice of when deferred work starts, on an injected clock."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import pytest

from areion.config import WindowConfig
from areion.errors import ConfigError
from areion.jobs.windows import plan

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
OFFPEAK = ("offpeak", WindowConfig(hours="01:00-06:00", timezone="Europe/Berlin"))


def at(text: str) -> float:
    """Unix time of a Berlin wall-clock time."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


def test_a_job_outside_its_offpeak_window_waits_for_it() -> None:
    chosen = plan(at("2026-12-04T12:30"), window=OFFPEAK)
    assert chosen.start == at("2026-12-05T01:00")
    assert "waits for window 'offpeak'" in chosen.reason
    assert chosen.record()["start"] == chosen.start


def test_a_job_inside_its_window_runs_when_due() -> None:
    assert plan(at("2026-12-05T03:10"), window=OFFPEAK).start == at("2026-12-05T03:10")
    # not_before inside tomorrow's window: then.
    later = plan(at("2026-12-04T12:00"), window=OFFPEAK, not_before=at("2026-12-05T02:00"))
    assert later.start == at("2026-12-05T02:00")


def test_a_deadline_before_the_window_runs_the_job_now() -> None:
    chosen = plan(at("2026-12-04T12:30"), window=OFFPEAK, deadline=at("2026-12-04T20:00"))
    assert chosen.start == at("2026-12-04T12:30")
    assert "after the deadline" in chosen.reason


def test_a_window_that_passes_midnight_and_a_timezone_change() -> None:
    night = ("night", WindowConfig(hours="22:00-02:00", timezone="Europe/Berlin"))
    assert plan(at("2026-12-04T23:30"), window=night).start == at("2026-12-04T23:30")
    assert plan(at("2026-12-05T01:59"), window=night).start == at("2026-12-05T01:59")
    assert plan(at("2026-12-05T02:00"), window=night).start == at("2026-12-05T22:00")
    # The night the clocks go forward (2027-03-28): 01:00 Berlin is still 00:00 UTC.
    assert plan(at("2027-03-27T12:00"), window=OFFPEAK).start == at("2027-03-28T01:00")


def carbon(tmp_path: Path, rows: list[tuple[str, float]]) -> str:
    path = tmp_path / "grid_carbon.csv"
    path.write_text("time,g_per_kwh\n" + "".join(f"{t},{g}\n" for t, g in rows))
    return str(path)


def test_a_carbon_schedule_picks_the_lowest_slot_before_the_deadline(tmp_path: Path) -> None:
    schedule = carbon(
        tmp_path,
        [
            ("2026-12-04T12:00+01:00", 420),
            ("2026-12-04T13:00+01:00", 310),
            ("2026-12-04T14:00+01:00", 120),  # the lowest before the deadline
            ("2026-12-04T15:00+01:00", 180),
            ("2026-12-04T16:00+01:00", 120),  # as low, later
            ("2026-12-04T17:00+01:00", 60),  # lower, but after the deadline
        ],
    )
    green = ("green", WindowConfig(carbon_file=schedule, max_g_per_kwh=200))
    chosen = plan(at("2026-12-04T12:20"), window=green, deadline=at("2026-12-04T17:00"))
    assert chosen.start == at("2026-12-04T14:00") and chosen.g_per_kwh == 120
    assert "lowest-intensity slot" in chosen.reason and chosen.record()["considered"] == 5
    # The current slot counts from now, not from its start.
    early = plan(at("2026-12-04T14:30"), window=green, deadline=at("2026-12-04T16:00"))
    assert early.start == at("2026-12-04T14:30")
    # Without a deadline: the next 24 hours, where 17:00 is lowest.
    assert plan(at("2026-12-04T12:20"), window=green).start == at("2026-12-04T17:00")


def test_no_slot_under_the_maximum_takes_the_lowest_and_says_so(tmp_path: Path) -> None:
    schedule = carbon(tmp_path, [("2026-12-04T12:00+01:00", 420), ("2026-12-04T13:00+01:00", 390)])
    green = ("green", WindowConfig(carbon_file=schedule, max_g_per_kwh=200))
    chosen = plan(at("2026-12-04T12:00"), window=green, deadline=at("2026-12-04T15:00"))
    assert chosen.start == at("2026-12-04T13:00") and "no slot before" in chosen.reason
    # A schedule that ends before the job may start: when due.
    stale = plan(at("2026-12-06T12:00"), window=green)
    assert stale.start == at("2026-12-06T12:00") and "has no slot" in stale.reason


def test_bad_windows_and_schedules_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either hours"):
        WindowConfig()
    with pytest.raises(ValueError, match="not a time of day"):
        WindowConfig(hours="01:00-25:00")
    with pytest.raises(ValueError, match="not an IANA timezone"):
        WindowConfig(hours="01:00-06:00", timezone="Mars/Olympus")
    bad = tmp_path / "bad.csv"
    bad.write_text("time,g_per_kwh\nyesterday,12\n")
    with pytest.raises(ConfigError, match="line 2: expected columns time"):
        plan(0.0, window=("g", WindowConfig(carbon_file=str(bad))))
