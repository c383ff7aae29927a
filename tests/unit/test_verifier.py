"""The semantic cache's verifier: guards, the shipped model, thresholds, per-entry adaptation,
and the calibration tool's protocol (on small made-up data, no ../shared; the shipped
verifier's second stage needs the installed MiniLM)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from areion.cache.calibrate import (
    Pair,
    evaluate_pairs,
    fit_logistic,
    group_folds,
    normalize,
    read_pairs,
    train,
)
from areion.cache.embedding import ModelNotInstalledError
from areion.cache.verifier import (
    DEFAULT_MAX_WRONG_HIT_RATE,
    FEATURES,
    AdaptiveThreshold,
    SemanticVerifier,
    design_row,
    guards,
    raw_features,
    wilson_bounds,
)
from tests.support import missing_embedding_model


@pytest.fixture(scope="module")
def verifier() -> SemanticVerifier:
    """The shipped verifier; its second stage runs the installed MiniLM (without it
    these tests skip locally and fail in CI, where it must be installed)."""
    shipped = SemanticVerifier.load()
    try:
        shipped.prepare()
    except ModelNotInstalledError as exc:
        missing_embedding_model(exc)
    return shipped


# --- hard guards -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "candidate", "guard"),
    [
        ("How do I convert 5 km to miles?", "How do I convert 10 km to miles?", "numbers"),
        ("Best phones under $300 in 2016?", "Best phones under $300 in 2017?", "numbers"),
        ("Who are the three greatest players?", "Who are the five greatest players?", "numbers"),
        ("Is coffee good for you?", "Is coffee not good for you?", "negation"),
        ("Why can't I sleep at night?", "Why can I sleep at night?", "negation"),
        ("What is the capital of France?", "What is the capital of Germany?", "entities"),
        (
            "Gun safety rules of the NRA in Montana?",
            "Gun safety rules of the NRA in Ohio?",
            "entities",
        ),
        ("Is it safe to eat raw eggs?", "Is it unsafe to eat raw eggs?", "opposites"),
        ("What are the pros of remote work?", "What are the cons of remote work?", "opposites"),
        ("How do I encrypt a file?", "How do I decrypt a file?", "opposites"),
        ("How tall is Mount Everest in meters?", "How tall is Mount Everest in feet?", "units"),
        ("How many seconds are in a day?", "How many seconds are in a year?", "units"),
        ("Convert miles to km.", "Convert km to miles.", "direction"),
        ("Flights from Paris to Rome", "Flights from Rome to Paris", "direction"),
        ("Is the Earth bigger than Venus?", "Is Venus bigger than the Earth?", "direction"),
        ("Can a cat beat a dog in a fight?", "Can a dog beat a cat in a fight?", "direction"),
    ],
)
def test_guards_fire_on_known_false_hits(
    verifier: SemanticVerifier, query: str, candidate: str, guard: str
) -> None:
    assert guard in guards(query, candidate)
    # A veto: no cosine and no threshold, however loose, lets the pair through.
    assert verifier.score(query, candidate, 0.97) == 0.0
    assert not verifier.accept(query, candidate, 0.97, threshold=1e-9)


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("How do I learn Python quickly?", "How can I learn python fast?"),
        ("Is India a rich country?", "Is India really a rich country?"),
        ("Why don't cats like water?", "Why do cats not like water?"),  # both negated
        ("What is the best laptop under 25,000?", "Which laptop is best under 25000?"),
        ("What do people in India think of Nepal?", "What do Indians think about Nepal?"),
        # A symmetric relation: the order of its two sides asks nothing new.
        (
            "What is the difference between a dwarf and a midget?",
            "What is the difference between a midget and a dwarf?",
        ),
        ("Who made dowry system, boys or the girls?", "who made dowry system, girls or the boys?"),
        # One word spelt apart is not its own opposite.
        ("Can you un-merge a question in Quora?", "How do you unmerge questions on Quora?"),
        (
            "Which is the most overrated Hollywood movie?",
            "Which Hollywood movie is most over rated?",
        ),
        # The same unit, or a unit on one side only.
        ("How many feet are in a mile?", "How many feet make up one mile?"),
        ("How do I lose weight?", "How do I lose weight in a month?"),
    ],
)
def test_guards_stay_quiet_on_rewordings(query: str, candidate: str) -> None:
    assert guards(query, candidate) == ()


# --- the shipped model -------------------------------------------------------------------


def test_shipped_parameters_load(verifier: SemanticVerifier) -> None:
    table = verifier.calibration
    assert list(table.thresholds) == sorted(table.thresholds)
    # A stricter threshold can only drop hits.
    assert all(a >= b for a, b in zip(table.true_hits, table.true_hits[1:], strict=False))
    assert all(a >= b for a, b in zip(table.wrong_hits, table.wrong_hits[1:], strict=False))
    assert table.duplicates > 0 and table.non_duplicates > 0
    assert verifier.meta["folds"] >= 2
    assert 0.0 < verifier.default_threshold < 1.0


def test_near_identical_questions_are_served(verifier: SemanticVerifier) -> None:
    pairs = [
        ("What is the best way to lose weight?", "what is the best way to lose weight", 0.995),
        ("How do I learn Python quickly?", "How do I learn Python quickly ?", 0.999),
    ]
    for query, candidate, cosine in pairs:
        assert verifier.accept(query, candidate, cosine), (query, candidate)


def test_paraphrase_scores_above_guarded_pair_and_low_cosine(verifier: SemanticVerifier) -> None:
    query, paraphrase = "How do I learn Python quickly?", "How can I learn Python fast?"
    assert verifier.accept(query, paraphrase, 0.95, threshold=verifier.threshold_for(0.2))
    assert verifier.score(query, paraphrase, 0.95) > verifier.score(query, paraphrase, 0.75)
    assert not verifier.accept(query, "How do I learn Java quickly?", 0.80)


def test_score_grows_with_cosine(verifier: SemanticVerifier) -> None:
    query, candidate = "How can I improve my writing?", "How do I get better at writing?"
    scores = [verifier.score(query, candidate, c) for c in (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)]
    assert scores == sorted(scores)
    assert all(0.0 < s < 1.0 for s in scores)


def test_threshold_for_is_monotonic(verifier: SemanticVerifier) -> None:
    rates = [0.01, 0.03, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5]
    thresholds = [verifier.threshold_for(r) for r in rates]
    assert thresholds == sorted(thresholds, reverse=True)
    assert verifier.threshold_for(DEFAULT_MAX_WRONG_HIT_RATE) == verifier.default_threshold
    # More true duplicates in the traffic: the same rate allows a looser threshold.
    assert verifier.threshold_for(0.15, duplicate_share=0.6) <= verifier.threshold_for(0.15)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 2.0])
def test_threshold_for_rejects_impossible_rates(verifier: SemanticVerifier, rate: float) -> None:
    with pytest.raises(ValueError, match="max_wrong_hit_rate"):
        verifier.threshold_for(rate)


def test_features_have_fixed_width() -> None:
    raw = raw_features("How do I cook rice?", "How should I cook rice?", 0.93)
    assert len(raw) == len(FEATURES)
    assert raw[0] == 0.93
    assert len(design_row(raw)) > len(raw)


# --- thresholds from a made-up calibration table -----------------------------------------


def _params(table: dict[str, Any]) -> dict[str, Any]:
    width = len(design_row([0.0] * len(FEATURES)))
    weights = [0.0] * width
    weights[0] = 10.0  # cosine only
    return {
        "features": list(FEATURES),
        "model": {"mean": [0.0] * width, "scale": [1.0] * width, "weights": weights, "bias": -9},
        "calibration": table,
    }


def test_threshold_for_keeps_a_confidence_margin() -> None:
    table = {
        "thresholds": [0.2, 0.5, 0.8],
        "true_hits": [1000, 900, 400],
        "wrong_hits": [500, 30, 0],
        "duplicates": 1000,
        "non_duplicates": 1000,
    }
    verifier = SemanticVerifier(_params(table))
    # 900 / 930 = 0.968 measured; its lower bound (0.957) still clears 0.95 ...
    assert verifier.threshold_for(0.05) == 0.5
    # ... but not 0.965, although the measured precision does: the margin holds it back.
    assert verifier.threshold_for(0.035) == 0.8
    # 400 of 400 vouch for 0.99 (lower bound 0.993), not for 0.995: nothing is.
    assert verifier.threshold_for(0.01) == 0.8
    assert verifier.threshold_for(0.005) == math.inf
    assert not verifier.accept("a b", "a b", 1.0, threshold=verifier.threshold_for(0.005))


def test_mismatched_parameters_are_refused() -> None:
    params = _params(
        {"thresholds": [0.5], "true_hits": [1], "wrong_hits": [0], "duplicates": 1}
        | {"non_duplicates": 1}
    )
    params["features"] = ["cosine"]
    with pytest.raises(ValueError, match="calibrate"):
        SemanticVerifier(params)


class _Stamped:
    """A second-stage scorer for the staging logic: a logit stamped into the candidate
    text ("... #3" -> 3.0), and a count of the pairs it was asked about."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def logit(self, query: str, candidate: str) -> float:
        self.asked.append((query, candidate))
        return float(candidate.rsplit("#", 1)[1])


def _two_stage(gate: float) -> dict[str, Any]:
    width = len(design_row([0.0] * len(FEATURES)))
    params = _params(
        {"thresholds": [0.5], "true_hits": [900], "wrong_hits": [10], "duplicates": 1000}
        | {"non_duplicates": 1000}
    )
    # The final score: the second stage's logit alone.
    weights = [0.0] * (width + 1)
    weights[-1] = 1.0
    final = {"mean": [0.0] * (width + 1), "scale": [1.0] * (width + 1), "weights": weights}
    return params | {"final": final | {"bias": 0.0}, "gate": gate}


def test_two_stages_read_only_the_cheap_models_best_candidate() -> None:
    stamped = _Stamped()
    verifier = SemanticVerifier(_two_stage(gate=0.5), pair=stamped)
    assert verifier.two_stage
    query = "How do I bake bread at home?"
    candidates = [
        ("a", "How can I bake bread at home? #-4", 0.99, 0.5),  # the cheap model's best
        ("b", "How do I bake bread myself? #4", 0.95, 0.5),
        ("c", "What is bread made of? #9", 0.85, 0.5),  # under the cheap gate
    ]
    # The cheap model (cosine only) ranks "a" first; only it is read again, and its
    # second-stage logit (-4) fails the threshold: no hit, though "b" would have passed.
    assert verifier.best(query, candidates) is None
    assert stamped.asked == [(query, candidates[0][1])]
    stamped.asked.clear()
    found = verifier.best(query, candidates[1:])
    assert found is not None and found[0] == "b" and found[2] > 0.98
    assert len(stamped.asked) == 1
    # Under the gate: 0 without asking; the same words: the cheap score, without asking.
    stamped.asked.clear()
    assert verifier.score(query, "What is bread made of? #9", 0.85) == 0.0
    assert verifier.score(query, query, 1.0) > 0.7
    assert stamped.asked == []


def test_two_stage_parameters_must_fit() -> None:
    params = _two_stage(gate=0.5)
    params["final"]["weights"] = params["final"]["weights"][:-1]
    with pytest.raises(ValueError, match="do not fit"):
        SemanticVerifier(params, pair=_Stamped())


def test_wilson_bounds() -> None:
    low, high = wilson_bounds(95, 100)
    assert low < 0.95 < high
    assert wilson_bounds(0, 0) == (0.0, 1.0)
    assert wilson_bounds(10, 10)[1] == 1.0


# --- per-entry adaptive thresholds --------------------------------------------------------


def test_wrong_hit_raises_only_that_entry() -> None:
    adaptive = AdaptiveThreshold(0.8, max_wrong_hit_rate=0.1)
    assert adaptive.threshold(7) == 0.8
    raised = adaptive.observe(7, 0.9, correct=False)
    assert raised > 0.9
    assert adaptive.threshold(7) == raised
    assert adaptive.threshold(8) == 0.8
    # A second, higher wrong hit lifts it further.
    assert adaptive.observe(7, 0.95, correct=False) > 0.95


def test_correct_hits_never_go_below_global() -> None:
    adaptive = AdaptiveThreshold(0.8, max_wrong_hit_rate=0.1)
    for score in (0.81, 0.99, 0.85, 0.9):
        assert adaptive.observe(1, score, correct=True) == 0.8
    assert adaptive.threshold(1) == 0.8


def test_entry_relaxes_once_proven_reliable() -> None:
    adaptive = AdaptiveThreshold(0.8, max_wrong_hit_rate=0.1)
    adaptive.observe(1, 0.85, correct=False)
    history = [adaptive.observe(1, 0.95, correct=True) for _ in range(100)]
    assert history[0] > 0.85  # one correct hit proves nothing yet
    assert history[-1] == 0.8  # a hundred do, at 1 wrong in 101
    assert history == sorted(history, reverse=True)
    stats = adaptive.stats(1)
    assert stats is not None and stats.wrong == 1


def test_unreliable_entry_stays_high() -> None:
    adaptive = AdaptiveThreshold(0.8, max_wrong_hit_rate=0.05)
    for _ in range(20):
        adaptive.observe(3, 0.97, correct=True)
        adaptive.observe(3, 0.97, correct=False)
    assert adaptive.threshold(3) > 0.97


def test_forget_and_ageing() -> None:
    adaptive = AdaptiveThreshold(0.8, max_wrong_hit_rate=0.1, max_observations=3)
    adaptive.observe(5, 0.9, correct=False)
    for _ in range(3):
        adaptive.observe(5, 0.95, correct=True)
    assert adaptive.threshold(5) == 0.8  # the wrong hit aged out
    adaptive.observe(6, 0.9, correct=False)
    adaptive.forget(6)
    assert adaptive.threshold(6) == 0.8 and adaptive.stats(6) is None


def test_adaptive_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_wrong_hit_rate"):
        AdaptiveThreshold(0.8, max_wrong_hit_rate=0.0)
    with pytest.raises(ValueError, match="confidence"):
        AdaptiveThreshold(0.8, confidence=1.0)


# --- calibration tool ---------------------------------------------------------------------


def test_normalize_and_grouping_keep_repeats_together() -> None:
    assert normalize("What is  AI ?") == normalize("what is ai")
    pairs = [
        Pair(question1="What is AI?", question2="Define AI", duplicate=True),
        Pair(question1="what is ai", question2="Explain AI", duplicate=True),
        Pair(question1="Explain AI", question2="Tell me about AI", duplicate=True),
        *(Pair(question1=f"q{i}", question2=f"r{i}", duplicate=False) for i in range(30)),
    ]
    folds = group_folds(pairs, 5, seed=1)
    assert folds[0] == folds[1] == folds[2]  # linked through repeated texts
    assert set(folds.tolist()) == set(range(5))


def test_fit_logistic_learns_a_direction() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    y = (x[:, 0] + 0.1 * rng.normal(size=500) > 0).astype(np.float64)
    model = fit_logistic(x, y)
    assert model.weights[0] > 2 * abs(model.weights[1])
    assert model.predict(np.array([[2.0, 0.0]]))[0] > 0.9


def _synthetic(n: int) -> tuple[list[Pair], np.ndarray]:
    """Duplicates with high cosines, non-duplicates lower, and number-swapped negatives."""
    rng = np.random.default_rng(3)
    pairs, cosines = [], []
    for i in range(n):
        if i % 3 == 0:
            pairs.append(
                Pair(
                    question1=f"How do I fix item{i}?", question2=f"Fix item{i} how", duplicate=True
                )
            )
            cosines.append(rng.uniform(0.85, 1.0))
        elif i % 3 == 1:
            pairs.append(
                Pair(
                    question1=f"Can I paint item{i}?",
                    question2=f"Can I wash item{i}?",
                    duplicate=False,
                )
            )
            cosines.append(rng.uniform(0.6, 0.9))
        else:
            pairs.append(
                Pair(
                    question1=f"Top {i} item{i}?",
                    question2=f"Top {i + 1} item{i}?",
                    duplicate=False,
                )
            )
            cosines.append(rng.uniform(0.9, 1.0))
    return pairs, np.asarray(cosines)


def test_train_writes_parameters_the_verifier_loads() -> None:
    pairs, cosines = _synthetic(300)
    params, report = train(pairs, cosines, folds=3)
    verifier = SemanticVerifier(params)
    assert report["vetoed"] == 100  # every number-swapped pair
    assert verifier.meta["pairs"] == 300
    assert set(report["nested"]) >= {DEFAULT_MAX_WRONG_HIT_RATE}
    # Separable data: the cross-validated default serves duplicates and nothing else.
    assert report["nested"][0.05]["precision"] == 1.0
    assert report["nested"][0.05]["recall"] > 0.5
    assert verifier.score("How do I fix item3?", "Fix item3 how", 0.97) > 0.9
    assert verifier.score("Top 2 item2?", "Top 3 item2?", 0.99) == 0.0


def test_train_with_pair_logits_makes_a_two_stage_verifier() -> None:
    pairs, cosines = _synthetic(300)
    # A second opinion that knows the label, with noise: the final model must use it.
    rng = np.random.default_rng(1)
    labels = np.asarray([p.duplicate for p in pairs], dtype=float)
    logits = np.where(labels > 0, 3.0, -3.0) + rng.normal(0, 1, len(pairs))
    params, report = train(pairs, cosines, folds=3, pair_logits=logits)
    assert "final" in params and 0.0 < params["gate"] < 1.0
    assert len(params["final"]["weights"]) == len(params["model"]["weights"]) + 1
    assert params["final"]["weights"][-1] > 0  # a higher logit, a higher score
    assert params["meta"]["pair_model"] is True
    assert report["out_of_fold_curve"][0.35] > 0.9
    plain, _ = train(pairs, cosines, folds=3)
    assert "final" not in plain and plain["meta"]["pair_model"] is False


def test_train_reports_held_out_figures_per_file() -> None:
    pairs, cosines = _synthetic(300)
    sources = ["hard.csv" if i < 150 else "natural.csv" for i in range(300)]
    _, report = train(pairs, cosines, folds=3, sources=sources)
    row = report["nested"][DEFAULT_MAX_WRONG_HIT_RATE]
    assert set(row["by_source"]) == {"hard.csv", "natural.csv"}
    assert sum(part["hits"] for part in row["by_source"].values()) == row["hits"]
    assert all(part["wrong_hit_rate"] == 0.0 for part in row["by_source"].values())
    _, alone = train(pairs, cosines, folds=3)
    assert "by_source" not in alone["nested"][DEFAULT_MAX_WRONG_HIT_RATE]


class _TableEmbedder:
    """Vectors from a fixed table (tests need known neighbours, not a model)."""

    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self._table = {
            k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in table.items()
        }

    @property
    def dim(self) -> int:
        return 3

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        await asyncio.sleep(0)
        return np.stack([self._table[t] for t in texts])


def _write(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["question1,question2,is_duplicate"] + [f'"{a}","{b}",{y}' for a, b, y in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_evaluate_pairs_counts_by_the_cache_protocol(tmp_path: Path) -> None:
    rows = [
        ("How do I fix a bike?", "How can I fix a bike?", 1),  # own entry found: correct
        ("how do I fix a bike", "How to repair a bike?", 1),  # same entry as row 1: correct
        ("How do I sell a car?", "How do I sell a house?", 0),  # a non-duplicate hit: wrong
        ("What is rust?", "What is a bike?", 1),  # nearest is another entry: unjudged
        ("What is go?", "How do I sell a car?", 0),  # the query is itself cached: correct
    ]
    embedder = _TableEmbedder(
        {
            "How do I fix a bike?": [1, 0, 0],
            "how do I fix a bike": [1, 0, 0.01],
            "How can I fix a bike?": [1, 0.02, 0],
            "How to repair a bike?": [1, 0.03, 0],
            "How do I sell a car?": [0, 1, 0],
            "How do I sell a house?": [0, 1, 0.05],
            "What is rust?": [0, 0, 1],
            "What is a bike?": [1, 0.04, 0],
            "What is go?": [0.3, 0.3, 1],
        }
    )
    path = _write(tmp_path / "pairs.csv", rows)
    assert len(read_pairs(path)) == 5
    result = evaluate_pairs(path, None, embedder, threshold=0.9)
    assert result == {
        "precision": 3 / 4,
        "recall": 2 / 3,  # the same-text hit was on a non-duplicate pair: no recall
        "hits": 4,
        "wrong_hits": 1,
        "pairs": 5,
        "same_text_hits": 1,
        # "What is a bike?" found "How do I fix a bike?": no label joins or parts them
        "unjudged_hits": 1,
    }
    strict = evaluate_pairs(path, None, embedder, threshold=0.9999)
    assert strict["hits"] == 1 and strict["wrong_hits"] == 0  # only the identical text
    pair_only = evaluate_pairs(path, None, embedder, threshold=0.9, protocol="pair")
    assert pair_only["hits"] == 3 and pair_only["wrong_hits"] == 1
    assert pair_only["recall"] == 2 / 3


def test_evaluate_pairs_with_the_verifier_and_an_index(
    tmp_path: Path, verifier: SemanticVerifier
) -> None:
    from areion.cache.index import ExactIndex

    rows = [
        ("How do I convert 5 km to miles?", "How do I convert 10 km to miles?", 0),
        ("What is the best way to lose weight?", "what is the best way to lose weight", 1),
    ]
    embedder = _TableEmbedder(
        {
            "How do I convert 5 km to miles?": [1, 0, 0],
            "How do I convert 10 km to miles?": [1, 0.05, 0],
            "What is the best way to lose weight?": [0, 1, 0],
            "what is the best way to lose weight": [0, 1, 0.01],
        }
    )
    path = _write(tmp_path / "pairs.csv", rows)
    result = evaluate_pairs(path, verifier, embedder, index=ExactIndex(3))
    assert result["hits"] == 1 and result["wrong_hits"] == 0 and result["recall"] == 1.0
    with pytest.raises(ValueError, match="threshold"):
        evaluate_pairs(path, None, embedder)


def test_evaluate_pairs_judges_other_entries_by_the_labels(tmp_path: Path) -> None:
    rows = [
        ("How do I learn French?", "What is the best way to learn French?", 1),
        ("What is the best way to learn French?", "How can I learn French fast?", 1),
        ("How do I learn Spanish?", "Is Spanish easy?", 0),
        ("How can I learn French quickly?", "How can I learn French fast?", 1),
        ("Is Spanish easy?", "Is Spanish hard to learn?", 1),
        ("What is Python?", "Is Spanish hard?", 0),
    ]
    embedder = _TableEmbedder(
        {
            "How do I learn French?": [1, 0, 0],
            "What is the best way to learn French?": [1, 0.1, 0],
            "How can I learn French fast?": [1, 0.2, 0],
            "How can I learn French quickly?": [1, 0.21, 0],
            "How do I learn Spanish?": [0, 1, 0],
            "Is Spanish easy?": [0, 1, 0.3],
            "Is Spanish hard to learn?": [0, 1, 0.05],
            "What is Python?": [0, 0, 1],
            "Is Spanish hard?": [0, 1, 0.1],
        }
    )
    result = evaluate_pairs(_write(tmp_path / "p.csv", rows), None, embedder, threshold=0.9)
    # 1 and 3: the query is itself cached. 2: nearest is "How can I learn French
    # quickly?", which duplicate labels join to the query (rows 2 and 4): correct. 4: its
    # own entry. 5: nearest is "How do I learn Spanish?", which a non-duplicate label
    # (row 3) parts from "Is Spanish easy?", a labelled duplicate of the query: wrong.
    # 6: nearest is "How do I learn Spanish?" again; no label says anything of it and
    # "Is Spanish hard?": unjudged.
    assert (result["hits"], result["wrong_hits"], result["unjudged_hits"]) == (5, 1, 1)
    assert result["precision"] == 4 / 5 and result["same_text_hits"] == 2
