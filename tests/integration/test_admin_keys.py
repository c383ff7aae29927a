"""API keys made by the CLI and the admin API, through the real server over loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from areion import Runtime
from areion.config import load_config
from areion.server import create_app
from tests.scripted import ScriptedUpstream
from tests.support import serve_app

AREION = [sys.executable, "-m", "areion.cli"]
ADMIN = "adm-secret-0123456789"
TENANT_KEY = "sk-config-tenant-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def upstream() -> Iterator[str]:
    up = ScriptedUpstream()
    with serve_app(up.app) as url:
        yield url


def write_config(tmp_path: Path, url: str, **auth: Any) -> Path:
    path = tmp_path / "areion.yaml"
    model = {"provider": "openai", "model": "gpt-test", "base_url": url + "/v1"}
    config = {
        "models": [{"name": "fast", **model}, {"name": "strong", **model}],
        "store": f"sqlite:///{tmp_path / 'areion.db'}",
        "cache": {"exact": {"enabled": False}},
        "auth": {"key_cache_ttl_s": 0.2, **auth},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AREION, *args], capture_output=True, text=True, timeout=60)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(model: str = "fast") -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES}


def test_a_cli_key_is_served_limited_and_revoked(upstream: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, upstream)
    made = cli("keys", "create", "--tenant", "acme", "--name", "web", "--rpm", "2",
               "--models", "fast", "--config", str(config))  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("ak-") and "only time" in made.stderr
    bad = cli("keys", "create", "--tenant", "acme", "--models", "nope", "--config", str(config))
    assert bad.returncode == 2 and "nope is not a model" in bad.stderr

    with (
        serve_app(create_app(Runtime(load_config(config)))) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        assert http.post("/v1/chat/completions", json=chat()).status_code == 401
        assert (
            http.post("/v1/chat/completions", json=chat(), headers=bearer("ak-x")).status_code
            == 401
        )
        ok = http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        other = http.post("/v1/chat/completions", json=chat("strong"), headers=bearer(key))
        assert other.status_code == 403 and "key 'web'" in other.json()["error"]["message"]
        assert (
            http.post("/v1/chat/completions", json=chat(), headers=bearer(key)).status_code == 200
        )
        limited = http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert limited.status_code == 429 and "key 'web'" in limited.json()["error"]["message"]

        listed = cli("keys", "list", "--json", "--config", str(config))
        [row] = yaml.safe_load(listed.stdout)
        assert row["name"] == "web" and row["rpm"] == 2 and "key" not in row
        assert key not in listed.stdout
        revoked = cli("keys", "revoke", "web", "--config", str(config))
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(0.3)  # the server trusts its lookup for key_cache_ttl_s
        gone = http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert gone.status_code == 401 and "revoked" in gone.json()["error"]["message"]
    assert cli("keys", "revoke", "web", "--config", str(config)).returncode == 2


def test_admin_api_creates_lists_and_revokes(upstream: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, upstream, admin_keys=[ADMIN], keys=[{"key": TENANT_KEY, "tenant": "acme"}]
    )
    with (
        serve_app(create_app(Runtime(load_config(config)))) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        admin = bearer(ADMIN)
        made = http.post(
            "/v1/admin/keys",
            json={"tenant": "beta", "name": "etl", "tpm": 100000, "priority": "batch"},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        body = made.json()
        key = body["key"]
        assert body["tenant"] == "beta" and body["id"].startswith("key_")

        answer = http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-limit-tokens"] == "100000"

        listing = http.get("/v1/admin/keys", params={"tenant": "beta"}, headers=admin)
        assert listing.status_code == 200
        assert [k["name"] for k in listing.json()["data"]] == ["etl"]
        assert key not in listing.text
        assert (
            http.get("/v1/admin/keys", params={"tenant": "zeta"}, headers=admin).json()["data"]
            == []
        )

        # Bad bodies: 400, naming the field; a taken name: 409.
        for bad in (b"{", b"{}", b'{"tenant": "beta", "rpm": 0}', b'{"tenant": "b", "x": 1}',
                    b'{"tenant": "beta", "models": ["nope"]}'):  # fmt: skip
            reply = http.post("/v1/admin/keys", content=bad, headers=admin)
            assert reply.status_code == 400, (bad, reply.text)
            assert reply.json()["error"]["type"] == "invalid_request_error"
        taken = http.post("/v1/admin/keys", json={"tenant": "beta", "name": "etl"}, headers=admin)
        assert taken.status_code == 409

        # Tenant keys, store or config, never pass; nor a missing or wrong key.
        for headers, status in ((bearer(key), 403), (bearer(TENANT_KEY), 403), ({}, 401),
                                (bearer("adm-wrong"), 401)):  # fmt: skip
            for method, path in (("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"),
                                 ("DELETE", f"/v1/admin/keys/{body['id']}")):  # fmt: skip
                reply = http.request(method, path, json={"tenant": "x"}, headers=headers)
                assert reply.status_code == status, (method, path, reply.text)
        # An admin key is no tenant key.
        assert http.post("/v1/chat/completions", json=chat(), headers=admin).status_code == 401

        gone = http.delete(f"/v1/admin/keys/{body['id']}", headers=admin)
        assert gone.status_code == 200 and gone.json()["revoked_at"] is not None
        refused = http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert refused.status_code == 401  # revoked in this process: at once
        assert http.delete(f"/v1/admin/keys/{body['id']}", headers=admin).status_code == 404


def test_admin_api_is_off_without_admin_keys(upstream: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, upstream, keys=[{"key": TENANT_KEY, "tenant": "acme"}])
    with (
        serve_app(create_app(Runtime(load_config(config)))) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        reply = http.get("/v1/admin/keys", headers=bearer(TENANT_KEY))
        assert reply.status_code == 404
        assert "auth.admin_keys" in reply.json()["error"]["message"]


def test_a_key_learns_only_the_models_it_may_call(upstream: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        upstream,
        admin_keys=[ADMIN],
        keys=[
            {"key": TENANT_KEY, "tenant": "acme", "models": ["fast"]},
            {"key": "sk-config-open-0123456789", "tenant": "acme"},
        ],
    )
    with (
        serve_app(create_app(Runtime(load_config(config)))) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        made = http.post(
            "/v1/admin/keys",
            headers=bearer(ADMIN),
            json={"tenant": "globex", "name": "strong-only", "models": ["strong"]},
        )
        assert made.status_code == 201
        cases = [
            (TENANT_KEY, ["fast"]),  # a config key with a model list
            (made.json()["key"], ["strong"]),  # a store key with one
            ("sk-config-open-0123456789", ["fast", "strong"]),  # no list: every model
        ]
        for key, allowed in cases:
            missing = http.post("/v1/chat/completions", json=chat("nope"), headers=bearer(key))
            assert missing.status_code == 404
            message = missing.json()["error"]["message"]
            assert message.endswith("available: " + ", ".join(allowed))
            listed = http.get("/v1/models", headers=bearer(key)).json()["data"]
            assert [model["id"] for model in listed] == allowed
