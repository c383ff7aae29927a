"""Experiments end to end through the server: assignment, outcomes, the report, guardrails."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.agent_upstream import AgentUpstream, call, model_turns, say
from tests.support import serve_app

ACME = {"authorization": "Bearer acme-key"}
GLOBEX = {"authorization": "Bearer globex-key"}
ADMIN = {"authorization": "Bearer admin-key"}
PRICE = {"input": 1.0, "output": 2.0}


def policy(body: dict[str, Any]) -> dict[str, Any]:
    """The control prompt makes the model look the order up before answering (two calls
    per task); v2's ("Answer directly.") answers at once (one call)."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    if "Answer directly." in system or model_turns(body) > 0:
        return say("done")
    return call(("lookup", {"order_id": "o-1"}))


def config(url: str, tmp_path: Path, **experiment: Any) -> Any:
    return parse_config(config_data(url, tmp_path, **experiment))


def config_data(url: str, tmp_path: Path, **experiment: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "support-prompt-v2",
        "applies_to": {"agent": "support"},
        "unit": "session",
        "variants": [
            {"name": "control", "weight": 50},
            {"name": "v2", "weight": 50, "instructions": "Answer directly."},
        ],
        "metric": "cost",
        "stop": {"min_units_per_variant": 8},
    }
    body.update(experiment)
    return {
        "models": [
            {
                "name": "fast",
                "provider": "openai",
                "model": "m",
                "base_url": url + "/v1",
                "price": PRICE,
            },
            {
                "name": "dear",
                "provider": "openai",
                "model": "m-dear",
                "base_url": url + "/v1",
                "price": {"input": 2.0, "output": 4.0},
            },
        ],
        "store": f"sqlite:///{tmp_path / 'exp.db'}",
        "auth": {
            "keys": [
                {"key": "acme-key", "tenant": "acme"},
                {"key": "globex-key", "tenant": "globex"},
            ],
            "admin_keys": ["admin-key"],
        },
        "agents": [{"name": "support", "path": "tests.agents_fixture:support"}],
        "experiments": [body],
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    upstream = AgentUpstream(policy)
    with (
        serve_app(upstream.app) as url,
        serve_app(create_app(Runtime(config(url, tmp_path)))) as base,
    ):
        yield base, tmp_path / "exp.db"


def test_the_cheaper_prompt_wins_on_cost_per_successful_task(
    served: tuple[str, Path],
) -> None:
    base, db = served
    runs: dict[str, str] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(40):
            answer = client.post(
                "/v1/runs",
                headers=ACME,
                json={
                    "agent": "support",
                    "input": "where is my order?",
                    "session": f"s{i}",
                    "wait": True,
                },
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "finished", answer.text
            run_id = answer.json()["id"]
            runs[run_id] = f"s{i}"
        # The application says every fifth task failed, naming the run or its session.
        failed = {run_id for n, run_id in enumerate(runs) if n % 5 == 0}
        for n, (run_id, session) in enumerate(runs.items()):
            target = {"run_id": run_id} if n % 2 else {"session": session}
            posted = client.post(
                "/v1/outcomes", headers=ACME, json={**target, "success": run_id not in failed}
            )
            assert posted.status_code == 201, posted.text

        report = client.get("/v1/experiments/support-prompt-v2", headers=ADMIN)
        assert report.status_code == 200, report.text
        listed = client.get("/v1/experiments", headers=ADMIN).json()["data"]

    data = report.json()
    assert listed == [data]
    assert data["verdict"] == "winner: v2"
    assert data["crossed_units"] == 0
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT run_id, variant, sum(cost_usd), count(*) FROM ledger GROUP BY run_id, variant"
        ).fetchall()
    # Every ledger row of every run carries its variant: one variant per run.
    assert {run_id for run_id, *_ in rows} == set(runs)
    assert len(rows) == len(runs)
    by_variant: dict[str, list[tuple[str, float, int]]] = {}
    for run_id, variant, cost, calls in rows:
        by_variant.setdefault(variant, []).append((run_id, cost, calls))
    assert set(by_variant) == {"support-prompt-v2:control", "support-prompt-v2:v2"}
    assert {calls for _, _, calls in by_variant["support-prompt-v2:control"]} == {2}
    assert {calls for _, _, calls in by_variant["support-prompt-v2:v2"]} == {1}
    variants = {v["name"]: v for v in data["variants"]}
    for name in ("control", "v2"):
        mine = by_variant[f"support-prompt-v2:{name}"]
        successes = sum(1 for run_id, _, _ in mine if run_id not in failed)
        total = sum(cost for _, cost, _ in mine)
        assert variants[name]["units"] == len(mine)
        assert variants[name]["success_rate"]["estimate"] == pytest.approx(successes / len(mine))
        assert variants[name]["cost_per_success_usd"]["estimate"] == pytest.approx(
            total / successes
        )
    cost = next(c for c in variants["v2"]["vs_control"] if c["metric"] == "cost")
    assert cost["estimate"] == pytest.approx(0.5)
    assert cost["high"] < 1.0

    # `areion experiments report` reads the same from the store, as JSON, text and a plot.
    path = db.parent / "areion.yaml"
    path.write_text(yaml.safe_dump(config_data("http://127.0.0.1:9", db.parent)), "utf-8")
    command = [sys.executable, "-m", "areion.cli", "experiments", "report", "support-prompt-v2"]
    printed = subprocess.run(
        [*command, "--config", str(path), "--json", "--plot", str(db.parent / "e.png")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    from_cli = json.loads(printed.stdout)
    assert from_cli["verdict"] == "winner: v2"
    assert [v["cost_per_success_usd"] for v in from_cli["variants"]] == [
        v["cost_per_success_usd"] for v in data["variants"]
    ]
    assert from_cli["history"] and (db.parent / "e.png").stat().st_size > 1000
    text = subprocess.run(
        [*command, "--config", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "experiment support-prompt-v2: winner: v2" in text


def test_who_may_read_experiments_and_post_outcomes(served: tuple[str, Path]) -> None:
    base, _ = served
    with httpx.Client(base_url=base, timeout=30) as client:
        forbidden = client.get("/v1/experiments", headers=ACME)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "admin_key_required"
        assert client.get("/v1/experiments").status_code == 401
        missing = client.get("/v1/experiments/nope", headers=ADMIN)
        assert missing.status_code == 404
        assert "support-prompt-v2" in missing.json()["error"]["message"]
        run = client.post(
            "/v1/runs", headers=ACME, json={"agent": "support", "input": "hi", "wait": True}
        ).json()
        # Another tenant cannot judge acme's run, nor learn that it exists.
        theirs = client.post(
            "/v1/outcomes", headers=GLOBEX, json={"run_id": run["id"], "success": True}
        )
        assert theirs.status_code == 404
        both = client.post(
            "/v1/outcomes",
            headers=ACME,
            json={"run_id": run["id"], "session": "s", "success": True},
        )
        assert both.status_code == 400
        assert "exactly one" in both.json()["error"]["message"]
        bad = client.post(
            "/v1/outcomes", headers=ACME, json={"run_id": run["id"], "success": "yes"}
        )
        assert bad.status_code == 400
        unknown_call = client.post(
            "/v1/outcomes", headers=ACME, json={"request_id": "req_nope", "success": True}
        )
        assert unknown_call.status_code == 404


def test_a_model_experiment_routes_units_and_a_guardrail_sends_them_back(
    tmp_path: Path,
) -> None:
    upstream = AgentUpstream(lambda body: say("ok"))
    with serve_app(upstream.app) as url:
        cfg = config(
            url,
            tmp_path,
            name="dearer-model",
            applies_to={"model": "fast"},
            unit="user",
            variants=[
                {"name": "control", "weight": 50},
                {"name": "dear", "weight": 50, "model": "dear"},
            ],
            guardrails={"max_cost_per_task_ratio": 1.5},
            stop={"min_units_per_variant": 10},
        )
        with (
            serve_app(create_app(Runtime(cfg))) as base,
            httpx.Client(base_url=base, timeout=30) as client,
        ):

            def ask(user: str) -> httpx.Response:
                response = client.post(
                    "/v1/chat/completions",
                    headers={**ACME, "x-areion-user": user},
                    json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert response.status_code == 200, response.text
                return response

            first = {f"u{i}": ask(f"u{i}").headers["x-areion-experiment"] for i in range(60)}
            assert set(first.values()) == {"dearer-model:control", "dearer-model:dear"}
            # A user keeps its variant; the dear variant's calls went to the dear model.
            assert all(ask(u).headers["x-areion-experiment"] == v for u, v in first.items())
            models = [r["model"] for r in upstream.requests]
            assert models.count("m-dear") == 2 * sum(v.endswith(":dear") for v in first.values())
            report = client.get("/v1/experiments/dearer-model", headers=ADMIN).json()
            assert report["verdict"] == "stopped by guardrail"
            dear = next(v for v in report["variants"] if v["name"] == "dear")
            assert "cost per task" in dear["stopped"]
            # The stopped variant's users are back on control; control's never moved.
            after = {u: ask(u).headers["x-areion-experiment"] for u in first}
            assert set(after.values()) == {"dearer-model:control"}
            metrics = client.get("/metrics", headers=ADMIN).text
            assert (
                'areion_experiment_stops_total{experiment="dearer-model",variant="dear"} 1.0'
                in metrics
            )
