"""The spend query's plan, the latency histogram's quantiles, and the report's inputs."""

from __future__ import annotations

import io
import itertools
import random

import pytest

from areion.errors import RequestError
from areion.report import Progress, parse_since
from areion.spend import parse_group_by, parse_time
from areion.store.rollups import BUCKETS, LATENCY_EDGES, SpendQuery, quantile, segments

DAY = 86400


@pytest.mark.parametrize("seed", range(20))
def test_segments_cover_the_span_once_from_the_coarsest_sources(seed: int) -> None:
    rng = random.Random(seed)
    since = 1_700_000_000 + rng.uniform(0, 5 * DAY)
    until = since + rng.choice([30.0, 5000.0, 2 * DAY + 77.0, 40 * DAY + 0.5])
    for group_by in ((), ("hour",), ("run",)):
        parts = sorted(segments(SpendQuery(group_by=group_by, since=since, until=until)),
                       key=lambda part: part[1])  # fmt: skip
        assert parts[0][1] == since and parts[-1][2] == until
        assert all(a[2] == b[1] for a, b in itertools.pairwise(parts))
        for source, start, end in parts:
            if source == "day":
                assert start % DAY == 0 and end % DAY == 0 and group_by == ()
            if source == "hour":
                assert start % 3600 == 0 and end % 3600 == 0
            if source == "raw" and group_by != ("run",):
                assert end - start < 2 * 3600  # only the edges (no whole hour) read the ledger
        if group_by == ("run",):
            assert parts == [("raw", since, until)]


def test_quantiles_come_from_the_buckets_within_their_resolution() -> None:
    rng = random.Random(3)
    latencies = [rng.lognormvariate(-1.5, 1.0) for _ in range(5000)]
    histogram = [0] * BUCKETS
    for seconds in latencies:
        histogram[sum(1 for edge in LATENCY_EDGES if seconds >= edge)] += 1
    latencies.sort()
    for q in (0.5, 0.95):
        exact = latencies[int(q * len(latencies))]
        found = quantile(histogram, q)
        assert found is not None and abs(found - exact) / exact < 0.2
    assert quantile([0] * BUCKETS, 0.5) is None


def test_times_and_dimensions_are_read_or_refused_by_name() -> None:
    assert parse_time("1700000000", "since") == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20Z", "since") == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20", "since") == 1_700_000_000  # UTC unless told
    assert parse_since("2h", "--since", now=10_000.0) == 10_000.0 - 7200
    for bad in ("soon", "inf", "-5"):
        with pytest.raises(RequestError) as error:
            parse_time(bad, "until")
        assert error.value.param == "until"
    assert parse_group_by(" tenant, model ,") == ("tenant", "model")
    with pytest.raises(RequestError, match="unknown dimension 'colour'"):
        parse_group_by("tenant,colour")


def test_the_progress_bar_shows_only_for_many_rows_on_a_terminal() -> None:
    quiet = io.StringIO()
    bar = Progress(2, 10_000_000, quiet)  # not a terminal
    bar.step("by_tenant")
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    bar = Progress(2, 12_000, shown, force=True)
    bar.step("by_tenant")
    bar.step("tasks")
    assert "12,000 ledger rows" in shown.getvalue() and "2/2" in shown.getvalue()
    assert shown.getvalue().endswith("\n")
