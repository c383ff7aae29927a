"""The arrival-rate forecast behind `areion_desired_replicas`.

Arrivals are counted per minute (every replica's, summed in the store). The forecast
for the next `horizon_s` is the peak, over that window, of

    profile(t) x level

- `profile(t)`: the arrival rate at the same wall-clock time on earlier days (in the
  configured time zone), averaged over the days like this one: the same weekday when
  the history holds one (a Monday-9:00 surge is learned from Mondays), else the same
  kind of day (Monday to Friday, or the weekend), else any day. Each day's rate is
  read over `smooth_s` around that time, so one noisy minute does not make a peak.
  Days with no arrivals at all are not averaged in: the service was not running then.
- `level`, the trend: how the last `level_window_s` ran against the profile of the same
  window (more traffic than on the days before: higher), shrunk toward 1 when few
  calls make it up, and kept within [1/2, 4] (a lull halves the forecast at most).

It is never below the rate of the last `recent_window_s` (the last complete minute:
what is arriving now, for a surge no earlier day had; a longer window reacts later and
lingers after, `bench/scaling.py`). With no history, that recent rate is the forecast.
Pure computation on a clock the caller passes: no I/O, no wall clock of its own.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BUCKET_S", "ArrivalForecaster", "Forecast", "bucket_of"]

BUCKET_S = 60
"""Arrivals are counted per minute."""

_DAY_S = 86_400
# Arrivals both sides of the level ratio start from, so a quiet half hour (3 calls
# where 1 was usual) does not triple the forecast.
_LEVEL_PRIOR = 20.0
_LEVEL_RANGE = (0.5, 4.0)


def bucket_of(t: float) -> int:
    """The start (Unix time) of the minute `t` falls in."""
    return int(t // BUCKET_S) * BUCKET_S


@dataclass(slots=True, kw_only=True)
class Forecast:
    """What the forecast expects over its horizon, and what it is made of."""

    rate: float
    """The peak arrival rate expected over the horizon (requests per second)."""
    profile_rate: float | None
    """The profile's peak over the horizon, before the level (None: no history)."""
    level: float
    """How the recent past ran against the profile (1: as on the days before)."""
    recent_rate: float
    """The arrival rate of the last `recent_window_s`."""
    days: int
    """Earlier days the profile was averaged over (0: no history)."""


class ArrivalForecaster:
    """Arrivals per minute over the last days, and the forecast made from them."""

    def __init__(
        self,
        *,
        history_days: int = 14,
        timezone: str = "UTC",
        level_window_s: float = 1800.0,
        recent_window_s: float = 60.0,
        smooth_s: float = 300.0,
    ) -> None:
        self.history_days = history_days
        """Earlier days the profile looks at."""
        # UTC needs no time zone database (a slim container may have none).
        self.zone: dt.tzinfo = dt.UTC if timezone == "UTC" else zoneinfo.ZoneInfo(timezone)
        """Whose wall clock the daily and weekly pattern follows."""
        self.level_window_s = level_window_s
        self.recent_window_s = recent_window_s
        self.smooth_s = smooth_s
        self._counts: dict[int, int] = {}
        # Buckets with arrivals per local day (its ordinal): the days the service ran.
        self._days: dict[int, int] = {}

    @property
    def counts(self) -> Mapping[int, int]:
        """Arrivals per minute (the minute's start -> count), as far as known here."""
        return self._counts

    def _day(self, start: int) -> int:
        return dt.datetime.fromtimestamp(start, self.zone).toordinal()

    def _set(self, start: int, count: int) -> None:
        before = self._counts.get(start, 0)
        if count == before:
            return
        if count > 0:
            self._counts[start] = count
        else:
            del self._counts[start]
        if (before > 0) != (count > 0):
            day = self._day(start)
            self._days[day] = self._days.get(day, 0) + (1 if count > 0 else -1)
            if not self._days[day]:
                del self._days[day]

    def add(self, start: int, count: int = 1) -> None:
        """Count `count` more arrivals in the minute starting at `start`."""
        self._set(start, self._counts.get(start, 0) + count)

    def replace(self, counts: Mapping[int, int], *, since: int) -> None:
        """Take `counts` as the whole truth for the minutes from `since` on (a fresh
        read of the store, which every replica adds to)."""
        for start in [s for s in self._counts if s >= since and s not in counts]:
            self._set(start, 0)
        for start, count in counts.items():
            if start >= since:
                self._set(start, count)

    def forget(self, before: int) -> None:
        """Drop the minutes before `before`."""
        for start in [s for s in self._counts if s < before]:
            self._set(start, 0)

    def _sum(self, first: float, last: float, extra: Mapping[int, int]) -> int:
        """Arrivals in the minutes starting within [first, last)."""
        start = bucket_of(first)
        if start < first:
            start += BUCKET_S
        total = 0
        counts = self._counts
        while start < last:
            total += counts.get(start, 0) + extra.get(start, 0)
            start += BUCKET_S
        return total

    def _earlier_days(self, local: dt.datetime) -> list[int]:
        """How many days back the profile for `local`'s day is read from."""
        today = local.toordinal()
        seen = [d for d in range(1, self.history_days + 1) if today - d in self._days]
        weekday = local.weekday()
        same = [d for d in seen if d % 7 == 0]
        if same:
            return same
        weekend = weekday >= 5
        kind = [d for d in seen if ((weekday - d) % 7 >= 5) == weekend]
        return kind or seen

    def profile(self, t: float, *, over_s: float | None = None) -> tuple[float, int] | None:
        """The rate at `t`'s wall-clock time on the earlier days like `t`'s (read over
        `over_s` around it, `smooth_s` by default), and how many days that is; None with
        no such day."""
        local = dt.datetime.fromtimestamp(t, self.zone)
        days = self._earlier_days(local)
        if not days:
            return None
        window = self.smooth_s if over_s is None else over_s
        half = window / 2
        total = 0
        for d in days:
            # Wall-clock arithmetic: the same local time d days ago, across DST changes.
            then = (local - dt.timedelta(days=d)).timestamp()
            total += self._sum(then - half, then + half, {})
        return total / (window * len(days)), len(days)

    def forecast(
        self, now: float, horizon_s: float, *, extra: Mapping[int, int] | None = None
    ) -> Forecast:
        """The peak arrival rate expected within [now, now + horizon_s].

        `extra`: arrivals not in the history yet (this replica's, not yet in the store).
        Only complete minutes are read for what is happening now: the current minute is
        still being counted, here and on the other replicas."""
        extra = extra or {}
        current = bucket_of(now)
        recent = self._sum(current - self.recent_window_s, current, extra)
        recent_rate = recent / self.recent_window_s
        steps = [now + i * BUCKET_S for i in range(int(horizon_s // BUCKET_S) + 1)]
        if steps[-1] < now + horizon_s:
            steps.append(now + horizon_s)
        peak: float | None = None
        days = 0
        for t in steps:
            found = self.profile(t)
            if found is not None:
                rate, days = found
                peak = rate if peak is None else max(peak, rate)
        if peak is None:
            return Forecast(rate=recent_rate, profile_rate=None, level=1.0,
                            recent_rate=recent_rate, days=0)  # fmt: skip
        level = self._level(current, extra)
        return Forecast(
            rate=max(peak * level, recent_rate),
            profile_rate=peak,
            level=level,
            recent_rate=recent_rate,
            days=days,
        )

    def _level(self, current: int, extra: Mapping[int, int]) -> float:
        """Observed over expected arrivals in the complete minutes of the level window."""
        first = current - self.level_window_s
        observed = self._sum(first, current, extra)
        expected = 0.0
        start = bucket_of(first)
        start += BUCKET_S if start < first else 0
        while start < current:
            # Minute by minute, unsmoothed: smoothing would spread a surge that is due
            # into the minutes before it, and read today's calm there as a lull.
            found = self.profile(start + BUCKET_S / 2, over_s=BUCKET_S)
            expected += found[0] * BUCKET_S if found is not None else 0.0
            start += BUCKET_S
        low, high = _LEVEL_RANGE
        return min(high, max(low, (observed + _LEVEL_PRIOR) / (expected + _LEVEL_PRIOR)))
