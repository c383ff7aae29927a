"""/metrics and /healthz over loopback: public on an open server, guarded once auth is on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from areion import ConfigError, Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import ScriptedUpstream
from tests.support import free_port, serve_app

TENANT_KEY = "tenant-key-acme-0123"
METRICS_KEY = "metrics-key-scraper-0123"
ADMIN_KEY = "admin-key-0123456789"


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "fast",
                "provider": "openai",
                "model": "m",
                "base_url": url + "/v1",
                "price": {"input": 1, "output": 2},
            }
        ],
        "store": "sqlite:///:memory:",
        **extra,
    }


AUTH = {
    "keys": [{"key": TENANT_KEY, "tenant": "acme"}],
    "admin_keys": [ADMIN_KEY],
    "metrics_keys": [METRICS_KEY],
}


@pytest.fixture
def upstream() -> Iterator[str]:
    with serve_app(ScriptedUpstream().app) as url:
        yield url


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def serve(settings: dict[str, Any]) -> Any:
    return serve_app(create_app(Runtime(parse_config(settings))))


async def test_with_auth_on_metrics_need_a_metrics_or_admin_key(upstream: str) -> None:
    with serve(config(upstream, auth=AUTH)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
            r = await http.post("/v1/chat/completions", json=chat, headers=bearer(TENANT_KEY))
            assert r.status_code == 200
            r = await http.get("/metrics")
            assert r.status_code == 401 and "metrics_keys" in r.json()["error"]["message"]
            assert "areion_cost_usd_total" not in r.text
            r = await http.get("/metrics", headers=bearer("not-a-key"))
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = await http.get("/metrics", headers=bearer(TENANT_KEY))
            assert r.status_code == 403 and r.json()["error"]["code"] == "metrics_key_required"
            for key in (METRICS_KEY, ADMIN_KEY):
                r = await http.get("/metrics", headers=bearer(key))
                assert r.status_code == 200
                assert 'areion_cost_usd_total{deployment="fast/m",model="fast",tenant="acme"}' in (
                    r.text
                )
            # A metrics key reads metrics, nothing else.
            r = await http.post("/v1/chat/completions", json=chat, headers=bearer(METRICS_KEY))
            assert r.status_code == 401
            r = await http.get("/v1/admin/keys", headers=bearer(METRICS_KEY))
            assert r.status_code == 401


async def test_with_auth_on_healthz_says_only_whether_it_is_healthy(upstream: str) -> None:
    with serve(config(upstream, auth=AUTH)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            for headers in ({}, bearer(TENANT_KEY), bearer("not-a-key")):
                r = await http.get("/healthz", headers=headers)
                assert r.status_code == 200 and r.json() == {"status": "ok"}
            for key in (METRICS_KEY, ADMIN_KEY):
                r = await http.get("/healthz", headers=bearer(key))
                assert r.json() == {"status": "ok", "deployments": {"fast/m": "closed"}}


async def test_healthz_is_503_when_no_deployment_can_take_a_call() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = config(
        dead,
        auth=AUTH,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 1, "reset_timeout": 3600},
    )
    with serve(settings) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/healthz")).status_code == 200
            chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
            r = await http.post("/v1/chat/completions", json=chat, headers=bearer(TENANT_KEY))
            assert r.status_code in (502, 503)
            r = await http.get("/healthz")
            assert r.status_code == 503 and r.json() == {"status": "unavailable"}
            r = await http.get("/healthz", headers=bearer(METRICS_KEY))
            assert r.json()["deployments"] == {"fast/m": "open"}


async def test_both_are_public_only_while_no_key_is_configured(upstream: str) -> None:
    with serve(config(upstream)) as url:  # a local dev server
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.get("/healthz")
            assert r.json() == {"status": "ok", "deployments": {"fast/m": "closed"}}
            assert (await http.get("/metrics")).status_code == 200
    # Any key in the config turns auth on, a metrics key alone too.
    with serve(config(upstream, auth={"metrics_keys": [METRICS_KEY]})) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/metrics")).status_code == 401
            assert (await http.get("/metrics", headers=bearer(METRICS_KEY))).status_code == 200
            assert (await http.get("/healthz")).json() == {"status": "ok"}


def test_a_metrics_key_must_not_be_a_tenant_key() -> None:
    auth = {"keys": [{"key": TENANT_KEY, "tenant": "acme"}], "metrics_keys": [TENANT_KEY]}
    with pytest.raises(ConfigError, match=r"metrics_keys\[0\]: the same as a key in auth.keys"):
        parse_config(config("http://127.0.0.1:1", auth=auth))
