"""The runs API over real HTTP: start, follow, approve, reject, resume; tenant isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from areion import ConfigError, Runtime
from areion.config import parse_config
from areion.server import create_app
from tests import agents_fixture
from tests.agent_upstream import AgentUpstream, call, model_turns, say, tool_results
from tests.support import serve_app

ACME = {"authorization": "Bearer acme-key"}
GLOBEX = {"authorization": "Bearer globex-key"}


def policy(body: dict[str, Any]) -> dict[str, Any]:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    turns = model_turns(body)
    if "refund" in user:
        if turns == 0:
            return call(("lookup", {"order_id": "o-7"}))
        if turns == 1:
            return call(("refund", {"order_id": "o-7", "amount": 30}))
        return say("done: " + tool_results(body)[-1])
    return say(f"echo: {user}")


def config(url: str, tmp_path: Path, agents: list[dict[str, str]] | None = None) -> Any:
    return parse_config(
        {
            "models": [
                {"name": "fast", "provider": "openai", "model": "m", "base_url": url + "/v1"}
            ],
            "store": f"sqlite:///{tmp_path / 'runs.db'}",
            "auth": {
                "keys": [
                    {"key": "acme-key", "tenant": "acme"},
                    {"key": "globex-key", "tenant": "globex"},
                ]
            },
            "agents": agents
            if agents is not None
            else [
                {"name": "support", "path": "tests.agents_fixture:support"},
                {"name": "echo", "path": "tests.agents_fixture:make_echo"},
            ],
        }
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    upstream = AgentUpstream(policy)
    with (
        serve_app(upstream.app) as url,
        serve_app(create_app(Runtime(config(url, tmp_path)))) as base,
    ):
        yield base


def sse_events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_run_and_wait(server: str) -> None:
    response = httpx.post(
        server + "/v1/runs",
        headers=ACME,
        timeout=30,
        json={"agent": "echo", "input": "hi", "wait": True},
    )
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "finished" and run["output"] == "echo: hi"
    assert run["object"] == "run" and run["steps"] == 1
    again = httpx.get(f"{server}/v1/runs/{run['id']}", headers=ACME)
    assert again.json()["output"] == "echo: hi"


def test_runs_are_private_to_their_tenant(server: str) -> None:
    run = httpx.post(
        server + "/v1/runs",
        headers=ACME,
        timeout=30,
        json={"agent": "echo", "input": "secret", "wait": True},
    ).json()
    for path in ("", "/events"):
        response = httpx.get(f"{server}/v1/runs/{run['id']}{path}", headers=GLOBEX)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "run_not_found"
    response = httpx.post(f"{server}/v1/runs/{run['id']}/resume", headers=GLOBEX, json={})
    assert response.status_code == 404
    assert httpx.get(f"{server}/v1/runs/{run['id']}").status_code == 401


def start(server: str, key: dict[str, str], **body: Any) -> httpx.Response:
    return httpx.post(server + "/v1/runs", headers=key, timeout=30, json=body)


def test_a_run_id_is_per_tenant(server: str) -> None:
    mine = start(server, ACME, agent="echo", input="acme's", run_id="nightly", wait=True)
    assert mine.status_code == 200 and mine.json()["output"] == "echo: acme's"
    # globex chooses the same id: its own run, which reveals nothing of acme's.
    theirs = start(server, GLOBEX, agent="echo", input="globex's", run_id="nightly", wait=True)
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["id"] == "nightly" and theirs.json()["output"] == "echo: globex's"
    for key, output in ((ACME, "echo: acme's"), (GLOBEX, "echo: globex's")):
        assert httpx.get(f"{server}/v1/runs/nightly", headers=key).json()["output"] == output
        with httpx.stream("GET", f"{server}/v1/runs/nightly/events", headers=key) as events:
            finished = sse_events("".join(events.iter_text()))[-1]
        assert finished == {"run_id": "nightly", "output": output, "kind": "finished"}


def test_reusing_ones_own_run_id_for_another_run_is_409(server: str) -> None:
    first = start(server, ACME, agent="echo", input="first", run_id="r-1", wait=True)
    assert first.status_code == 200
    for wait in (True, False):
        again = start(server, ACME, agent="echo", input="second", run_id="r-1", wait=wait)
        assert again.status_code == 409, again.text
        error = again.json()["error"]
        assert error["code"] == "run_exists" and error["param"] == "run_id"
    # A retry of the same run (after a timeout, a crash) is that run, not a conflict.
    retry = start(server, ACME, agent="echo", input="first", run_id="r-1", wait=True)
    assert retry.status_code == 200 and retry.json() == first.json()
    assert httpx.get(f"{server}/v1/runs/r-1", headers=ACME).json()["output"] == "echo: first"


def test_background_run_and_its_event_stream(server: str) -> None:
    response = httpx.post(
        server + "/v1/runs", headers=ACME, timeout=30, json={"agent": "echo", "input": "later"}
    )
    assert response.status_code == 202
    run_id = response.json()["id"]
    with httpx.stream(
        "GET", f"{server}/v1/runs/{run_id}/events", headers=ACME, timeout=30
    ) as stream:
        text = "".join(stream.iter_text())
    kinds = [event["kind"] for event in sse_events(text)]
    assert kinds[0] == "run_started" and kinds[-1] == "finished"
    assert "step_done" in kinds
    assert "id: 0" in text  # resumable with Last-Event-ID


def test_approve_over_http(server: str) -> None:
    agents_fixture.REFUNDS.clear()
    run = httpx.post(
        server + "/v1/runs",
        headers=ACME,
        timeout=30,
        json={"agent": "support", "input": "please refund o-7", "wait": True},
    ).json()
    assert run["status"] == "paused"
    [pending] = run["pending_calls"]
    assert pending["name"] == "refund" and orjson.loads(pending["arguments"])["amount"] == 30
    assert agents_fixture.REFUNDS == []
    response = httpx.post(
        f"{server}/v1/runs/{run['id']}/approve", headers=ACME, json={"call_id": pending["call_id"]}
    )
    assert response.status_code == 200
    done = httpx.post(
        f"{server}/v1/runs/{run['id']}/resume", headers=ACME, timeout=30, json={"wait": True}
    ).json()
    assert done["status"] == "finished" and done["output"] == "done: refunded 30.0 on o-7"
    assert [f"acme:{run['id']}:{pending['call_id']}"] == agents_fixture.REFUNDS


def test_reject_over_http(server: str) -> None:
    run = httpx.post(
        server + "/v1/runs",
        headers=ACME,
        timeout=30,
        json={"agent": "support", "input": "refund o-7", "wait": True},
    ).json()
    call_id = run["pending_calls"][0]["call_id"]
    response = httpx.post(
        f"{server}/v1/runs/{run['id']}/reject",
        headers=ACME,
        json={"call_id": call_id, "reason": "not eligible"},
    )
    assert response.status_code == 200
    done = httpx.post(
        f"{server}/v1/runs/{run['id']}/resume", headers=ACME, timeout=30, json={"wait": True}
    ).json()
    assert done["output"] == "done: error: a human rejected this call: not eligible"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"agent": "nobody", "input": "x"}, "agent"),
        ({"agent": "echo"}, "input"),
        ({"agent": "echo", "input": "x", "surprise": 1}, "surprise"),
        ({"agent": "echo", "input": "x", "run_id": "bad id with spaces"}, "run_id"),
    ],
)
def test_bad_run_requests_are_400(server: str, body: dict[str, Any], param: str) -> None:
    response = httpx.post(server + "/v1/runs", headers=ACME, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_bad_json_and_unknown_things(server: str) -> None:
    response = httpx.post(server + "/v1/runs", headers=ACME, content=b"{nope")
    assert response.status_code == 400
    assert httpx.get(server + "/v1/runs/run_missing", headers=ACME).status_code == 404
    run = httpx.post(
        server + "/v1/runs",
        headers=ACME,
        timeout=30,
        json={"agent": "echo", "input": "x", "wait": True},
    ).json()
    response = httpx.post(
        f"{server}/v1/runs/{run['id']}/approve", headers=ACME, json={"call_id": "call_nothing"}
    )
    assert (
        response.status_code == 400
        and "waiting for approval" in response.json()["error"]["message"]
    )
    response = httpx.get(f"{server}/v1/runs/{run['id']}/events?after=abc", headers=ACME)
    assert response.status_code == 400


@pytest.mark.parametrize("path", ["tests.nowhere:agent", "tests.agents_fixture:not_an_agent"])
async def test_bad_agent_paths_fail_at_start(tmp_path: Path, path: str) -> None:
    async with Runtime(config("http://127.0.0.1:1", tmp_path, [{"name": "x", "path": path}])) as rt:
        with pytest.raises(ConfigError, match=r"agents\[0\]\.path"):
            create_app(rt)
