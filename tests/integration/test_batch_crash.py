"""kill -9 the worker (`areion serve`) three times in the middle of a batch, over one
database: the batch completes, and no custom_id is answered or booked twice. Run here,
the kills come between lines; sent to the provider's batch API, while the provider
works (its answers are then booked in one transaction), and the batch is never sent
twice."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.integration.test_batches import jsonl, message_batches_sent, sent_to_sim
from tests.integration.test_end_to_end import start, stop, wait_ready
from tests.support import free_port, wait_for_port

KEY = "sk-batch-crash-0123456789"
LINES = 400


@pytest.fixture(params=["self-run", "native", "anthropic-native"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run here; sent to the sim's OpenAI batch API; sent to its Message Batches."""
    return str(request.param)


@pytest.fixture
def sim(mode: str) -> Iterator[str]:
    native = mode != "self-run"
    port = free_port()
    # Slow enough that there is time to kill: a few seconds of lines run here, and for
    # the provider's batch (natively) longer than three restarts of the server.
    scale = "5.0" if native else "0.2"
    process = start(["sim", "--port", str(port), "--time-scale", scale])
    try:
        wait_ready(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def sim_progress(sim: str, batch_id: str) -> int | None:
    """Lines the sim has answered of the provider batch made for `batch_id` (None: none
    made yet, or it has ended)."""
    for b in httpx.get(sim + "/v1/batches").json()["data"]:
        if (b["metadata"] or {}).get("areion_batch") == batch_id and b["status"] == "in_progress":
            return int(b["request_counts"]["completed"])
    # A Message Batch carries no metadata: the one running (each test has its own sim).
    for b in httpx.get(sim + "/v1/messages/batches").json()["data"]:
        if b["processing_status"] == "in_progress":
            counts = b["request_counts"]
            return int(counts["succeeded"] + counts["errored"])
    return None


def serve(config: Path, port: int) -> subprocess.Popen[bytes]:
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


def run_until(
    sdk: openai.OpenAI, batch_id: str, ready: Callable[[openai.types.Batch], bool]
) -> openai.types.Batch:
    deadline = time.monotonic() + 120
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if ready(batch) or batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.02)


def test_kill_9_three_times_mid_batch(sim: str, tmp_path: Path, mode: str) -> None:
    native = mode != "self-run"
    provider = "anthropic" if mode == "anthropic-native" else "openai"
    db = tmp_path / "areion.db"
    config = tmp_path / "areion.yaml"
    config.write_text(f"""
models:
  - {{name: fast, provider: {provider}, model: sim-fast, base_url: {sim}/v1,
     price: {{input: 1, output: 2}}, native_batch: {str(native).lower()}}}
auth:
  keys: [{{key: {KEY}, tenant: acme}}]
cache: {{exact: {{enabled: false}}}}
store: sqlite:///{db}
jobs: {{lease_ttl_s: 1, poll_s: 0.05, native_poll_s: 0.05, concurrency: 8}}
""")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    process = serve(config, port)
    upload = sdk.files.create(file=("in.jsonl", io.BytesIO(jsonl(LINES))), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    seen: list[int] = [0]
    # Natively, early in the provider's batch: a restart under load takes seconds.
    for at_least in (20, 60, 100) if native else (40, 130, 220):

        def mid_batch(b: openai.types.Batch, at_least: int = at_least) -> bool:
            if native:  # killed while the provider works (its answers are booked at once)
                progress = sim_progress(sim, batch.id)
                return progress is not None and progress >= at_least
            return b.request_counts is not None and b.request_counts.completed >= at_least

        now = run_until(sdk, batch.id, mid_batch)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert now.status in ("validating", "in_progress"), "the batch ended before the kill"
        assert now.request_counts is not None
        seen.append(now.request_counts.completed)
        process = serve(config, port)
    try:
        done = run_until(sdk, batch.id, lambda b: False)
        assert done.output_file_id is not None
        output = [orjson.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == LINES
    assert seen == sorted(seen)  # nothing answered was lost by a kill
    # Every custom_id answered once, and booked once: one ledger row per line.
    assert sorted(o["custom_id"] for o in output) == sorted(f"line-{i}" for i in range(LINES))
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT request_id FROM ledger").fetchall()
    assert len(rows) == LINES
    assert {r[0] for r in rows} == {o["response"]["request_id"] for o in output}
    if provider == "anthropic":  # taken over, never sent again
        assert len(message_batches_sent(sim, batch.id)) == 1
        assert len(httpx.get(sim + "/v1/messages/batches").json()["data"]) == 1
    elif native:
        assert sent_to_sim(sim, batch.id) == 1  # taken over, never sent again
