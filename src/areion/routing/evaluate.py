"""Replay evaluation of a routing policy against recorded outcomes (`areion eval routing`).

Every prompt of the evaluation table is routed by the policy; the chosen model's
recorded score and cost are what the policy got. Beside it:

- each single model, and the best one (highest accuracy, the cheaper on a tie);
- random routing at equal cost: the best accuracy a router that ignores the prompt
  reaches for the policy's cost, i.e. a random mix of two models on the upper convex
  hull of the single models' (cost, accuracy) points, as an expected value;
- the oracle: per prompt the cheapest model with the best recorded score.

Policies: `learned` (`areion.routing.learned`, fitted on the training table) and
`cascade`, replayed as the runtime runs it: two cheap models answer every prompt, the
first's answer is kept when the two agree, a third (`unverified`) answers when their
answers cannot be compared (programs, long prose) and the strongest when they
disagree; every attempt is paid for. `fit_cascade` picks the four models on the
training table: of the cascades that keep the target quality there, the one with the
most accuracy less cost.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from areion.errors import ConfigError
from areion.pricing import round_usd
from areion.routing.data import OutcomeTable

if TYPE_CHECKING:
    from areion.cache.embedding import MiniLMEmbedder
    from areion.routing.learned import LearnedRouter

__all__ = [
    "AGREE",
    "CURVE_TARGETS",
    "DISAGREE",
    "UNCOMPARABLE",
    "Cascade",
    "CurvePoint",
    "ModelResult",
    "RoutingReport",
    "cascade_verdicts",
    "evaluate_routing",
    "fit_cascade",
    "oracle",
    "plot_curve",
    "random_at_cost",
    "replay_cascade",
    "single_models",
]

Policy = Literal["learned", "cascade"]
Indices = npt.NDArray[np.int64]

CURVE_TARGETS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)


@dataclass(slots=True, frozen=True, kw_only=True)
class ModelResult:
    """Accuracy and total cost of always calling one model."""

    model: str
    """The model."""
    accuracy: float
    """Mean recorded score."""
    cost_usd: float
    """Total cost over the evaluated prompts."""


@dataclass(slots=True, frozen=True, kw_only=True)
class CurvePoint:
    """The policy at one target quality."""

    target_quality: float
    """The target asked for."""
    accuracy: float
    """Mean recorded score of the chosen models."""
    cost_usd: float
    """Total cost of the chosen models."""
    share: dict[str, float]
    """Fraction of prompts sent to each candidate."""


@dataclass(slots=True, kw_only=True)
class RoutingReport:
    """What `areion eval routing` prints."""

    policy: str
    """`learned` or `cascade`."""
    target_quality: float
    """The target the policy was run at."""
    prompts: int
    """Prompts evaluated."""
    candidates: list[str]
    """The models the policy chose among."""
    accuracy: float
    """The policy's mean recorded score."""
    cost_usd: float
    """The policy's total cost (every cascade attempt included)."""
    share: dict[str, float]
    """Fraction of prompts answered by each candidate."""
    singles: list[ModelResult]
    """Every candidate alone."""
    best_single: ModelResult
    """The most accurate candidate."""
    random: ModelResult
    """Random routing at the policy's cost (expected value; `model` names the mix)."""
    oracle: ModelResult
    """The cheapest model with the best score, per prompt."""
    curve: list[CurvePoint] = field(default_factory=list)
    """The policy over `CURVE_TARGETS` (learned only)."""
    cascade: Cascade | None = None
    """The cascade fitted on the training data (cascade only)."""
    out_of_domain: float = 0.0
    """Share of prompts the learned router found unlike its training data (they went
    to the strongest candidate, route reason `out_of_domain`)."""
    without_fallback: CurvePoint | None = None
    """The learned policy at `target_quality` had it routed out-of-domain prompts
    like the others (learned only)."""

    def to_json(self) -> dict[str, Any]:
        """The `--json` document."""
        best = self.best_single
        return {
            "policy": {
                "name": self.policy,
                "target_quality": self.target_quality,
                "accuracy": self.accuracy,
                "cost_usd": round_usd(self.cost_usd),
                "share": self.share,
            },
            "best_single": {
                "model": best.model,
                "accuracy": best.accuracy,
                "cost_usd": round_usd(best.cost_usd),
            },
            "oracle": {
                "accuracy": self.oracle.accuracy,
                "cost_usd": round_usd(self.oracle.cost_usd),
            },
            "random": {
                "accuracy": self.random.accuracy,
                "cost_usd": round_usd(self.random.cost_usd),
            },
            "singles": {
                s.model: {"accuracy": s.accuracy, "cost_usd": round_usd(s.cost_usd)}
                for s in self.singles
            },
            "prompts": self.prompts,
            "out_of_domain": self.out_of_domain,
            "without_fallback": (
                {
                    "accuracy": self.without_fallback.accuracy,
                    "cost_usd": round_usd(self.without_fallback.cost_usd),
                    "share": self.without_fallback.share,
                }
                if self.without_fallback
                else None
            ),
            "cascade": self.cascade.to_json() if self.cascade else None,
            "curve": [
                {
                    "target_quality": p.target_quality,
                    "accuracy": p.accuracy,
                    "cost_usd": round_usd(p.cost_usd),
                    "share": p.share,
                }
                for p in self.curve
            ],
        }

    def text(self) -> str:
        """A table for people."""
        best = self.best_single
        lines = [
            f"{self.prompts} prompts; policy {self.policy} at target quality "
            f"{self.target_quality:g}",
            f"{'':34} {'accuracy':>9} {'cost USD':>10} {'vs best':>8} {'cost vs best':>13}",
        ]

        def row(name: str, accuracy: float, cost: float) -> str:
            quality = accuracy / best.accuracy if best.accuracy else float("nan")
            spend = cost / best.cost_usd if best.cost_usd else float("nan")
            return f"{name[:34]:34} {accuracy:9.4f} {cost:10.4f} {quality:8.1%} {spend:13.1%}"

        lines.append(row(f"policy ({self.policy})", self.accuracy, self.cost_usd))
        if self.without_fallback is not None:
            w = self.without_fallback
            lines.append(row("  without out-of-domain fallback", w.accuracy, w.cost_usd))
        lines.append(row("random at equal cost", self.random.accuracy, self.random.cost_usd))
        lines.append(row("oracle", self.oracle.accuracy, self.oracle.cost_usd))
        for single in sorted(self.singles, key=lambda s: s.cost_usd):
            mark = " *" if single.model == best.model else ""
            lines.append(row(single.model + mark, single.accuracy, single.cost_usd))
        if self.cascade:
            c = self.cascade
            lines.append(
                f"cascade: {c.first} and {c.second} answer; agreed -> {c.first}, "
                f"cannot compare -> {c.unverified}, disagreed -> {c.strong}"
            )
        lines.append("share: " + ", ".join(f"{m} {s:.1%}" for m, s in self.share.items() if s))
        if self.policy == "learned":
            lines.append(f"out of domain (sent to the strongest): {self.out_of_domain:.1%}")
        if self.curve:
            lines.append("curve (target: accuracy vs best, cost vs best, share of best):")
            for p in self.curve:
                lines.append(
                    f"  {p.target_quality:.2f}: {p.accuracy / best.accuracy:6.1%} "
                    f"{p.cost_usd / best.cost_usd:6.1%} {p.share.get(best.model, 0.0):6.1%}"
                )
        return "\n".join(lines)


def single_models(table: OutcomeTable) -> list[ModelResult]:
    """Accuracy and cost of each model of `table` alone."""
    return [
        ModelResult(
            model=model,
            accuracy=float(table.scores[:, j].mean()),
            cost_usd=float(table.costs[:, j].sum()),
        )
        for j, model in enumerate(table.models)
    ]


def _best(singles: Sequence[ModelResult]) -> ModelResult:
    return max(singles, key=lambda s: (s.accuracy, -s.cost_usd))


def oracle(table: OutcomeTable) -> ModelResult:
    """Per prompt the cheapest model with the best recorded score."""
    rows = np.arange(len(table))
    top = table.scores.max(axis=1, keepdims=True)
    cost = np.where(table.scores >= top - 1e-12, table.costs, np.inf)
    chosen = np.argmin(cost, axis=1)
    return ModelResult(
        model="oracle",
        accuracy=float(table.scores[rows, chosen].mean()),
        cost_usd=float(table.costs[rows, chosen].sum()),
    )


def random_at_cost(singles: Sequence[ModelResult], cost_usd: float) -> ModelResult:
    """The expected accuracy of the best prompt-blind random mix of models costing `cost_usd`.

    Below the cheapest model's cost there is no mix: the cheapest model is returned.
    Above the dearest, the most accurate.
    """
    points = sorted({(s.cost_usd, s.accuracy, s.model) for s in singles})
    hull: list[tuple[float, float, str]] = []
    for point in points:
        if hull and point[1] <= hull[-1][1]:
            continue  # dearer but no better: never on the upper hull
        while len(hull) >= 2 and _turn(hull[-2], hull[-1], point) >= 0:
            hull.pop()
        hull.append(point)
    if cost_usd <= hull[0][0]:
        cost, accuracy, model = hull[0]
        return ModelResult(model=model, accuracy=accuracy, cost_usd=cost)
    for low, high in itertools.pairwise(hull):
        if cost_usd <= high[0]:
            weight = (cost_usd - low[0]) / (high[0] - low[0])
            accuracy = low[1] + weight * (high[1] - low[1])
            return ModelResult(
                model=f"{1 - weight:.0%} {low[2]} + {weight:.0%} {high[2]}",
                accuracy=accuracy,
                cost_usd=cost_usd,
            )
    cost, accuracy, model = hull[-1]
    return ModelResult(model=model, accuracy=accuracy, cost_usd=cost)


def _turn(
    a: tuple[float, float, str], b: tuple[float, float, str], c: tuple[float, float, str]
) -> float:
    # > 0: a -> b -> c turns left (b lies under the chord a-c, so it leaves the upper hull).
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


# A cascade's verdict on a prompt: the two cheap answers agree, disagree, or cannot be
# compared (`areion.routing.router.compare`, the check the runtime's cascade makes).
AGREE, DISAGREE, UNCOMPARABLE = 0, 1, 2


@dataclass(slots=True, frozen=True, kw_only=True)
class Cascade:
    """A cascade route: `first` and `second` answer every prompt; `first`'s answer is
    kept when the two agree, `unverified` answers when they cannot be compared,
    `strong` when they disagree (the runtime's `policy: cascade` with `candidates:
    [first, second, ..., strong]` and `unverified:`)."""

    first: str
    second: str
    unverified: str
    strong: str

    def to_json(self) -> dict[str, str]:
        """The cascade as `--json` prints it."""
        return dataclasses.asdict(self)


def _recorded_answers(table: OutcomeTable) -> list[list[str]]:
    if table.responses is None:
        raise ConfigError(
            "the cascade policy needs the models' recorded answers (RouterBench "
            "'|model_response' or RouteLLM '<model>_response' columns); this data has none"
        )
    return table.responses


def cascade_verdicts(table: OutcomeTable, first: int, second: int) -> Indices:
    """Per prompt, AGREE, DISAGREE or UNCOMPARABLE for the answers of columns `first`
    and `second`."""
    from areion.routing.router import compare

    codes = {True: AGREE, False: DISAGREE, None: UNCOMPARABLE}
    return np.array(
        [codes[compare(answers[first], answers[second])] for answers in _recorded_answers(table)],
        dtype=np.int64,
    )


def _replay(
    table: OutcomeTable, columns: tuple[int, int, int, int], verdicts: Indices
) -> tuple[Indices, npt.NDArray[np.float64]]:
    first, second, unverified, strong = columns
    chosen: Indices = np.select(
        [verdicts == AGREE, verdicts == UNCOMPARABLE], [first, unverified], default=strong
    )
    rows = np.arange(len(table))
    extra = np.where(np.isin(chosen, (first, second)), 0.0, table.costs[rows, chosen])
    spent: npt.NDArray[np.float64] = table.costs[:, first] + table.costs[:, second] + extra
    return chosen, spent


def replay_cascade(
    table: OutcomeTable, cascade: Cascade
) -> tuple[Indices, npt.NDArray[np.float64]]:
    """Per prompt, the column whose answer the cascade gives and what every attempt cost:
    both cheap answers always, plus the answer of `unverified` or `strong` when it is
    neither of them."""
    columns = (
        table.model_index(cascade.first),
        table.model_index(cascade.second),
        table.model_index(cascade.unverified),
        table.model_index(cascade.strong),
    )
    return _replay(table, columns, cascade_verdicts(table, columns[0], columns[1]))


def fit_cascade(
    train: OutcomeTable, target_quality: float, candidates: Sequence[str] | None = None
) -> Cascade:
    """The cascade to run: among those whose replay on `train` keeps `target_quality` of
    the most accurate candidate's accuracy, the one with the most accuracy less cost,
    both relative to that candidate's (a point of its accuracy beyond the target is
    worth a point of its cost); the most accurate cascade when none keeps the target.

    The cheapest that keeps the target wins by a hair on the training prompts and
    misses on new ones: the free third choice (the first model's own answer) just
    passes where one that costs 1% more adds 1.5% accuracy. Over ten random 70/30
    splits of the RouterBench training files, the cheapest met ">= 95% of the best
    model's accuracy at <= 30% of its cost" on the held-out prompts 7 times, the cheapest
    with a margin of one standard error 5 times, and this rule 8 times.

    `candidates` given: `first`, `second` and `strong` are its first, second and last,
    and `unverified` is fitted among them. Else `strong` is the most accurate model and
    the other three are fitted among all models.
    """
    table = train.complete(candidates)
    if len(table) == 0:
        raise ConfigError("no training prompt has outcomes for every cascade candidate")
    _recorded_answers(table)  # stops here when the data recorded none
    names = list(candidates) if candidates else list(table.models)
    columns = [table.model_index(n) for n in names]
    if len(columns) < 2:
        raise ConfigError("the cascade policy needs at least two candidates")
    accuracy = table.scores.mean(axis=0)
    total_cost = table.costs.sum(axis=0)
    if candidates:
        strong = columns[-1]
        pairs = [(columns[0], columns[1])]
    else:
        strong = max(columns, key=lambda c: (accuracy[c], -total_cost[c]))
        cheaper = [c for c in columns if c != strong]
        pairs = list(itertools.permutations(cheaper, 2)) or [(cheaper[0], strong)]
    best = float(accuracy[strong])
    goal = target_quality * best
    scale_accuracy, scale_cost = best or 1.0, float(total_cost[strong]) or 1.0
    rows = np.arange(len(table))
    options: list[tuple[float, float, tuple[int, int, int, int]]] = []
    for first, second in pairs:
        verdicts = cascade_verdicts(table, first, second)
        for unverified in columns:
            plan = (first, second, unverified, strong)
            chosen, spent = _replay(table, plan, verdicts)
            options.append((float(table.scores[rows, chosen].mean()), float(spent.sum()), plan))
    meeting = [o for o in options if o[0] >= goal - 1e-12]
    _, _, plan = (
        max(meeting, key=lambda o: (o[0] / scale_accuracy - o[1] / scale_cost, -o[1]))
        if meeting
        else max(options, key=lambda o: (o[0], -o[1]))
    )
    model = [table.models[c] for c in plan]
    return Cascade(first=model[0], second=model[1], unverified=model[2], strong=model[3])


def _share(models: Sequence[str], chosen: Indices) -> dict[str, float]:
    counts = np.bincount(chosen, minlength=len(models))
    total = max(len(chosen), 1)
    return {m: float(c) / total for m, c in zip(models, counts, strict=True)}


def evaluate_routing(
    train: OutcomeTable,
    data: OutcomeTable,
    *,
    policy: Policy = "learned",
    target_quality: float = 0.95,
    candidates: Sequence[str] | None = None,
    embedder: MiniLMEmbedder | None = None,
    router: LearnedRouter | None = None,
    data_candidates: Sequence[str] | None = None,
    train_vectors: npt.NDArray[np.float32] | None = None,
    data_vectors: npt.NDArray[np.float32] | None = None,
) -> RoutingReport:
    """Fit `policy` on `train`, replay every prompt of `data` through it.

    Prompts of `data` lacking a score or cost for a candidate are left out.
    `router`: a trained router to use instead of fitting one (learned only).
    `data_candidates`: the models of `data` that stand for `candidates` (same order),
    for data recorded under other names (learned only).
    `train_vectors`, `data_vectors`: the prompts' `embed_prompts` vectors, when known.
    """
    if not 0 < target_quality <= 1:
        raise ConfigError(f"--target-quality must be in (0, 1], got {target_quality}")
    cascade: Cascade | None = None
    rename: dict[str, str] = {}
    if data_candidates is not None:
        if policy != "learned" or candidates is None or len(candidates) != len(data_candidates):
            raise ConfigError(
                "--data-candidates needs --candidates of the same length (learned policy)"
            )
        rename = {
            train.models[train.model_index(a)]: data.models[data.model_index(b)]
            for a, b in zip(candidates, data_candidates, strict=True)
        }
    if policy == "learned":
        names = list(router.candidates) if router else list(candidates or train.models)
    elif policy == "cascade":
        cascade = fit_cascade(train, target_quality, candidates)
        names = list(candidates or train.models)
    else:
        raise ConfigError(f"unknown routing policy {policy!r}: use learned or cascade")
    names = [data.models[data.model_index(_to_data(train, rename, n))] for n in names]
    back = {data_name: train_name for train_name, data_name in rename.items()}
    kept = data.complete_rows(names)
    table = data.select(kept, names)
    if not len(table):
        raise ConfigError("no evaluation prompt has outcomes for every candidate")
    rows = np.arange(len(table))
    curve: list[CurvePoint] = []
    out_of_domain = 0.0
    without_fallback: CurvePoint | None = None
    if policy == "learned":
        from areion.routing.learned import embed_prompts, train_router

        def embed(prompts: Sequence[str]) -> npt.NDArray[np.float32]:
            nonlocal embedder
            if embedder is None:  # loaded only when some prompts come without vectors
                from areion.cache.embedding import MiniLMEmbedder

                embedder = MiniLMEmbedder()
            return embed_prompts(prompts, embedder)

        if router is None:
            vectors = train_vectors if train_vectors is not None else embed(train.prompts)
            router = train_router(train, vectors, candidates=[back.get(n, n) for n in names])
        columns = [table.model_index(rename.get(c, c)) for c in router.candidates]
        vectors = data_vectors[kept] if data_vectors is not None else embed(table.prompts)
        table = table.select(rows, [table.models[c] for c in columns])
        features = router.features(table.prompts, vectors)
        outside = router.out_of_domain(table.prompts, vectors)

        def point(q: float, picked: Indices) -> CurvePoint:
            return CurvePoint(
                target_quality=q,
                accuracy=float(table.scores[rows, picked].mean()),
                cost_usd=float(table.costs[rows, picked].sum()),
                share=_share(table.models, picked),
            )

        for q in sorted({*CURVE_TARGETS, target_quality}):
            curve.append(
                point(q, np.where(outside, router.strongest, router.choose_many(features, q)))
            )
        learned = router.choose_many(features, target_quality)
        chosen = np.where(outside, router.strongest, learned)
        accuracy = float(table.scores[rows, chosen].mean())
        cost = float(table.costs[rows, chosen].sum())
        out_of_domain = float(outside.mean())
        without_fallback = point(target_quality, learned)
    else:
        assert cascade is not None
        chosen, spent = replay_cascade(table, cascade)
        accuracy = float(table.scores[rows, chosen].mean())
        cost = float(spent.sum())
    singles = single_models(table)
    return RoutingReport(
        policy=policy,
        target_quality=target_quality,
        prompts=len(table),
        candidates=list(table.models),
        accuracy=accuracy,
        cost_usd=cost,
        share=_share(table.models, chosen),
        singles=singles,
        best_single=_best(singles),
        random=random_at_cost(singles, cost),
        oracle=oracle(table),
        curve=curve,
        cascade=cascade,
        out_of_domain=out_of_domain,
        without_fallback=without_fallback,
    )


def _to_data(train: OutcomeTable, rename: dict[str, str], name: str) -> str:
    """The evaluation data's name of candidate `name`."""
    if not rename:
        return name
    return rename.get(train.models[train.model_index(name)], name)


def plot_curve(report: RoutingReport, path: str | Path) -> None:
    """A PNG of the policy's cost/quality curve beside single models, random and oracle."""
    import importlib

    try:
        # Imported by name: matplotlib is optional and has no type stubs here.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib"
        ) from None
    figure, axes = plt.subplots(figsize=(7, 5))
    singles = sorted(report.singles, key=lambda s: s.cost_usd)
    axes.scatter([s.cost_usd for s in singles], [s.accuracy for s in singles], color="gray")
    for single in singles:
        axes.annotate(
            single.model.rsplit("/", 1)[-1], (single.cost_usd, single.accuracy), fontsize=7
        )
    if report.curve:
        axes.plot(
            [p.cost_usd for p in report.curve],
            [p.accuracy for p in report.curve],
            marker="o",
            label=f"{report.policy} (target quality {report.curve[0].target_quality:g}"
            f"-{report.curve[-1].target_quality:g})",
        )
    axes.scatter([report.cost_usd], [report.accuracy], marker="*", s=150, label="policy")
    axes.scatter([report.oracle.cost_usd], [report.oracle.accuracy], marker="^", label="oracle")
    costs = np.linspace(singles[0].cost_usd, singles[-1].cost_usd, 50)
    axes.plot(
        costs,
        [random_at_cost(report.singles, float(c)).accuracy for c in costs],
        linestyle="--",
        color="gray",
        label="random routing",
    )
    axes.set_xscale("log")
    axes.set_xlabel("total cost (USD)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"Routing on {report.prompts} prompts")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(str(path), dpi=120)
    plt.close(figure)
