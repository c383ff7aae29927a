"""The real commands: `areion sim` and `areion serve` as processes, an OpenAI SDK client."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import openai
import pytest

from tests.support import free_port, wait_for_port

AREION = [sys.executable, "-m", "areion.cli"]
OUTPUTS: dict[int, IO[bytes]] = {}  # each started process's output, by pid


def start(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Output to a file, not a pipe nobody reads while the server runs: a server logs a
    # line per request and would block once a pipe's buffer is full.
    output = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
    process = subprocess.Popen(
        AREION + args, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    OUTPUTS[process.pid] = output
    return process


def wait_ready(process: subprocess.Popen[bytes], port: int) -> None:
    try:
        wait_for_port(port)
    except RuntimeError:
        raise RuntimeError(f"process did not start:\n{stop(process)}") from None


def stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with OUTPUTS.pop(process.pid) as output:
        output.seek(0)
        return output.read().decode(errors="replace")


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    port = free_port()
    process = start(["sim", "--port", str(port), "--time-scale", "0.05"])
    try:
        wait_ready(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="module")
def areion(sim: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "areion.yaml"
    config.write_text(f"""
models:
  - name: fast
    provider: openai
    model: sim-fast
    base_url: {sim}/v1
    api_key: ${{SIM_KEY}}
    load_metrics_url: {sim}/metrics
  - name: fast
    provider: openai
    model: sim-fast
    base_url: {sim}/v1
    load_metrics_url: {sim}/metrics
  - name: claude
    provider: anthropic
    model: sim-strong
    base_url: {sim}
    api_key: ${{SIM_KEY}}
fallbacks:
  fast: [claude]
auth:
  keys:
    - {{key: ${{ACME_KEY}}, tenant: acme}}
  metrics_keys: [${{METRICS_KEY}}]
store: sqlite:///{folder / "areion.db"}
""")
    port = free_port()
    process = start(
        ["serve", "--config", str(config), "--port", str(port)],
        env={"SIM_KEY": "sim-secret", "ACME_KEY": "acme-secret", "METRICS_KEY": "scrape-secret"},
    )
    try:
        wait_ready(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        output = stop(process)
        assert "sim-secret" not in output and "acme-secret" not in output


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="acme-secret", max_retries=0)


def test_openai_and_anthropic_deployments_answer(areion: str) -> None:
    for model in ("fast", "claude"):
        raw = client(areion).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Say something."}], max_tokens=20
        )
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens <= 20
        assert float(raw.headers["x-areion-cost-usd"]) > 0
        assert raw.headers["x-areion-model"].startswith(model + "/")


def test_streams_through_both_apis(areion: str) -> None:
    for model in ("fast", "claude"):
        stream = client(areion).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Stream please."}],
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tool_call_through_anthropic_translation(areion: str) -> None:
    tools: list = [
        {
            "type": "function",
            "function": {  # type: ignore[type-arg]
                "name": "get_weather",
                "description": "Weather for a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    completion = client(areion).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert '"city"' in call.function.arguments  # type: ignore[union-attr]


def test_ledger_and_metrics_after_calls(areion: str) -> None:
    client(areion).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "count me"}], max_tokens=5
    )
    metrics = httpx.get(areion + "/metrics", headers={"authorization": "Bearer scrape-secret"}).text
    # Either of the two `fast` deployments may have answered.
    assert re.search(
        r'areion_cost_usd_total\{deployment="fast/sim-fast(#2)?",model="fast",tenant="acme"\} '
        r"[0-9.e-]+",
        metrics,
    )
    assert "gen_ai_client_operation_time_to_first_chunk_seconds_bucket" in metrics
    assert re.search(
        r'gen_ai_client_token_usage_count\{deployment="fast/sim-fast(#2)?",'
        r'gen_ai_operation_name="chat",gen_ai_provider_name="openai",'
        r'gen_ai_request_model="fast",gen_ai_token_type="output"\} [1-9]',
        metrics,
    )


def test_invalid_config_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "models:\n  - name: fast\n    provider: openai\n    model: x\n"
        "    base_url: http://127.0.0.1:1/v1\n    price: {input: -1, output: 1}\n"
    )
    result = subprocess.run(
        [*AREION, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "models[0].price.input" in result.stderr
    assert "greater than or equal to 0" in result.stderr


def test_serve_applies_the_server_deadlines(tmp_path: Path) -> None:
    config = tmp_path / "areion.yaml"
    config.write_text(
        "models:\n  - {name: fast, provider: sim, model: sim-fast}\n"
        f"store: sqlite:///{tmp_path / 'areion.db'}\n"
        "server: {header_timeout_s: 0.5}\n"
    )
    port = free_port()
    process = start(["serve", "--config", str(config), "--port", str(port)])
    try:
        wait_ready(process, port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: areion\r\n")  # and no more
            reply = b""
            while chunk := sock.recv(65536):  # until the server closes it, within 10 s
                reply += chunk
    finally:
        stop(process)
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"server.header_timeout_s" in reply


def test_version() -> None:
    from areion import __version__

    result = subprocess.run([*AREION, "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == f"areion {__version__}"


def test_sim_reports_load_while_busy(sim: str) -> None:
    import threading

    def call() -> None:
        httpx.post(
            sim + "/v1/chat/completions",
            timeout=30,
            json={
                "model": "sim-strong",
                "max_tokens": 200,
                "messages": [{"role": "user", "content": "long answer"}],
            },
        )

    def running(text: str) -> float:
        prefix = 'vllm:num_requests_running{model_name="sim-strong"}'
        return max((float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith(prefix)), default=-1.0)  # fmt: skip

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    # Read the gauge while the calls are in flight, however late they arrive.
    seen = -1.0
    while seen < 1 and any(thread.is_alive() for thread in threads):
        seen = running(httpx.get(sim + "/metrics").text)
    for thread in threads:
        thread.join()
    assert seen >= 1


def test_eval_cache_prints_the_figures(tmp_path: Path) -> None:
    import json

    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "question1,question2,is_duplicate\n"
        '"How do I learn Python quickly?","How do I learn Python quickly?",1\n'
        '"What is the capital of France?","What is the capital of Germany?",0\n'
        '"How do I convert 5 km to miles?","How do I convert 10 km to miles?",0\n'
    )
    result = subprocess.run(
        [*AREION, "eval", "cache", "--pairs", str(pairs), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["pairs"] == 3
    assert figures["hits"] == 1 and figures["wrong_hits"] == 0
    assert figures["precision"] == 1.0 and figures["recall"] == 1.0
    # Each setting beside its observed wrong-hit rate; one the calibration cannot
    # vouch for (0.05 on the shipped verifier) serves nothing.
    result = subprocess.run(
        [*AREION, "eval", "cache", "--pairs", str(pairs), "--json", "--rates", "0.05", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    strict, loose = json.loads(result.stdout)["settings"]
    assert strict == {
        "max_wrong_hit_rate": 0.05, "hits": 0, "wrong_hits": 0, "wrong_hit_rate": 0.0,
        "recall": 0.0, "within": True,
    }  # fmt: skip
    assert loose["hits"] == 1 and loose["within"]


def test_eval_cache_measures_the_configured_setting(tmp_path: Path) -> None:
    import json

    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "question1,question2,is_duplicate\n"
        '"How can I improve my English speaking skills?",'
        '"What can I do to improve my spoken English?",1\n'
    )
    config = tmp_path / "areion.yaml"

    def run(rate: float, *extra: str) -> subprocess.CompletedProcess[str]:
        config.write_text(
            "models: [{name: fast, provider: sim, model: sim-fast}]\n"
            f"cache: {{semantic: {{max_wrong_hit_rate: {rate}}}}}\n"
        )
        command = [*AREION, "eval", "cache", "--pairs", str(pairs), "--json", *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    # The looser the configured rate, the more paraphrases are served.
    strict, loose = run(0.1, "--config", str(config)), run(0.5, "--config", str(config))
    assert strict.returncode == 0 and loose.returncode == 0, strict.stderr + loose.stderr
    assert json.loads(strict.stdout)["hits"] == 0
    assert json.loads(loose.stdout)["hits"] == 1
    bad = run(0.1, "--config", str(config), "--max-wrong-hit-rate", "1.5")
    assert bad.returncode != 0
    assert "--max-wrong-hit-rate" in bad.stderr
