"""Train and calibrate the semantic-cache verifier on labelled question pairs.

    python -m areion.cache.calibrate --pairs ../shared/data/cache/quora_pairs_val.csv \\
        ../shared/data/cache/quora_pairs_train.csv \\
        --out src/areion/cache/data/verifier_lexical.json [--folds 5] [--embeddings /tmp/emb.npz]

    # the two-stage verifier: first `python -m areion.cache.train_pair ... --out-dir /tmp/pair`
    python -m areion.cache.calibrate --pairs (the same two) --folds 3 \\
        --pair-scores /tmp/pair/oof.npz --out src/areion/cache/data/verifier_pair.json

The pairs file is a CSV with `question1`, `question2` and `is_duplicate` (0/1). Each
pair is (query = question2, candidate = question1, their cosine); the model learns
whether the candidate's answer would be right for the query.

Honesty of the figures: pairs are split into folds by connected groups of their
normalized texts (a question that repeats across pairs, on either side, never sits
in two folds). The calibration table is built from out-of-fold scores, and the
figures printed for each wrong-hit rate come from nested cross-validation: for each
held-out fold, the model *and* its threshold are chosen from the other folds alone.
With the pair model, its logits are out-of-fold too (`train_pair` uses the same
folds), and in the nested loop the models for fold k learn from logits of pair models
that never saw fold k either.

`evaluate_pairs()` is the product's protocol (`areion eval cache`): cache every
question1, look up every question2, and judge the entry the cache picks by what the
file's labels say of it and the query.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from areion.cache.embedding import Embedder
from areion.cache.index_base import VectorIndex
from areion.cache.verifier import (
    DEFAULT_MAX_WRONG_HIT_RATE,
    FEATURES,
    SemanticVerifier,
    design_row,
    guards,
    raw_features,
)

__all__ = [
    "Pair",
    "evaluate_pairs",
    "fit_logistic",
    "group_folds",
    "main",
    "normalize",
    "precision_at_recall",
    "read_pairs",
    "train",
]

Floats = npt.NDArray[np.float64]
Vectors = npt.NDArray[np.float32]

# Recalls at which the out-of-fold precision is reported.
_REPORT_RECALLS = (0.25, 0.35, 0.5)
# Wrong-hit rates reported; the default's row is marked.
_REPORT_RATES = (0.02, 0.05, 0.08, 0.10, 0.15, 0.20)
# Rows of the calibration table: enough resolution where thresholds are chosen,
# few enough that the JSON stays a few KB.
_TABLE_ROWS = 160
_L2 = 0.01
# Two stages: candidates the cheap model scores under this are not read by the pair
# model (and not served). On the calibration pairs it costs a few duplicates of recall
# at most where thresholds are chosen, and spares the pair model most misses.
GATE = 0.1
_MIN_CLASS = 10
# A threshold must be vouched for by at least this many hits (a share of the pairs,
# with a floor): see `Calibration.min_hits`.
_MIN_HITS_SHARE = 0.01
_MIN_HITS_FLOOR = 30


@dataclass(slots=True, kw_only=True, frozen=True)
class Pair:
    """One labelled pair: does question1's answer answer question2?"""

    question1: str
    """The cached question (the candidate)."""
    question2: str
    """The new question (the query)."""
    duplicate: bool
    """Human label: the two ask the same thing."""


def read_pairs(path: Path) -> list[Pair]:
    """The pairs of a CSV with columns question1, question2, is_duplicate."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"question1", "question2", "is_duplicate"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        return [
            Pair(
                question1=row["question1"],
                question2=row["question2"],
                duplicate=row["is_duplicate"].strip() == "1",
            )
            for row in reader
        ]


def normalize(text: str) -> str:
    """A question's identity: lowercase words, punctuation and spacing dropped."""
    return " ".join(re.findall(r"\w+", text.lower()))


class _Groups:
    """Texts joined into groups (union-find): `join` two, `root` names a text's group."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def root(self, text: str) -> str:
        parent = self._parent
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    def join(self, first: str, second: str) -> None:
        self._parent[self.root(first)] = self.root(second)


def group_folds(pairs: Sequence[Pair], folds: int, *, seed: int = 0) -> npt.NDArray[np.int64]:
    """A fold number per pair; pairs sharing a normalized text (either side) share a fold."""
    joined = _Groups()
    for pair in pairs:
        joined.join(normalize(pair.question1), normalize(pair.question2))
    groups: dict[str, int] = {}
    ids = [groups.setdefault(joined.root(normalize(p.question1)), len(groups)) for p in pairs]
    order = np.random.default_rng(seed).permutation(len(groups))
    return np.asarray(order[ids] % folds, dtype=np.int64)


@dataclass(slots=True, kw_only=True, frozen=True)
class _Logistic:
    mean: Floats
    scale: Floats
    weights: Floats
    bias: float

    def predict(self, rows: Floats) -> Floats:
        z = (rows - self.mean) / self.scale @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))), dtype=np.float64)


def fit_logistic(rows: Floats, labels: Floats, *, l2: float = _L2) -> _Logistic:
    """L2-regularized logistic regression on standardized columns, by Newton's method."""
    mean = rows.mean(axis=0)
    scale = rows.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant column: leave it unscaled (its weight -> 0)
    z = np.c_[(rows - mean) / scale, np.ones(len(rows))]
    w = np.zeros(z.shape[1])
    penalty = np.full(len(w), l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        gradient = z.T @ (p - labels) / len(labels) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z / len(labels) + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return _Logistic(mean=mean, scale=scale, weights=w[:-1], bias=float(w[-1]))


@dataclass(slots=True, kw_only=True, frozen=True)
class _Data:
    rows: Floats  # design rows
    labels: Floats
    vetoed: npt.NDArray[np.bool_]
    cosines: Floats
    same: npt.NDArray[np.bool_]  # the same words: the cheap score stands
    pair: Floats | None = None  # the pair model's out-of-fold logits
    # inner[k]: logits from pair models that never saw fold k (nested CV), if known
    inner: Floats | None = None


def _data(
    pairs: Sequence[Pair],
    cosines: Floats,
    pair: Floats | None = None,
    inner: Floats | None = None,
) -> _Data:
    rows = np.asarray(
        [
            design_row(raw_features(p.question2, p.question1, float(c)))
            for p, c in zip(pairs, cosines, strict=True)
        ],
        dtype=np.float64,
    )
    return _Data(
        rows=rows,
        labels=np.asarray([p.duplicate for p in pairs], dtype=np.float64),
        vetoed=np.asarray([bool(guards(p.question2, p.question1)) for p in pairs]),
        cosines=np.asarray(cosines, dtype=np.float64),
        same=rows[:, FEATURES.index("same_text")] > 0.5,
        pair=pair,
        inner=inner,
    )


@dataclass(slots=True, kw_only=True, frozen=True)
class _Stack:
    """The cheap model, and with a pair model the final one (see SemanticVerifier)."""

    cheap: _Logistic
    final: _Logistic | None
    gate: float


def _fit(data: _Data, mask: npt.NDArray[np.bool_], gate: float = GATE) -> _Stack:
    # Vetoed pairs are never scored by the model, so it learns from the others only.
    keep = mask & ~data.vetoed
    cheap = fit_logistic(data.rows[keep], data.labels[keep])
    if data.pair is None:
        return _Stack(cheap=cheap, final=None, gate=0.0)
    # The final model learns from what reaches it: candidates over the gate, not the
    # same words (from every such pair if that leaves too few of either kind).
    second = keep & ~data.same & (cheap.predict(data.rows) >= gate)
    positives = int(data.labels[second].sum())
    if min(positives, int(second.sum()) - positives) < _MIN_CLASS:
        second = keep & ~data.same
    final = fit_logistic(np.c_[data.rows[second], data.pair[second]], data.labels[second])
    return _Stack(cheap=cheap, final=final, gate=gate)


def _scores(model: _Stack, data: _Data, mask: npt.NDArray[np.bool_]) -> Floats:
    scores = model.cheap.predict(data.rows[mask])
    if model.final is not None and data.pair is not None:
        final = model.final.predict(np.c_[data.rows[mask], data.pair[mask]])
        second = np.where(scores < model.gate, 0.0, final)
        scores = np.where(data.same[mask], scores, second)
    return np.where(data.vetoed[mask], 0.0, scores)


def _out_of_fold(data: _Data, folds: npt.NDArray[np.int64]) -> Floats:
    scores = np.zeros(len(data.labels))
    for k in np.unique(folds):
        held = folds == k
        scores[held] = _scores(_fit(data, ~held), data, held)
    return scores


def _table(scores: Floats, labels: Floats) -> dict[str, Any]:
    """Hits and wrong hits at thresholds spaced evenly in recall (quantiles of the
    duplicates' scores): recall is what a stricter threshold trades away."""
    positive = labels > 0.5
    live = scores[positive & (scores > 0)]
    grid = np.unique(np.round(np.quantile(live, np.linspace(0.0, 1.0, _TABLE_ROWS)), 4))
    return {
        "thresholds": [float(t) for t in grid],
        "true_hits": [int(np.sum((scores >= t) & positive)) for t in grid],
        "wrong_hits": [int(np.sum((scores >= t) & ~positive)) for t in grid],
        "duplicates": int(positive.sum()),
        "non_duplicates": int((~positive).sum()),
        "min_hits": max(_MIN_HITS_FLOOR, round(_MIN_HITS_SHARE * len(labels))),
    }


def _logistic_params(model: _Logistic) -> dict[str, Any]:
    return {
        "mean": [round(float(v), 6) for v in model.mean],
        "scale": [round(float(v), 6) for v in model.scale],
        "weights": [round(float(v), 6) for v in model.weights],
        "bias": round(model.bias, 6),
    }


def _params(model: _Stack, table: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"features": list(FEATURES), "model": _logistic_params(model.cheap)}
    if model.final is not None:
        params["final"] = _logistic_params(model.final)
        params["gate"] = model.gate
    return {**params, "calibration": table, "meta": meta}


def _verifier(model: _Stack, table: dict[str, Any]) -> SemanticVerifier:
    return SemanticVerifier(_params(model, table, {}))


def _precision_recall(hits: npt.NDArray[np.bool_], labels: Floats) -> tuple[float, float, int]:
    true_hits = int(np.sum(hits & (labels > 0.5)))
    n = int(hits.sum())
    return (true_hits / n if n else 1.0), true_hits / max(int(np.sum(labels > 0.5)), 1), n


def _nested(
    data: _Data,
    folds: npt.NDArray[np.int64],
    rates: Sequence[float],
    sources: npt.NDArray[np.str_] | None = None,
) -> dict[float, dict[str, Any]]:
    """Per rate: precision and recall on held-out folds, model and threshold chosen
    on the other folds only (their own inner cross-validation); with `sources` (the
    file of each pair), the wrong-hit rate and recall on each file's pairs too."""
    hits = {rate: np.zeros(len(data.labels), dtype=bool) for rate in rates}
    worst = dict.fromkeys(rates, 1.0)
    for k in np.unique(folds):
        held = folds == k
        # Trained and calibrated on the other folds with pair logits from pair models
        # that never saw fold k either (when known); scored with the out-of-fold ones.
        seen = (
            data
            if data.inner is None
            else _with_pair(data, np.asarray(np.where(held, data.pair, data.inner[k]), float))
        )
        model = _fit(seen, ~held)
        inner = _out_of_fold(_subset(seen, ~held), folds[~held])
        verifier = _verifier(model, _table(inner, data.labels[~held]))
        scores = _scores(model, data, held)
        for rate in rates:
            chosen = scores >= verifier.threshold_for(rate)
            hits[rate][held] = chosen
            precision, _, n = _precision_recall(chosen, data.labels[held])
            if n:
                worst[rate] = min(worst[rate], precision)
    out: dict[float, dict[str, Any]] = {}
    for rate in rates:
        precision, recall, n = _precision_recall(hits[rate], data.labels)
        out[rate] = {"precision": precision, "recall": recall, "hits": n, "worst_fold": worst[rate]}
        for source in [] if sources is None else sorted(set(sources.tolist())):
            mine = sources == source
            p, r, k = _precision_recall(hits[rate][mine], data.labels[mine])
            out[rate].setdefault("by_source", {})[source] = {
                "wrong_hit_rate": 1.0 - p, "recall": r, "hits": k
            }  # fmt: skip
    return out


def precision_at_recall(
    scores: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.floating[Any]], recall: float
) -> float:
    """Precision of the highest-scoring pairs that reach `recall` of the duplicates."""
    order = np.argsort(-scores, kind="stable")
    found = np.cumsum(labels[order])
    n = min(int(np.searchsorted(found, recall * labels.sum())) + 1, len(order))
    return float(labels[order][:n].mean())


def _subset(data: _Data, mask: npt.NDArray[np.bool_]) -> _Data:
    return _Data(
        rows=data.rows[mask],
        labels=data.labels[mask],
        vetoed=data.vetoed[mask],
        cosines=data.cosines[mask],
        same=data.same[mask],
        pair=None if data.pair is None else data.pair[mask],
    )


def _with_pair(data: _Data, pair: Floats) -> _Data:
    return _Data(
        rows=data.rows,
        labels=data.labels,
        vetoed=data.vetoed,
        cosines=data.cosines,
        same=data.same,
        pair=pair,
    )


def train(
    pairs: Sequence[Pair],
    cosines: Floats,
    *,
    folds: int = 5,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    pair_logits: Floats | None = None,
    pair_inner: Floats | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the verifier's parameters, a report of cross-validated figures); `sources`
    names each pair's file, for held-out figures per file. `pair_logits`: the pair
    model's out-of-fold logit of each pair (folds from `group_folds` with the same
    `folds` and `seed`), making a two-stage verifier; `pair_inner` [folds, pairs]:
    logits from pair models that saw neither fold k nor the pair's own (nested CV)."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    data = _data(pairs, cosines, pair_logits, pair_inner)
    fold_of = group_folds(pairs, folds, seed=seed)
    out_of_fold = _out_of_fold(data, fold_of)
    table = _table(out_of_fold, data.labels)
    nested = _nested(
        data, fold_of, _REPORT_RATES, None if sources is None else np.asarray(sources, dtype=str)
    )
    baseline = {
        t: _precision_recall(data.cosines >= t, data.labels)[:2] for t in (0.90, 0.95, 0.98)
    }
    default = nested[DEFAULT_MAX_WRONG_HIT_RATE]
    meta = {
        "pairs": len(pairs),
        "duplicates": int(data.labels.sum()),
        "folds": folds,
        "seed": seed,
        "default_max_wrong_hit_rate": DEFAULT_MAX_WRONG_HIT_RATE,
        "pair_model": pair_logits is not None,
        "pair_logits_nested": pair_inner is not None,
        "nested_cv_at_default": {
            k: v if isinstance(v, int) else round(float(v), 4)
            for k, v in default.items()
            if k != "by_source"
        },
    }
    params = _params(_fit(data, np.ones(len(pairs), dtype=bool)), table, meta)
    curve = {r: precision_at_recall(out_of_fold, data.labels, r) for r in _REPORT_RECALLS}
    report = {
        "nested": nested,
        "baseline": baseline,
        "vetoed": int(data.vetoed.sum()),
        "out_of_fold_curve": curve,
    }
    return params, report


def _embed(embedder: Embedder, texts: Sequence[str]) -> Vectors:
    run = getattr(embedder, "embed_sync", None)
    if callable(run):
        return np.asarray(run(list(texts)), dtype=np.float32)
    return np.asarray(asyncio.run(embedder.embed(list(texts))), dtype=np.float32)


def _embed_texts(embedder: Embedder, texts: Sequence[str], cache: Path | None) -> Vectors:
    """Embeddings of `texts`, reused from `cache` (an .npz) when it holds exactly them."""
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            if list(stored["texts"]) == list(texts):
                return np.asarray(stored["vectors"], dtype=np.float32)
    vectors = _embed(embedder, texts)
    if cache is not None:
        np.savez(cache, texts=np.asarray(texts, dtype=str), vectors=vectors)
    return vectors


def _pair_cosines(pairs: Sequence[Pair], vectors: Vectors, texts: Sequence[str]) -> Floats:
    at = {text: i for i, text in enumerate(texts)}
    q = vectors[[at[p.question2] for p in pairs]]
    c = vectors[[at[p.question1] for p in pairs]]
    return np.asarray(np.sum(q * c, axis=1), dtype=np.float64)


def _texts(pairs: Sequence[Pair]) -> list[str]:
    return sorted({p.question1 for p in pairs} | {p.question2 for p in pairs})


def evaluate_pairs(
    path: Path,
    verifier: SemanticVerifier | None,
    embedder: Embedder,
    *,
    index: VectorIndex | None = None,
    threshold: float | None = None,
    protocol: Literal["cache", "pair"] = "cache",
    embeddings: Path | None = None,
    candidates: int = 4,
) -> dict[str, Any]:
    """Serve a pairs file through the cache's decision and count the outcome.

    protocol "cache": every question1 is cached (identical normalized texts are one
    entry), every question2 is looked up, and the best of the nearest entries by
    cosine (from `index` if given, else an exact scan) is judged by the verifier.
    Whether a hit is correct is what the file's labels say of (that entry, the
    query): the query's very text (cached from another pair: its answer answers the
    query by definition; counted in `same_text_hits`); the pair's own question1 (its
    label); else another pair's question, which is correct when the labels join the
    two through duplicates (a question labelled a duplicate of one labelled a
    duplicate of the query, ...) and wrong when a non-duplicate label separates their
    groups. A hit on a question the labels say nothing about, as to this query, is
    not judged: it is counted in `unjudged_hits` and left out of precision (counting
    it wrong would call most of them wrong that are not: looked at by hand, most are
    plain paraphrases, like "How do I learn Sanskrit?" and "What is the best way to
    learn Sanskrit?", that happen to sit in different pairs). protocol "pair": the
    candidate is the pair's own question1, so only the verifier's judgement is
    measured.

    `verifier=None` judges by plain cosine >= `threshold` (the baseline); otherwise
    `threshold` defaults to the verifier's default. `embeddings`: an .npz cache file.
    Returns precision (share of judged hits that are correct), recall (correct hits on
    duplicate pairs over duplicate pairs), hits (judged), wrong_hits, pairs,
    same_text_hits and unjudged_hits.
    """
    pairs = read_pairs(path)
    if threshold is not None:
        limit = threshold
    elif verifier is not None:
        limit = verifier.default_threshold
    else:
        raise ValueError("evaluate_pairs: give a verifier or a cosine threshold")
    texts = _texts(pairs)
    vectors = _embed_texts(embedder, texts, embeddings)
    at = {text: i for i, text in enumerate(texts)}

    entries: dict[str, str] = {}  # normalized text -> the first raw text cached for it
    for pair in pairs:
        entries.setdefault(normalize(pair.question1), pair.question1)
    keys = list(entries)
    queries = vectors[[at[p.question2] for p in pairs]]
    # Per query: the candidates (entry key, cosine), nearest first.
    if protocol == "pair":
        cosines = _pair_cosines(pairs, vectors, texts).tolist()
        found = [[(normalize(p.question1), c)] for p, c in zip(pairs, cosines, strict=True)]
    else:
        k = 1 if verifier is None else candidates
        near = _nearest(keys, [entries[k] for k in keys], vectors, at, queries, index, k)
        found = [[(keys[i], c) for i, c in row] for row in near]

    judge = _Labels(pairs)
    hits = wrong = same_text = correct = correct_duplicates = unjudged = 0
    for pair, options in zip(pairs, found, strict=True):
        # As the cache decides: the best-scoring candidate that reaches the threshold.
        if verifier is None:  # the baseline: the nearest entry, by cosine alone
            key, cosine = options[0]
            if cosine < limit:
                continue
        else:
            choices = ((k, entries.get(k, pair.question1), c, limit) for k, c in options)
            found_best = verifier.best(pair.question2, choices)
            if found_best is None:
                continue
            key = found_best[0]
        query = normalize(pair.question2)
        if key == query:
            verdict: bool | None = True
            same_text += 1
        elif key == normalize(pair.question1):
            verdict = pair.duplicate
        else:
            verdict = judge.same(key, query)
        if verdict is None:
            unjudged += 1
            continue
        hits += 1
        if verdict:
            correct += 1
            correct_duplicates += pair.duplicate
        else:
            wrong += 1
    duplicates = sum(p.duplicate for p in pairs)
    return {
        "precision": correct / hits if hits else 1.0,
        "recall": correct_duplicates / duplicates if duplicates else 0.0,
        "hits": hits,
        "wrong_hits": wrong,
        "pairs": len(pairs),
        "same_text_hits": same_text,
        "unjudged_hits": unjudged,
    }


class _Labels:
    """What a pairs file's labels say of two questions: groups of questions joined by
    duplicate labels, and the pairs of groups a non-duplicate label separates."""

    def __init__(self, pairs: Sequence[Pair]) -> None:
        self._duplicates = _Groups()
        for pair in pairs:
            if pair.duplicate:
                self._duplicates.join(normalize(pair.question1), normalize(pair.question2))
        root = self._duplicates.root
        self._apart: set[tuple[str, str]] = set()
        for pair in pairs:
            if not pair.duplicate:
                a, b = root(normalize(pair.question1)), root(normalize(pair.question2))
                self._apart.update(((a, b), (b, a)))

    def same(self, first: str, second: str) -> bool | None:
        """True: joined by duplicate labels; False: a non-duplicate label separates
        them; None: the labels do not say. Both texts normalized."""
        a, b = self._duplicates.root(first), self._duplicates.root(second)
        if a == b:
            return True
        return False if (a, b) in self._apart else None


def _nearest(
    keys: Sequence[str],
    texts: Sequence[str],
    vectors: Vectors,
    at: dict[str, int],
    queries: Vectors,
    index: VectorIndex | None,
    k: int = 1,
) -> list[list[tuple[int, float]]]:
    """The `k` nearest cached entries (entry number, cosine) to each query, best first."""
    cached = vectors[[at[t] for t in texts]]
    if index is None:
        out: list[list[tuple[int, float]]] = []
        k = min(k, len(keys))
        for start in range(0, len(queries), 1024):  # bounded memory: 1024 x entries
            similarity = queries[start : start + 1024] @ cached.T
            top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            for row, ids in enumerate(top):
                ranked = sorted(ids.tolist(), key=lambda i: -similarity[row, i])
                out.append([(i, float(similarity[row, i])) for i in ranked])
        return out
    index.add_many(np.arange(len(keys), dtype=np.int64), cached)
    return [index.search(query, k) for query in queries]


def _print_report(report: dict[str, Any], params: dict[str, Any]) -> None:
    print(
        f"pairs: {params['meta']['pairs']} ({params['meta']['duplicates']} duplicates), "
        f"{report['vetoed']} vetoed by the hard guards"
    )
    print("plain cosine (in-sample, no model):")
    for t, (precision, recall) in report["baseline"].items():
        print(f"  cosine >= {t:.2f}: precision {precision:.3f} recall {recall:.3f}")
    curve = ", ".join(
        f"recall {r:.2f}: precision {p:.3f}" for r, p in report["out_of_fold_curve"].items()
    )
    print(f"out-of-fold scores (grouped {params['meta']['folds']}-fold), {curve}")
    print(f"nested {params['meta']['folds']}-fold cross-validation (grouped), verifier:")
    for rate, row in report["nested"].items():
        mark = "  <- default" if rate == DEFAULT_MAX_WRONG_HIT_RATE else ""
        print(
            f"  max wrong-hit rate {rate:.2f}: precision {row['precision']:.3f} "
            f"(worst fold {row['worst_fold']:.3f}) recall {row['recall']:.3f} "
            f"hits {row['hits']}{mark}"
        )
        for source, part in row.get("by_source", {}).items():
            verdict = "ok" if part["wrong_hit_rate"] <= rate else "ABOVE THE SETTING"
            print(
                f"    {source}: {part['hits']} hits, {part['wrong_hit_rate']:.3f} wrong "
                f"({verdict}), recall {part['recall']:.3f}"
            )


def _print_eval(name: str, result: dict[str, Any]) -> None:
    print(
        f"  {name}: precision {result['precision']:.3f} recall {result['recall']:.3f} "
        f"hits {result['hits']} wrong {result['wrong_hits']} "
        f"(same text as the query: {result['same_text_wrong_hits']})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m areion.cache.calibrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--pairs", type=Path, nargs="+", required=True, help="labelled pairs CSV(s), pooled"
    )
    parser.add_argument(
        "--float32",
        action="store_true",
        help="embed in float32 (default: 8-bit, as cache.semantic.embed_quantized)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="where to write the verifier (data/verifier_lexical.json or verifier_pair.json)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed (0)")
    parser.add_argument(
        "--embeddings", type=Path, help="an .npz to keep the pairs' embeddings in (reruns)"
    )
    parser.add_argument(
        "--eval", action="store_true", help="then run evaluate_pairs on the same file"
    )
    parser.add_argument(
        "--pair-scores",
        type=Path,
        help="oof.npz from `python -m areion.cache.train_pair` (same pairs, folds, seed):"
        " a two-stage verifier with the pair model",
    )
    args = parser.parse_args(argv)

    from areion.cache.embedding import MiniLMEmbedder

    embedder = MiniLMEmbedder(quantized=not args.float32)
    files = [(path, read_pairs(path)) for path in args.pairs]
    pairs = [pair for _, some in files for pair in some]
    sources = [path.name for path, some in files for _ in some]
    texts = _texts(pairs)
    vectors = _embed_texts(embedder, texts, args.embeddings)
    pair_logits = pair_inner = None
    if args.pair_scores is not None:
        with np.load(args.pair_scores, allow_pickle=False) as stored:
            expected = group_folds(pairs, args.folds, seed=args.seed)
            if stored["folds"].shape != expected.shape or np.any(stored["folds"] != expected):
                parser.error(f"{args.pair_scores}: made with other pairs, folds or seed")
            pair_logits = np.asarray(stored["logits"], dtype=np.float64)
            inner = np.asarray(stored["inner"], dtype=np.float64)
            # Nested logits for every pair outside each fold, or none at all.
            pair_inner = None if np.isnan(inner).sum() > len(pairs) * args.folds / 2 else inner
    params, report = train(
        pairs,
        _pair_cosines(pairs, vectors, texts),
        folds=args.folds,
        seed=args.seed,
        sources=sources if len(files) > 1 else None,
        pair_logits=pair_logits,
        pair_inner=pair_inner,
    )
    params["meta"]["trained_on"] = " + ".join(path.name for path in args.pairs)
    params["meta"]["embeddings"] = "float32" if args.float32 else "int8"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(params, separators=(",", ":")) + "\n", encoding="utf-8")
    _print_report(report, params)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    if args.eval:
        verifier = SemanticVerifier.load(args.out)
        print(f"evaluate_pairs on {args.pairs[0].name} (IN-SAMPLE: the model was fit on it):")
        for protocol in ("cache", "pair"):
            for name, judge, limit in (
                ("verifier (default)", verifier, None),
                ("cosine >= 0.90", None, 0.90),
                ("cosine >= 0.95", None, 0.95),
            ):
                result = evaluate_pairs(
                    args.pairs[0],
                    judge,
                    embedder,
                    threshold=limit,
                    protocol=protocol,
                    embeddings=args.embeddings,
                )
                _print_eval(f"{protocol:5} {name}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
