"""Choosing a deployment: least loaded, capacity-aware, breaker- and cooldown-aware."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from areion.config import ModelConfig, parse_config
from areion.gateway.deployments import Deployment, ModelGroup, build_groups, pick_deployment
from areion.gateway.load import RemoteLoad
from areion.gateway.resilience import CircuitBreaker
from areion.pricing import Price
from areion.telemetry import Metrics

NOW = 1_000.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def _deployment(metrics: Metrics, name: str, **fields: Any) -> Deployment:
    max_concurrency = fields.pop("max_concurrency", None)
    return Deployment(
        id=name,
        group="fast",
        config=ModelConfig(name="fast", provider="sim", max_concurrency=max_concurrency),
        provider=object(),  # type: ignore[arg-type]  # never called when picking
        price=Price(input=0.0, output=0.0),
        breaker=CircuitBreaker(failure_threshold=1, reset_timeout=30.0),
        metrics=metrics.for_deployment("fast", name),
        **fields,
    )


def _group(*deployments: Deployment) -> ModelGroup:
    return ModelGroup(name="fast", deployments=list(deployments))


def _pick(group: ModelGroup, exclude: tuple[Deployment, ...] = (), seed: int = 0) -> Any:
    return pick_deployment(group, NOW, random.Random(seed), exclude)


def _trip(deployment: Deployment) -> None:
    deployment.breaker.record_failure(NOW - 1.0)


def test_picks_the_least_outstanding(metrics: Metrics) -> None:
    a = _deployment(metrics, "a", outstanding=5)
    b = _deployment(metrics, "b", outstanding=2)
    c = _deployment(metrics, "c", outstanding=9)
    assert _pick(_group(a, b, c)) is b
    b.outstanding = 6
    assert _pick(_group(a, b, c)) is a


def test_avoids_a_deployment_with_a_queue(metrics: Metrics) -> None:
    queued = _deployment(metrics, "queued", remote_load=RemoteLoad(running=2, waiting=30))
    busy = _deployment(metrics, "busy", outstanding=6)
    assert _pick(_group(queued, busy)) is busy


def test_reported_running_counts_even_without_our_calls(metrics: Metrics) -> None:
    # Other clients keep the first deployment busy; our own count is zero on both.
    shared = _deployment(metrics, "shared", remote_load=RemoteLoad(running=40))
    idle = _deployment(metrics, "idle", remote_load=RemoteLoad(running=1))
    assert _pick(_group(shared, idle)) is idle


def test_avoids_a_saturated_kv_cache(metrics: Metrics) -> None:
    full = _deployment(metrics, "full", remote_load=RemoteLoad(running=1, kv_cache_usage=0.97))
    roomy = _deployment(metrics, "roomy", remote_load=RemoteLoad(running=4, kv_cache_usage=0.6))
    assert _pick(_group(full, roomy)) is roomy


def test_kv_cache_threshold_is_inclusive(metrics: Metrics) -> None:
    at = _deployment(metrics, "at", remote_load=RemoteLoad(running=1, kv_cache_usage=0.95))
    below = _deployment(metrics, "below", remote_load=RemoteLoad(running=2, kv_cache_usage=0.94))
    assert _pick(_group(at, below)) is below


def test_live_load_is_read_at_pick_time(metrics: Metrics) -> None:
    reading = {"waiting": 0.0}

    def live() -> RemoteLoad:
        return RemoteLoad(waiting=reading["waiting"])

    in_process = _deployment(metrics, "in-process", live_load=live)
    other = _deployment(metrics, "other", outstanding=3)
    group = _group(in_process, other)
    assert _pick(group) is in_process
    reading["waiting"] = 10.0
    assert _pick(group) is other


def test_live_load_wins_over_a_stale_remote_reading(metrics: Metrics) -> None:
    d = _deployment(
        metrics,
        "d",
        remote_load=RemoteLoad(waiting=0),
        live_load=lambda: RemoteLoad(waiting=50),
    )
    other = _deployment(metrics, "other", outstanding=4)
    assert _pick(_group(d, other)) is other


def test_max_concurrency_reached_is_avoided(metrics: Metrics) -> None:
    limited = _deployment(metrics, "limited", outstanding=4, max_concurrency=4)
    loaded = _deployment(metrics, "loaded", outstanding=50)
    assert _pick(_group(limited, loaded)) is loaded
    limited.outstanding = 3
    assert _pick(_group(limited, loaded)) is limited


def test_skips_an_open_breaker(metrics: Metrics) -> None:
    broken = _deployment(metrics, "broken")
    busy = _deployment(metrics, "busy", outstanding=20)
    _trip(broken)
    assert _pick(_group(broken, busy)) is busy


def test_breaker_past_its_reset_timeout_can_be_picked(metrics: Metrics) -> None:
    recovering = _deployment(metrics, "recovering")
    busy = _deployment(metrics, "busy", outstanding=20)
    recovering.breaker.record_failure(NOW - 31.0)
    assert _pick(_group(recovering, busy)) is recovering


def test_none_when_every_breaker_is_open(metrics: Metrics) -> None:
    a, b = _deployment(metrics, "a"), _deployment(metrics, "b")
    _trip(a)
    _trip(b)
    assert _pick(_group(a, b)) is None
    assert _pick(_group()) is None


def test_excluded_deployment_is_passed_over(metrics: Metrics) -> None:
    failed = _deployment(metrics, "failed")
    busy = _deployment(metrics, "busy", outstanding=20)
    assert _pick(_group(failed, busy), exclude=(failed,)) is busy


def test_cooling_down_deployment_is_passed_over(metrics: Metrics) -> None:
    throttled = _deployment(metrics, "throttled", cooldown_until=NOW + 2.0)
    busy = _deployment(metrics, "busy", outstanding=20)
    assert _pick(_group(throttled, busy)) is busy
    throttled.cooldown_until = NOW  # cooldown over
    assert _pick(_group(throttled, busy)) is throttled


def test_excluded_deployment_is_retried_when_nothing_else_is_available(
    metrics: Metrics,
) -> None:
    # A one-deployment group must still be retryable after its first failure.
    only = _deployment(metrics, "only")
    assert _pick(_group(only), exclude=(only,)) is only


def test_cooling_down_deployment_is_used_when_nothing_else_is_available(
    metrics: Metrics,
) -> None:
    throttled = _deployment(metrics, "throttled", cooldown_until=NOW + 1.0)
    broken = _deployment(metrics, "broken")
    _trip(broken)
    assert _pick(_group(throttled, broken)) is throttled


def test_when_all_are_passed_over_the_one_free_soonest_is_chosen(metrics: Metrics) -> None:
    later = _deployment(metrics, "later", cooldown_until=NOW + 5.0)
    sooner = _deployment(metrics, "sooner", cooldown_until=NOW + 1.0)
    failed = _deployment(metrics, "failed", outstanding=3)
    # `failed` has no cooldown, so it is free now: it goes first
    assert _pick(_group(later, sooner, failed), exclude=(failed,)) is failed
    assert _pick(_group(later, sooner)) is sooner


def test_open_breaker_is_not_a_last_resort(metrics: Metrics) -> None:
    failed = _deployment(metrics, "failed")
    broken = _deployment(metrics, "broken")
    _trip(failed)
    _trip(broken)
    assert _pick(_group(failed, broken), exclude=(failed,)) is None


def test_ties_are_spread(metrics: Metrics) -> None:
    a = _deployment(metrics, "a", outstanding=1)
    b = _deployment(metrics, "b", outstanding=1)
    c = _deployment(metrics, "c", outstanding=2)
    group = _group(a, b, c)
    rng = random.Random(1234)
    picks = Counter(pick_deployment(group, NOW, rng).id for _ in range(400))  # type: ignore[union-attr]
    assert set(picks) == {"a", "b"}
    assert picks["a"] > 120
    assert picks["b"] > 120


# --- build_groups -----------------------------------------------------------------


def test_build_groups_gives_repeated_groups_distinct_ids(metrics: Metrics) -> None:
    config = parse_config(
        {
            "models": [
                {"name": "fast", "provider": "sim", "model": "sim-fast"},
                {"name": "fast", "provider": "sim", "model": "sim-fast"},
                {"name": "fast", "provider": "sim", "model": "sim-strong"},
                {"name": "strong", "provider": "sim", "model": "sim-strong", "id": "gpu-7"},
            ]
        }
    )
    groups = build_groups(config, metrics)
    assert list(groups) == ["fast", "strong"]
    assert [d.id for d in groups["fast"].deployments] == [
        "fast/sim-fast",
        "fast/sim-fast#2",
        "fast/sim-strong",
    ]
    assert [d.id for d in groups["strong"].deployments] == ["gpu-7"]
    assert all(d.group == "fast" for d in groups["fast"].deployments)


def test_build_groups_uses_configured_price_over_list_price(metrics: Metrics) -> None:
    config = parse_config(
        {
            "models": [
                {"name": "a", "provider": "sim", "model": "sim-fast"},
                {
                    "name": "b",
                    "provider": "sim",
                    "model": "sim-fast",
                    "price": {"input": 1.0, "output": 2.0},
                },
            ]
        }
    )
    groups = build_groups(config, metrics)
    assert groups["a"].deployments[0].price == Price(input=0.15, output=0.60, cached_input=0.075)
    assert groups["b"].deployments[0].price == Price(input=1.0, output=2.0)


def test_generated_ids_do_not_collide_with_explicit_ids(metrics: Metrics) -> None:
    config = parse_config(
        {
            "models": [
                {"name": "fast", "provider": "sim", "model": "sim-fast", "id": "fast/sim-fast"},
                {"name": "fast", "provider": "sim", "model": "sim-fast"},
            ]
        }
    )
    ids = [d.id for d in build_groups(config, metrics)["fast"].deployments]
    assert len(set(ids)) == 2
