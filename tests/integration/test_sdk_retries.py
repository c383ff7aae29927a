"""Retries that do not multiply: an upstream failure Areion has already retried is
answered with `x-should-retry: false`, so the SDKs, left at their default
`max_retries`, do not retry it again on top. Areion's own refusals leave the SDKs'
retries on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import serve_app

KEY = "sk-retries-test-key-0123456789"
POOR_KEY = "sk-retries-poor-key-0123456789"
MAX_ATTEMPTS = 3


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream()
    with serve_app(up.app) as url:
        yield up, url


def _config(url: str) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "fast",
                "provider": "openai",
                "model": "gpt-test",
                "base_url": url + "/v1",
                "price": {"input": 0.15, "output": 0.60},
            }
        ],
        "store": "sqlite:///:memory:",
        "retry": {"max_attempts": MAX_ATTEMPTS, "backoff_base": 0.01, "backoff_max": 0.02},
        "auth": {"keys": [{"key": KEY, "tenant": "acme"}]},
    }


@pytest.fixture
def server(upstream: tuple[ScriptedUpstream, str]) -> Iterator[tuple[ScriptedUpstream, str]]:
    up, url = upstream
    with serve_app(create_app(Runtime(parse_config(_config(url))))) as areion_url:
        yield up, areion_url


@pytest.mark.parametrize("status", [429, 500])
async def test_the_openai_sdk_does_not_retry_what_areion_retried(server: Any, status: int) -> None:
    up, url = server
    up.default = Behaviour(status=status)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY)
    assert client.max_retries == 2  # the SDK's default: it would retry twice on its own
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}]
        )
    assert up.calls == MAX_ATTEMPTS  # Areion's attempts only, not times the SDK's 3
    assert raised.value.status_code == (429 if status == 429 else 502)
    assert raised.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("status", [429, 529])
async def test_the_anthropic_sdk_does_not_retry_what_areion_retried(
    server: Any, status: int
) -> None:
    up, url = server
    up.default = Behaviour(status=status)
    client = anthropic.AsyncAnthropic(base_url=url, api_key=KEY)
    assert client.max_retries == 2
    with pytest.raises(anthropic.APIStatusError) as raised:
        await client.messages.create(
            model="fast", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    assert up.calls == MAX_ATTEMPTS
    assert raised.value.response.headers["x-should-retry"] == "false"


async def test_a_stream_that_fails_before_its_first_byte_is_not_retried_either(
    server: Any,
) -> None:
    up, url = server
    up.default = Behaviour(status=503)
    client = anthropic.AsyncAnthropic(base_url=url, api_key=KEY)
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(
            model="fast", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            await stream.get_final_message()
    assert up.calls == MAX_ATTEMPTS


async def test_areions_own_refusals_leave_the_sdks_retries_on(
    upstream: tuple[ScriptedUpstream, str],
) -> None:
    """A rate limit of Areion's own was never tried upstream: no `x-should-retry`, so the
    SDKs' own rules apply (retry a 429 after `Retry-After`); nor has a budget refusal
    (402), which they do not retry."""
    up, url = upstream
    config = _config(url)
    config["auth"]["keys"] = [
        {"key": KEY, "tenant": "acme", "rpm": 1},
        {"key": POOR_KEY, "tenant": "poor"},
    ]
    config["tenants"] = [{"name": "poor", "max_usd_per_request": 1e-9}]
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    with serve_app(create_app(Runtime(parse_config(config)))) as areion_url:
        async with httpx.AsyncClient(base_url=areion_url) as http:
            sent = [
                await http.post("/v1/chat/completions", json=body, headers=_bearer(key))
                for key in (KEY, KEY, POOR_KEY)
            ]
    ok, limited, budget = sent
    assert ok.status_code == 200 and up.calls == 1
    assert limited.status_code == 429 and "x-should-retry" not in limited.headers
    assert int(limited.headers["retry-after"]) > 0
    assert budget.status_code == 402 and "x-should-retry" not in budget.headers
    assert up.calls == 1


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
