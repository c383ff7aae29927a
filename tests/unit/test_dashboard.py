"""The dashboard's own arithmetic: process figures read from the metrics registry, run
cursors, and the ranges and buckets of its views."""

from __future__ import annotations

import pytest

from areion.errors import RequestError
from areion.server import dashboard
from areion.store.run_pages import RunRow
from areion.telemetry.metrics import Metrics


def test_quantiles_of_a_prometheus_histogram_over_all_its_series() -> None:
    metrics = Metrics(models=["fast", "strong"])
    ttft = "gen_ai_client_operation_time_to_first_chunk_seconds"
    assert dashboard._histogram_quantiles(metrics.registry, ttft) == {
        "p50": None,
        "p95": None,
        "p99": None,
    }
    fast = metrics.for_deployment("fast", "fast/a", provider="openai")
    strong = metrics.for_deployment("strong", "strong/b", provider="openai")
    for _ in range(90):
        fast.chat.ttft.observe(0.015)  # the (0.01, 0.02] bucket
    for _ in range(10):
        strong.chat.ttft.observe(3.0)
    found = dashboard._histogram_quantiles(metrics.registry, ttft)
    assert found["p50"] is not None and 0.01 < found["p50"] <= 0.02
    assert found["p95"] is not None and found["p95"] > 1.0  # the slow group's calls
    assert found["p99"] is not None and found["p99"] >= found["p95"]


def test_counters_by_label() -> None:
    metrics = Metrics(models=["fast"])
    metrics.errors.labels("fast", "fast/a", "timeout").inc(3)
    metrics.errors.labels("fast", "fast/b", "timeout").inc()
    metrics.errors.labels("fast", "fast/a", "rate_limited").inc(2)
    assert dashboard._counter_by(metrics.registry, "areion_errors", "kind") == {
        "timeout": 4.0,
        "rate_limited": 2.0,
    }


def test_a_cursor_round_trips_and_a_forged_one_is_a_400() -> None:
    row = RunRow(
        run_id="r-1",
        tenant="acme",
        agent="a",
        status="finished",
        steps=1,
        cost_usd=0.0,
        pause_reason=None,
        created=1_764_000_000.125,
        updated=1_764_000_001.0,
    )
    assert dashboard._after(dashboard._cursor(row)) == (1_764_000_000.125, "acme", "r-1")
    assert dashboard._after(None) is None
    for bad in ("%%%", "bm90IGpzb24", "WzEsMl0"):  # not base64, not JSON, too short
        with pytest.raises(RequestError) as raised:
            dashboard._after(bad)
        assert raised.value.param == "cursor"


def test_buckets_cover_the_range() -> None:
    starts = dashboard._starts(7200.5, 4 * 3600.0 + 1, "hour")
    assert starts == [7200, 10800, 14400]
    assert dashboard._bucket(86400.0) == "hour" and dashboard._bucket(30 * 86400.0) == "day"
    assert dashboard._start_of_month(1_764_892_800.0 + 5) == 1_764_547_200.0  # 2025-12-01
