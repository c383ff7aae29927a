"""The learned routing policy (areion.routing.learned) on synthetic features."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from areion.errors import ConfigError
from areion.routing.data import OutcomeTable
from areion.routing.learned import LearnedRouter, embedding_text, train_router

DIM = 8


def _synthetic(n: int = 400, seed: int = 1) -> tuple[OutcomeTable, np.ndarray]:
    """Two groups of prompts told apart by the first vector dimension: the cheap
    model solves the easy group, only the strong one solves the hard group."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.5
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors[:, 0] = np.where(hard, 2.0, -2.0) + rng.normal(scale=0.3, size=n)
    cheap = np.where(hard, rng.random(n) < 0.1, rng.random(n) < 0.95).astype(float)
    strong = (rng.random(n) < 0.97).astype(float)
    table = OutcomeTable(
        models=["strong", "cheap"],
        prompts=[("hard " if h else "easy ") + str(i) for i, h in enumerate(hard)],
        groups=["hard" if h else "easy" for h in hard],
        scores=np.stack([strong, cheap], axis=1),
        costs=np.tile([0.02, 0.001], (n, 1)),
    )
    return table, vectors


@pytest.fixture(scope="module")
def trained() -> tuple[LearnedRouter, OutcomeTable, np.ndarray]:
    table, vectors = _synthetic()
    return train_router(table, vectors), table, vectors


def test_candidates_cheapest_first_with_costs(
    trained: tuple[LearnedRouter, OutcomeTable, np.ndarray],
) -> None:
    router, _, _ = trained
    assert router.candidates == ["cheap", "strong"]
    assert router.costs_usd == pytest.approx([0.001, 0.02])
    assert router.dim == DIM


def test_routes_hard_prompts_to_the_strong_model(
    trained: tuple[LearnedRouter, OutcomeTable, np.ndarray],
) -> None:
    router, _, _ = trained
    test, vectors = _synthetic(n=300, seed=7)
    features = router.features(test.prompts, vectors)
    chosen = router.choose_many(features, 0.95)
    hard = np.array([g == "hard" for g in test.groups])
    assert (chosen[hard] == 1).mean() > 0.9
    assert (chosen[~hard] == 0).mean() > 0.9
    # the replayed accuracy keeps the target at a fraction of the strong model's cost
    picked = test.scores[np.arange(len(test)), [1 - c for c in chosen]]  # columns are strong, cheap
    assert picked.mean() >= 0.95 * test.scores[:, 0].mean() - 0.02


def test_lower_target_is_never_dearer(
    trained: tuple[LearnedRouter, OutcomeTable, np.ndarray],
) -> None:
    router, table, vectors = trained
    features = router.features(table.prompts, vectors)
    strong_share = [
        float((router.choose_many(features, q) == 1).mean()) for q in (0.6, 0.8, 0.95, 1.0)
    ]
    assert strong_share == sorted(strong_share)
    assert router.lam(0.6) >= router.lam(0.95) >= router.lam(1.0)
    with pytest.raises(ConfigError, match="target_quality"):
        router.lam(1.5)


def test_choose_returns_scores_per_candidate(
    trained: tuple[LearnedRouter, OutcomeTable, np.ndarray],
) -> None:
    router, table, vectors = trained
    row = router.features(table.prompts[:1], vectors[:1])
    name, scores = router.choose(row[0], 0.95)
    assert name in router.candidates
    assert set(scores) == {"cheap", "strong"}
    assert all(0 <= p <= 1 for p in scores.values())


def test_router_file_round_trip(
    tmp_path: Path, trained: tuple[LearnedRouter, OutcomeTable, np.ndarray]
) -> None:
    router, table, vectors = trained
    path = tmp_path / "router.json"
    router.save(path)
    assert path.stat().st_size < 20_000
    started = time.thread_time()  # CPU time: other processes on a busy machine do not count
    loaded = LearnedRouter.load(path)
    assert time.thread_time() - started < 0.05
    assert loaded.candidates == router.candidates
    assert loaded.calibration == router.calibration
    assert loaded.metadata["prompts"] == len(table)
    features = router.features(table.prompts, vectors)
    np.testing.assert_allclose(loaded.predict(features), router.predict(features), atol=1e-5)


def test_bad_router_files(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read router file"):
        LearnedRouter.load(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ConfigError, match="not an Areion router file"):
        LearnedRouter.load(path)


def test_wrong_embedding_size(trained: tuple[LearnedRouter, OutcomeTable, np.ndarray]) -> None:
    router, table, _ = trained
    with pytest.raises(ConfigError, match="dimensions"):
        router.features(table.prompts[:1], np.zeros((1, DIM + 1)))


def test_too_little_data() -> None:
    table, vectors = _synthetic(n=10)
    with pytest.raises(ConfigError, match="too few prompts"):
        train_router(table, vectors)
    with pytest.raises(ConfigError, match="at least two"):
        train_router(table, vectors, candidates=["cheap"])


def test_embedding_text_keeps_the_end_of_long_prompts() -> None:
    short = "What is the capital of France?"
    assert embedding_text(short) == short
    long = "example " * 400 + "the question that matters?"
    assert embedding_text(long).endswith("the question that matters?")
    assert len(embedding_text(long)) <= 1200


def _clustered(n: int = 300, seed: int = 3) -> tuple[OutcomeTable, np.ndarray]:
    """Prompts whose vectors lie near +e0 (easy) or -e0 (hard), one line each."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.5
    vectors = rng.normal(scale=0.2, size=(n, DIM))
    vectors[:, 0] = np.where(hard, -1.0, 1.0)
    cheap = np.where(hard, rng.random(n) < 0.1, rng.random(n) < 0.95).astype(float)
    table = OutcomeTable(
        models=["cheap", "strong"],
        prompts=[f"question {i}?" for i in range(n)],
        groups=["hard" if h else "easy" for h in hard],
        scores=np.stack([cheap, np.ones(n)], axis=1),
        costs=np.tile([0.001, 0.02], (n, 1)),
    )
    return table, vectors.astype(np.float32)


@pytest.fixture(scope="module")
def clustered() -> LearnedRouter:
    table, vectors = _clustered()
    return train_router(table, vectors)


def _along(axis: int) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[axis] = 1.0
    return vector


def test_a_prompt_far_from_the_training_prompts_goes_to_the_strongest(
    clustered: LearnedRouter,
) -> None:
    router = clustered
    easy = router.decide("question 1001?", _along(0), 0.95)
    assert easy.candidate == "cheap" and not easy.out_of_domain
    # +e5 is orthogonal to every training prompt: the classifiers never saw its like.
    far = router.decide("question 1002?", _along(5), 0.95)
    assert far.out_of_domain and far.candidate == "strong"
    assert set(far.scores) == {"cheap", "strong"}


def test_a_prompt_of_another_format_goes_to_the_strongest(clustered: LearnedRouter) -> None:
    """Zero-shot one-line training prompts; a few-shot multiple-choice prompt that embeds
    close to them is still out of domain: its lines, choices and shots are off the range."""
    few_shot = "\n".join(
        ["Q: pick one", "A) x", "B) y", "Answer: A", "", "Q: pick again", "A) x", "B) y", "Answer:"]
    )
    decision = clustered.decide(few_shot, _along(0), 0.95)
    assert decision.out_of_domain and decision.candidate == "strong"
    chosen, outside = clustered.route_many(
        ["question 7?", few_shot], np.stack([_along(0), _along(0)]), 0.95
    )
    assert outside.tolist() == [False, True]
    assert [clustered.candidates[int(c)] for c in chosen] == ["cheap", "strong"]
    chosen, _ = clustered.route_many(
        ["question 7?", few_shot], np.stack([_along(0), _along(0)]), 0.95, fallback=False
    )
    assert [clustered.candidates[int(c)] for c in chosen] == ["cheap", "cheap"]


def test_held_out_training_like_prompts_are_in_domain(clustered: LearnedRouter) -> None:
    table, vectors = _clustered(n=200, seed=11)
    assert clustered.out_of_domain(table.prompts, vectors).mean() <= 0.05


def test_the_domain_survives_the_router_file(tmp_path: Path, clustered: LearnedRouter) -> None:
    path = tmp_path / "router.json"
    clustered.save(path)
    loaded = LearnedRouter.load(path)
    assert loaded.domain is not None and clustered.domain is not None
    assert loaded.domain.min_similarity == pytest.approx(clustered.domain.min_similarity)
    assert loaded.candidates[loaded.strongest] == "strong"
    assert loaded.decide("question 1002?", _along(5), 0.95).out_of_domain
    # A version 2 file (before the domain check) still loads and never falls back.
    document = json.loads(path.read_text())
    document["version"] = 2
    del document["domain"], document["strongest"]
    path.write_text(json.dumps(document))
    old = LearnedRouter.load(path)
    assert old.domain is None
    assert not old.decide("question 1002?", _along(5), 0.95).out_of_domain
    document["version"] = 1
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="retrain"):
        LearnedRouter.load(path)
