"""Held-out splits for `areion eval routing --split ...`: many fits, one table of figures.

A figure measured on one split of a few hundred prompts moves by a point or more
from split to split, and the figures that matter are re-checked on data no one here
has. So the policy is fitted and replayed on several splits of one outcome table and
each figure is printed per split, as a mean and at its worst split:

- `random`: `count` splits holding out `share` of each group's prompts (RouterBench:
  held-out prompts of tasks the router has seen);
- `groups`: `count` splits holding out `share` of the groups whole (MMLU: subjects
  the router never saw);
- `leave-one-out`: each group held out once, the router fitted on the others (out of
  domain: a task unlike every training task).

Prompts are embedded once, not once per split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from areion.errors import ConfigError
from areion.routing.data import OutcomeTable
from areion.routing.evaluate import Policy, RoutingReport, evaluate_routing

if TYPE_CHECKING:
    from areion.cache.embedding import MiniLMEmbedder

__all__ = ["HeldoutReport", "SplitFigures", "Targets", "evaluate_heldout", "heldout_splits"]

SplitMode = Literal["random", "groups", "leave-one-out"]
Indices = npt.NDArray[np.int64]


def _at_least(value: float, target: float) -> bool:
    return value >= target - 1e-12  # a figure equal to its target, but for rounding, meets it


def _at_most(value: float, target: float | None) -> bool:
    return target is None or value <= target + 1e-12


@dataclass(slots=True, frozen=True, kw_only=True)
class Targets:
    """What a policy must reach, relative to the most accurate candidate (`strong`)."""

    quality: float
    """Share of the strong candidate's accuracy to keep."""
    max_cost: float | None = None
    """Highest share of the strong candidate's cost allowed (None: no target)."""
    max_strong_calls: float | None = None
    """Highest share of prompts sent to the strong candidate (None: no target)."""


@dataclass(slots=True, frozen=True, kw_only=True)
class SplitFigures:
    """One split's figures, relative to the most accurate candidate of its held-out part."""

    label: str
    """Which split."""
    quality: float
    """Accuracy as a share of the strong candidate's."""
    cost: float
    """Cost as a share of the strong candidate's."""
    strong_calls: float
    """Share of prompts answered by the strong candidate (the cascade: escalated to it)."""
    out_of_domain: float
    """Share of prompts found out of domain (learned)."""
    quality_without_fallback: float | None = None
    """Accuracy share had out-of-domain prompts been routed like the others (learned)."""
    strong_calls_without_fallback: float | None = None
    """Strong-candidate share of calls without the fallback (learned)."""

    def passes(self, targets: Targets) -> bool:
        """Does this split meet every target?"""
        return (
            _at_least(self.quality, targets.quality)
            and _at_most(self.cost, targets.max_cost)
            and _at_most(self.strong_calls, targets.max_strong_calls)
        )


def _figures(label: str, report: RoutingReport) -> SplitFigures:
    best = report.best_single
    quality = report.accuracy / best.accuracy if best.accuracy else float("nan")
    cost = report.cost_usd / best.cost_usd if best.cost_usd else float("nan")
    without = report.without_fallback
    return SplitFigures(
        label=label,
        quality=quality,
        cost=cost,
        strong_calls=report.share.get(best.model, 0.0),
        out_of_domain=report.out_of_domain,
        quality_without_fallback=(
            without.accuracy / best.accuracy if without and best.accuracy else None
        ),
        strong_calls_without_fallback=without.share.get(best.model, 0.0) if without else None,
    )


@dataclass(slots=True, kw_only=True)
class HeldoutReport:
    """Every split's figures and their summary against the targets."""

    mode: SplitMode
    """The split mode."""
    policy: Policy
    """The routing policy."""
    targets: Targets
    """What each split should reach."""
    splits: list[SplitFigures] = field(default_factory=list)
    """One entry per split."""

    def summary(self) -> dict[str, float]:
        """Mean and worst of each figure over the splits."""
        quality = [s.quality for s in self.splits]
        cost = [s.cost for s in self.splits]
        strong = [s.strong_calls for s in self.splits]
        return {
            "quality_mean": float(np.mean(quality)),
            "quality_worst": float(np.min(quality)),
            "cost_mean": float(np.mean(cost)),
            "cost_worst": float(np.max(cost)),
            "strong_calls_mean": float(np.mean(strong)),
            "strong_calls_worst": float(np.max(strong)),
            "out_of_domain_mean": float(np.mean([s.out_of_domain for s in self.splits])),
            "passed": float(sum(s.passes(self.targets) for s in self.splits)),
        }

    def to_json(self) -> dict[str, Any]:
        """The `--json` document."""
        return {
            "mode": self.mode,
            "policy": self.policy,
            "targets": {
                "quality": self.targets.quality,
                "max_cost": self.targets.max_cost,
                "max_strong_calls": self.targets.max_strong_calls,
            },
            "splits": [
                {
                    "label": s.label,
                    "quality": s.quality,
                    "cost": s.cost,
                    "strong_calls": s.strong_calls,
                    "out_of_domain": s.out_of_domain,
                    "quality_without_fallback": s.quality_without_fallback,
                    "strong_calls_without_fallback": s.strong_calls_without_fallback,
                    "passes": s.passes(self.targets),
                }
                for s in self.splits
            ],
            "summary": self.summary(),
        }

    def text(self) -> str:
        """A table for people: each split, then mean and worst against the targets."""
        t = self.targets
        lines = [
            f"policy {self.policy}, {len(self.splits)} {self.mode} splits; figures relative "
            "to the most accurate candidate (strong) of each held-out part",
            f"{'split':34} {'quality':>8} {'cost':>7} {'strong':>7} {'ood':>6}"
            f" {'q w/o fb':>9} {'s w/o fb':>9}",
        ]
        for s in self.splits:
            qw = (
                f"{s.quality_without_fallback:9.1%}"
                if s.quality_without_fallback is not None
                else ""
            )
            sw = (
                f"{s.strong_calls_without_fallback:9.1%}"
                if s.strong_calls_without_fallback is not None
                else ""
            )
            lines.append(
                f"{s.label[:34]:34} {s.quality:8.1%} {s.cost:7.1%} {s.strong_calls:7.1%} "
                f"{s.out_of_domain:6.1%} {qw:>9} {sw:>9}  {'PASS' if s.passes(t) else 'FAIL'}"
            )
        m = self.summary()

        def verdict(ok: bool) -> str:
            return "PASS" if ok else "FAIL"

        lines.append(
            f"quality: mean {m['quality_mean']:.1%}, worst {m['quality_worst']:.1%} "
            f"(target >= {t.quality:.0%}: {verdict(_at_least(m['quality_worst'], t.quality))})"
        )
        cost_target = (
            f" (target <= {t.max_cost:.0%}: {verdict(_at_most(m['cost_worst'], t.max_cost))})"
            if t.max_cost is not None
            else ""
        )
        lines.append(f"cost: mean {m['cost_mean']:.1%}, worst {m['cost_worst']:.1%}{cost_target}")
        strong_target = (
            f" (target <= {t.max_strong_calls:.0%}: "
            f"{verdict(_at_most(m['strong_calls_worst'], t.max_strong_calls))})"
            if t.max_strong_calls is not None
            else ""
        )
        lines.append(
            f"calls to the strong candidate: mean {m['strong_calls_mean']:.1%}, worst "
            f"{m['strong_calls_worst']:.1%}{strong_target}"
        )
        lines.append(f"splits meeting every target: {int(m['passed'])} of {len(self.splits)}")
        return "\n".join(lines)


def heldout_splits(
    table: OutcomeTable, mode: SplitMode, count: int, *, seed: int = 0, share: float = 0.3
) -> list[tuple[str, Indices, Indices]]:
    """(label, training rows, held-out rows) of each split of `table`."""
    groups = np.array(table.groups)
    names = sorted(set(table.groups))
    everything = np.arange(len(table))
    splits: list[tuple[str, Indices, Indices]] = []
    if mode == "leave-one-out":
        if len(names) < 2:
            raise ConfigError("--split leave-one-out needs data of at least two groups (tasks)")
        for name in names:
            held = np.flatnonzero(groups == name)
            splits.append((f"held out: {name}", np.setdiff1d(everything, held), held))
        return splits
    if count < 1:
        raise ConfigError(f"--splits must be at least 1, got {count}")
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        if mode == "groups":
            if len(names) < 2:
                raise ConfigError("--split groups needs data of at least two groups (subjects)")
            k = min(len(names) - 1, max(1, round(share * len(names))))
            picked = {names[int(j)] for j in rng.choice(len(names), k, replace=False)}
            held = np.flatnonzero(np.isin(groups, sorted(picked)))
        elif mode == "random":
            parts = []
            for name in names:
                rows = np.flatnonzero(groups == name)
                parts.append(rng.choice(rows, round(share * len(rows)), replace=False))
            held = np.sort(np.concatenate(parts))
        else:
            raise ConfigError(f"unknown split {mode!r}: use random, groups or leave-one-out")
        splits.append((f"seed {seed + i}", np.setdiff1d(everything, held), held))
    return splits


def evaluate_heldout(
    table: OutcomeTable,
    *,
    mode: SplitMode,
    count: int = 10,
    seed: int = 0,
    policy: Policy = "learned",
    targets: Targets,
    candidates: Sequence[str] | None = None,
    embedder: MiniLMEmbedder | None = None,
    vectors: npt.NDArray[np.float32] | None = None,
) -> HeldoutReport:
    """Fit and replay `policy` on every split of `table`."""
    if policy == "learned" and vectors is None:
        from areion.routing.learned import embed_prompts

        if embedder is None:
            raise ConfigError("the learned policy needs an embedder")
        vectors = embed_prompts(table.prompts, embedder)
    report = HeldoutReport(mode=mode, policy=policy, targets=targets)
    for label, train, held in heldout_splits(table, mode, count, seed=seed):
        result = evaluate_routing(
            table.select(train),
            table.select(held),
            policy=policy,
            target_quality=targets.quality,
            candidates=candidates,
            train_vectors=vectors[train] if vectors is not None else None,
            data_vectors=vectors[held] if vectors is not None else None,
        )
        report.splits.append(_figures(label, result))
    return report
