"""The `learned` routing policy: predict which candidates will succeed, pick the cheapest enough.

Features of a prompt are its MiniLM sentence embedding (the embedder the semantic
cache uses) and a few cheap statistics (length, lines, code, digits, multiple
choice, few-shot examples, negations, multi-part questions). One L2-regularized
logistic regression per candidate, fit by Newton's method in numpy, predicts
P(the candidate's answer succeeds).

The decision trades predicted success against cost: for a prompt with predicted
success `p[j]` and candidate cost `c[j]` (mean USD per call in the training data,
divided by the dearest candidate's), the router takes `argmax_j p[j] - lam * c[j]`.
A larger `lam` buys cheaper answers. `lam` is calibrated per target quality at
training time: on out-of-fold predictions (folds by task when the data has enough
tasks, so the calibration sees prompts of unseen tasks, as production will) the
router keeps the largest `lam` whose replayed accuracy is still at least
`target_quality` times the best single candidate's. On held-out RouterBench
prompts (4 splits) this rule reached 95% of GPT-4's accuracy at 18-41% of its cost
where the per-prompt rule "cheapest candidate with p >= t * max p" needed 34-45%
(both at their best setting): that rule ignores how much cheaper a candidate is,
and its t does not map to the aggregate quality a route asks for. With two
candidates (MMLU) the two rules tie. The L2 strength is strong (1e3-1e4 on
standardized features): weaker penalties fit better by log-loss but route worse.

Out of domain. The classifiers say nothing useful about prompts unlike their
training data: trained on MMLU and asked RouterBench's few-shot prompts, the router
kept 86% of GPT-4's accuracy at a 95% target. So the router also keeps what its
training prompts looked like, and a prompt that looks unlike them goes to the
strongest candidate (route reason `out_of_domain`). A prompt is out of domain when

- its embedding's cosine similarity to the nearest of up to `_CENTROIDS` k-means
  centroids of the training embeddings is below the `_DOMAIN_QUANTILE` quantile of
  the same similarity of out-of-fold training prompts (same folds as the
  calibration: by task when there are enough tasks, so prompts of unseen tasks of
  the same family still count as in domain), and below `_SIMILAR`, or
- at least `_FORMAT_OUTSIDE` of its format statistics (lines, code, choices,
  few-shot answers) fall outside the range the middle 99% of training prompts
  span: a zero-shot multiple-choice router asked few-shot or free-form questions.

The router file is JSON: weights as base64 float32, the feature normalization,
the candidates and their costs, the calibration table, the domain (centroids as
base64 float16, the similarity threshold, the format ranges) and training metadata.
Version 2 files (no domain) still load; they never report out of domain.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from areion.errors import ConfigError

if TYPE_CHECKING:
    from areion.cache.embedding import Embedder, MiniLMEmbedder
    from areion.routing.data import OutcomeTable

__all__ = [
    "FORMAT_VERSION",
    "Decision",
    "Domain",
    "LearnedRouter",
    "embed_prompts",
    "embedding_text",
    "fit_domain",
    "prompt_statistics",
    "train_router",
]

FORMAT_VERSION = 3
_READABLE_VERSIONS = (2, 3)

Array = npt.NDArray[np.float64]

# MiniLM reads 256 word pieces (~1,200 characters of English). Few-shot prompts put the
# question that matters at the end, so the end of a long prompt is what gets embedded.
_EMBED_CHARS = 1200
_STATISTICS = (
    "log_chars",
    "log_lines",
    "code",
    "digits",
    "choices",
    "shots",
    "math",
    "negation",
    "numerals",
)
_CODE = re.compile(r"```|\bdef |\breturn\b|\bfunction\b|[{};]\s*$", re.MULTILINE)
_CHOICE = re.compile(r"^\s*\(?[A-Ea-e][\).:]\s", re.MULTILINE)
_SHOT = re.compile(r"\bAnswer:", re.IGNORECASE)
_MATH = re.compile(r"[=+\-*/^<>∑√π]")
# "Which of the following is NOT ...", "all EXCEPT": questions small models often miss.
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE|INCORRECT)\b")
# "I and III only", "Statement 1 | ...": multi-part questions.
_NUMERALS = re.compile(r"\b(?:I{1,3}|IV) (?:and|only)\b|\bStatement \d")
_L2_GRID = (300.0, 1000.0, 3000.0, 10000.0)
_SELECTION_TARGETS = (0.90, 0.95, 0.97)
_FOLDS = 5
_Q_GRID = tuple(round(0.50 + 0.01 * i, 2) for i in range(51))
# The domain check (see the module's docstring).
_CENTROIDS = 32
_DOMAIN_QUANTILE = 0.01
# MiniLM similarity at which a prompt shares its topic with a training cluster: the
# threshold never exceeds it, so that a router trained on a few templates does not
# reject new wordings of them (the check is for prompts of another kind).
_SIMILAR = 0.5
_FORMAT_STATISTICS = ("log_lines", "code", "choices", "shots")
_FORMAT_RANGE = (0.005, 0.995)
_FORMAT_OUTSIDE = 2


def embedding_text(prompt: str) -> str:
    """The part of a prompt that is embedded: all of it, or its last ~1,200 characters."""
    if len(prompt) <= _EMBED_CHARS:
        return prompt
    tail = prompt[-_EMBED_CHARS:]
    cut = tail.find(" ")
    return tail[cut + 1 :] if 0 <= cut < 40 else tail


def prompt_statistics(prompt: str) -> list[float]:
    """Cheap features of a prompt, in the order of `_STATISTICS`."""
    chars = max(len(prompt), 1)
    return [
        math.log1p(len(prompt)),
        math.log1p(prompt.count("\n")),
        1.0 if _CODE.search(prompt) else 0.0,
        sum(ch.isdigit() for ch in prompt) / chars,
        min(len(_CHOICE.findall(prompt)), 8) / 8,
        math.log1p(len(_SHOT.findall(prompt))),
        len(_MATH.findall(prompt)) / chars,
        1.0 if _NEGATION.search(prompt) else 0.0,
        1.0 if _NUMERALS.search(prompt) else 0.0,
    ]


def _statistics(prompts: Sequence[str]) -> Array:
    """[prompts, `_STATISTICS`]: `prompt_statistics` of each prompt."""
    stats = np.array([prompt_statistics(p) for p in prompts], dtype=np.float64)
    out: Array = stats.reshape(len(prompts), len(_STATISTICS))
    return out


def _features(prompts: Sequence[str], vectors: npt.NDArray[np.floating[Any]]) -> Array:
    return _raw_features(_statistics(prompts), vectors)


def _raw_features(stats: Array, vectors: npt.NDArray[np.floating[Any]]) -> Array:
    return np.hstack([np.asarray(vectors, dtype=np.float64), stats])


def _sigmoid(z: Array) -> Array:
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def _fit_logistic(x: Array, y: Array, l2: float, iterations: int = 25) -> Array:
    """Weights [d + 1] (the last is the unpenalized bias) of L2 logistic regression.

    `y` may be soft (scores in 0..1): the loss is the cross-entropy against it.
    Newton's method; the problem is small and strictly convex.
    """
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, l2)
    penalty[-1] = 1e-6
    w = np.zeros(d + 1)
    mean = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    w[-1] = math.log(mean / (1 - mean))
    for _ in range(iterations):
        p = _sigmoid(xb @ w)
        gradient = xb.T @ (p - y) + penalty * w
        hessian = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.max(np.abs(step))) < 1e-6:
            break
    return w


def _fit_all(x: Array, scores: Array, l2: float) -> Array:
    return np.stack([_fit_logistic(x, scores[:, j], l2) for j in range(scores.shape[1])])


def _predict(x: Array, weights: Array) -> Array:
    return _sigmoid(x @ weights[:, :-1].T + weights[:, -1])


def _folds(groups: Sequence[str], k: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """Fold indices: whole groups per fold when there are enough of them, else
    random rows stratified by group."""
    rng = np.random.default_rng(seed)
    names = sorted(set(groups))
    labels = np.array([names.index(g) for g in groups])
    assignment = np.empty(len(groups), dtype=np.int64)
    if len(names) >= 2 * k:
        order = rng.permutation(len(names))
        for position, group in enumerate(order):
            assignment[labels == group] = position % k
    else:
        for group in range(len(names)):
            rows = np.flatnonzero(labels == group)
            assignment[rng.permutation(rows)] = np.arange(len(rows)) % k
    return [np.flatnonzero(assignment == f) for f in range(k)]


def _choose(probabilities: Array, costs: Array, lam: float | Array) -> npt.NDArray[np.int64]:
    """argmax p - lam * cost per row; `lam` one weight or one per row."""
    weights = np.reshape(np.asarray(lam, dtype=np.float64), (-1, 1))
    utility = probabilities - weights * costs[None, :]
    # Ties go to the cheaper candidate: candidates are stored cheapest first.
    chosen: npt.NDArray[np.int64] = np.argmax(utility, axis=1)
    return chosen


def _lambda_grid() -> Array:
    return np.concatenate([[0.0], np.geomspace(1e-4, 10.0, 160)])


def _calibrate(oof: Array, scores: Array, costs: Array) -> tuple[list[list[float]], float]:
    """Calibration rows `[target_quality, lam_safe, lam_cheap, p_cheap]` from out-of-fold
    predictions, and the best single candidate's accuracy.

    `lam_safe` is the largest cost weight whose replayed accuracy meets the target,
    `lam_cheap` the next one up, which misses it. Many prompts of a task tend to
    switch candidates at the same weight, so the accuracy jumps between the two; a
    share `p_cheap` of prompts (chosen by a hash, so a prompt always routes the same
    way) uses `lam_cheap`, which lands on the target instead of overshooting it.
    """
    rows = np.arange(len(scores))
    best = float(scores.mean(axis=0).max())
    lams = _lambda_grid()
    accuracy = np.array([scores[rows, _choose(oof, costs, lam)].mean() for lam in lams])
    table: list[list[float]] = []
    for q in _Q_GRID:
        target = q * best
        meets = np.flatnonzero(accuracy >= target - 1e-12)
        if not meets.size:  # lam = 0 picks the most probable candidate: the best it can do
            table.append([q, 0.0, 0.0, 0.0])
            continue
        safe = int(meets.max())
        if safe + 1 >= len(lams):
            table.append([q, float(lams[safe]), float(lams[safe]), 0.0])
            continue
        high, low = float(accuracy[safe]), float(accuracy[safe + 1])
        share = (high - target) / (high - low) if high > low else 0.0
        table.append([q, float(lams[safe]), float(lams[safe + 1]), round(share, 4)])
    return table, best


def _spend(oof: Array, scores: Array, costs: Array) -> float:
    """Mean relative cost at which out-of-fold routing reaches `_SELECTION_TARGETS`
    (the dearest candidate's cost, 1.0, where it cannot)."""
    rows = np.arange(len(scores))
    best = float(scores.mean(axis=0).max())
    points = []
    for lam in _lambda_grid():
        chosen = _choose(oof, costs, lam)
        points.append((float(scores[rows, chosen].mean()), float(costs[chosen].mean())))
    spend = [
        min((c for a, c in points if a >= q * best - 1e-12), default=1.0)
        for q in _SELECTION_TARGETS
    ]
    return float(np.mean(spend))


def _unit(vectors: npt.NDArray[np.floating[Any]]) -> Array:
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: Array = x / np.where(norms > 0, norms, 1.0)
    return out


def _kmeans(x: Array, seed: int, iterations: int = 20) -> Array:
    """Spherical k-means: unit centroids of the unit rows of `x`, one per 8 rows, at
    least 1 and at most `_CENTROIDS`."""
    rng = np.random.default_rng(seed)
    k = min(_CENTROIDS, max(1, len(x) // 8))
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iterations):
        nearest = np.argmax(x @ centroids.T, axis=1)
        for j in range(k):
            members = nearest == j
            if members.any():
                centroids[j] = x[members].mean(axis=0)
        centroids = _unit(centroids)
    return centroids


@dataclass(slots=True, kw_only=True)
class Domain:
    """What the training prompts looked like: a prompt unlike them is out of domain."""

    centroids: Array
    """[k, dim]: unit k-means centroids of the training embeddings."""
    min_similarity: float
    """Below this cosine similarity to the nearest centroid a prompt is out of domain."""
    low: Array
    """Per format statistic (`_FORMAT_STATISTICS`), the low end of the training range."""
    high: Array
    """Per format statistic, the high end of the training range."""

    def similarity(self, vectors: npt.NDArray[np.floating[Any]]) -> Array:
        """Per row, the cosine similarity to the nearest centroid."""
        out: Array = (_unit(np.atleast_2d(vectors)) @ self.centroids.T).max(axis=1)
        return out

    def outside(self, stats: Array, vectors: npt.NDArray[np.floating[Any]]) -> Array:
        """Per prompt (its row of `_statistics` and its embedding), True when it is out
        of domain."""
        stats = np.atleast_2d(stats)[:, _FORMAT_COLUMNS]
        margin = 1e-9
        off = ((stats < self.low - margin) | (stats > self.high + margin)).sum(axis=1)
        out: Array = (self.similarity(vectors) < self.min_similarity) | (off >= _FORMAT_OUTSIDE)
        return out

    def to_json(self) -> dict[str, Any]:
        """The `domain` object of the router file."""
        return {
            "centroids": base64.b64encode(self.centroids.astype("<f2").tobytes()).decode("ascii"),
            "centroids_shape": list(self.centroids.shape),
            "min_similarity": self.min_similarity,
            "format_statistics": list(_FORMAT_STATISTICS),
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Domain:
        """The inverse of `to_json()`; KeyError/ValueError/TypeError when damaged."""
        if document["format_statistics"] != list(_FORMAT_STATISTICS):
            raise ValueError("the domain uses other format statistics: retrain the router")
        shape = tuple(int(v) for v in document["centroids_shape"])
        raw = np.frombuffer(base64.b64decode(document["centroids"]), dtype="<f2")
        return cls(
            centroids=raw.astype(np.float64).reshape(shape),
            min_similarity=float(document["min_similarity"]),
            low=np.array([float(v) for v in document["low"]]),
            high=np.array([float(v) for v in document["high"]]),
        )


_FORMAT_COLUMNS = [_STATISTICS.index(name) for name in _FORMAT_STATISTICS]


def fit_domain(
    prompts: Sequence[str],
    vectors: npt.NDArray[np.floating[Any]],
    folds: Sequence[npt.NDArray[np.int64]],
    seed: int = 0,
) -> Domain:
    """The domain of training prompts: centroids of all of them; the similarity
    threshold from out-of-fold similarities (centroids fitted without the fold)."""
    x = _unit(vectors)
    held = np.zeros(len(x))
    for fold in folds:
        train = np.setdiff1d(np.arange(len(x)), fold)
        if not len(train) or not len(fold):
            continue
        held[fold] = (x[fold] @ _kmeans(x[train], seed).T).max(axis=1)
    stats = _statistics(prompts)[:, _FORMAT_COLUMNS]
    return Domain(
        centroids=_kmeans(x, seed),
        min_similarity=min(float(np.quantile(held, _DOMAIN_QUANTILE)), _SIMILAR),
        low=np.quantile(stats, _FORMAT_RANGE[0], axis=0),
        high=np.quantile(stats, _FORMAT_RANGE[1], axis=0),
    )


@dataclass(slots=True, frozen=True, kw_only=True)
class Decision:
    """The router's choice for one prompt."""

    candidate: str
    """The candidate to call."""
    scores: dict[str, float]
    """Every candidate's predicted success."""
    out_of_domain: bool = False
    """True when the prompt looked unlike the training data and `candidate` is the
    strongest one for that reason."""


@dataclass(slots=True, kw_only=True)
class LearnedRouter:
    """Per-candidate success classifiers and the calibrated cost/quality trade-off."""

    candidates: list[str]
    """Candidate models, cheapest first."""
    costs_usd: list[float]
    """Mean USD per call of each candidate in the training data."""
    mean: Array
    """Feature means (for standardization)."""
    scale: Array
    """Feature standard deviations."""
    weights: Array
    """[candidates, features + 1]: logistic weights, bias last."""
    calibration: list[list[float]]
    """[target_quality, lam_safe, lam_cheap, p_cheap] rows, target_quality ascending."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Training data, sizes, held-out figures: for people, not for routing."""
    domain: Domain | None = None
    """What the training prompts looked like; None: every prompt is in domain."""
    strongest: int = -1
    """Index of the candidate out-of-domain prompts go to (the most accurate); negative
    counts from the end, as in a list, and is made positive on creation."""

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("a router needs at least one candidate")
        self.strongest %= len(self.candidates)

    @property
    def _relative_costs(self) -> Array:
        costs = np.array(self.costs_usd, dtype=np.float64)
        top = float(costs.max()) if costs.size else 0.0
        out: Array = costs / (top or 1.0)
        return out

    @property
    def dim(self) -> int:
        """Embedding dimensions the router expects."""
        return int(self.mean.shape[0]) - len(_STATISTICS)

    def lam(self, target_quality: float) -> float:
        """The (safe) cost weight calibrated for `target_quality`."""
        return self._row(target_quality)[1]

    def _row(self, target_quality: float) -> list[float]:
        if not 0 < target_quality <= 1:
            raise ConfigError(f"target_quality must be in (0, 1], got {target_quality}")
        for row in self.calibration:
            if row[0] >= target_quality - 1e-9:  # the next stricter row
                return row
        return [1.0, 0.0, 0.0, 0.0]

    def _lams(self, features: Array, target_quality: float) -> Array:
        """Per row of `features`, the cost weight it is routed with."""
        _, safe, cheap, share = self._row(target_quality)
        # A hash of the features, so a prompt is routed the same way every time.
        draws = np.array([zlib.crc32(row.tobytes()) / 2**32 for row in features])
        out: Array = np.where(draws < share, cheap, safe)
        return out

    def features(self, prompts: Sequence[str], vectors: npt.NDArray[np.floating[Any]]) -> Array:
        """Standardized features of prompts whose `embedding_text` embeds to `vectors`."""
        return self._standardized(_raw_features(_statistics(prompts), vectors))

    def _standardized(self, raw: Array) -> Array:
        if raw.shape[1] != self.mean.shape[0]:
            raise ConfigError(
                f"embeddings have {raw.shape[1] - len(_STATISTICS)} dimensions; this router "
                f"was trained on {self.dim}"
            )
        out: Array = (raw - self.mean) / self.scale
        return out

    def predict(self, features: Array) -> Array:
        """[prompts, candidates]: predicted probability that each candidate succeeds."""
        return _predict(np.atleast_2d(features), self.weights)

    def choose_many(self, features: Array, target_quality: float) -> npt.NDArray[np.int64]:
        """Index of the candidate chosen for each row of standardized `features`."""
        features = np.atleast_2d(features)
        return _choose(
            self.predict(features), self._relative_costs, self._lams(features, target_quality)
        )

    def out_of_domain(
        self, prompts: Sequence[str], vectors: npt.NDArray[np.floating[Any]]
    ) -> npt.NDArray[np.bool_]:
        """Per prompt (embedded to `vectors`), True when it is unlike the training data."""
        if self.domain is None:
            return np.zeros(len(prompts), dtype=bool)
        return np.asarray(self.domain.outside(_statistics(prompts), vectors), dtype=bool)

    def route_many(
        self,
        prompts: Sequence[str],
        vectors: npt.NDArray[np.floating[Any]],
        target_quality: float,
        *,
        fallback: bool = True,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Per prompt, the chosen candidate's index and whether it was out of domain
        (`fallback`: then the strongest candidate is chosen)."""
        chosen = self.choose_many(self.features(prompts, vectors), target_quality)
        outside = self.out_of_domain(prompts, vectors)
        if fallback:
            chosen = np.where(outside, self.strongest, chosen)
        return chosen, outside

    def choose(
        self,
        prompt: str | Array,
        target_quality: float,
        *,
        embedder: MiniLMEmbedder | None = None,
    ) -> tuple[str, dict[str, float]]:
        """The candidate for one prompt (text, or a row of `features()`) and every
        candidate's predicted success. Text is embedded with `embedder` (default: a
        MiniLM embedder created on first use) and checked against the domain; a row
        of features cannot be."""
        if isinstance(prompt, str):
            vectors = (embedder or _default_embedder()).embed_sync([embedding_text(prompt)])
            decision = self.decide(prompt, vectors, target_quality)
            return decision.candidate, decision.scores
        decision = self._decide(np.atleast_2d(prompt), target_quality, outside=False)
        return decision.candidate, decision.scores

    async def route(self, prompt: str, embedder: Embedder, target_quality: float) -> Decision:
        """`decide()` for the request path: embeds with the runtime's shared embedder."""
        vectors = await embedder.embed([embedding_text(prompt)])
        return self.decide(prompt, vectors, target_quality)

    def decide(
        self, prompt: str, vector: npt.NDArray[np.floating[Any]], target_quality: float
    ) -> Decision:
        """The decision for one prompt whose `embedding_text` embeds to `vector`."""
        vectors = np.reshape(np.asarray(vector), (1, -1))
        stats = _statistics([prompt])  # once, for the domain check and the features
        outside = self.domain is not None and bool(self.domain.outside(stats, vectors)[0])
        row = self._standardized(_raw_features(stats, vectors))
        return self._decide(row, target_quality, outside=outside)

    def _decide(self, row: Array, target_quality: float, *, outside: bool) -> Decision:
        probabilities = self.predict(row)
        scores = {c: float(p) for c, p in zip(self.candidates, probabilities[0], strict=True)}
        if outside:
            strongest = self.candidates[self.strongest]
            return Decision(candidate=strongest, scores=scores, out_of_domain=True)
        lams = self._lams(row, target_quality)
        index = int(_choose(probabilities, self._relative_costs, lams)[0])
        return Decision(candidate=self.candidates[index], scores=scores)

    def save(self, path: str | Path) -> None:
        """Write the router file (JSON)."""
        document = {
            "format": "areion-learned-router",
            "version": FORMAT_VERSION,
            "candidates": self.candidates,
            "costs_usd": self.costs_usd,
            "statistics": list(_STATISTICS),
            "embed_chars": _EMBED_CHARS,
            "mean": _encode(self.mean),
            "scale": _encode(self.scale),
            "weights": _encode(self.weights),
            "weights_shape": list(self.weights.shape),
            "calibration": self.calibration,
            "strongest": self.strongest,
            "domain": self.domain.to_json() if self.domain is not None else None,
            "metadata": self.metadata,
        }
        Path(path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LearnedRouter:
        """Read a router file written by `save()`; ConfigError if it is not one."""
        file = Path(path)
        try:
            document = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read router file {file}: {error}") from None
        if not isinstance(document, dict) or document.get("format") != "areion-learned-router":
            raise ConfigError(
                f"{file} is not an Areion router file (train one: areion train router)"
            )
        if document.get("version") not in _READABLE_VERSIONS:
            raise ConfigError(
                f"router file {file} has format version {document.get('version')}; this "
                f"Areion reads versions {', '.join(map(str, _READABLE_VERSIONS))}: retrain it "
                "with areion train router"
            )
        if document.get("statistics") != list(_STATISTICS):
            raise ConfigError(f"router file {file} uses other prompt statistics: retrain it")
        try:
            shape = tuple(int(v) for v in document["weights_shape"])
            return cls(
                candidates=[str(c) for c in document["candidates"]],
                costs_usd=[float(c) for c in document["costs_usd"]],
                mean=_decode(document["mean"]),
                scale=_decode(document["scale"]),
                weights=_decode(document["weights"]).reshape(shape),
                calibration=[[float(v) for v in row[:4]] for row in document["calibration"]],
                metadata=dict(document.get("metadata") or {}),
                domain=Domain.from_json(document["domain"]) if document.get("domain") else None,
                strongest=int(document.get("strongest", -1)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"router file {file} is damaged: {error}") from None


def _encode(array: Array) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str) -> Array:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


_embedder: MiniLMEmbedder | None = None


def _default_embedder() -> MiniLMEmbedder:
    global _embedder
    if _embedder is None:
        from areion.cache.embedding import MiniLMEmbedder

        _embedder = MiniLMEmbedder()
    return _embedder


def embed_prompts(prompts: Sequence[str], embedder: MiniLMEmbedder) -> npt.NDArray[np.float32]:
    """MiniLM vectors of each prompt's `embedding_text` (blocking, batched)."""
    return embedder.embed_sync([embedding_text(p) for p in prompts])


def train_router(
    table: OutcomeTable,
    vectors: npt.NDArray[np.floating[Any]],
    *,
    candidates: Sequence[str] | None = None,
    seed: int = 0,
) -> LearnedRouter:
    """Fit a router on `table` whose prompts embed to `vectors` (`embed_prompts`).

    Rows where a candidate has no score or cost are left out. The L2 strength is
    the one whose out-of-fold routing reaches `_SELECTION_TARGETS` cheapest; the
    cost weights are calibrated on the out-of-fold predictions of that fit.
    """
    started = time.perf_counter()
    names = list(candidates) if candidates else list(table.models)
    if len(names) < 2:
        raise ConfigError("a router needs at least two candidate models")
    cols = [table.model_index(name) for name in names]
    names = [table.models[c] for c in cols]
    scores = table.scores[:, cols]
    costs = table.costs[:, cols]
    keep = ~(np.isnan(scores).any(axis=1) | np.isnan(costs).any(axis=1))
    if keep.sum() < 4 * _FOLDS:
        raise ConfigError(
            f"too few prompts with outcomes for every candidate ({int(keep.sum())}); "
            f"a router needs at least {4 * _FOLDS}"
        )
    rows = np.flatnonzero(keep)
    prompts = [table.prompts[int(r)] for r in rows]
    groups = [table.groups[int(r)] for r in rows]
    scores, costs = np.clip(scores[rows], 0.0, 1.0), costs[rows]
    mean_cost = costs.mean(axis=0)
    order = np.argsort(mean_cost, kind="stable")  # cheapest first
    names = [names[int(i)] for i in order]
    scores, mean_cost = scores[:, order], mean_cost[order]

    raw = _features(prompts, np.asarray(vectors)[rows])
    mu = raw.mean(axis=0)
    sigma = raw.std(axis=0)
    sigma[sigma < 1e-9] = 1.0
    x = (raw - mu) / sigma

    folds = _folds(groups, _FOLDS, seed)
    relative = mean_cost / mean_cost.max()
    best: tuple[float, float] | None = None
    best_oof = np.zeros_like(scores)
    for l2 in _L2_GRID:
        oof = np.zeros_like(scores)
        for fold in folds:
            train = np.setdiff1d(np.arange(len(x)), fold)
            oof[fold] = _predict(x[fold], _fit_all(x[train], scores[train], l2))
        spend = _spend(oof, scores, relative)
        if best is None or spend < best[1] - 1e-9:
            best, best_oof = (l2, spend), oof
    assert best is not None
    weights = _fit_all(x, scores, best[0])
    calibration, best_accuracy = _calibrate(best_oof, scores, relative)
    domain = fit_domain(prompts, np.asarray(vectors)[rows], folds, seed)
    accuracy = scores.mean(axis=0)
    strongest = int(max(range(len(names)), key=lambda j: (accuracy[j], mean_cost[j] * -1)))
    return LearnedRouter(
        candidates=names,
        costs_usd=[float(c) for c in mean_cost],
        mean=mu,
        scale=sigma,
        weights=weights,
        calibration=calibration,
        domain=domain,
        strongest=strongest,
        metadata={
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sources": list(table.sources),
            "prompts": len(rows),
            "groups": sorted(set(groups)),
            "l2": best[0],
            "cv_cost_at_targets": round(best[1], 5),
            "best_single_accuracy": round(best_accuracy, 5),
            "domain_min_similarity": round(domain.min_similarity, 5),
            "accuracy": {
                n: round(float(a), 5) for n, a in zip(names, scores.mean(axis=0), strict=True)
            },
            "embedder": "all-MiniLM-L6-v2",
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
