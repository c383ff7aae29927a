"""Outcome tables (areion.routing.data) and replay arithmetic (areion.routing.evaluate)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from areion.errors import ConfigError
from areion.routing.data import DEFAULT_OUTPUT_TOKENS, OutcomeTable, load_outcomes
from areion.routing.evaluate import (
    AGREE,
    DISAGREE,
    UNCOMPARABLE,
    Cascade,
    ModelResult,
    cascade_verdicts,
    fit_cascade,
    oracle,
    random_at_cost,
    replay_cascade,
    single_models,
)
from areion.tokenizer import count_tokens

SMALL, STRONG = "mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"


def write_routerbench(
    path: Path, rows: list[tuple[str, str, dict[str, tuple[str, float, float]]]]
) -> Path:
    """RouterBench-shaped CSV; each row: (prompt, task, model -> (answer, cost, score))."""
    models = list(rows[0][2])
    header = ["sample_id", "prompt", "eval_name", *models]
    header += [f"{m}|model_response" for m in models]
    header += [f"{m}|total_cost" for m in models]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for number, (prompt, task, answers) in enumerate(rows):
            out: list[object] = [f"{task}.{number}", repr([prompt]), task]
            out += [answers[m][2] for m in models]
            out += [repr([answers[m][0]]) for m in models]
            out += [answers[m][1] for m in models]
            writer.writerow(out)
    return path


def write_routellm(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_routerbench_scores_costs_and_answers(tmp_path: Path) -> None:
    file = write_routerbench(
        tmp_path / "arc.csv",
        [
            (
                "Q1?\nA) x\nB) y\nAnswer:",
                "arc",
                {SMALL: ("A\n", 0.001, 1.0), STRONG: ("A", 0.02, 1.0)},
            ),
            ("Q2?", "arc", {SMALL: ("B", 0.002, 0.0), STRONG: ("A", 0.03, 1.0)}),
        ],
    )
    table = load_outcomes(file)
    assert table.models == [SMALL, STRONG]
    assert table.prompts[0] == "Q1?\nA) x\nB) y\nAnswer:"  # list literal decoded
    assert table.groups == ["arc", "arc"]
    np.testing.assert_allclose(table.scores, [[1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(table.costs, [[0.001, 0.02], [0.002, 0.03]])
    assert table.responses is not None and table.responses[0] == ["A\n", "A"]
    assert table.model_index("mixtral-8x7b-chat") == 0  # the part after the org


def test_routellm_priced_from_tokens(tmp_path: Path) -> None:
    mixtral = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    prompt = "What is 2 + 2?\nA. 3\nB. 4\nAnswer:"
    file = write_routellm(
        tmp_path / "mmlu_math.csv",
        ["prompt", mixtral, STRONG],
        [[prompt, "True", "False"], ["Another question", "false", "TRUE"]],
    )
    table = load_outcomes(file)
    assert table.models == [mixtral, STRONG]
    np.testing.assert_allclose(table.scores, [[1.0, 0.0], [0.0, 1.0]])
    tokens = count_tokens(prompt)
    assert table.costs[0, 1] == pytest.approx((tokens * 10 + DEFAULT_OUTPUT_TOKENS * 30) / 1e6)
    assert table.costs[0, 0] == pytest.approx((tokens + DEFAULT_OUTPUT_TOKENS) * 0.6 / 1e6)
    assert table.groups == ["mmlu_math", "mmlu_math"]
    assert table.responses is None


def test_routellm_output_tokens_from_responses(tmp_path: Path) -> None:
    answer = "The answer is B because two and two make four."
    file = write_routellm(
        tmp_path / "r.csv",
        ["prompt", STRONG, f"{STRONG}_response", "mixtral-8x7b-instruct-v0.1"],
        [["Q", "True", answer, "False"]],
    )
    table = load_outcomes(file)
    assert table.models == [STRONG, "mixtral-8x7b-instruct-v0.1"]
    expected = (count_tokens("Q") * 10 + count_tokens(answer) * 30) / 1e6
    assert table.costs[0, 0] == pytest.approx(expected)


def test_folder_merges_formats_and_drops_contaminated(tmp_path: Path) -> None:
    write_routerbench(
        tmp_path / "a.csv",
        [("Shared?", "arc", {STRONG: ("A", 0.02, 1.0), SMALL: ("B", 0.001, 0.0)})],
    )
    write_routellm(
        tmp_path / "b.csv",
        ["prompt", STRONG],
        [["Kept question", "True"], ["Leaked question", "False"]],
    )
    (tmp_path / "contaminated_prompts.jsonl").write_text(
        json.dumps({"train_prompt": "x", "eval_prompt": "Leaked   question"}) + "\n"
    )
    table = load_outcomes(tmp_path)
    assert table.prompts == ["Shared?", "Kept question"]
    assert table.models == [STRONG, SMALL]
    assert math.isnan(table.scores[1, 1])  # the RouteLLM file has no SMALL column
    assert len(table.complete()) == 1
    assert len(table.complete([STRONG])) == 2


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["question", STRONG], [["Q", "True"]], "no 'prompt' column"),
        (["prompt", "subject"], [["Q", "algebra"]], "no model columns"),
        (["prompt", "unknown-model"], [["Q", "True"]], "no list price"),
    ],
)
def test_malformed_files_say_what_is_wrong(
    tmp_path: Path, header: list[str], rows: list[list[str]], message: str
) -> None:
    file = write_routellm(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ConfigError, match=message):
        load_outcomes(file)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_outcomes(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"no \.csv files"):
        load_outcomes(tmp_path)


def _table(scores: list[list[float]], costs: list[list[float]]) -> OutcomeTable:
    n = len(scores)
    return OutcomeTable(
        models=["cheap", "mid", "strong"],
        prompts=[f"p{i}" for i in range(n)],
        groups=["g"] * n,
        scores=np.array(scores, dtype=np.float64),
        costs=np.array(costs, dtype=np.float64),
    )


def test_single_models_and_oracle() -> None:
    table = _table(
        [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]],
        [[1, 2, 10], [1, 2, 10], [1, 2, 10], [1, 2, 10]],
    )
    singles = single_models(table)
    assert [(s.accuracy, s.cost_usd) for s in singles] == [(0.25, 4), (0.5, 8), (0.75, 40)]
    best = oracle(table)
    # cheapest correct per prompt: cheap, mid, strong; nobody right on the last: cheapest
    assert best.accuracy == 0.75
    assert best.cost_usd == 1 + 2 + 10 + 1


def test_random_at_equal_cost_interpolates_the_upper_hull() -> None:
    singles = [
        ModelResult(model="cheap", accuracy=0.5, cost_usd=1.0),
        ModelResult(model="bad", accuracy=0.4, cost_usd=5.0),  # dominated
        ModelResult(model="mid", accuracy=0.55, cost_usd=3.0),  # under the chord (0.58)
        ModelResult(model="strong", accuracy=0.9, cost_usd=11.0),
    ]
    # hull: cheap (1, .5) -> strong (11, .9); mid is never worth mixing
    assert random_at_cost(singles, 6.0).accuracy == pytest.approx(0.7)
    assert random_at_cost(singles, 0.5).model == "cheap"
    assert random_at_cost(singles, 20.0).accuracy == 0.9


def _cascade_table() -> OutcomeTable:
    """Four models (cheap, mid, coder, strong); prompts 0-1 multiple choice, 2 code."""
    table = OutcomeTable(
        models=["cheap", "mid", "coder", "strong"],
        prompts=["p0", "p1", "p2", "p3"],
        groups=["g"] * 4,
        scores=np.array([[1, 1, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [1, 0, 0, 0]], float),
        costs=np.array([[1, 2, 3, 10]] * 4, dtype=np.float64),
    )
    table.responses = [
        ["B\n", "The answer is B.", "B", "B"],
        ["A", "C", "C", "C"],
        ["def f(x): return x", "def f(y): return 1 * y", "def f(x): return x + 0", "x"],
        ["42", "42.0", "41", "42"],
    ]
    return table


def test_cascade_verdicts_and_every_attempt_paid() -> None:
    table = _cascade_table()
    assert cascade_verdicts(table, 0, 1).tolist() == [AGREE, DISAGREE, UNCOMPARABLE, AGREE]
    cascade = Cascade(first="cheap", second="mid", unverified="coder", strong="strong")
    chosen, spent = replay_cascade(table, cascade)
    # agree -> cheap; disagree -> strong; programs -> coder; agree -> cheap
    assert chosen.tolist() == [0, 3, 2, 0]
    assert spent.tolist() == [3, 13, 6, 3]
    # `unverified` being one of the two asked costs nothing more.
    _, spent = replay_cascade(
        table, Cascade(first="cheap", second="mid", unverified="mid", strong="strong")
    )
    assert spent.tolist() == [3, 13, 3, 3]
    table.responses = None
    with pytest.raises(ConfigError, match="recorded answers"):
        replay_cascade(table, cascade)


def test_fit_cascade_keeps_the_target() -> None:
    table = _cascade_table()
    # strong: 3/4. Target 0.5 is met by cheap+mid with code to the cheapest.
    cheap = fit_cascade(table, 0.5)
    assert (cheap.first, cheap.second, cheap.strong) == ("cheap", "mid", "strong")
    chosen, _ = replay_cascade(table, cheap)
    assert table.scores[np.arange(4), chosen].mean() >= 0.5 * 0.75
    # Target 1.0 (plus the margin) cannot be met: the most accurate cascade, which
    # sends the program to the coder.
    best = fit_cascade(table, 1.0)
    chosen, _ = replay_cascade(table, best)
    assert best.unverified == "coder" and table.scores[np.arange(4), chosen].mean() == 1.0
    # Given candidates fix first, second and strong.
    fixed = fit_cascade(table, 0.9, ["mid", "cheap", "coder", "strong"])
    assert (fixed.first, fixed.second, fixed.strong) == ("mid", "cheap", "strong")
