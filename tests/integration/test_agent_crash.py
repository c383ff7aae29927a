"""kill -9 a worker mid-run, resume in a new process: nothing lost, no effect twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from areion.store.sqlite import SQLiteStore
from tests.agent_upstream import AgentUpstream, call, model_turns, say
from tests.support import serve_app

ROOT = Path(__file__).resolve().parents[2]


def billing_policy(body: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.15)  # a model takes a while to answer
    turns = model_turns(body)
    if turns == 0:
        return call(("lookup", {"key": "a"}))
    if turns == 1:
        return call(("charge", {"account": "acct-1", "amount": 10}))
    if turns == 2:
        return call(("lookup", {"key": "b"}), ("charge", {"account": "acct-2", "amount": 20}))
    if turns == 3:
        return call(("charge", {"account": "acct-3", "amount": 30}))
    return say("all customers billed")


def worker(store: Path, bank: Path, url: str, run_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.crash_worker",
            "--store",
            str(store),
            "--bank",
            str(bank),
            "--upstream",
            url,
            "--run-id",
            run_id,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def steps_done(store: Path, run_id: str) -> int:
    reader = SQLiteStore(str(store))
    try:
        snapshot = await reader.load_run(run_id)
        return 0 if snapshot is None else snapshot.run.steps
    finally:
        await reader.aclose()


async def test_kill_9_mid_run_then_resume_elsewhere(tmp_path: Path) -> None:
    upstream = AgentUpstream(billing_policy)
    store, bank = tmp_path / "areion.db", tmp_path / "bank.db"
    run_id = "run-crash-1"
    kills = 0
    with serve_app(upstream.app) as url:
        # Kill twice at different points of the run, then let a third worker finish it.
        for steps_before_kill in (2, 4):
            process = worker(store, bank, url, run_id)
            deadline = time.monotonic() + 60
            while await steps_done(store, run_id) < steps_before_kill:
                assert process.poll() is None, process.communicate()[0].decode()
                assert time.monotonic() < deadline, "the worker made no progress"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)  # land somewhere inside the next step
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        final = worker(store, bank, url, run_id)
        output = final.communicate(timeout=120)[0].decode()
        assert final.returncode == 0, output

    reader = SQLiteStore(str(store))
    snapshot = await reader.load_run(run_id)
    await reader.aclose()
    assert snapshot is not None
    assert snapshot.run.status == "finished", output
    assert snapshot.run.output == "all customers billed"
    assert snapshot.run.steps == 5
    # Every call the model made has exactly one result in the transcript: none lost.
    calls = [c["id"] for m in snapshot.messages for c in (m.get("tool_calls") or [])]
    results = [m["tool_call_id"] for m in snapshot.messages if m.get("role") == "tool"]
    assert sorted(calls) == sorted(results) and len(calls) == 5
    # Each charge took effect exactly once, under the key of the call the model made.
    db = sqlite3.connect(bank)
    charges = db.execute("SELECT key, account, amount FROM charges ORDER BY account").fetchall()
    attempts = dict(db.execute("SELECT key, COUNT(*) FROM attempts GROUP BY key").fetchall())
    db.close()
    charge_calls = {
        c["id"]
        for m in snapshot.messages
        for c in (m.get("tool_calls") or [])
        if c["function"]["name"] == "charge"
    }
    assert [(a, amount) for _, a, amount in charges] == [
        ("acct-1", 10),
        ("acct-2", 20),
        ("acct-3", 30),
    ]
    assert {key for key, _, _ in charges} == {f"default:{run_id}:{c}" for c in charge_calls}
    # A charge recorded as done is never invoked again; one cut off mid-way by a kill is
    # re-invoked once, with the same key, and the bank keeps a single charge.
    assert all(count <= 2 for count in attempts.values()), attempts
    assert sum(attempts.values()) <= 3 + kills
    # Resuming repeats at most the one model call a kill interrupted.
    assert len(upstream.requests) <= 5 + kills
