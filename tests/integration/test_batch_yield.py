"""The batch lane yields to interactive traffic: while the group has an interactive call,
the worker keeps only `jobs.yield_concurrency` lines in flight; then its full pace."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from areion import ChatRequest, Message, Runtime
from areion.config import parse_config
from areion.jobs import BatchRecord, LineRecord
from areion.jobs.worker import BatchWorker
from areion.server.batches import parse_line
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import eventually, serve_app


def test_a_batch_keeps_to_its_yield_concurrency_while_interactive_calls_run(
    tmp_path: Path,
) -> None:
    upstream = ScriptedUpstream()
    interactive_gate, batch_gate, arrived = threading.Event(), threading.Event(), threading.Event()
    upstream.default = Behaviour(hold=batch_gate)
    upstream.then(Behaviour(hold=interactive_gate, arrived=arrived))
    with serve_app(upstream.app) as url:
        config = parse_config(
            {
                "models": [{"name": "fast", "provider": "openai", "model": "m",
                            "base_url": url + "/v1", "max_concurrency": 16}],
                "store": f"sqlite:///{tmp_path / 'areion.db'}",
                "cache": {"exact": {"enabled": False}},
                "jobs": {"worker": False, "concurrency": 8, "yield_concurrency": 1},
            }
        )  # fmt: skip
        asyncio.run(run(config, upstream, interactive_gate, batch_gate, arrived))


async def run(
    config: object,
    upstream: ScriptedUpstream,
    interactive_gate: threading.Event,
    batch_gate: threading.Event,
    arrived: threading.Event,
) -> None:
    async with Runtime(config) as rt:  # type: ignore[arg-type]
        question = ChatRequest(model="fast", messages=[Message(role="user", content="now")])
        interactive = asyncio.get_running_loop().create_task(rt.chat(question))
        await asyncio.to_thread(arrived.wait, 30)
        await rt.jobs.queue.create_batch(
            BatchRecord(batch_id="batch_y", tenant="default", endpoint="/v1/chat/completions",
                        input_file_id="-", total=20, created=time.time(),
                        expires_at=time.time() + 3600),
            [LineRecord(batch_id="batch_y", index=i, custom_id=f"c{i}",
                        body={"model": "fast", "messages": [{"role": "user", "content": f"{i}"}]})
             for i in range(20)],
        )  # fmt: skip
        running = asyncio.get_running_loop().create_task(
            BatchWorker(rt, rt.jobs.queue, parse_line).run_once()
        )
        await eventually(lambda: _calls(upstream, 2))  # the interactive call and one line
        await asyncio.sleep(0.3)  # time for more lines to start, were they allowed to
        assert upstream.calls == 2
        interactive_gate.set()
        await interactive
        # No interactive call left: the worker takes its full pace (8 lines in flight).
        await eventually(lambda: _calls(upstream, 2 + 7))
        batch_gate.set()
        assert await running
        done = await rt.jobs.queue.get_batch(None, "batch_y")
        assert done is not None and done.status == "completed" and done.completed == 20


async def _calls(upstream: ScriptedUpstream, count: int) -> bool:
    return upstream.calls >= count
