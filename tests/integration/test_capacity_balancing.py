"""Capacity-aware balancing against real sim servers reporting vLLM-style load."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx

from areion import ChatRequest, Message, Runtime
from areion.config import parse_config
from areion.sim.engine import SimEngine
from areion.sim.profiles import builtin_profiles
from areion.sim.server import create_sim_app
from tests.support import serve_app


def engine(ttft_ms: float) -> SimEngine:
    profile = replace(builtin_profiles()["sim-fast"], max_running=2, ttft_ms=ttft_ms)
    return SimEngine({"sim-fast": profile}, time_scale=1.0)


async def test_busy_deployment_is_avoided_because_it_reports_a_queue() -> None:
    # `busy` holds every request for a minute: it reports the same queue however long
    # the test takes (its held requests are cancelled when the test is done with it).
    busy_engine = engine(60_000)
    with (
        serve_app(create_sim_app(busy_engine), shutdown_timeout=0.5) as busy,
        serve_app(create_sim_app(engine(10))) as idle,
    ):
        config = parse_config(
            {
                "models": [
                    {
                        "name": "fast",
                        "provider": "openai",
                        "model": "sim-fast",
                        "id": "busy",
                        "base_url": busy + "/v1",
                        "load_metrics_url": busy + "/metrics",
                    },
                    {
                        "name": "fast",
                        "provider": "openai",
                        "model": "sim-fast",
                        "id": "idle",
                        "base_url": idle + "/v1",
                        "load_metrics_url": idle + "/metrics",
                    },
                ],
                "store": "sqlite:///:memory:",
            }
        )
        async with Runtime(config) as rt, httpx.AsyncClient(timeout=120) as other:
            # Another client (not this runtime) loads `busy` past its slots.
            body = {
                "model": "sim-fast",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "load"}],
            }
            background = [
                asyncio.create_task(other.post(busy + "/v1/chat/completions", json=body))
                for _ in range(6)
            ]
            for _ in range(3000):  # until all six have reached it
                load = busy_engine.load("sim-fast")
                if (load.running, load.waiting) == (2, 4):
                    break
                await asyncio.sleep(0.01)
            rt.load_probe.start()
            await rt.load_probe.poll_once()
            busy_load = rt.gateway.deployments["busy"].remote_load
            assert busy_load is not None and (busy_load.running, busy_load.waiting) == (2, 4)
            request = ChatRequest(
                model="fast", max_tokens=5, messages=[Message(role="user", content="hi")]
            )
            answers = [await rt.chat(request) for _ in range(4)]
            assert {a.deployment for a in answers} == {"idle"}
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
