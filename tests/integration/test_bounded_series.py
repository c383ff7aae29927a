"""Bounded metrics: what a client sends (unknown models, scanned paths, junk keys) never
makes a new series in /metrics, however much of it arrives (LiteLLM leaked memory this
way, its issues #12159 and #35666)."""

from __future__ import annotations

import random
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.support import gather_limited, serve_app

TENANT_KEY = "sk-bounded-tenant-key-0001"
METRICS_KEY = "sk-bounded-metrics-key-0001"
REQUESTS = 10_000
SCRAPER = {"authorization": f"Bearer {METRICS_KEY}"}


def config(*, auth: bool) -> dict[str, Any]:
    found: dict[str, Any] = {
        "models": [
            {"name": "fast", "provider": "sim", "model": "sim-fast", "time_scale": 0.001},
        ],
        "routes": [{"name": "auto", "candidates": ["fast"]}],
        "store": "sqlite:///:memory:",
    }
    if auth:
        found["auth"] = {
            "keys": [{"key": TENANT_KEY, "tenant": "acme", "name": "team-a"}],
            "metrics_keys": [METRICS_KEY],
        }
    return found


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def junk(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_.") for _ in range(12))


def ask(rng: random.Random, *, auth: bool) -> tuple[str, str, dict[str, str], Any]:
    """A request a scanner or a confused client might send: an unknown model on each
    model endpoint, a random path, a random key."""
    headers = {"authorization": f"Bearer {TENANT_KEY}"} if auth else {}
    if auth and rng.random() < 0.3:
        headers = {"authorization": f"Bearer sk-{junk(rng)}"}
    model = f"gpt-{junk(rng)}"
    messages = [{"role": "user", "content": "hi"}]
    match rng.randrange(6):
        case 0:
            return "POST", "/v1/chat/completions", headers, {"model": model, "messages": messages}
        case 1:
            body = {"model": model, "messages": messages, "stream": True}
            return "POST", "/v1/chat/completions", headers, body
        case 2:
            body = {"model": model, "messages": messages, "max_tokens": 5}
            return "POST", "/v1/messages", headers, body
        case 3:
            return "POST", "/v1/embeddings", headers, {"model": model, "input": "hi"}
        case 4:
            return "GET", f"/v1/models/{model}", headers, None
        case _:
            return "GET", f"/{junk(rng)}/{junk(rng)}.php", headers, None


async def drive(url: str, asks: list[tuple[str, str, dict[str, str], Any]]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def one(method: str, path: str, headers: dict[str, str], body: Any) -> int:
            return (await http.request(method, path, headers=headers, json=body)).status_code

        return await gather_limited([one(*a) for a in asks], 16)


async def check(*, auth: bool) -> None:
    rng = random.Random(14)
    runtime = Runtime(parse_config(config(auth=auth)))
    headers = SCRAPER if auth else {}
    with serve_app(create_app(runtime)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as http:
            # Warm-up: the known models answer (their series appear) and one of each
            # kind of refusal is counted, so `before` holds every series there can be.
            for model in ("fast", "auto"):
                answer = await http.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {TENANT_KEY}"},
                )
                assert answer.status_code == 200, answer.text
            statuses = await drive(url, [ask(rng, auth=auth) for _ in range(100)])
            before = series((await http.get("/metrics")).text)
            statuses += await drive(url, [ask(rng, auth=auth) for _ in range(REQUESTS)])
            after = series((await http.get("/metrics")).text)
    assert set(statuses) == ({401, 404} if auth else {404})
    assert after == before, f"new series: {sorted(after - before)[:10]}"


async def test_unknown_models_and_scanned_paths_add_no_series() -> None:
    await check(auth=False)


async def test_junk_keys_unknown_models_and_paths_add_no_series_with_auth_on() -> None:
    await check(auth=True)
