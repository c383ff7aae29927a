"""L1 exact cache through the server: hits never reach the upstream; tenants never share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import serve_app

KEYS = {"acme": "acme-key", "globex": "globex-key"}
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with serve_app(upstream.app) as url:
        config = parse_config(
            {
                "models": [
                    {
                        "name": "fast",
                        "provider": "openai",
                        "model": "m",
                        "base_url": url + "/v1",
                        "price": {"input": 1.0, "output": 2.0},
                    }
                ],
                "store": f"sqlite:///{tmp_path / 'cache.db'}",
                "auth": {
                    "keys": [{"key": key, "tenant": tenant} for tenant, key in KEYS.items()],
                    "metrics_keys": ["metrics-key"],
                },
            }
        )
        with serve_app(create_app(Runtime(config))) as base:
            yield upstream, base


def client(url: str, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEYS[tenant], max_retries=0)


def ask(url: str, tenant: str = "acme", **params: Any) -> Any:
    params.setdefault("messages", HELLO)
    params.setdefault("temperature", 0)
    return client(url, tenant).chat.completions.with_raw_response.create(model="fast", **params)


def test_repeat_is_an_exact_hit_that_costs_nothing(server: Any) -> None:
    upstream, url = server
    first = ask(url)
    assert first.headers["x-areion-cache"] == "miss"
    assert float(first.headers["x-areion-cost-usd"]) > 0
    second = ask(url, messages=[{"role": "user", "content": "  Say hello\r\n"}])  # normalized
    assert second.headers["x-areion-cache"] == "hit-exact"
    assert float(second.headers["x-areion-cost-usd"]) == 0
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert upstream.calls == 1
    metrics = httpx.get(url + "/metrics", headers={"authorization": "Bearer metrics-key"}).text
    assert 'areion_cache_requests_total{result="hit",tier="exact"} 1.0' in metrics
    assert 'areion_cache_saved_usd_total{tier="exact"} 2.5e-05' in metrics


def test_another_tenant_never_gets_the_cached_answer(server: Any) -> None:
    upstream, url = server
    ask(url, tenant="acme")
    other = ask(url, tenant="globex")
    assert other.headers["x-areion-cache"] == "miss"
    assert upstream.calls == 2


def test_output_changing_parameters_change_the_key(server: Any) -> None:
    upstream, url = server
    ask(url)
    ask(url, seed=7)
    ask(url, max_tokens=5)
    ask(url, response_format={"type": "json_object"})
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    ask(url, tools=tools)
    assert upstream.calls == 5
    ask(url, seed=7)
    assert upstream.calls == 5


def test_sampling_requests_are_not_cached(server: Any) -> None:
    upstream, url = server
    ask(url, temperature=0.7)
    ask(url, temperature=0.7)
    client(url).chat.completions.create(model="fast", messages=HELLO)  # default temperature
    assert upstream.calls == 3


def test_control_headers(server: Any) -> None:
    upstream, url = server
    ask(url, extra_headers={"x-areion-cache": "no-store"})
    assert ask(url).headers["x-areion-cache"] == "miss"  # no-store wrote nothing
    assert upstream.calls == 2
    upstream.default = Behaviour(text="fresh answer")
    refreshed = ask(url, extra_headers={"x-areion-cache": "refresh"})
    assert refreshed.headers["x-areion-cache"] == "miss" and upstream.calls == 3
    hit = ask(url)
    assert hit.headers["x-areion-cache"] == "hit-exact"
    assert hit.parse().choices[0].message.content == "fresh answer"
    bad = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "fast", "messages": HELLO},
        headers={"authorization": "Bearer acme-key", "x-areion-cache": "maybe"},
    )
    assert bad.status_code == 400 and "no-store, refresh" in bad.json()["error"]["message"]


def test_hits_are_served_in_the_shape_asked_for(server: Any) -> None:
    upstream, url = server
    plain = ask(url).parse().choices[0].message.content
    stream = client(url).chat.completions.create(
        model="fast",
        messages=HELLO,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-1].usage is not None
    assert upstream.calls == 1
    # and a streamed answer fills the cache for a plain request
    other = [{"role": "user", "content": "another question"}]
    streamed = client(url).chat.completions.create(
        model="fast", messages=other, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    hit = ask(url, messages=other)
    assert hit.headers["x-areion-cache"] == "hit-exact"
    assert hit.parse().choices[0].message.content == text
    assert upstream.calls == 2


def test_a_broken_stream_is_not_cached(server: Any) -> None:
    upstream, url = server
    upstream.default = Behaviour(text="one two three", break_after=1)
    stream = client(url).chat.completions.create(
        model="fast", messages=HELLO, temperature=0, stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)
    upstream.default = Behaviour()
    assert ask(url).headers["x-areion-cache"] == "miss"


async def test_hits_are_booked_in_the_ledger_with_their_saving(tmp_path: Path) -> None:
    from areion import ChatRequest, Message

    upstream = ScriptedUpstream()
    with serve_app(upstream.app) as url:
        config = parse_config(
            {
                "models": [
                    {
                        "name": "fast",
                        "provider": "openai",
                        "model": "m",
                        "base_url": url + "/v1",
                        "price": {"input": 1.0, "output": 2.0},
                    }
                ],
                "store": f"sqlite:///{tmp_path / 'ledger.db'}",
            }
        )
        async with Runtime(config) as rt:
            request = ChatRequest(
                model="fast", temperature=0, messages=[Message(role="user", content="hi")]
            )
            await rt.chat(request, request_id="first")
            hit = await rt.chat(request, request_id="second")
            assert hit.cache == "hit-exact" and hit.cost_usd == 0
            await rt.ledger.flush()
            [first] = await rt.store.ledger(request_id="first")
            [second] = await rt.store.ledger(request_id="second")
    assert first.cache == "" and first.cost_usd == pytest.approx(25e-6)
    assert second.cache == "exact" and second.cost_usd == 0
    assert second.saved_usd == pytest.approx(25e-6) and second.saved_s > 0


def test_an_invalidation_drops_the_tenants_entries_only(server: Any) -> None:
    upstream, url = server
    for tenant in KEYS:
        ask(url, tenant=tenant)
        assert ask(url, tenant=tenant).headers["x-areion-cache"] == "hit-exact"
    headers = {"authorization": f"Bearer {KEYS['acme']}"}
    # Exact entries have no age to filter on: the request says so instead of guessing.
    aged = httpx.delete(url + "/v1/cache/exact?older_than_s=60", headers=headers)
    assert aged.status_code == 400 and aged.json()["error"]["param"] == "older_than_s"
    other_model = httpx.delete(url + "/v1/cache/exact?model=strong", headers=headers)
    assert other_model.status_code == 200
    assert ask(url).headers["x-areion-cache"] == "hit-exact"  # another model's: still here
    dropped = httpx.delete(url + "/v1/cache/exact?model=fast", headers=headers)
    assert dropped.json() == {"object": "cache.invalidation", "tier": "exact", "deleted": True}
    assert ask(url).headers["x-areion-cache"] == "miss"
    assert ask(url, tenant="globex").headers["x-areion-cache"] == "hit-exact"  # not its own
    assert httpx.delete(url + "/v1/cache", headers=headers).json()["exact"] is True
    assert ask(url).headers["x-areion-cache"] == "miss"
    assert upstream.calls == 4
