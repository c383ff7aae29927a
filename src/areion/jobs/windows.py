"""When deferred work starts: the scheduler weighs a job's window against its deadline.

A job is due from `not_before` on. Its window narrows that down:

- off-peak (`hours: "01:00-06:00"`, `timezone`): the first moment inside the hours at or
  after the job's earliest start (at once, if that is inside them);
- green (`carbon_file`, `max_g_per_kwh`): a forecast of grid carbon intensity, one row
  per slot (`time,g_per_kwh`; a slot lasts until the next row, the last one as long as
  the one before it); of the slots between the earliest start and the deadline (or the
  next 24 hours), the lowest-intensity one at or under `max_g_per_kwh` (the lowest of
  all when none is), the earliest of equals.

A window that would open only after the deadline is not waited for: the job runs at
once. The plan says why in the job's record (`schedule`). Times are Unix seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from areion.config import JobsConfig, WindowConfig
from areion.errors import ConfigError, RequestError

__all__ = ["Plan", "carbon_slots", "offpeak_start", "plan", "window_of"]

_HORIZON_S = 24 * 3600.0  # how far a green window looks without a deadline


@dataclass(slots=True, kw_only=True)
class Plan:
    """The scheduler's choice for one job."""

    start: float
    """Unix time the job becomes due."""
    reason: str
    """Why then, in words."""
    window: str | None = None
    """The window it was planned in (None: none)."""
    g_per_kwh: float | None = None
    """The chosen slot's forecast intensity (green windows)."""
    considered: list[dict[str, float]] = field(default_factory=list)
    """The slots it weighed (green windows): start and intensity."""

    def record(self) -> dict[str, Any]:
        """The plan as the job's `schedule`."""
        out: dict[str, Any] = {"window": self.window, "start": self.start, "reason": self.reason}
        if self.g_per_kwh is not None:
            out["g_per_kwh"] = self.g_per_kwh
            out["considered"] = len(self.considered)
        return out


def _iso(when: float, zone: dt.tzinfo = dt.UTC) -> str:
    return dt.datetime.fromtimestamp(when, zone).isoformat(timespec="minutes")


def _minutes(text: str) -> int:
    hour, minute = text.split(":")
    return int(hour) * 60 + int(minute)


def offpeak_start(earliest: float, hours: str, timezone: str) -> float:
    """The first moment at or after `earliest` inside `hours` (which may pass midnight)
    in `timezone`."""
    zone = zoneinfo.ZoneInfo(timezone)
    first, last = (_minutes(part) for part in hours.split("-"))
    local = dt.datetime.fromtimestamp(earliest, zone)
    now = local.hour * 60 + local.minute
    inside = first <= now < last if first < last else (now >= first or now < last)
    if inside:
        return earliest
    day = local.date() if now < first else local.date() + dt.timedelta(days=1)
    opening = dt.datetime.combine(day, dt.time(first // 60, first % 60), zone)
    return opening.timestamp()


def carbon_slots(path: str) -> list[tuple[float, float]]:
    """A carbon schedule's slots, (start, g/kWh) in time order."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except OSError as error:
        raise ConfigError(f"carbon_file {path}: {error.strerror or error}") from None
    slots: list[tuple[float, float]] = []
    for number, row in enumerate(rows, start=2):
        try:
            when = dt.datetime.fromisoformat(row["time"])
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            slots.append((when.timestamp(), float(row["g_per_kwh"])))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"carbon_file {path}, line {number}: expected columns time (ISO 8601) and "
                "g_per_kwh (a number)"
            ) from None
    return sorted(slots)


def _green(earliest: float, deadline: float | None, window: WindowConfig, name: str) -> Plan:
    assert window.carbon_file is not None
    slots = carbon_slots(window.carbon_file)
    until = deadline if deadline is not None else earliest + _HORIZON_S
    candidates: list[tuple[float, float]] = []
    for i, (start, grams) in enumerate(slots):
        if i + 1 < len(slots):
            end = slots[i + 1][0]
        else:  # the last slot lasts as long as the one before it (an hour if alone)
            end = start + (start - slots[i - 1][0] if i else 3600.0)
        begin = max(start, earliest)
        if begin < end and begin < until:
            candidates.append((begin, grams))
    if not candidates:
        return Plan(
            start=earliest,
            window=name,
            reason=f"window '{name}': the carbon schedule has no slot before "
            f"{_iso(until)}: runs when due",
        )
    limit = window.max_g_per_kwh
    under = [c for c in candidates if limit is None or c[1] <= limit]
    pool = under or candidates
    start, grams = min(pool, key=lambda c: (c[1], c[0]))
    if under:
        reason = (
            f"window '{name}': the lowest-intensity slot before {_iso(until)} "
            f"({grams:g} g/kWh, of {len(candidates)})"
        )
    else:
        reason = (
            f"window '{name}': no slot before {_iso(until)} is under {limit:g} g/kWh; "
            f"the lowest ({grams:g} g/kWh, of {len(candidates)})"
        )
    return Plan(
        start=start,
        window=name,
        reason=reason,
        g_per_kwh=grams,
        considered=[{"start": s, "g_per_kwh": g} for s, g in candidates],
    )


def plan(
    now: float,
    *,
    window: tuple[str, WindowConfig] | None,
    not_before: float | None = None,
    deadline: float | None = None,
) -> Plan:
    """When a job created at `now` starts: `not_before` (if later), moved into its
    `window`, unless the window would open only after `deadline`."""
    earliest = max(now, not_before or now)
    if window is None:
        return Plan(start=earliest, reason="no window: runs when due")
    name, config = window
    if config.carbon_file is not None:
        return _green(earliest, deadline, config, name)
    assert config.hours is not None
    opening = offpeak_start(earliest, config.hours, config.timezone)
    zone = zoneinfo.ZoneInfo(config.timezone)
    if deadline is not None and opening > deadline:
        return Plan(
            start=earliest,
            window=name,
            reason=f"window '{name}' opens at {_iso(opening, zone)}, after the deadline "
            f"{_iso(deadline, zone)}: runs when due",
        )
    if opening == earliest:
        return Plan(start=earliest, window=name, reason=f"window '{name}' ({config.hours} "
                    f"{config.timezone}) is open: runs when due")  # fmt: skip
    return Plan(
        start=opening,
        window=name,
        reason=f"waits for window '{name}' ({config.hours} {config.timezone}): "
        f"starts {_iso(opening, zone)}",
    )


def window_of(jobs: JobsConfig, name: str | None) -> tuple[str, WindowConfig] | None:
    """The window a job asks for by name (`jobs.default_window` for None; `"none"`: no
    window); a `RequestError` naming the windows there are for an unknown name."""
    name = name or jobs.default_window
    if name is None or name == "none":
        return None
    window = jobs.windows.get(name)
    if window is None:
        names = ", ".join(["none", *sorted(jobs.windows)])
        shown = name if len(name) <= 100 else name[:100] + "..."
        raise RequestError(f"no window '{shown}'; jobs.windows has: {names}", param="window")
    return name, window
