"""Rate limits and budgets through the real server over loopback (the control plane)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from areion.store import SQLiteStore
from areion.tokenizer import estimate_usage
from areion.types import ChatRequest, Message
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import ManualClock, serve_app

KEY = "sk-acme-control-0123456789"
OTHER_KEY = "sk-acme-batch-0123456789"
PRICE = {"input": 1.0, "output": 2.0}  # USD per 1M tokens
MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT = estimate_usage(
    ChatRequest(model="fast", messages=[Message(role="user", content="hi")]), ""
).prompt_tokens


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def call_cost(completion: int) -> float:
    return (PROMPT * PRICE["input"] + completion * PRICE["output"]) / 1e6


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream()
    with serve_app(up.app) as url:
        yield up, url


def config(url: str, db: Path, *, keys: list[dict[str, Any]], tenants: list[dict[str, Any]]) -> Any:
    return parse_config(
        {
            "models": [
                {
                    "name": "fast",
                    "provider": "openai",
                    "model": "gpt-test",
                    "base_url": url + "/v1",
                    "price": PRICE,
                },
                {
                    "name": "strong",
                    "provider": "openai",
                    "model": "gpt-strong",
                    "base_url": url + "/v1",
                    "price": PRICE,
                },
            ],
            "store": f"sqlite:///{db}",
            "cache": {"exact": {"enabled": True}},
            "auth": {"keys": keys, "tenants": tenants},
        }
    )


def runtime_at(cfg: Any, clock: ManualClock) -> Runtime:
    """A runtime whose limits and budgets read `clock`."""
    runtime = Runtime(cfg)
    runtime.admission.clock = clock
    return runtime


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": MESSAGES, **extra}


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def ledger_spend(db: Path, tenant: str) -> tuple[int, float]:
    store = SQLiteStore(str(db))
    try:
        entries = await store.ledger(tenant=tenant)
    finally:
        await store.aclose()
    return len(entries), sum(entry.cost_usd for entry in entries)


async def test_concurrent_calls_never_overspend_a_tenant_budget(
    upstream: Any, tmp_path: Path
) -> None:
    up, url = upstream
    up.default = Behaviour(delay=0.2, usage=usage(PROMPT, 7))
    budget = 10.5 * call_cost(7)  # room for 10 calls, not 11
    db = tmp_path / "areion.db"
    cfg = config(
        url,
        db,
        keys=[{"key": KEY, "tenant": "acme"}],
        tenants=[{"name": "acme", "budget_usd_per_day": budget, "budget_usd_per_month": 500.0}],
    )
    clock = ManualClock(time.time())  # no UTC midnight mid-test: one budget day
    with serve_app(create_app(runtime_at(cfg, clock))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            replies = await asyncio.gather(
                *(
                    http.post("/v1/chat/completions", json=chat(max_tokens=7), headers=auth())
                    for _ in range(64)
                )
            )
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert len(ok) == 10
    assert up.calls == 10  # refused calls never reached the model
    assert {r.status_code for r in refused} == {402}
    error = refused[0].json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert "tenant 'acme'" in error["message"] and "per day" in error["message"]
    assert int(refused[0].headers["retry-after"]) > 0
    calls, spent = await ledger_spend(db, "acme")
    assert calls == 10 and spent <= budget

    # A restart does not reset the budget: today's spend comes back from the ledger.
    with serve_app(create_app(runtime_at(cfg, clock))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            again = await http.post("/v1/chat/completions", json=chat(max_tokens=7), headers=auth())
    assert again.status_code == 402
    assert up.calls == 10


async def test_a_burst_gets_the_rpm_and_a_usable_retry_after(upstream: Any, tmp_path: Path) -> None:
    up, url = upstream
    cfg = config(
        url,
        tmp_path / "areion.db",
        keys=[{"key": KEY, "tenant": "acme", "rpm": 30, "tpm": 200_000}],
        tenants=[],
    )
    # The buckets refill only when the test moves the clock, however long the burst takes.
    clock = ManualClock(time.time())
    with serve_app(create_app(runtime_at(cfg, clock))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            replies = await asyncio.gather(
                *(
                    http.post("/v1/chat/completions", json=chat(), headers=auth())
                    for _ in range(100)
                )
            )
            ok = [r for r in replies if r.status_code == 200]
            limited = [r for r in replies if r.status_code == 429]
            assert (len(ok), len(limited)) == (30, 70)
            assert up.calls == 30
            # Successes say where the client stands; the tightest limit of each kind.
            assert ok[0].headers["x-ratelimit-limit-requests"] == "30"
            assert ok[0].headers["x-ratelimit-limit-tokens"] == "200000"
            remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
            assert remaining == list(range(30))
            error = limited[0].json()["error"]
            assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
            assert "key 'key-" in error["message"] and "limit 30" in error["message"]
            assert limited[0].headers["x-ratelimit-remaining-requests"] == "0"
            wait = int(limited[0].headers["retry-after"])
            assert wait == 2  # one request per 2 s refills
            clock.advance(wait)
            retried = await http.post("/v1/chat/completions", json=chat(), headers=auth())
            assert retried.status_code == 200


async def test_streams_are_reconciled_with_their_real_tokens(upstream: Any, tmp_path: Path) -> None:
    up, url = upstream
    tpm = 600  # 10 tokens per second refill: small against the differences below
    cfg = config(
        url, tmp_path / "areion.db", keys=[{"key": KEY, "tenant": "acme", "tpm": tpm}], tenants=[]
    )
    stream_body = chat(max_tokens=20, stream=True, stream_options={"include_usage": True})
    # No refill between calls: the counts below are exact. A stream is reconciled as it
    # ends, before its last bytes leave, so the next call sees it without waiting.
    with serve_app(create_app(runtime_at(cfg, ManualClock(time.time())))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:

            async def remaining_after(body: dict[str, Any]) -> int:
                async with http.stream(
                    "POST", "/v1/chat/completions", json=body, headers=auth()
                ) as reply:
                    assert reply.status_code == 200
                    left = int(reply.headers["x-ratelimit-remaining-tokens"])
                    await reply.aread()
                return left

            # Uses less than reserved: 200 reserved for output, 5 used; 195 come back.
            up.then(Behaviour(usage=usage(PROMPT, 5)))
            first = await remaining_after({**stream_body, "max_tokens": 200})
            assert first == tpm - (PROMPT + 200)
            up.then(Behaviour(usage=usage(PROMPT, 5)))
            second = await remaining_after(stream_body)
            # Without reconciliation: tpm - (PROMPT + 200) - (PROMPT + 20).
            assert second == tpm - (PROMPT + 5) - (PROMPT + 20)

            # Uses more than reserved (20): the excess is charged when the stream ends,
            # and the tokens-per-minute limit holds the next call back.
            up.then(Behaviour(usage=usage(PROMPT, 700)))
            await remaining_after(stream_body)
            blocked = await http.post(
                "/v1/chat/completions", json=chat(max_tokens=20), headers=auth()
            )
            assert blocked.status_code == 429
            assert blocked.json()["error"]["type"] == "tokens"
            # In debt by about 2*PROMPT + 5 + 700 - 600 + the next estimate: ~13 s at 10/s.
            assert int(blocked.headers["retry-after"]) >= 10


async def test_a_key_may_use_only_its_models_and_a_cache_hit_costs_no_tokens(
    upstream: Any, tmp_path: Path
) -> None:
    up, url = upstream
    cfg = config(
        url,
        tmp_path / "areion.db",
        keys=[
            {
                "key": KEY,
                "tenant": "acme",
                "name": "web",
                "rpm": 600,
                "tpm": 600,
                "priority": "interactive",
                "models": ["fast"],
            },
            {"key": OTHER_KEY, "tenant": "acme", "name": "batch", "priority": "batch"},
        ],
        tenants=[{"name": "acme", "budget_usd_per_day": 25.0, "budget_usd_per_month": 500.0}],
    )
    with serve_app(create_app(Runtime(cfg))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            denied = await http.post(
                "/v1/chat/completions", json={**chat(), "model": "strong"}, headers=auth()
            )
            assert denied.status_code == 403
            error = denied.json()["error"]
            assert error == {
                "message": "key 'web' may not use model 'strong'; it may use: fast",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_allowed",
            }
            other = await http.post(
                "/v1/chat/completions", json={**chat(), "model": "strong"}, headers=auth(OTHER_KEY)
            )
            assert other.status_code == 200
            assert up.calls == 1

            body = chat(max_tokens=50, temperature=0)
            miss = await http.post("/v1/chat/completions", json=body, headers=auth())
            hit = await http.post("/v1/chat/completions", json=body, headers=auth())
            assert hit.headers["x-areion-cache"] == "hit-exact" and up.calls == 2
            after = await http.post("/v1/chat/completions", json=body, headers=auth())
            # A hit counts as a request but gives its reserved tokens back.
            requests = [
                int(r.headers["x-ratelimit-remaining-requests"]) for r in (miss, hit, after)
            ]
            assert requests == [599, 598, 597]  # the refused model call was not admitted
            tokens = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in (miss, hit, after)]
            used = 18  # the scripted usage of the miss
            estimate = PROMPT + 50
            assert tokens[0] == pytest.approx(600 - estimate, abs=2)
            assert tokens[1] == pytest.approx(600 - used - estimate, abs=2)
            assert tokens[2] == pytest.approx(600 - used - estimate, abs=2)


async def test_tenants_beside_auth_set_limits_too(upstream: Any, tmp_path: Path) -> None:
    """The control-plane issue's shape: `tenants:` at the top level, beside `auth:`."""
    _, url = upstream
    settings = {
        "models": [{"name": "fast", "provider": "openai", "base_url": url + "/v1", "price": PRICE}],
        "store": f"sqlite:///{tmp_path / 'areion.db'}",
        "auth": {
            "keys": [{"key": KEY, "tenant": "acme"}, {"key": OTHER_KEY, "tenant": "globex"}],
            "tenants": [{"name": "globex", "max_tokens_per_request": 100}],
        },
        "tenants": [{"name": "acme", "max_tokens_per_request": 100}],
    }
    with serve_app(create_app(Runtime(parse_config(settings)))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for key in (KEY, OTHER_KEY):  # either place applies
                big = await http.post(
                    "/v1/chat/completions", json=chat(max_tokens=500), headers=auth(key)
                )
                assert big.status_code == 402, big.text
                assert big.json()["error"]["code"] == "budget_exceeded"
                small = await http.post(
                    "/v1/chat/completions", json=chat(max_tokens=20), headers=auth(key)
                )
                assert small.status_code == 200


def test_the_issue_config_parses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from areion.config import load_config

    monkeypatch.setenv("ACME_KEY", KEY)
    path = tmp_path / "areion.yaml"
    path.write_text(
        """
models:
  - {name: fast, provider: sim, model: sim-fast}
routes:
  - {name: auto, candidates: [fast]}
auth:
  keys:
    - {key: ${ACME_KEY}, tenant: acme, rpm: 600, tpm: 200000,
       priority: interactive, models: [fast, auto]}
  tenants:
    - {name: acme, budget_usd_per_day: 25.0, budget_usd_per_month: 500.0}
"""
    )
    cfg = load_config(path)
    key = cfg.auth.keys[0]
    assert (key.rpm, key.tpm, key.priority, key.models) == (
        600,
        200000,
        "interactive",
        ["fast", "auto"],
    )
    assert cfg.auth.tenants[0].budget_usd_per_month == 500.0


async def test_an_agent_run_pauses_when_its_tenant_budget_is_out(tmp_path: Path) -> None:
    from areion import Agent, tool
    from tests.agent_upstream import AgentUpstream, call, model_turns

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-of-{key}"

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        return call(("lookup", {"key": str(model_turns(body))}))

    upstream = AgentUpstream(policy)  # each call: 100 prompt + 20 output tokens, $0.00014
    with serve_app(upstream.app) as url:
        cfg = parse_config(
            {
                "models": [
                    {
                        "name": "fast",
                        "provider": "openai",
                        "model": "m",
                        "base_url": url + "/v1",
                        "price": PRICE,
                    }
                ],
                "store": f"sqlite:///{tmp_path / 'areion.db'}",
                "auth": {"tenants": [{"name": "default", "budget_usd_per_day": 0.0003}]},
                "limits": {"default_max_tokens": 20},
            }
        )
        agent = Agent(name="a", model="fast", tools=[lookup], max_steps=10)
        async with runtime_at(cfg, ManualClock(time.time())) as rt:  # one budget day
            paused = await rt.run(agent, "go")
            assert paused.status == "paused", paused
            assert (paused.pause_reason or "").startswith("tenant budget exhausted: Budget")
            assert "per day" in (paused.pause_reason or "")
            assert paused.steps == 2 and len(upstream.requests) == 2
            again = await rt.resume(paused.run_id, agent=agent)
            assert again.status == "paused" and len(upstream.requests) == 2
