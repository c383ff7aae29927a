"""The request log (`areion.server.access`): one line per request from a real
`areion serve`, for answers and errors alike, as JSON when asked; keys never appear."""

from __future__ import annotations

import json
import logging
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
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import free_port, serve_app, wait_for_port

TENANT_KEY = "sk-tenant-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-fedcba9876543210"
JUNK_KEY = "sk-junk-5555aaaa5555aaaa"


def config(upstream_url: str, **server: Any) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "fast",
                "provider": "openai",
                "model": "gpt-test",
                "base_url": upstream_url + "/v1",
                "api_key": UPSTREAM_KEY,
                "price": {"input": 0.15, "output": 0.60},
            },
            {"name": "sim", "provider": "sim", "model": "sim-fast"},
        ],
        "auth": {"keys": [{"key": TENANT_KEY, "tenant": "acme", "name": "team-a"}]},
        "store": "sqlite:///:memory:",
        "retry": {"max_attempts": 1},
        "server": server,
    }


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream()
    with serve_app(up.app) as url:
        yield up, url


def chat(model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def drive(url: str) -> dict[str, httpx.Response]:
    """One request of each kind, each with its own client id (x-request-id)."""
    auth = {"authorization": f"Bearer {TENANT_KEY}"}
    asks: dict[str, tuple[str, str, dict[str, str], Any]] = {
        "ok": ("POST", "/v1/chat/completions", auth, chat("fast", temperature=0)),
        "hit": ("POST", "/v1/chat/completions", auth, chat("fast", temperature=0)),
        "stream": ("POST", "/v1/chat/completions", auth, chat("sim", stream=True)),
        "upstream_429": ("POST", "/v1/chat/completions", auth, chat("fast", "a")),
        "upstream_503": ("POST", "/v1/chat/completions", auth, chat("fast", "b")),
        "unknown_model": ("POST", "/v1/chat/completions", auth, chat("gpt-nope")),
        "bad_body": ("POST", "/v1/chat/completions", auth, {"model": "fast"}),
        "junk_key": (
            "POST",
            "/v1/chat/completions",
            {"authorization": f"Bearer {JUNK_KEY}"},
            chat("fast"),
        ),
        "no_key": ("POST", "/v1/chat/completions", {}, chat("fast")),
        "scan": ("GET", "/wp-admin/setup.php", auth, None),
    }
    answers: dict[str, httpx.Response] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for name, (method, path, headers, body) in asks.items():
            headers = {**headers, "x-request-id": f"client-{name}"}
            answers[name] = http.request(method, path, headers=headers, json=body)
    return answers


def test_a_served_request_log_has_a_json_line_per_request_and_no_key(
    upstream: tuple[ScriptedUpstream, str], tmp_path: Path
) -> None:
    up, upstream_url = upstream
    # Calls to `fast` in order: ok (the hit never reaches it), 429, 503.
    up.then(Behaviour(), Behaviour(status=429, retry_after="1"), Behaviour(status=503))
    (tmp_path / "areion.yaml").write_text(yaml.safe_dump(config(upstream_url)))
    port = free_port()
    output = tmp_path / "serve.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "areion.cli", "serve", "--config", "areion.yaml",
             "--port", str(port), "--log-format", "json"],
            cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_port(port, timeout=60)
            answers = drive(f"http://127.0.0.1:{port}")
        finally:
            process.terminate()  # a graceful stop: every line has been written
            process.wait(timeout=30)
    text = output.read_text()
    for secret in (TENANT_KEY, UPSTREAM_KEY, JUNK_KEY):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    by_client = {line.get("client_request_id"): line for line in lines}
    assert len(lines) == len(answers) == len(by_client)
    for name, answer in answers.items():
        line = by_client[f"client-{name}"]
        assert line["status"] == answer.status_code, name
        assert line["method"] in ("GET", "POST") and line["latency_ms"] > 0
        assert line["time"].endswith("Z")
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "ok": 200,
        "hit": 200,
        "stream": 200,
        "upstream_429": 429,
        "upstream_503": statuses["upstream_503"],
        "unknown_model": 404,
        "bad_body": 400,
        "junk_key": 401,
        "no_key": 401,
        "scan": 404,
    }
    assert statuses["upstream_503"] in (502, 503)

    ok = by_client["client-ok"]
    assert ok["request_id"] == answers["ok"].headers["x-request-id"]
    assert (ok["tenant"], ok["key"], ok["model"]) == ("acme", "team-a", "fast")
    assert ok["deployment"] == "fast/gpt-test" and ok["cache"] == "miss"
    assert ok["cost_usd"] == answers["ok"].headers["x-areion-cost-usd"]
    assert float(ok["cost_usd"]) > 0 and ok["error"] is None
    assert by_client["client-hit"]["cache"] == "hit-exact"
    stream = by_client["client-stream"]
    assert stream["model"] == "sim" and stream["deployment"] == "sim/sim-fast"
    assert stream["cost_usd"] is not None and stream["cache"] == "miss"
    assert by_client["client-upstream_429"]["error"] == "rate_limited"
    assert by_client["client-upstream_429"]["model"] == "fast"
    assert by_client["client-upstream_503"]["error"] is not None
    assert by_client["client-unknown_model"]["error"] == "model_not_found"
    assert by_client["client-unknown_model"]["model"] == "gpt-nope"
    assert by_client["client-bad_body"]["error"] == "invalid_request"
    for name in ("junk_key", "no_key"):
        line = by_client[f"client-{name}"]
        assert line["error"] == "invalid_api_key" and line["tenant"] is None
    assert by_client["client-scan"]["path"] == "/wp-admin/setup.php"


async def test_text_lines_by_default_and_none_when_turned_off(
    upstream: tuple[ScriptedUpstream, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, upstream_url = upstream
    caplog.set_level(logging.INFO, logger="areion.access")
    auth = {"authorization": f"Bearer {TENANT_KEY}"}
    for access_log, expected in ((True, 1), (False, 0)):
        caplog.clear()
        runtime = Runtime(parse_config(config(upstream_url, access_log=access_log)))
        with serve_app(create_app(runtime)) as url:
            async with httpx.AsyncClient(base_url=url, headers=auth) as http:
                answer = await http.post(
                    "/v1/chat/completions", json=chat("fast", "line\nforged=1")
                )
        assert answer.status_code == 200
        lines = [r.getMessage() for r in caplog.records if r.name == "areion.access"]
        assert len(lines) == expected
        if expected:
            (line,) = lines
            assert "\n" not in line and TENANT_KEY not in line
            assert f"request_id={answer.headers['x-request-id']} " in line
            assert " status=200 " in line and " tenant=acme key=team-a model=fast " in line
            assert " deployment=fast/gpt-test " in line and " cache=miss " in line


async def test_a_line_is_written_as_it_reads_percent_signs_and_all(
    upstream: tuple[ScriptedUpstream, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A line is logged as made, never taken for a format string: a path or client id
    holding `%s` or `%(x)s` comes out as sent."""
    _, upstream_url = upstream
    caplog.set_level(logging.INFO, logger="areion.access")
    runtime = Runtime(parse_config(config(upstream_url)))
    with serve_app(create_app(runtime)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.get("/v1/%25s%25d", headers={"x-request-id": "%(name)s-%s"})
    assert answer.status_code == 404
    (line,) = [r.getMessage() for r in caplog.records if r.name == "areion.access"]
    assert " path=/v1/%s%d " in line and "client_request_id=%(name)s-%s" in line
