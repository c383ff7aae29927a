"""kill -9 the worker (`areion serve`) three times in the middle of a batch, over one
database: the batch completes, and no custom_id is answered or booked twice."""

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

import openai
import orjson
import pytest

from tests.integration.test_batches import jsonl, sent_to_sim
from tests.integration.test_end_to_end import start, stop, wait_ready
from tests.support import free_port, wait_for_port

KEY = "sk-batch-crash-0123456789"
LINES = 400


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    port = free_port()
    # Slow enough that a few hundred lines take a few seconds: there is time to kill.
    process = start(["sim", "--port", str(port), "--time-scale", "0.2"])
    try:
        wait_ready(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


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


@pytest.mark.parametrize("native", [False, True], ids=["self-run", "native"])
def test_kill_9_three_times_mid_batch(sim: str, tmp_path: Path, native: bool) -> None:
    db = tmp_path / "areion.db"
    config = tmp_path / "areion.yaml"
    config.write_text(f"""
models:
  - {{name: fast, provider: openai, model: sim-fast, base_url: {sim}/v1,
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
    for round_number, at_least in enumerate((40, 130, 220)):

        def mid_batch(
            b: openai.types.Batch, at_least: int = at_least, n: int = round_number
        ) -> bool:
            if native and n == 0:
                return sent_to_sim(sim, batch.id) == 1  # killed while the provider works
            # The provider's answers are booked quickly: kill as soon as booking has
            # moved on since the last kill.
            wanted = seen[-1] + 1 if native else at_least
            return b.request_counts is not None and b.request_counts.completed >= wanted

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
    if native:
        assert sent_to_sim(sim, batch.id) == 1  # taken over, never sent again
