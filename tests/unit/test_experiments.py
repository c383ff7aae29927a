"""Experiments: assignment by hash, and the verdicts a team acts on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from areion.config import ExperimentConfig
from areion.errors import ConfigError
from areion.telemetry.experiments import Experiments, assign
from areion.telemetry.sequential import UnitData
from areion.telemetry.verdicts import analyse

UNITS = [f"session-{i}" for i in range(100_000)]


def _shares(weights: list[tuple[str, float]], units: list[str] = UNITS) -> dict[str, float]:
    counts: dict[str, int] = {}
    for unit in units:
        name = assign("exp", unit, weights)
        counts[name] = counts.get(name, 0) + 1
    return {name: count / len(units) for name, count in counts.items()}


@pytest.mark.parametrize(
    "weights",
    [
        [("control", 90.0), ("v2", 10.0)],
        [("v2", 10.0), ("control", 90.0)],
        [("a", 1.0), ("b", 1.0), ("c", 2.0)],
        [("c", 2.0), ("a", 1.0), ("b", 1.0), ("off", 0.0)],
    ],
)
def test_units_split_by_weight_within_one_percent(weights: list[tuple[str, float]]) -> None:
    shares = _shares(weights)
    total = sum(w for _, w in weights)
    for name, weight in weights:
        assert abs(shares.get(name, 0.0) - weight / total) <= 0.01, (name, shares)
    assert "off" not in shares


def test_the_order_variants_are_written_in_changes_no_unit() -> None:
    units = UNITS[:5000]
    one = [assign("exp", u, [("control", 90.0), ("v2", 10.0)]) for u in units]
    other = [assign("exp", u, [("v2", 10.0), ("control", 90.0)]) for u in units]
    assert one == other


def test_raising_a_weight_moves_units_only_to_that_variant() -> None:
    units = UNITS[:20_000]
    before = [assign("exp", u, [("control", 90.0), ("v2", 5.0), ("v3", 5.0)]) for u in units]
    after = [assign("exp", u, [("control", 90.0), ("v2", 15.0), ("v3", 5.0)]) for u in units]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert moved, "raising v2's weight must move some units to it"
    assert all(a == "v2" for _, a in moved)
    # As few as it has to: v2 goes from 5% to 15/110 of the units.
    share = sum(a == "v2" for a in after) / len(units)
    assert abs(share - 15 / 110) < 0.01


def test_experiments_draw_independently() -> None:
    # The same unit in two experiments: knowing its variant in one says nothing of the other.
    weights = [("control", 50.0), ("v2", 50.0)]
    units = UNITS[:20_000]
    first = np.array([assign("one", u, weights) == "v2" for u in units])
    second = np.array([assign("two", u, weights) == "v2" for u in units])
    both = float((first & second).mean())
    assert abs(both - 0.25) < 0.02


def test_assignment_is_the_same_in_another_process() -> None:
    # Replicas and restarts agree: nothing depends on Python's per-process hash seed.
    script = (
        "from areion.telemetry.experiments import assign\n"
        "weights = [('control', 50), ('v2', 50)]\n"
        "print(''.join(assign('exp', f'u{i}', weights)[0] for i in range(2000)))"
    )
    here = "".join(assign("exp", f"u{i}", [("control", 50), ("v2", 50)])[0] for i in range(2000))
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == here


def test_no_variant_with_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="no variant has a weight"):
        assign("exp", "u", [("control", 0.0)])


def _config(**extra: object) -> ExperimentConfig:
    body: dict[str, object] = {
        "name": "prompt-v2",
        "applies_to": {"agent": "support"},
        "variants": [{"name": "control", "weight": 50}, {"name": "v2", "weight": 50}],
        "stop": {"min_units_per_variant": 100},
    }
    body.update(extra)
    return ExperimentConfig.model_validate(body)


def _units(rng: np.random.Generator, n: int, *, p: float, cost: float) -> UnitData:
    tasks = rng.integers(1, 4, n).astype(float)
    successes = rng.binomial(tasks.astype(int), p).astype(float)
    cost_usd = tasks * cost * rng.lognormal(0.0, 0.3, n)
    return UnitData(
        tasks=tasks,
        successes=successes,
        cost_usd=cost_usd,
        tokens=tasks * 1000.0,
        latency_s=rng.lognormal(0.0, 0.2, n),
    )


def test_a_better_prompt_wins_with_its_cost_per_successful_task() -> None:
    rng = np.random.default_rng(7)
    control = _units(rng, 600, p=0.6, cost=0.05)
    v2 = _units(rng, 600, p=0.75, cost=0.03)
    report = analyse(_config(), {"control": control, "v2": v2})
    assert report.verdict == "winner: v2"
    by_name = {v.name: v for v in report.variants}
    expected = float(v2.cost_usd.sum() / v2.successes.sum())
    assert by_name["v2"].cost_per_success.estimate == pytest.approx(expected)
    low, high = by_name["v2"].cost_per_success.low, by_name["v2"].cost_per_success.high
    assert low < expected < high
    assert by_name["v2"].cost_per_success.estimate < by_name["control"].cost_per_success.estimate


def test_too_few_units_keep_it_running() -> None:
    rng = np.random.default_rng(8)
    report = analyse(
        _config(),
        {"control": _units(rng, 50, p=0.2, cost=0.05), "v2": _units(rng, 50, p=0.9, cost=0.01)},
    )
    assert report.verdict == "running"


def test_equal_variants_settle_on_no_difference() -> None:
    rng = np.random.default_rng(9)
    report = analyse(
        _config(stop={"min_units_per_variant": 100, "min_effect": 0.1}),
        {
            "control": _units(rng, 20_000, p=0.7, cost=0.05),
            "v2": _units(rng, 20_000, p=0.7, cost=0.05),
        },
    )
    assert report.verdict == "no difference"


def test_a_guardrail_stops_a_variant_twice_as_dear() -> None:
    rng = np.random.default_rng(10)
    report = analyse(
        _config(guardrails={"max_cost_per_task_ratio": 1.5}),
        {"control": _units(rng, 300, p=0.6, cost=0.05), "v2": _units(rng, 300, p=0.6, cost=0.10)},
    )
    assert report.verdict == "stopped by guardrail"
    assert report.stopped == ["v2"]
    assert "cost per task" in report.variants[1].stopped


def test_a_dearer_variant_within_its_guardrail_runs_on() -> None:
    rng = np.random.default_rng(11)
    report = analyse(
        _config(guardrails={"max_cost_per_task_ratio": 1.5}),
        {"control": _units(rng, 300, p=0.6, cost=0.05), "v2": _units(rng, 300, p=0.6, cost=0.055)},
    )
    assert report.stopped == []


def test_the_config_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="control 'control' is not a variant"):
        _config(variants=[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}])
    with pytest.raises(ValueError, match="exactly one of agent, model or route"):
        _config(applies_to={"agent": "a", "model": "m"})
    with pytest.raises(ValueError, match="cannot be set"):
        _config(
            variants=[
                {"name": "control", "weight": 1},
                {"name": "v2", "weight": 1, "params": {"api_key": "x"}},
            ]
        )


def _live(tmp_path: Path, **extra: object) -> Experiments:
    (tmp_path / "v2.md").write_text("Be brief.", encoding="utf-8")
    body: dict[str, object] = {
        "name": "prompt-v2",
        "applies_to": {"agent": "support"},
        "variants": [
            {"name": "control", "weight": 50},
            {"name": "v2", "weight": 50, "instructions_file": "v2.md"},
        ],
    }
    body.update(extra)
    return Experiments([ExperimentConfig.model_validate(body)], base=tmp_path)


def test_a_session_keeps_its_variant_and_v2_reads_its_instructions(tmp_path: Path) -> None:
    live = _live(tmp_path)
    seen = {}
    for i in range(200):
        first = live.for_run("support", run_id=f"run_{i}", session=f"s{i % 20}", user=None)
        again = live.for_run("support", run_id=f"other_{i}", session=f"s{i % 20}", user=None)
        assert first is not None and again is not None
        assert first.variant.name == again.variant.name
        seen[first.variant.name] = first
    assert set(seen) == {"control", "v2"}
    assert seen["v2"].instructions == "Be brief."
    assert seen["control"].instructions is None
    assert seen["v2"].label == "prompt-v2:v2"
    assert live.for_run("other-agent", run_id="r", session="s", user=None) is None


def test_a_stopped_variant_sends_its_units_back_to_control(tmp_path: Path) -> None:
    live = _live(tmp_path)
    sessions = [f"s{i}" for i in range(400)]

    def variants() -> list[str]:
        found = [live.for_run("support", run_id="r", session=s, user=None) for s in sessions]
        return [a.variant.name for a in found if a is not None]

    before = variants()
    live.settle("prompt-v2", stopped=["v2"])
    after = variants()
    assert set(after) == {"control"}
    # Control's own units never move.
    assert all(a == "control" for b, a in zip(before, after, strict=True) if b == "control")
    live.settle("prompt-v2", promoted="v2")
    assert set(variants()) == {"v2"}


def test_a_call_without_the_units_id_is_its_own_unit(tmp_path: Path) -> None:
    live = Experiments(
        [
            ExperimentConfig.model_validate(
                {
                    "name": "m",
                    "applies_to": {"model": "fast"},
                    "unit": "user",
                    "variants": [
                        {"name": "control", "weight": 1},
                        {"name": "strong", "weight": 1, "model": "strong"},
                    ],
                }
            )
        ]
    )
    named = [
        live.for_call("fast", request_id=f"req{i}", session=None, user="alice") for i in range(50)
    ]
    assert len({a.variant.name for a in named if a}) == 1
    anonymous = [
        live.for_call("fast", request_id=f"req{i}", session=None, user=None) for i in range(50)
    ]
    assert {a.variant.name for a in anonymous if a} == {"control", "strong"}
    assert live.for_call("slow", request_id="r", session=None, user=None) is None


def test_a_missing_instructions_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"instructions_file: cannot read .*missing\.md"):
        Experiments(
            [
                ExperimentConfig.model_validate(
                    {
                        "name": "e",
                        "applies_to": {"agent": "a"},
                        "variants": [
                            {"name": "control", "weight": 1},
                            {"name": "v2", "weight": 1, "instructions_file": "missing.md"},
                        ],
                    }
                )
            ],
            base=tmp_path,
        )
