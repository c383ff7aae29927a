"""kill -9 `areion serve` in the middle of a 40-way burst, five times over one database:
every answer a client received is in the ledger, and the budget holds across restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import free_port, serve_app, wait_for_port

KEY = "sk-crash-0123456789"
# A call books (11 prompt + 7 completion tokens) * $1000 / 1M = $0.018: the budget holds
# about 80 calls, and the five rounds ask for more.
BUDGET = 1.5


@pytest.fixture
def upstream() -> Iterator[str]:
    up = ScriptedUpstream()
    up.default = Behaviour(delay=0.05)  # 40 calls in flight at once
    with serve_app(up.app) as url:
        yield url


def start(config: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "areion.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
    except RuntimeError:
        process.kill()
        raise
    return process


async def burst(url: str, kill_after: int, process: subprocess.Popen[bytes]) -> set[str]:
    """Keep 40 calls in flight until `kill_after` answers have arrived (or the budget
    refuses them all), then kill -9 the server; the request ids of every answer (or
    stream start) a client received."""
    received: set[str] = set()
    refused = 0
    killed = asyncio.Event()
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

        async def worker(number: int) -> None:
            body = {
                "model": "fast",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 10,
                "stream": number % 2 == 1,
            }
            nonlocal refused
            while not killed.is_set():
                try:
                    async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                        if answer.status_code == 200:
                            # The headers (and, for a stream, its first event) are here.
                            received.add(answer.headers["x-request-id"])
                        else:
                            assert answer.status_code == 402, answer.status_code
                            refused += 1
                        async for _ in answer.aiter_bytes():
                            pass
                except httpx.HTTPError:
                    return  # the server is gone
                done = len(received) >= kill_after or refused >= 40
                if done and not killed.is_set():
                    killed.set()
                    os.kill(process.pid, signal.SIGKILL)

        await asyncio.gather(*(worker(n) for n in range(40)))
    process.wait(timeout=30)
    return received


def test_kill_9_loses_no_answered_call_and_no_budget(upstream: str, tmp_path: Path) -> None:
    db = tmp_path / "areion.db"
    config = tmp_path / "areion.yaml"
    config.write_text(f"""
models:
  - {{name: fast, provider: openai, model: m, base_url: {upstream}/v1,
     price: {{input: 1000, output: 1000}}}}
auth:
  keys: [{{key: {KEY}, tenant: acme}}]
  tenants: [{{name: acme, budget_usd_per_day: {BUDGET}}}]
cache: {{exact: {{enabled: false}}}}
store: sqlite:///{db}
""")
    answered: set[str] = set()
    for kill_after in (10, 25, 5, 30, 15):
        port = free_port()
        process = start(config, port)
        answered |= asyncio.run(burst(f"http://127.0.0.1:{port}", kill_after, process))
        assert process.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as connection:
        booked = {row[0] for row in connection.execute("SELECT request_id FROM ledger")}
        (spent,) = connection.execute("SELECT SUM(cost_usd) FROM ledger").fetchone()
    # (How many calls were answered varies: streams cut by a kill stay booked at what
    # they may have cost, which uses up the budget sooner. Nothing else may vary.)
    assert len(answered) >= 10
    assert answered <= booked, f"{len(answered - booked)} answered calls are not in the ledger"
    assert spent <= BUDGET


def test_an_answer_leaves_only_once_its_row_is_committed(upstream: str, tmp_path: Path) -> None:
    db = tmp_path / "areion.db"
    config = parse_config(
        {
            "models": [
                {
                    "name": "fast",
                    "provider": "openai",
                    "model": "m",
                    "base_url": upstream + "/v1",
                    "price": {"input": 1, "output": 2},
                }
            ],
            "store": f"sqlite:///{db}",
        }
    )

    def rows() -> list[tuple[str, int]]:
        with sqlite3.connect(db) as connection:
            return connection.execute("SELECT request_id, open FROM ledger").fetchall()

    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    with serve_app(create_app(Runtime(config))) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/v1/chat/completions", json=body)
        assert rows() == [(answer.headers["x-request-id"], 0)]
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            # Its first byte has arrived: the ledger has it, open until the stream ends.
            assert (s.headers["x-request-id"], 1) in rows()
            for _ in s.iter_bytes():
                pass
