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


def engine() -> SimEngine:
    profile = replace(builtin_profiles()["sim-fast"], max_running=2, ttft_ms=300.0)
    return SimEngine({"sim-fast": profile}, time_scale=1.0)


async def test_busy_deployment_is_avoided_because_it_reports_a_queue() -> None:
    with serve_app(create_sim_app(engine())) as busy, serve_app(create_sim_app(engine())) as idle:
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
        async with Runtime(config) as rt, httpx.AsyncClient(timeout=30) as other:
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
            await asyncio.sleep(0.1)
            rt.load_probe.start()
            await rt.load_probe.poll_once()
            busy_load = rt.gateway.deployments["busy"].remote_load
            assert busy_load is not None and busy_load.waiting >= 3
            request = ChatRequest(
                model="fast", max_tokens=5, messages=[Message(role="user", content="hi")]
            )
            answers = [await rt.chat(request) for _ in range(4)]
            assert {a.deployment for a in answers} == {"idle"}
            await asyncio.gather(*background)
