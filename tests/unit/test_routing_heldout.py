"""Held-out splits of outcome tables (areion.routing.heldout) and their summary."""

from __future__ import annotations

import numpy as np
import pytest

from areion.errors import ConfigError
from areion.routing.data import OutcomeTable
from areion.routing.heldout import HeldoutReport, SplitFigures, Targets, heldout_splits


def _table(sizes: dict[str, int]) -> OutcomeTable:
    groups = [name for name, n in sizes.items() for _ in range(n)]
    n = len(groups)
    return OutcomeTable(
        models=["cheap", "strong"],
        prompts=[f"p{i}" for i in range(n)],
        groups=groups,
        scores=np.ones((n, 2)),
        costs=np.tile([0.001, 0.01], (n, 1)),
    )


def test_random_splits_hold_out_thirty_percent_of_every_group() -> None:
    table = _table({"a": 100, "b": 50, "c": 10})
    splits = heldout_splits(table, "random", 10)
    assert len(splits) == 10
    groups = np.array(table.groups)
    seen = set()
    for _, train, held in splits:
        assert not set(train) & set(held) and len(train) + len(held) == len(table)
        assert [int((groups[held] == g).sum()) for g in "abc"] == [30, 15, 3]
        seen.add(tuple(held))
    assert len(seen) == 10  # ten different splits
    again = heldout_splits(table, "random", 10)
    assert all((a[2] == b[2]).all() for a, b in zip(splits, again, strict=True))


def test_group_splits_hold_out_whole_groups() -> None:
    table = _table({f"s{i}": 5 for i in range(10)})
    groups = np.array(table.groups)
    for _, train, held in heldout_splits(table, "groups", 5, seed=3):
        assert len(set(groups[held])) == 3
        assert not set(groups[held]) & set(groups[train])


def test_leave_one_out_holds_out_each_group_once() -> None:
    table = _table({"a": 4, "b": 6, "c": 5})
    splits = heldout_splits(table, "leave-one-out", 0)
    assert [label for label, _, _ in splits] == ["held out: a", "held out: b", "held out: c"]
    assert [len(held) for _, _, held in splits] == [4, 6, 5]
    with pytest.raises(ConfigError, match="at least two groups"):
        heldout_splits(_table({"a": 5}), "leave-one-out", 0)


def test_summary_is_judged_at_the_worst_split() -> None:
    targets = Targets(quality=0.95, max_cost=0.2)
    report = HeldoutReport(mode="random", policy="cascade", targets=targets)
    report.splits = [
        SplitFigures(label="1", quality=0.97, cost=0.15, strong_calls=0.1, out_of_domain=0),
        SplitFigures(label="2", quality=0.94, cost=0.18, strong_calls=0.1, out_of_domain=0),
    ]
    summary = report.summary()
    assert summary["quality_mean"] == pytest.approx(0.955)
    assert summary["quality_worst"] == pytest.approx(0.94)
    assert summary["passed"] == 1
    text = report.text()
    assert "worst 94.0% (target >= 95%: FAIL)" in text
    assert "worst 18.0% (target <= 20%: PASS)" in text
