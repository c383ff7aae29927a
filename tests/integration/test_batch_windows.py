"""Windows end to end: a batch asked to run off-peak waits in the store until its slot,
then a worker runs it; one whose deadline comes first runs at once."""

from __future__ import annotations

import datetime as dt
import io
import time
from pathlib import Path

import openai
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.jobs import BatchRecord, LineRecord, open_queue
from areion.jobs.windows import plan
from areion.jobs.worker import BatchWorker
from areion.server import create_app
from areion.server.batches import parse_line
from areion.store import SQLiteStore
from tests.integration.test_batches import jsonl
from tests.support import ManualClock, serve_app
from tests.unit.test_windows import OFFPEAK, at


async def test_an_offpeak_batch_waits_then_runs_in_its_window(tmp_path: Path) -> None:
    clock = ManualClock(at("2026-12-04T12:30"))
    store = SQLiteStore(str(tmp_path / "areion.db"), clock=clock)
    config = parse_config({"models": [{"name": "fast", "provider": "sim", "model": "sim-fast",
                                       "time_scale": 0.001}]})  # fmt: skip
    async with Runtime(config, store=store) as rt:
        queue = open_queue(store)
        chosen = plan(clock(), window=OFFPEAK)
        await queue.create_batch(
            BatchRecord(
                batch_id="batch_night", tenant="default", endpoint="/v1/chat/completions",
                input_file_id="file-x", total=2, created=clock(), expires_at=clock() + 86_400,
                not_before=chosen.start, schedule=chosen.record(),
            ),
            [
                LineRecord(batch_id="batch_night", index=i, custom_id=f"c{i}",
                           body={"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
                for i in range(2)
            ],
        )  # fmt: skip
        worker = BatchWorker(rt, queue, parse_line)
        assert not await worker.run_once()  # 12:30: not yet
        clock.now = at("2026-12-05T00:59")
        assert not await worker.run_once()
        waiting = await queue.get_batch("default", "batch_night")
        assert waiting is not None and waiting.status == "validating"
        assert "starts 2026-12-05T01:00" in waiting.schedule["reason"]
        clock.now = at("2026-12-05T01:00")
        assert await worker.run_once()
        done = await queue.get_batch("default", "batch_night")
        assert done is not None and done.status == "completed" and done.completed == 2
        assert done.in_progress_at == at("2026-12-05T01:00")


def test_the_api_takes_a_window_and_a_deadline(tmp_path: Path) -> None:
    # A window two hours from now (UTC), so it is closed whatever time the test runs.
    hour = dt.datetime.now(dt.UTC).hour
    hours = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    config = parse_config(
        {
            "models": [{"name": "fast", "provider": "sim", "model": "sim-fast",
                        "time_scale": 0.001}],
            "store": f"sqlite:///{tmp_path / 'areion.db'}",
            "jobs": {"poll_s": 0.05, "windows": {"later": {"hours": hours}},
                     "default_window": "later"},
        }
    )  # fmt: skip
    with serve_app(create_app(Runtime(config))) as url:
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        upload = sdk.files.create(file=("a.jsonl", io.BytesIO(jsonl(2))), purpose="batch")
        create = {"input_file_id": upload.id, "endpoint": "/v1/chat/completions",
                  "completion_window": "24h"}  # fmt: skip
        waiting = sdk.batches.create(**create)  # type: ignore[arg-type]  # the default window
        extra = waiting.model_extra or {}
        assert extra["not_before"] > time.time() + 3600
        assert "waits for window 'later'" in extra["schedule"]["reason"]
        urgent = sdk.batches.create(**create, extra_body={"deadline": time.time() + 600})  # type: ignore[arg-type]
        assert "after the deadline" in (urgent.model_extra or {})["schedule"]["reason"]
        now = sdk.batches.create(**create, extra_body={"window": "none"})  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while {sdk.batches.retrieve(b.id).status for b in (urgent, now)} != {"completed"}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert sdk.batches.retrieve(waiting.id).status == "validating"
        with pytest.raises(openai.BadRequestError, match="no window 'sunday'"):
            sdk.batches.create(**create, extra_body={"window": "sunday"})  # type: ignore[arg-type]
