"""`areion jobs list|show|cancel` on the store of a config file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from areion.jobs import BatchRecord, LineRecord, open_queue
from areion.jobs.cli import progress_bar
from areion.store import SQLiteStore


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "areion.cli", *args], capture_output=True, text=True, timeout=60
    )


async def jobs(db: Path) -> None:
    store = SQLiteStore(str(db))
    queue = open_queue(store)
    for batch_id, created in (("batch_a", 1000.0), ("batch_b", 2000.0)):
        await queue.create_batch(
            BatchRecord(
                batch_id=batch_id, tenant="acme", endpoint="/v1/chat/completions",
                input_file_id="file-x", total=4, created=created, expires_at=99_999.0,
                not_before=5000.0, schedule={"reason": "waits for window 'offpeak'"},
            ),
            [LineRecord(batch_id=batch_id, index=i, custom_id=f"c{i}", body={}) for i in range(4)],
        )  # fmt: skip
    held = await queue.claim("w", ttl=10)
    assert held is not None
    for line in (await queue.pending_lines(held.batch_id))[:3]:
        line.status, line.output = "done", "{}"
        await queue.end_line(line, held.fence)
    await store.aclose()


async def finish(db: Path, batch_id: str) -> None:
    store = SQLiteStore(str(db))
    queue = open_queue(store)
    batch = await queue.get_batch(None, batch_id)
    assert batch is not None
    (line,) = await queue.pending_lines(batch_id)
    line.status, line.output = "done", "{}"
    assert await queue.end_line(line, batch.fence)
    assert await queue.finish(batch_id, batch.fence, "completed") is not None
    await store.aclose()


def test_list_show_watch_and_cancel(tmp_path: Path) -> None:
    db = tmp_path / "areion.db"
    config = tmp_path / "areion.yaml"
    config.write_text(f"models: [{{name: fast, provider: sim}}]\nstore: sqlite:///{db}\n")
    asyncio.run(jobs(db))

    listed = cli("jobs", "list", "--json", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)] == ["batch_b", "batch_a"]
    table = cli("jobs", "list", "--config", str(config)).stdout
    assert "batch_a  acme  /v1/chat/completions  [########..] 3/4 lines (in_progress)" in table

    shown = cli("jobs", "show", "batch_a", "--config", str(config))
    assert "waits for window 'offpeak'" in shown.stdout
    assert "[######################........] 3/4 lines (in_progress)" in shown.stdout

    asyncio.run(finish(db, "batch_a"))
    watched = cli("jobs", "show", "batch_a", "--watch", "--config", str(config))
    assert watched.stdout.endswith("  [##############################] 4/4 lines (completed)\n")

    cancelled = cli("jobs", "cancel", "batch_b", "--config", str(config))
    assert cancelled.stdout.strip() == "job batch_b: cancelling"
    missing = cli("jobs", "show", "batch_nope", "--config", str(config))
    assert missing.returncode == 2 and "no job 'batch_nope'" in missing.stderr


def test_the_progress_bar() -> None:
    batch = BatchRecord(batch_id="b", tenant="t", endpoint="e", input_file_id="f", total=10,
                        completed=4, failed=1, status="in_progress")  # fmt: skip
    assert progress_bar(batch, 10) == "[#####.....] 5/10 lines, 1 failed (in_progress)"
    batch.completed, batch.status = 9, "completed"
    assert progress_bar(batch, 10) == "[##########] 10/10 lines, 1 failed (completed)"
