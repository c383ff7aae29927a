"""The sequential test, by seeded simulation: honest under daily peeking, and powerful."""

from __future__ import annotations

import numpy as np

from areion.telemetry.sequential import (
    UnitData,
    compare_ratio,
    compare_success,
    quantile_interval,
    ratio_interval,
    success_path,
)

LOOK_EVERY = 50


def _experiment(
    rng: np.random.Generator, n: int, p_control: float, p_variant: float
) -> tuple[np.ndarray, UnitData]:
    in_variant = rng.random(n) < 0.5
    p = np.where(in_variant, p_variant, p_control)
    successes = (rng.random(n) < p).astype(float)
    one = np.ones(n)
    return in_variant, UnitData(
        tasks=one, successes=successes, cost_usd=one, tokens=one, latency_s=one
    )


def _detected(rng: np.random.Generator, n: int, p_control: float, p_variant: float) -> bool:
    in_variant, data = _experiment(rng, n, p_control, p_variant)
    looks = np.arange(LOOK_EVERY, n + 1, LOOK_EVERY)
    _, low, high = success_path(in_variant, data, looks, alpha=0.05)
    return bool(np.any((low > 0) | (high < 0)))


def test_peeking_every_50_units_keeps_false_positives_under_five_percent() -> None:
    rng = np.random.default_rng(20261204)
    for p in (0.5, 0.9, 0.1):
        false_positives = sum(_detected(rng, 4000, p, p) for _ in range(1000))
        assert false_positives / 1000 <= 0.05, (p, false_positives)


def test_a_ten_point_difference_is_found_by_2000_units_per_arm() -> None:
    rng = np.random.default_rng(42)
    found = sum(_detected(rng, 4000, 0.5, 0.6) for _ in range(300))
    assert found / 300 >= 0.80


def test_the_path_ends_where_the_single_comparison_is() -> None:
    rng = np.random.default_rng(3)
    in_variant, data = _experiment(rng, 1000, 0.4, 0.5)
    estimate, low, high = success_path(in_variant, data, np.array([1000]), alpha=0.05)

    def arm(mask: np.ndarray) -> UnitData:
        return UnitData(
            tasks=data.tasks[mask],
            successes=data.successes[mask],
            cost_usd=data.cost_usd[mask],
            tokens=data.tokens[mask],
            latency_s=data.latency_s[mask],
        )

    single = compare_success(arm(in_variant), arm(~in_variant), alpha=0.05)
    assert np.isclose(single.interval.estimate, estimate[0])
    assert np.isclose(single.interval.low, low[0])
    assert np.isclose(single.interval.high, high[0])


def test_ratio_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(400):
        tasks = rng.integers(1, 5, 300).astype(float)
        cost = tasks * rng.gamma(2.0, 0.01, 300)
        interval = ratio_interval(cost, tasks)
        covered += interval.low <= 0.02 <= interval.high
    assert 0.92 <= covered / 400 <= 0.98


def test_a_cost_ratio_is_significant_only_when_it_differs() -> None:
    rng = np.random.default_rng(6)
    tasks = np.ones(500)
    same = compare_ratio(
        "cost", (rng.gamma(2.0, 0.01, 500), tasks), (rng.gamma(2.0, 0.01, 500), tasks), alpha=0.05
    )
    assert not (same.above or same.below)
    dear = compare_ratio(
        "cost", (rng.gamma(2.0, 0.02, 500), tasks), (rng.gamma(2.0, 0.01, 500), tasks), alpha=0.05
    )
    assert dear.above and 1.6 < dear.interval.estimate < 2.4


def test_quantile_interval_brackets_the_quantile() -> None:
    values = np.arange(1.0, 1001.0)
    p95 = quantile_interval(values, 0.95)
    assert p95.low <= p95.estimate <= p95.high
    assert p95.low >= 930
    assert p95.high <= 965
    empty = quantile_interval(np.zeros(0), 0.5)
    assert empty.as_dict() == {"estimate": None, "low": None, "high": None}
