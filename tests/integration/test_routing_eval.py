"""`areion train router` and `areion eval routing` end to end, with the real MiniLM embedder."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest

from areion.cli import main
from areion.routing.learned import LearnedRouter

pytest.importorskip("onnxruntime")

CHEAP, STRONG = "mistralai/mistral-7b-chat", "gpt-4-1106-preview"
EASY = ["What color is the {} sky?", "Name a fruit that is {}.", "Say hello to {}."]
HARD = [
    "Write a Python function that {} a list of integers and returns the result.",
    "Prove that the sum of the first n odd numbers {} equals n squared.",
    "Implement a function to {} a binary tree and return its height.",
]
WORDS = ["red", "blue", "green", "sorts", "reverses", "balances", "counts", "Alice", "Bob"]


def _write(path: Path, count: int, seed: int) -> Path:
    """RouterBench-format recordings: the cheap model answers easy prompts right and
    hard ones wrong; the strong one answers everything right, at 20x the price."""
    rng = random.Random(seed)
    models = [CHEAP, STRONG]
    header = ["sample_id", "prompt", "eval_name", *models]
    header += [f"{m}|model_response" for m in models] + [f"{m}|total_cost" for m in models]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(count):
            hard = i % 2 == 1
            prompt = rng.choice(HARD if hard else EASY).format(rng.choice(WORDS)) + f" ({i})"
            cheap_right = (rng.random() < 0.1) if hard else (rng.random() < 0.95)
            cheap_answer = "A" if cheap_right else "B"
            writer.writerow(
                [
                    f"s.{i}",
                    repr([prompt]),
                    "hard" if hard else "easy",
                    float(cheap_right),
                    1.0,
                    repr([cheap_answer]),
                    repr(["A"]),
                    0.0001,
                    0.002,
                ]
            )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("routing")
    (root / "train").mkdir()
    (root / "test").mkdir()
    return _write(root / "train" / "a.csv", 120, 1), _write(root / "test" / "b.csv", 60, 2)


def test_train_router_writes_a_small_file(
    data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = data
    out = tmp_path / "router.json"
    assert main(["train", "router", "--data", str(train.parent), "--out", str(out)]) == 0
    assert "trained on 120 prompts" in capsys.readouterr().out
    assert out.stat().st_size < 60_000
    router = LearnedRouter.load(out)
    assert router.candidates == [CHEAP, STRONG]
    name, scores = router.choose("Write a Python function that sorts a list of integers.", 0.95)
    assert name == STRONG and scores[STRONG] > scores[CHEAP]
    name, _ = router.choose("What color is the red sky?", 0.95)
    assert name == CHEAP


def test_eval_routing_learned_json(
    data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = data
    code = main(["eval", "routing", "--train", str(train), "--data", str(test), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    policy, best, oracle = report["policy"], report["best_single"], report["oracle"]
    assert best["model"] == STRONG and best["accuracy"] == 1.0
    assert best["cost_usd"] == pytest.approx(60 * 0.002)
    assert oracle["accuracy"] == 1.0 and oracle["cost_usd"] < best["cost_usd"]
    # easy prompts go to the cheap model: most of the quality at a fraction of the cost
    assert policy["accuracy"] >= 0.9
    assert policy["cost_usd"] <= 0.7 * best["cost_usd"]
    assert set(policy["share"]) == {CHEAP, STRONG} and 0.3 < policy["share"][CHEAP] < 0.7
    assert report["random"]["cost_usd"] == pytest.approx(policy["cost_usd"])


def test_eval_routing_cascade_text(
    data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = data
    code = main(
        ["eval", "routing", "--train", str(train), "--data", str(test), "--policy", "cascade"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "policy (cascade)" in out and "oracle" in out and "random at equal cost" in out


def test_eval_routing_errors_exit_2(
    data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = data
    args = ["eval", "routing", "--train", str(train), "--data", str(tmp_path / "missing")]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nq,a\n")
    assert main(["train", "router", "--data", str(bad), "--out", str(tmp_path / "r.json")]) == 2
    assert "no 'prompt' column" in capsys.readouterr().err
    if importlib.util.find_spec("matplotlib") is None:
        args = ["eval", "routing", "--train", str(train), "--data", str(train)]
        assert main([*args, "--plot", str(tmp_path / "c.png")]) == 2
        assert "pip install matplotlib" in capsys.readouterr().err


def test_eval_routing_splits(data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    train, _ = data
    args = ["eval", "routing", "--data", str(train), "--policy", "cascade", "--json"]
    assert main([*args, "--split", "random", "--splits", "3", "--max-cost", "1.1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["label"] for s in report["splits"]] == ["seed 0", "seed 1", "seed 2"]
    assert report["targets"] == {"quality": 0.95, "max_cost": 1.1, "max_strong_calls": None}
    for split in report["splits"]:
        # With two models the cascade asks both every time: the strong one's answer is
        # kept when they disagree, and the cheap one's (also right) when they agree.
        assert split["quality"] == 1.0 and split["cost"] == pytest.approx(1.05)
        assert split["passes"]
    assert main([*args, "--split", "leave-one-out"]) == 0
    labels = [s["label"] for s in json.loads(capsys.readouterr().out)["splits"]]
    assert labels == ["held out: easy", "held out: hard"]
    assert main([*args, "--split", "random", "--train", str(train)]) == 2
    assert "drop --train" in capsys.readouterr().err
    assert main(["eval", "routing", "--data", str(train)]) == 2
    assert "needs --train" in capsys.readouterr().err
