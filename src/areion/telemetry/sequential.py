"""Statistics of an experiment that stay honest when someone looks every day.

Each variant's figures are ratios over its units (a unit being a session, user, run or
request: whoever always gets the same variant): success rate = successes / tasks, cost
per task = cost / tasks, cost per successful task = cost / successes. A ratio's variance
is taken over the units by the delta method, so a session with ten tasks counts as one
randomized unit, not ten independent ones.

A variant's own intervals are the usual 95% ones, for reading. Comparisons with control
are anytime-valid: a normal-mixture confidence sequence (the mixture SPRT of Johari et
al., "Always valid inference", 2017) holds at every look at once, so checking the
results after every 50 units does not inflate the false-positive rate the way repeated
t-tests do. Success rates are compared as differences, costs and latencies as ratios
(on the log scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Comparison",
    "Interval",
    "UnitData",
    "compare_ratio",
    "compare_success",
    "mixture_radius",
    "quantile_interval",
    "ratio_interval",
    "success_path",
]

_Z95 = 1.959963984540054

Floats = NDArray[np.float64]


@dataclass(slots=True, kw_only=True, frozen=True)
class Interval:
    """An estimate and its interval."""

    estimate: float
    """The point estimate (NaN when there is nothing to estimate from)."""
    low: float
    """The interval's lower end."""
    high: float
    """The interval's upper end."""

    def as_dict(self) -> dict[str, float | None]:
        return {
            "estimate": _finite(self.estimate),
            "low": _finite(self.low),
            "high": _finite(self.high),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


_NONE = Interval(estimate=math.nan, low=math.nan, high=math.nan)


@dataclass(slots=True, kw_only=True)
class UnitData:
    """One variant's units, one entry per unit (numpy arrays of equal length)."""

    tasks: Floats
    """Tasks the unit ran (finished agent runs, or calls for plain-call experiments)."""
    successes: Floats
    """Of which succeeded."""
    cost_usd: Floats
    """What the unit's tasks cost, model calls and tools."""
    tokens: Floats
    """Tokens of the unit's tasks."""
    latency_s: Floats
    """The unit's mean task latency."""
    judged: Floats | None = None
    """Of its tasks, those whose success is known (an outcome was posted, or a run
    ended); None: all of them."""

    @classmethod
    def empty(cls) -> UnitData:
        zero = np.zeros(0)
        return cls(tasks=zero, successes=zero, cost_usd=zero, tokens=zero, latency_s=zero)

    @property
    def judged_tasks(self) -> Floats:
        return self.tasks if self.judged is None else self.judged

    @property
    def units(self) -> int:
        return int(self.tasks.shape[0])


@dataclass(slots=True, kw_only=True, frozen=True)
class Comparison:
    """A variant against control on one figure, valid at every look."""

    metric: str
    """What was compared: `success` (a difference), `cost` or `latency` (a ratio)."""
    kind: Literal["difference", "ratio"]
    """How: success rates by difference, costs and latencies by ratio to control."""
    interval: Interval
    """The confidence sequence's current interval (difference, or ratio to control)."""

    @property
    def null(self) -> float:
        return 0.0 if self.kind == "difference" else 1.0

    @property
    def above(self) -> bool:
        """The variant is significantly above control."""
        return self.interval.low > self.null

    @property
    def below(self) -> bool:
        """The variant is significantly below control."""
        return self.interval.high < self.null

    def within(self, margin: float) -> bool:
        """The whole interval lies within `margin` of no difference (relative for ratios)."""
        if not math.isfinite(self.interval.low) or not math.isfinite(self.interval.high):
            return False
        if self.kind == "difference":
            return -margin <= self.interval.low and self.interval.high <= margin
        return 1.0 / (1.0 + margin) <= self.interval.low and self.interval.high <= 1.0 + margin


def mixture_radius(variance: Floats | float, *, alpha: float, tau2: float) -> Floats | float:
    """The half-width of a normal-mixture confidence sequence for an estimate of this
    variance: the set of effects the mixture SPRT (mixing N(0, tau2)) does not reject at
    level alpha. Valid uniformly over looks, as the variance shrinks with data."""
    v = np.maximum(variance, 1e-300)
    spread = (v + tau2) / tau2
    return np.sqrt(2.0 * v * spread * (math.log(1.0 / alpha) + 0.5 * np.log((v + tau2) / v)))


def _ratio(numerator: Floats, denominator: Floats) -> tuple[float, float]:
    """Σy/Σx and its delta-method variance over the units."""
    n = numerator.shape[0]
    total = float(denominator.sum())
    if n < 2 or total <= 0:
        return math.nan, math.inf
    ratio = float(numerator.sum()) / total
    resid = numerator - ratio * denominator
    return ratio, float(resid @ resid) / (n - 1) * n / (total * total)


def ratio_interval(numerator: Floats, denominator: Floats) -> Interval:
    """Σy/Σx over the units, with its 95% interval (not corrected for peeking)."""
    ratio, variance = _ratio(numerator, denominator)
    if not math.isfinite(ratio):
        return _NONE
    half = _Z95 * math.sqrt(variance)
    return Interval(estimate=ratio, low=ratio - half, high=ratio + half)


def quantile_interval(values: Floats, q: float) -> Interval:
    """The q-quantile and its distribution-free 95% interval (order statistics)."""
    n = values.shape[0]
    if n == 0:
        return _NONE
    ordered = np.sort(values)
    estimate = float(np.quantile(ordered, q))
    half = _Z95 * math.sqrt(n * q * (1.0 - q))
    lo = max(0, math.floor(n * q - half) - 1)
    hi = min(n - 1, math.ceil(n * q + half))
    return Interval(estimate=estimate, low=float(ordered[lo]), high=float(ordered[hi]))


def _success_estimate(data: UnitData) -> tuple[float, float]:
    rate, variance = _ratio(data.successes, data.judged_tasks)
    if not math.isfinite(rate):
        return rate, variance
    # A run of all successes (or none) has zero sample variance; the variance of a
    # Bernoulli with one pseudo-success and one pseudo-failure keeps the test honest there.
    tasks = float(data.judged_tasks.sum())
    shrunk = (float(data.successes.sum()) + 1.0) / (tasks + 2.0)
    return rate, max(variance, shrunk * (1.0 - shrunk) / (tasks + 2.0))


def compare_success(
    variant: UnitData, control: UnitData, *, alpha: float, effect: float = 0.05
) -> Comparison:
    """The variant's success rate minus control's, as an anytime-valid interval. `effect`
    is the size of difference the test is tuned to find (the mixture's spread)."""
    rv, vv = _success_estimate(variant)
    rc, vc = _success_estimate(control)
    if not (math.isfinite(rv) and math.isfinite(rc)):
        return Comparison(metric="success", kind="difference", interval=_NONE)
    diff = rv - rc
    half = float(mixture_radius(vv + vc, alpha=alpha, tau2=effect * effect))
    interval = Interval(estimate=diff, low=diff - half, high=diff + half)
    return Comparison(metric="success", kind="difference", interval=interval)


def compare_ratio(
    metric: str,
    variant: tuple[Floats, Floats],
    control: tuple[Floats, Floats],
    *,
    alpha: float,
    effect: float = 0.1,
) -> Comparison:
    """A ratio figure (Σy/Σx, e.g. cost per task) of the variant over control's, as an
    anytime-valid interval; `effect` is the relative change the test is tuned to find."""
    rv, vv = _ratio(*variant)
    rc, vc = _ratio(*control)
    if not (math.isfinite(rv) and math.isfinite(rc)) or rv <= 0 or rc <= 0:
        return Comparison(metric=metric, kind="ratio", interval=_NONE)
    # The log of a ratio estimate has variance var / ratio² (delta method).
    log_ratio = math.log(rv) - math.log(rc)
    variance = vv / (rv * rv) + vc / (rc * rc)
    tau = math.log1p(effect)
    half = float(mixture_radius(variance, alpha=alpha, tau2=tau * tau))
    interval = Interval(
        estimate=math.exp(log_ratio),
        low=math.exp(log_ratio - half),
        high=math.exp(log_ratio + half),
    )
    return Comparison(metric=metric, kind="ratio", interval=interval)


def _prefix_ratios(numerator: Floats, denominator: Floats) -> tuple[Floats, Floats, Floats]:
    """For every k: Σy/Σx over the first k units, its delta-method variance, and Σx."""
    n = np.arange(1, numerator.shape[0] + 1, dtype=np.float64)
    sy = np.cumsum(numerator)
    sx = np.cumsum(denominator)
    syy = np.cumsum(numerator * numerator)
    sxy = np.cumsum(numerator * denominator)
    sxx = np.cumsum(denominator * denominator)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sx > 0, sy / sx, np.nan)
        resid = np.maximum(syy - 2.0 * ratio * sxy + ratio * ratio * sxx, 0.0)
        variance = np.where(n >= 2, resid / (n - 1.0) * n / (sx * sx), np.inf)
    return ratio, variance, sx


def success_path(
    in_variant: NDArray[np.bool_],
    data: UnitData,
    looks: NDArray[np.int64],
    *,
    alpha: float,
    effect: float = 0.05,
) -> tuple[Floats, Floats, Floats]:
    """The success-rate difference (variant - control) and its confidence sequence at each
    look, `looks` being counts of units in arrival order (`data` holds the units of both
    arms in that order, `in_variant` says which arm each is in). Gives what
    `compare_success` gives at each look, for every look at once: the running estimate a
    report plots, and what the simulations check."""
    paths = []
    for arm in (in_variant, ~in_variant):
        succ, tasks = data.successes[arm], data.judged_tasks[arm]
        ratio, variance, total = _prefix_ratios(succ, tasks)
        shrunk = (np.cumsum(succ) + 1.0) / (total + 2.0)
        variance = np.maximum(variance, shrunk * (1.0 - shrunk) / (total + 2.0))
        seen = np.cumsum(arm)[looks - 1]
        index = np.maximum(seen - 1, 0)
        ok = seen >= 2
        paths.append(
            (
                np.where(ok, ratio[index] if ratio.size else np.nan, np.nan),
                np.where(ok, variance[index] if variance.size else np.inf, np.inf),
            )
        )
    (rv, vv), (rc, vc) = paths
    diff = rv - rc
    half = mixture_radius(vv + vc, alpha=alpha, tau2=effect * effect)
    return diff, diff - half, diff + half
