"""An experiment's verdict: each variant's figures from its units, compared with control.

`analyse` turns each variant's units into the figures a team acts on and a verdict:
`running`, `winner: X`, `no difference`, or `stopped by guardrail`. The comparisons are
anytime-valid (telemetry/sequential.py), so a daily look is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from areion.config import ExperimentConfig
from areion.store.records import ExperimentState
from areion.telemetry.sequential import (
    Comparison,
    Floats,
    Interval,
    UnitData,
    compare_ratio,
    compare_success,
    quantile_interval,
    ratio_interval,
)

if TYPE_CHECKING:
    from areion.store.base import Store
    from areion.telemetry.experiments import Experiments

__all__ = ["ExperimentReport", "Judge", "VariantReport", "analyse", "history", "unit_data"]

log = logging.getLogger("areion.experiments")

# The default smallest effect worth finding: 5 points of success rate, 10% of cost or
# latency. Also the spread of the sequential test's mixture.
_DEFAULT_EFFECT = {"success": 0.05, "cost": 0.10, "latency": 0.10}


@dataclass(slots=True, kw_only=True)
class VariantReport:
    """One variant's figures, each a 95% interval."""

    name: str
    """The variant."""
    units: int
    """Units seen."""
    tasks: int
    """Tasks they ran."""
    success_rate: Interval
    """Successes / tasks."""
    cost_per_task: Interval
    """USD per task."""
    cost_per_success: Interval
    """USD per successful task."""
    tokens_per_task: Interval
    """Tokens per task."""
    latency_p50_s: Interval
    """Median task latency."""
    latency_p95_s: Interval
    """95th percentile task latency."""
    vs_control: list[Comparison] = field(default_factory=list)
    """Anytime-valid comparisons with control (none for control itself)."""
    stopped: str = ""
    """Why a guardrail stopped the variant, if one did."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "units": self.units,
            "tasks": self.tasks,
            "success_rate": self.success_rate.as_dict(),
            "cost_per_task_usd": self.cost_per_task.as_dict(),
            "cost_per_success_usd": self.cost_per_success.as_dict(),
            "tokens_per_task": self.tokens_per_task.as_dict(),
            "latency_p50_s": self.latency_p50_s.as_dict(),
            "latency_p95_s": self.latency_p95_s.as_dict(),
            "vs_control": [
                {"metric": c.metric, "kind": c.kind, **c.interval.as_dict()}
                for c in self.vs_control
            ],
            "stopped": self.stopped or None,
        }


@dataclass(slots=True, kw_only=True)
class ExperimentReport:
    """An experiment's state: its variants' figures and the verdict."""

    name: str
    """The experiment."""
    metric: str
    """What decides it."""
    control: str
    """The variant the others are compared with."""
    verdict: str
    """`running`, `winner: X`, `no difference` or `stopped by guardrail`."""
    variants: list[VariantReport]
    """Control first, then the others by name."""
    crossed_units: int = 0
    """Units that saw more than one variant (a weight changed, a variant was stopped):
    left out of every figure, and counted here so none is dropped silently."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The decisive comparison of each variant with control as the units came in: its
    running estimate and interval at a few moments (for a plot)."""

    @property
    def winner(self) -> str | None:
        prefix = "winner: "
        return self.verdict.removeprefix(prefix) if self.verdict.startswith(prefix) else None

    @property
    def stopped(self) -> list[str]:
        return [v.name for v in self.variants if v.stopped]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "control": self.control,
            "verdict": self.verdict,
            "crossed_units": self.crossed_units,
            "variants": [v.as_dict() for v in self.variants],
            "history": self.history,
        }


def _variant_report(name: str, data: UnitData) -> VariantReport:
    return VariantReport(
        name=name,
        units=data.units,
        tasks=int(data.tasks.sum()),
        success_rate=ratio_interval(data.successes, data.judged_tasks),
        cost_per_task=ratio_interval(data.cost_usd, data.tasks),
        cost_per_success=ratio_interval(data.cost_usd, data.successes),
        tokens_per_task=ratio_interval(data.tokens, data.tasks),
        latency_p50_s=quantile_interval(data.latency_s, 0.5),
        latency_p95_s=quantile_interval(data.latency_s, 0.95),
    )


def _latency_weights(data: UnitData) -> tuple[np.ndarray, np.ndarray]:
    # Mean latency per task as a ratio over units: Σ(latency * tasks) / Σ tasks.
    return data.latency_s * data.tasks, data.tasks


def analyse(config: ExperimentConfig, units: Mapping[str, UnitData]) -> ExperimentReport:
    """The figures and verdict of `config` from each variant's units (missing = none)."""
    alpha = 1.0 - config.stop.confidence
    effect = config.stop.min_effect or _DEFAULT_EFFECT[config.metric]
    control = units.get(config.control, UnitData.empty())
    reports = [_variant_report(config.control, control)]
    others = sorted(v.name for v in config.variants if v.name != config.control)
    decisive: dict[str, Comparison] = {}
    for name in others:
        data = units.get(name, UnitData.empty())
        report = _variant_report(name, data)
        cost = compare_ratio(
            "cost",
            (data.cost_usd, data.tasks),
            (control.cost_usd, control.tasks),
            alpha=alpha,
            effect=_DEFAULT_EFFECT["cost"] if config.metric != "cost" else effect,
        )
        latency = compare_ratio(
            "latency",
            _latency_weights(data),
            _latency_weights(control),
            alpha=alpha,
            effect=_DEFAULT_EFFECT["latency"] if config.metric != "latency" else effect,
        )
        comparisons = [cost, latency]
        if config.metric == "success" or data.successes.any() or control.successes.any():
            success_effect = effect if config.metric == "success" else _DEFAULT_EFFECT["success"]
            success = compare_success(data, control, alpha=alpha, effect=success_effect)
            comparisons.insert(0, success)
        report.vs_control = comparisons
        report.stopped = _guardrail(config, cost, report, reports[0])
        decisive[name] = next(c for c in comparisons if c.metric == config.metric)
        reports.append(report)
    return ExperimentReport(
        name=config.name,
        metric=config.metric,
        control=config.control,
        verdict=_verdict(config, reports, decisive, effect),
        variants=reports,
    )


def _guardrail(
    config: ExperimentConfig, cost: Comparison, variant: VariantReport, control: VariantReport
) -> str:
    """Why the variant breaches a guardrail, once significantly worse than control and
    past the bound; empty when it does not."""
    rails = config.guardrails
    bound = rails.max_cost_per_task_ratio
    if bound is not None and cost.above and cost.interval.estimate > bound:
        return f"cost per task {cost.interval.estimate:.2f}x control's (bound {bound}x)"
    bound = rails.max_p95_latency_ratio
    if bound is not None:
        # p95s compared by their distribution-free intervals: the variant's lower end
        # above control's upper end is a significant difference.
        mine, theirs = variant.latency_p95_s, control.latency_p95_s
        if (
            math.isfinite(mine.low)
            and math.isfinite(theirs.high)
            and theirs.estimate > 0
            and mine.low > theirs.high
            and mine.estimate / theirs.estimate > bound
        ):
            ratio = mine.estimate / theirs.estimate
            return f"p95 latency {ratio:.2f}x control's (bound {bound}x)"
    return ""


def _better(comparison: Comparison) -> bool:
    # Success is better higher; cost and latency lower.
    return comparison.above if comparison.metric == "success" else comparison.below


def _worse(comparison: Comparison) -> bool:
    return comparison.below if comparison.metric == "success" else comparison.above


def _verdict(
    config: ExperimentConfig,
    reports: Sequence[VariantReport],
    decisive: Mapping[str, Comparison],
    effect: float,
) -> str:
    live = [r for r in reports[1:] if not r.stopped]
    if not live:
        return "stopped by guardrail"
    if any(r.units < config.stop.min_units_per_variant for r in (reports[0], *live)):
        return "running"
    better = [r for r in live if _better(decisive[r.name])]
    if better:
        # Among the variants significantly better than control, the best estimate wins.
        sign = -1.0 if config.metric == "success" else 1.0
        best = min(better, key=lambda r: sign * decisive[r.name].interval.estimate)
        return f"winner: {best.name}"
    if all(_worse(decisive[r.name]) for r in live):
        return f"winner: {config.control}"
    if all(decisive[r.name].within(effect) for r in live):
        return "no difference"
    return "running"


def unit_data(
    rows: Sequence[Sequence[Any]],
) -> tuple[dict[str, UnitData], int, dict[str, Floats]]:
    """Each variant's units from the store's per-unit rows (`UNIT_COLUMNS` of
    store/experiments_sql.py), in the order they first appeared; the count of units
    that saw two variants (left out); and each variant's first-seen times."""
    by_variant: dict[str, list[Sequence[Any]]] = {}
    crossed = 0
    for row in rows:
        if row[0] != row[1]:
            crossed += 1
            continue
        by_variant.setdefault(str(row[0]).partition(":")[2], []).append(row)
    units: dict[str, UnitData] = {}
    seen: dict[str, Floats] = {}
    for name, found in by_variant.items():
        table = np.array([[float(v or 0.0) for v in row[2:9]] for row in found], dtype=np.float64)
        table = table[np.argsort(table[:, 6], kind="stable")]
        units[name] = UnitData(
            tasks=table[:, 0],
            judged=table[:, 1],
            successes=table[:, 2],
            cost_usd=table[:, 3],
            tokens=table[:, 4],
            latency_s=table[:, 5],
        )
        seen[name] = table[:, 6]
    return units, crossed, seen


class Judge:
    """Reads each experiment's units from the store, gives its verdict, and carries it
    out: a variant a guardrail stopped sends its units back to control, a promoted
    winner takes them all. The state is kept in the store, so every replica (and a
    restart) serves the same variants; any replica may judge, the result is the same."""

    def __init__(
        self,
        store: Store,
        experiments: Experiments,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._experiments = experiments
        self.clock = clock
        self._stops = Counter(
            "areion_experiment_stops",
            "Experiment variants stopped by a guardrail (their units back to control).",
            ("experiment", "variant"),
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None

    async def report(
        self, name: str, *, since: float = 0.0, carry_out: bool = True, over_time: bool = False
    ) -> ExperimentReport:
        """Experiment `name`'s figures and verdict now, its effects carried out (unless
        `carry_out` is false: a report read from outside the servers); `over_time` adds
        the running comparison (`history`)."""
        config = self._experiments.get(name)
        if config is None:
            raise KeyError(name)
        units, crossed, seen = await self._units(config, since)
        report = analyse(config, units)
        report.crossed_units = crossed
        if over_time:
            report.history = history(config, units, seen)
        if carry_out:
            await self._carry_out(config, report)
        return report

    async def _units(
        self, config: ExperimentConfig, since: float
    ) -> tuple[dict[str, UnitData], int, dict[str, Floats]]:
        rows = await self._store.experiment_units(
            config.name, unit=config.unit, runs=config.applies_to.agent is not None, since=since
        )
        return unit_data(rows)

    async def reports(self) -> list[ExperimentReport]:
        return [await self.report(config.name) for config in self._experiments.configs]

    async def _carry_out(self, config: ExperimentConfig, report: ExperimentReport) -> None:
        before = await self._store.experiment_state(config.name)
        stopped = tuple(sorted(set(report.stopped) | set(before.stopped if before else ())))
        promoted = before.promoted if before else None
        if config.promote and report.winner is not None and promoted is None:
            promoted = report.winner
        for name in stopped:
            if before is None or name not in before.stopped:
                self._stops.labels(config.name, name).inc()
                reason = next((v.stopped for v in report.variants if v.name == name), "")
                log.warning(
                    "experiment %s: variant %s stopped by its guardrail (%s); its units go "
                    "back to control %s",
                    config.name, name, reason, config.control,
                )  # fmt: skip
        if promoted is not None and (before is None or before.promoted != promoted):
            log.warning("experiment %s: %s promoted, every unit now gets it", config.name, promoted)
        state = ExperimentState(
            name=config.name,
            verdict=report.verdict,
            stopped=stopped,
            promoted=promoted,
            updated=self.clock(),
        )
        if before is None or (before.verdict, before.stopped, before.promoted) != (
            state.verdict,
            state.stopped,
            state.promoted,
        ):
            await self._store.set_experiment_state(state)
        self._experiments.settle(config.name, stopped=stopped, promoted=promoted)

    async def sync(self) -> None:
        """Apply what any replica's verdicts decided, and judge the experiments whose
        verdict changes traffic (guardrails, promotion)."""
        for config in self._experiments.configs:
            rails = config.guardrails
            if config.promote or rails.max_cost_per_task_ratio or rails.max_p95_latency_ratio:
                await self.report(config.name)
                continue
            state = await self._store.experiment_state(config.name)
            if state is not None:
                self._experiments.settle(
                    config.name, stopped=state.stopped, promoted=state.promoted
                )

    def start(self, every_s: float) -> None:
        """Sync every `every_s` seconds in the background, from now."""
        if self._task is None and self._experiments:
            self._task = asyncio.get_running_loop().create_task(self._loop(every_s))

    async def _loop(self, every_s: float) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # a store outage: the next round tries again
                log.exception("experiments: the verdicts could not be read")
            await asyncio.sleep(every_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def history(
    config: ExperimentConfig,
    units: Mapping[str, UnitData],
    seen: Mapping[str, Floats],
    *,
    points: int = 30,
) -> list[dict[str, Any]]:
    """The decisive comparison of each variant with control, recomputed on the units
    seen by each of `points` moments: how the estimate and its interval narrowed."""
    moments = np.concatenate([times for times in seen.values() if times.size] or [np.zeros(0)])
    if moments.size < 2:
        return []
    cuts = np.unique(np.quantile(moments, np.linspace(0.05, 1.0, points)))
    out: list[dict[str, Any]] = []
    for cut in cuts:
        subset = {
            name: _first(data, int(np.searchsorted(seen[name], cut, side="right")))
            for name, data in units.items()
        }
        report = analyse(config, subset)
        for variant in report.variants[1:]:
            decisive = next((c for c in variant.vs_control if c.metric == config.metric), None)
            if decisive is not None and math.isfinite(decisive.interval.estimate):
                out.append(
                    {"at": float(cut), "variant": variant.name, "kind": decisive.kind}
                    | decisive.interval.as_dict()
                )
    return out


def _first(data: UnitData, n: int) -> UnitData:
    return UnitData(
        tasks=data.tasks[:n],
        successes=data.successes[:n],
        cost_usd=data.cost_usd[:n],
        tokens=data.tokens[:n],
        latency_s=data.latency_s[:n],
        judged=None if data.judged is None else data.judged[:n],
    )
