"""GET /v1/spend and /v1/spend/tasks through the real server: a scripted mix of tenants,
agents, routes, tags, end users and a cache hit; the spend API's totals are the sums of
the `x-areion-cost-usd` headers (and of the runs' costs) the clients received, and a
tenant sees only its own spend."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from areion import Runtime
from areion.config import load_config
from areion.server import create_app
from tests.agent_upstream import AgentUpstream, call, model_turns, say, tool_results
from tests.support import serve_app

ADMIN = {"authorization": "Bearer adm-secret-0123456789"}
ACME = {"authorization": "Bearer acme-key-0123456789"}
GLOBEX = {"authorization": "Bearer globex-key-0123456789"}
PRICE = {"input": 1.0, "output": 2.0}


def policy(body: dict[str, Any]) -> dict[str, Any]:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if "research" in user and body.get("tools"):
        if model_turns(body) == 0:
            return call(("search", {"query": user}))
        return say("found: " + tool_results(body)[-1])
    return say(f"echo: {user}")


def write_config(tmp_path: Path, url: str) -> Path:
    model = {"provider": "openai", "model": "m", "base_url": url + "/v1", "price": PRICE}
    config = {
        "models": [{"name": "fast", **model}, {"name": "strong", **model}],
        "routes": [{"name": "auto", "candidates": ["fast", "strong"], "solver": False}],
        "store": f"sqlite:///{tmp_path / 'areion.db'}",
        "auth": {
            "admin_keys": [ADMIN["authorization"][7:]],
            "keys": [
                {"key": ACME["authorization"][7:], "tenant": "acme", "name": "acme-web"},
                {"key": GLOBEX["authorization"][7:], "tenant": "globex", "name": "globex-etl"},
            ],
        },
        "agents": [
            {"name": "researcher", "path": "tests.agents_fixture:make_researcher"},
            {"name": "echo", "path": "tests.agents_fixture:make_echo"},
        ],
    }
    path = tmp_path / "areion.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Traffic:
    """What the clients were told they spent."""

    by_tenant: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    by_agent: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    calls: int = 0


def _chat(
    http: httpx.Client, traffic: Traffic, tenant: str, key: dict[str, str], **extra: Any
) -> httpx.Response:
    headers = {**key, **extra.pop("headers", {})}
    body = {"messages": [{"role": "user", "content": extra.pop("text", "hi")}], **extra}
    answer = http.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    traffic.by_tenant[tenant] += float(answer.headers["x-areion-cost-usd"])
    traffic.calls += 1
    return answer


def _run(
    http: httpx.Client, traffic: Traffic, tenant: str, key: dict[str, str], agent: str, text: str
) -> dict[str, Any]:
    answer = http.post("/v1/runs", json={"agent": agent, "input": text, "wait": True}, headers=key)
    assert answer.status_code == 200, answer.text
    run: dict[str, Any] = answer.json()
    assert run["status"] == "finished"
    traffic.by_tenant[tenant] += run["cost_usd"]
    traffic.by_agent[agent] += run["cost_usd"]
    traffic.runs[agent].append(run)
    return run


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Traffic, Path]]:
    upstream = AgentUpstream(policy)
    with serve_app(upstream.app) as url:
        config = write_config(tmp_path, url)
        with (
            serve_app(create_app(Runtime(load_config(config)))) as base,
            httpx.Client(base_url=base, timeout=30) as http,
        ):
            traffic = Traffic()
            for i in range(3):
                _chat(http, traffic, "acme", ACME, model="fast", text=f"q{i}",
                      headers={"x-areion-tags": "eu,beta", "x-areion-user": "alice"})  # fmt: skip
            for i in range(2):
                _chat(http, traffic, "acme", ACME, model="auto", text=f"r{i}", user="bob")
            for _ in range(2):  # the second is an exact-cache hit: free, and its saving booked
                hit = _chat(http, traffic, "acme", ACME, model="fast", text="same", temperature=0)
            assert hit.headers["x-areion-cache"] == "hit-exact"
            for i in range(4):
                _chat(http, traffic, "globex", GLOBEX, model="strong", text=f"g{i}")
            for i in range(2):
                _run(http, traffic, "acme", ACME, "researcher", f"research topic {i}")
            _run(http, traffic, "globex", GLOBEX, "echo", "hello")
            # Cache hits are booked within the ledger's flush interval: wait for them.
            expected = traffic.calls + 2 * 3 + 1  # each research run: 2 model calls + 1 tool
            deadline = time.monotonic() + 60  # a generous cap: the machine may be busy
            while _total(http, ADMIN)["calls"] < expected:
                assert time.monotonic() < deadline, "the ledger did not catch up"
                time.sleep(0.02)
            yield http, traffic, config


def _total(http: httpx.Client, key: dict[str, str], **params: str) -> dict[str, Any]:
    answer = http.get("/v1/spend", params=params, headers=key)
    assert answer.status_code == 200, answer.text
    total: dict[str, Any] = answer.json()["total"]
    return total


def _groups(
    http: httpx.Client, key: dict[str, str], group_by: str, **params: str
) -> dict[Any, Any]:
    answer = http.get("/v1/spend", params={"group_by": group_by, **params}, headers=key)
    assert answer.status_code == 200, answer.text
    names = group_by.split(",")
    return {tuple(row[n] for n in names) if len(names) > 1 else row[names[0]]: row
            for row in answer.json()["data"]}  # fmt: skip


def test_spend_totals_are_the_sums_of_the_cost_headers(
    served: tuple[httpx.Client, Traffic, Path],
) -> None:
    http, traffic, _ = served
    tenants = _groups(http, ADMIN, "tenant")
    assert set(tenants) == {"acme", "globex"}
    for tenant, spent in traffic.by_tenant.items():
        assert tenants[tenant]["cost_usd"] == pytest.approx(spent, abs=1e-9)
    assert _total(http, ADMIN)["cost_usd"] == pytest.approx(sum(traffic.by_tenant.values()))
    agents = _groups(http, ADMIN, "agent")
    assert agents["researcher"]["cost_usd"] == pytest.approx(traffic.by_agent["researcher"])
    assert agents["researcher"]["calls"] == 6  # two runs: 2 model calls and a paid search each
    assert agents["echo"]["cost_usd"] == pytest.approx(traffic.by_agent["echo"])
    acme = tenants["acme"]
    assert acme["cache_hits"] == 1 and acme["saved_usd"] > 0
    assert acme["latency_p50_s"] is not None and acme["latency_p95_s"] >= acme["latency_p50_s"]
    routes = _groups(http, ACME, "route,model")
    assert routes[("auto", "strong")]["calls"] == 2  # no rule matched: the strongest
    assert _groups(http, ACME, "tag")["eu"]["calls"] == 3
    users = _groups(http, ACME, "user")
    assert (users["alice"]["calls"], users["bob"]["calls"]) == (3, 2)
    keys = _groups(http, ADMIN, "key")
    assert {"acme-web", "globex-etl"} <= set(keys)
    # By hour, by day, by run: the same money, however it is cut.
    for group_by in ("hour", "day", "run", "deployment", "tenant,model,key,route,agent"):
        rows = _groups(http, ADMIN, group_by)
        assert sum(row["cost_usd"] for row in rows.values()) == pytest.approx(
            sum(traffic.by_tenant.values())
        )


def test_a_tenant_sees_only_its_own_spend(served: tuple[httpx.Client, Traffic, Path]) -> None:
    http, traffic, _ = served
    assert set(_groups(http, ACME, "tenant")) == {"acme"}
    assert _total(http, ACME)["cost_usd"] == pytest.approx(traffic.by_tenant["acme"])
    assert _total(http, GLOBEX)["cost_usd"] == pytest.approx(traffic.by_tenant["globex"])
    assert set(_groups(http, GLOBEX, "agent")) == {"echo", ""}
    other = http.get("/v1/spend", params={"tenant": "acme"}, headers=GLOBEX)
    assert other.status_code == 403
    assert other.json()["error"]["param"] == "tenant"
    assert "acme" not in other.text.replace("tenant=acme", "")
    tasks = http.get("/v1/spend/tasks", params={"tenant": "acme"}, headers=GLOBEX)
    assert tasks.status_code == 403
    assert http.get("/v1/spend").status_code == 401
    # An admin names any tenant.
    assert _total(http, ADMIN, tenant="globex")["cost_usd"] == pytest.approx(
        traffic.by_tenant["globex"]
    )


def test_cost_per_task(served: tuple[httpx.Client, Traffic, Path]) -> None:
    http, traffic, _ = served
    answer = http.get("/v1/spend/tasks", headers=ACME)
    assert answer.status_code == 200, answer.text
    [researcher] = answer.json()["data"]  # acme ran only the researcher
    costs = sorted(run["cost_usd"] for run in traffic.runs["researcher"])
    assert researcher["agent"] == "researcher"
    assert researcher["runs"] == {"finished": 2, "failed": 0, "paused": 0, "running": 0}
    assert researcher["cost_usd"]["mean"] == pytest.approx(sum(costs) / 2)
    assert researcher["cost_usd"]["p50"] == pytest.approx(sum(costs) / 2)
    assert researcher["steps"]["p95"] == 2
    everyone = http.get("/v1/spend/tasks", headers=ADMIN).json()["data"]
    assert [row["agent"] for row in everyone] == ["echo", "researcher"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "tenant,planet"}, "group_by"),
        ({"group_by": "tenant,tenant"}, "group_by"),
        ({"since": "yesterday-ish"}, "since"),
        ({"until": "nan"}, "until"),
        ({"since": "2026-12-02", "until": "2026-12-01"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(
    served: tuple[httpx.Client, Traffic, Path], params: dict[str, str], param: str
) -> None:
    http, _, _ = served
    answer = http.get("/v1/spend", params=params, headers=ACME)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_the_report_agrees_with_the_spend_api_and_the_headers(
    served: tuple[httpx.Client, Traffic, Path], tmp_path: Path
) -> None:
    http, traffic, config = served
    png = tmp_path / "spend.png"
    command = [sys.executable, "-m", "areion.cli", "report", "--config", str(config)]
    made = subprocess.run(
        [*command, "--since", "0", "--json", "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    tenants = {row["tenant"]: row for row in report["by_tenant"]}
    api = _groups(http, ADMIN, "tenant", since="0")
    for tenant, spent in traffic.by_tenant.items():
        assert tenants[tenant]["cost_usd"] == pytest.approx(spent, abs=1e-9)
        assert tenants[tenant] == api[tenant]
    assert report["total"]["cost_usd"] == pytest.approx(sum(traffic.by_tenant.values()))
    agents = {row["agent"]: row for row in report["by_agent"]}
    assert agents["researcher"]["cost_usd"] == pytest.approx(traffic.by_agent["researcher"])
    [cache] = [row for row in report["cache"] if row["cache"] == "exact"]
    assert cache["cache_hits"] == 1
    tasks = {row["agent"]: row for row in report["tasks"]}
    assert tasks["researcher"]["runs"]["finished"] == 2
    assert sum(row["cost_usd"] for row in report["over_time"]) == pytest.approx(
        sum(traffic.by_tenant.values())
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The tables, for a person; one tenant's only, with --tenant.
    text = subprocess.run(
        [*command, "--since", "30d", "--tenant", "globex"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0, text.stderr
    assert "Cost per task" in text.stdout and "echo" in text.stdout
    assert "acme" not in text.stdout and "researcher" not in text.stdout
    bad = subprocess.run([*command, "--since", "last tuesday"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--since" in bad.stderr
