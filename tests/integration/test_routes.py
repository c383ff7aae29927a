"""Routes through the server: rules, cascade, degraded mode, reasoning effort.

Three scripted upstreams stand in for a small, a medium and a strong model; each
records what it was asked, so a test sees which model a route sent a request to.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import ManualClock, serve_app

KEY = "route-key"
METRICS_KEY = "route-metrics-key"
SCRAPE = {"authorization": f"Bearer {METRICS_KEY}"}
PRICES = {"small": (0.1, 0.2), "medium": (1.0, 2.0), "strong": (10.0, 30.0)}


class Fleet:
    def __init__(self, base: str, upstreams: dict[str, ScriptedUpstream], runtime: Runtime) -> None:
        self.base = base
        self.upstreams = upstreams
        self.runtime = runtime

    def calls(self) -> dict[str, int]:
        return {name: upstream.calls for name, upstream in self.upstreams.items()}

    def ask(self, model: str = "auto", content: str = "Which is it?", **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        client = openai.OpenAI(base_url=self.base + "/v1", api_key=KEY, max_retries=0)
        return client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": content}],
            extra_headers=headers,
            **kwargs,
        )


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    routes: list[dict[str, Any]] = request.param
    upstreams = {name: ScriptedUpstream(name) for name in PRICES}
    with ExitStack() as stack:
        models = []
        for name, upstream in upstreams.items():
            url = stack.enter_context(serve_app(upstream.app))
            models.append(
                {
                    "name": name,
                    "provider": "openai",
                    "model": f"{name}-model",
                    "base_url": url + "/v1",
                    "price": {"input": PRICES[name][0], "output": PRICES[name][1]},
                    "reasoning": name == "strong",
                }
            )
        config = parse_config(
            {
                "models": models,
                "routes": routes,
                "store": f"sqlite:///{tmp_path / 'routes.db'}",
                "auth": {"keys": [{"key": KEY, "tenant": "acme"}], "metrics_keys": [METRICS_KEY]},
                "cache": {"exact": {"enabled": False}},
            }
        )
        runtime = Runtime(config)
        base = stack.enter_context(serve_app(create_app(runtime)))
        yield Fleet(base, upstreams, runtime)


RULES = [
    {
        "name": "auto",
        "policy": "rules",
        "candidates": ["small", "medium", "strong"],
        "solver": False,
        "rules": [
            {"when": {"tier": "batch"}, "model": "small"},
            {"when": {"tag": "hard"}, "model": "strong"},
            {"when": {"tools": True}, "model": "medium"},
            {"when": {"max_prompt_chars": 20}, "model": "small"},
        ],
    }
]


@pytest.mark.parametrize("fleet", [RULES], indirect=True)
def test_rules_route_by_tier_tag_tools_and_length(fleet: Fleet) -> None:
    long_question = "Explain, with examples, how a B-tree keeps itself balanced on insert."
    batch = fleet.ask(content=long_question, headers={"x-areion-tier": "batch"})
    assert batch.headers["x-areion-model"].startswith("small/")
    assert batch.headers["x-areion-route"] == "auto"
    assert batch.headers["x-areion-route-reason"] == "rule:0"
    hard = fleet.ask(content="Hi", headers={"x-areion-tags": "urgent, hard"})
    assert hard.headers["x-areion-model"].startswith("strong/")
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert (
        fleet.ask(content=long_question, tools=tools)
        .headers["x-areion-model"]
        .startswith("medium/")
    )
    assert fleet.ask(content="Hi").headers["x-areion-route-reason"] == "rule:3"
    fallback = fleet.ask(content=long_question)
    assert fallback.headers["x-areion-model"].startswith("strong/")
    assert fallback.headers["x-areion-route-reason"] == "default"
    assert fleet.calls() == {"small": 2, "medium": 1, "strong": 2}
    # Upstreams are asked for their own model, never for the route's name.
    assert {r["model"] for r in fleet.upstreams["small"].requests} == {"small-model"}
    metrics = httpx.get(fleet.base + "/metrics", headers=SCRAPE).text
    assert 'areion_route_decisions_total{model="small",reason="rule",route="auto"} 2.0' in metrics
    listed = httpx.get(fleet.base + "/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert "auto" in {m["id"] for m in listed.json()["data"]}


@pytest.mark.parametrize("fleet", [RULES], indirect=True)
def test_an_unknown_route_is_a_404_naming_the_routes(fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        fleet.ask(model="autoo")
    assert "auto" in str(caught.value)


CASCADE = [
    {
        "name": "auto",
        "policy": "cascade",
        "candidates": ["small", "medium", "strong"],
        "solver": False,
    }
]


@pytest.mark.parametrize("fleet", [CASCADE], indirect=True)
def test_cascade_keeps_agreeing_cheap_answers_and_escalates_otherwise(fleet: Fleet) -> None:
    small, medium, strong = (fleet.upstreams[n] for n in ("small", "medium", "strong"))
    small.then(Behaviour(text="Let me think. The answer is B."))
    medium.then(Behaviour(text="Answer: B"))
    agreed = fleet.ask()
    assert agreed.headers["x-areion-route-reason"] == "cascade_accept"
    assert agreed.headers["x-areion-model"].startswith("small/")
    assert agreed.parse().choices[0].message.content == "Let me think. The answer is B."
    # Both attempts are paid for: 11 input and 7 output tokens each, at their prices.
    both = (11 * 0.1 + 7 * 0.2 + 11 * 1.0 + 7 * 2.0) / 1e6
    assert float(agreed.headers["x-areion-cost-usd"]) == pytest.approx(both)
    assert fleet.calls() == {"small": 1, "medium": 1, "strong": 0}

    small.then(Behaviour(text="The answer is B."))
    medium.then(Behaviour(text="The answer is C."))
    strong.then(Behaviour(text="The answer is C, because..."))
    disputed = fleet.ask()
    assert disputed.headers["x-areion-route-reason"] == "cascade_escalate"
    assert disputed.headers["x-areion-model"].startswith("strong/")
    assert disputed.parse().choices[0].message.content == "The answer is C, because..."
    all_three = both + (11 * 10.0 + 7 * 30.0) / 1e6
    assert float(disputed.headers["x-areion-cost-usd"]) == pytest.approx(all_three)
    assert fleet.calls() == {"small": 2, "medium": 2, "strong": 1}


@pytest.mark.parametrize("fleet", [CASCADE], indirect=True)
def test_cascade_escalates_an_answer_that_breaks_the_schema_and_streams(fleet: Fleet) -> None:
    small, medium, strong = (fleet.upstreams[n] for n in ("small", "medium", "strong"))
    small.then(Behaviour(text='{"city": "Paris"'))  # cut off: not JSON
    medium.then(Behaviour(text='{"city": "Paris"'))
    strong.then(Behaviour(text='{"city": "Paris"}'))
    client = openai.OpenAI(base_url=fleet.base + "/v1", api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Capital of France, as JSON"}],
        response_format={"type": "json_object"},
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == '{"city": "Paris"}'
    assert fleet.calls() == {"small": 1, "medium": 1, "strong": 1}


UNVERIFIED = [{**CASCADE[0], "unverified": "medium"}]


@pytest.mark.parametrize("fleet", [UNVERIFIED], indirect=True)
def test_cascade_answers_uncomparable_programs_with_the_unverified_candidate(
    fleet: Fleet,
) -> None:
    small, medium = fleet.upstreams["small"], fleet.upstreams["medium"]
    small.then(Behaviour(text="def double(x):\n    return x * 2"))
    medium.then(Behaviour(text="def double(n):\n    return n + n"))
    programs = fleet.ask(content="Write a function that doubles a number.")
    # Two different programs: nothing says whether they agree, so `unverified` answers,
    # with the answer already paid for, and the strongest is not asked.
    assert programs.headers["x-areion-route-reason"] == "cascade_unverified"
    assert programs.headers["x-areion-model"].startswith("medium/")
    assert programs.parse().choices[0].message.content == "def double(n):\n    return n + n"
    assert fleet.calls() == {"small": 1, "medium": 1, "strong": 0}
    # Short answers that can be compared and differ still go to the strongest.
    small.then(Behaviour(text="The answer is B."))
    medium.then(Behaviour(text="The answer is C."))
    assert fleet.ask().headers["x-areion-route-reason"] == "cascade_escalate"
    assert fleet.calls() == {"small": 2, "medium": 2, "strong": 1}


DEGRADING = [
    {
        "name": "auto",
        "policy": "rules",
        "candidates": ["small", "strong"],
        "solver": False,
        "latency_objective_s": 0.05,
        "window": 20,
    }
]


@pytest.mark.parametrize("fleet", [DEGRADING], indirect=True)
def test_degraded_mode_moves_non_critical_traffic_and_recovers(fleet: Fleet) -> None:
    # Latencies on a manual clock: each answer takes exactly what its upstream says,
    # however busy the machine running the test is.
    clock = ManualClock()
    assert fleet.runtime.router is not None
    fleet.runtime.router.clock = clock
    for name, upstream in fleet.upstreams.items():
        seconds = 0.1 if name == "strong" else 0.001  # strong breaks the 50 ms objective
        upstream.on_request = functools.partial(clock.advance, seconds)
    for _ in range(20):
        assert fleet.ask().headers["x-areion-model"].startswith("strong/")
    moved = fleet.ask()
    assert moved.headers["x-areion-route-reason"] == "degraded"
    assert moved.headers["x-areion-model"].startswith("small/")
    critical = fleet.ask(headers={"x-areion-tier": "critical"})
    assert critical.headers["x-areion-model"].startswith("strong/")
    metrics = httpx.get(fleet.base + "/metrics", headers=SCRAPE).text
    assert 'areion_route_degraded{route="auto"} 1.0' in metrics
    assert 'areion_route_mode_changes_total{mode="degraded",route="auto"} 1.0' in metrics
    # The fast model's latencies bring the p95 back under 0.8 x the objective.
    reasons = [fleet.ask().headers["x-areion-route-reason"] for _ in range(25)]
    assert reasons[0] == "degraded" and reasons[-1] == "default"
    metrics = httpx.get(fleet.base + "/metrics", headers=SCRAPE).text
    assert 'areion_route_degraded{route="auto"} 0.0' in metrics
    assert 'areion_route_mode_changes_total{mode="normal",route="auto"} 1.0' in metrics


SOLVING = [{"name": "auto", "policy": "rules", "candidates": ["small", "strong"]}]


@pytest.mark.parametrize("fleet", [SOLVING], indirect=True)
def test_exact_computations_are_solved_without_a_model(fleet: Fleet) -> None:
    solved = fleet.ask(content="What is 17.5% of 2,340?")
    assert solved.headers["x-areion-model"] == "solver"
    assert solved.headers["x-areion-route-reason"] == "solver"
    assert float(solved.headers["x-areion-cost-usd"]) == 0
    body = solved.parse()
    assert body.choices[0].message.content == "17.5% of 2340 = 409.5"
    assert body.usage.total_tokens == 0
    converted = fleet.ask(content="convert 5 km to miles", stream=False)
    assert "3.10686" in converted.parse().choices[0].message.content
    # A question with numbers that is not a computation goes to a model.
    assert fleet.ask(content="Who won the 1998 World Cup?").headers["x-areion-model"] != "solver"
    assert fleet.calls() == {"small": 0, "medium": 0, "strong": 1}


@pytest.fixture(scope="module")
def router_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A router trained by the CLI on recordings where the cheap model fails hard prompts."""
    pytest.importorskip("onnxruntime", reason="needs the semantic extra: pip install -e '.[dev]'")
    from areion.cli import main
    from tests.integration.test_routing_eval import _write

    folder = tmp_path_factory.mktemp("router")
    data = _write(folder / "recorded.csv", 240, seed=3)
    out = folder / "router.json"
    assert main(["train", "router", "--data", str(data), "--out", str(out)]) == 0
    return out


def test_learned_route_sends_easy_prompts_cheap_and_hard_ones_strong(
    tmp_path: Path, router_file: Path
) -> None:
    upstreams = {name: ScriptedUpstream(name) for name in ("small", "strong")}
    with ExitStack() as stack:
        models = [
            {
                "name": name,
                "provider": "openai",
                "model": f"{name}-model",
                "base_url": stack.enter_context(serve_app(upstream.app)) + "/v1",
                "reasoning": name == "strong",
            }
            for name, upstream in upstreams.items()
        ]
        config = parse_config(
            {
                "models": models,
                # The router was trained on two recorded models, cheapest first.
                "routes": [
                    {
                        "name": "auto",
                        "policy": "learned",
                        "candidates": ["small", "strong"],
                        "router": str(router_file),
                    }
                ],
                "store": f"sqlite:///{tmp_path / 'learned.db'}",
                "auth": {"keys": [{"key": KEY, "tenant": "acme"}], "metrics_keys": [METRICS_KEY]},
                "cache": {"semantic": {"enabled": True}},
            }
        )
        runtime = Runtime(config)
        fleet = Fleet(stack.enter_context(serve_app(create_app(runtime))), upstreams, runtime)
        runs = runtime.embedder.runs  # type: ignore[attr-defined]
        easy = fleet.ask(content="Say hello to Carol.", temperature=0)  # L2 looks it up
        assert easy.headers["x-areion-model"].startswith("small/")
        assert easy.headers["x-areion-route-reason"] == "learned"
        # The semantic cache's embedding of the question served the router too.
        assert runtime.embedder.runs == runs + 1  # type: ignore[attr-defined]
        hard = fleet.ask(
            content="Implement a function to invert a binary tree and return its height."
        )
        assert hard.headers["x-areion-model"].startswith("strong/")
        # The strong model is a reasoning model: the route set its effort.
        assert upstreams["strong"].requests[-1]["reasoning_effort"] in ("low", "medium", "high")
        assert "reasoning_effort" not in upstreams["small"].requests[-1]
        # A few-shot multiple-choice prompt is unlike every one-line training prompt: the
        # router's guess there is not evidence, so the strongest candidate answers.
        far = fleet.ask(content=FEW_SHOT)
        assert far.headers["x-areion-route-reason"] == "out_of_domain"
        assert far.headers["x-areion-model"].startswith("strong/")
        metrics = httpx.get(fleet.base + "/metrics", headers=SCRAPE).text
        assert (
            'areion_route_decisions_total{model="strong",reason="out_of_domain",route="auto"} 1.0'
            in metrics
        )
        assert 'areion_route_decisions_total{model="small",reason="learned",route="auto"}' in (
            metrics
        )


FEW_SHOT = """Which planet is the largest?
A) Mars
B) Jupiter
Answer: B

Which gas do plants take in?
A) Oxygen
B) Carbon dioxide
Answer:"""
