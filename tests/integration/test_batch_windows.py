"""Windows end to end: a batch asked to run off-peak waits in the store until its slot,
then a worker runs it; one whose deadline comes first runs at once."""

from __future__ import annotations

import datetime as dt
import io
import time
from pathlib import Path

import httpx
import openai
import pytest

from areion import Agent, Runtime
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


async def test_a_deferred_run_waits_for_its_window_then_runs(tmp_path: Path) -> None:
    clock = ManualClock(at("2026-12-04T12:30"))
    store = SQLiteStore(str(tmp_path / "areion.db"), clock=clock)
    config = parse_config(
        {
            "models": [{"name": "fast", "provider": "sim", "model": "sim-fast",
                        "time_scale": 0.001}],
            "jobs": {"worker": False, "windows": {"offpeak": OFFPEAK[1].model_dump()}},
        }
    )  # fmt: skip
    async with Runtime(config, store=store) as rt:
        agent = Agent(name="nightly", model="fast")
        deferred = await rt.defer(agent, "sum up the day", window="offpeak", run_id="day-1")
        assert deferred.run_id == "day-1" and deferred.not_before == at("2026-12-05T01:00")
        worker = BatchWorker(rt, rt.jobs.queue, parse_line, agents=rt.jobs.agents.get)
        assert not await worker.run_once()
        assert await rt.agents.get("day-1") is None  # not started before its window
        clock.now = at("2026-12-05T01:30")
        assert await worker.run_once()
        snapshot = await rt.agents.get("day-1")
        assert snapshot is not None and snapshot.run.status == "finished"
        job = await rt.jobs.queue.get_batch("default", deferred.job_id)
        assert job is not None and job.status == "completed" and job.completed == 1
        assert not await worker.run_once()  # started once


def test_post_runs_with_defer(tmp_path: Path) -> None:
    config = parse_config(
        {
            "models": [{"name": "fast", "provider": "sim", "model": "sim-fast",
                        "time_scale": 0.001}],
            "store": f"sqlite:///{tmp_path / 'areion.db'}",
            "agents": [{"name": "echo", "path": "tests.agents_fixture:make_echo"}],
            "jobs": {"poll_s": 0.05},
        }
    )  # fmt: skip
    with serve_app(create_app(Runtime(config))) as url:
        later = time.time() + 7200
        response = httpx.post(
            url + "/v1/runs",
            json={"agent": "echo", "input": "hi", "run_id": "r-later",
                  "defer": {"not_before": later}},
        )  # fmt: skip
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "deferred"
        assert response.json()["not_before"] == later
        soon = httpx.post(
            url + "/v1/runs",
            json={"agent": "echo", "input": "hi", "run_id": "r-now", "defer": {}},
        ).json()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/runs/r-now").status_code != 200 or (
            httpx.get(f"{url}/v1/runs/r-now").json()["status"] != "finished"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/v1/runs/r-later").status_code == 404  # not started yet
        job = httpx.get(f"{url}/v1/batches/{soon['job_id']}").json()
        assert job["endpoint"] == "/v1/runs"
        bad = httpx.post(url + "/v1/runs", json={"agent": "echo", "input": "hi",
                                                  "defer": {"window": "sunday"}})  # fmt: skip
        assert bad.status_code == 400 and "no window 'sunday'" in bad.text


async def test_a_batch_past_its_completion_window_expires(tmp_path: Path) -> None:
    clock = ManualClock(at("2026-12-04T12:30"))
    store = SQLiteStore(str(tmp_path / "areion.db"), clock=clock)
    sim = {"name": "fast", "provider": "sim", "model": "sim-fast", "time_scale": 0.001}
    config = parse_config({"models": [sim], "jobs": {"worker": False}})
    async with Runtime(config, store=store) as rt:
        queue = rt.jobs.queue
        await queue.create_batch(
            BatchRecord(batch_id="batch_old", tenant="default", endpoint="/v1/chat/completions",
                        input_file_id="-", total=3, created=clock(), expires_at=clock() + 60),
            [LineRecord(batch_id="batch_old", index=i, custom_id=f"c{i}",
                        body={"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
             for i in range(3)],
        )  # fmt: skip
        clock.advance(61)  # no worker took it in time
        assert await BatchWorker(rt, queue, parse_line).run_once()
        batch = await queue.get_batch("default", "batch_old")
        assert batch is not None and batch.status == "expired"
        assert (batch.completed, batch.failed) == (0, 0)
        assert await queue.pending_lines("batch_old") == []  # not run later either
        assert await store.ledger() == []
