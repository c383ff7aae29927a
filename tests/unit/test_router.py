"""Routing pieces without a network: answers agreeing, schemas, latency watch, config."""

from __future__ import annotations

from typing import Any

import pytest

from areion.config import parse_config
from areion.routing.router import (
    LatencyWatch,
    agree,
    compare,
    reasoning_effort,
    schema_valid,
    stated_choice,
)
from areion.types import ChatRequest, Message


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("Paris.", "paris", True),
        ("The answer is B.", "Answer: (B)", True),
        ("The answer is B.", "The answer is C.", False),
        ("So the total is 42", "It comes to 42.0", True),
        ("So the total is 42", "It comes to 41", False),
        ("def f(x): return x + 1", "def f(y): return y + 1", False),
    ],
)
def test_agree(first: str, second: str, same: bool) -> None:
    assert agree(first, second) is same


@pytest.mark.parametrize(
    ("first", "second", "verdict"),
    [
        ("B\n", "The answer is B.", True),  # a bare letter is a choice
        ("(c) because it is", "Answer: C", True),
        ("B", "C", False),
        ("A cat is an animal.", "The answer is A.", False),  # "A" here is a word
        ("The total is 12.", "I make it 13.", False),
        ("Paris", "Lyon", False),  # short prose that differs disagrees
        ("def f(x): return 2 * x", "def g(y): return y + y", None),  # programs
        ("x" * 400, "y" * 400, None),  # long prose
        ("def f(x): return x", "def f(x):  return x", True),  # same words
    ],
)
def test_compare_says_when_answers_cannot_be_compared(
    first: str, second: str, verdict: bool | None
) -> None:
    assert compare(first, second) is verdict


def test_stated_choice() -> None:
    assert [stated_choice(t) for t in ("D", " (b) yes", "A. Paris", "After all, option E")] == [
        "D",
        "B",
        "A",
        "E",
    ]
    assert stated_choice("A function that doubles") is None


def _request(response_format: Any = None) -> ChatRequest:
    extra = {} if response_format is None else {"response_format": response_format}
    return ChatRequest(model="auto", messages=[Message(role="user", content="x")], extra=extra)


def test_schema_valid() -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "c", "schema": {"type": "object", "required": ["city"]}},
    }
    assert schema_valid(_request(), "anything at all")
    assert schema_valid(_request({"type": "json_object"}), '{"a": 1}')
    assert not schema_valid(_request({"type": "json_object"}), '{"a": 1')
    assert not schema_valid(_request({"type": "json_object"}), "[1, 2]")
    assert schema_valid(_request(schema), '{"city": "Paris"}')
    assert not schema_valid(_request(schema), '{"town": "Paris"}')


def test_latency_watch_switches_with_hysteresis() -> None:
    watch = LatencyWatch(1.0, recover_ratio=0.5, window=20)
    changes = [watch.observe(2.0) for _ in range(20)]
    assert changes[-1] is True and changes.count(True) == 1 and watch.degraded
    # Under the objective but above the recovery bar: still degraded.
    assert all(watch.observe(0.8) is None for _ in range(40)) and watch.degraded
    changes = [watch.observe(0.1) for _ in range(20)]
    assert changes.count(False) == 1 and not watch.degraded


def test_reasoning_effort_grows_with_difficulty() -> None:
    assert [reasoning_effort(d) for d in (0.0, 0.3, 0.6, 0.99)] == [
        "none",
        "low",
        "medium",
        "high",
    ]


MODELS = [{"name": "small", "provider": "sim"}, {"name": "strong", "provider": "sim"}]


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"name": "small", "candidates": ["small"]}, "a model group's name"),
        ({"name": "auto", "candidates": ["tiny"]}, "'tiny' is not a model name"),
        (
            {"name": "auto", "candidates": ["small"], "rules": [{"model": "strong"}]},
            "not one of the candidates",
        ),
        ({"name": "auto", "policy": "learned", "candidates": ["small"]}, "areion train router"),
        ({"name": "auto", "policy": "cascade", "candidates": ["small"]}, "at least two"),
        (
            {"name": "auto", "policy": "cascade", "candidates": ["a", "b"], "unverified": "c"},
            "not one of the candidates",
        ),
        ({"name": "auto", "candidates": []}, "candidates"),
    ],
)
def test_bad_routes_are_config_errors(route: dict[str, Any], message: str) -> None:
    from areion.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config({"models": MODELS, "routes": [route]})


async def test_solver_answers_are_not_stored_by_the_caches(tmp_path: Any) -> None:
    from areion import Runtime

    models = [
        {"name": "small", "provider": "sim", "model": "sim-fast"},
        {"name": "strong", "provider": "sim", "model": "sim-strong"},
    ]
    config = parse_config(
        {
            "models": models,
            "routes": [{"name": "auto", "candidates": ["small", "strong"]}],
            "store": f"sqlite:///{tmp_path / 'solver.db'}",
        }
    )
    request = ChatRequest(
        model="auto", messages=[Message(role="user", content="what is 2^10 - 1?")], temperature=0
    )
    async with Runtime(config) as rt:
        first = await rt.chat(request)
        again = await rt.chat(request)
    assert first.message.text() == again.message.text() == "2^10 - 1 = 1023"
    assert (first.deployment, again.deployment) == ("solver", "solver")
    assert again.cache == "miss"  # solved again, not served from the exact cache
