"""L2 semantic cache through the server, with the real MiniLM embedder and verifier.

A paraphrase of a cached question is answered from the cache without reaching the
upstream; another tenant, another conversation context, a look-alike question about
something else all miss; invalidation and feedback work per tenant.
"""

from __future__ import annotations

import contextlib
import sqlite3
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

pytest.importorskip("onnxruntime", reason="needs the semantic extra: pip install -e '.[dev]'")

KEYS = {"acme": "acme-key", "globex": "globex-key"}
QUESTION = "How can I improve my English speaking skills?"
PARAPHRASE = "How do I improve my English speaking skills?"
ANSWER = "Speak every day, record yourself, and find a conversation partner."


def _config(url: str, tmp_path: Path, semantic: bool = True) -> Any:
    return parse_config(
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
            "cache": {"semantic": {"enabled": semantic}},
        }
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    scripted.default = Behaviour(text=ANSWER)
    with serve_app(scripted.app) as url:
        yield scripted, url


@pytest.fixture
def server(upstream: Any, tmp_path: Path) -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted, url = upstream
    scripted.requests.clear()
    with serve_app(create_app(Runtime(_config(url, tmp_path)))) as base:
        yield scripted, base


def ask(url: str, content: str, tenant: str = "acme", **params: Any) -> Any:
    messages = params.pop("messages", [])
    params.setdefault("temperature", 0)
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS[tenant], max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="fast", messages=[*messages, {"role": "user", "content": content}], **params
    )


def test_paraphrase_is_a_semantic_hit_that_never_reaches_the_upstream(server: Any) -> None:
    upstream, url = server
    assert ask(url, QUESTION).headers["x-areion-cache"] == "miss"
    hit = ask(url, PARAPHRASE)
    assert hit.headers["x-areion-cache"] == "hit-semantic"
    assert float(hit.headers["x-areion-cost-usd"]) == 0
    assert 0 < float(hit.headers["x-areion-cache-score"]) <= 1
    assert hit.parse().choices[0].message.content == ANSWER
    assert upstream.calls == 1
    metrics = httpx.get(url + "/metrics", headers={"authorization": "Bearer metrics-key"}).text
    assert 'areion_cache_requests_total{result="hit",tier="semantic"} 1.0' in metrics
    assert 'areion_cache_saved_usd_total{tier="semantic"} 2.5e-05' in metrics


def test_a_streamed_paraphrase_gets_the_cached_answer_as_a_stream(server: Any) -> None:
    upstream, url = server
    ask(url, QUESTION)
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["acme"], max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="fast",
        messages=[{"role": "user", "content": PARAPHRASE}],
        temperature=0,
        stream=True,
    ) as response:
        assert response.headers["x-areion-cache"] == "hit-semantic"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
    assert text == ANSWER
    assert upstream.calls == 1


def test_the_same_question_from_another_tenant_is_a_miss(server: Any) -> None:
    upstream, url = server
    ask(url, QUESTION, tenant="acme")
    assert ask(url, QUESTION, tenant="globex").headers["x-areion-cache"] == "miss"
    assert ask(url, PARAPHRASE, tenant="globex").headers["x-areion-cache"] == "hit-semantic"
    assert upstream.calls == 2


def test_context_other_question_and_parameters_are_misses(server: Any) -> None:
    upstream, url = server
    ask(url, QUESTION)
    # Another entity: the verifier's guard.
    assert (
        ask(url, "How can I improve my French speaking skills?").headers["x-areion-cache"] == "miss"
    )
    # Another system prompt, another previous turn: another conversation.
    pirate = [{"role": "system", "content": "Answer like a pirate."}]
    assert ask(url, PARAPHRASE, messages=pirate).headers["x-areion-cache"] == "miss"
    turn = [
        {"role": "user", "content": "I am a nurse moving to Canada."},
        {"role": "assistant", "content": "Congratulations! How can I help?"},
    ]
    assert ask(url, PARAPHRASE, messages=turn).headers["x-areion-cache"] == "miss"
    # An output-changing parameter, and a sampled (temperature > 0) request.
    assert ask(url, PARAPHRASE, max_tokens=5).headers["x-areion-cache"] == "miss"
    assert ask(url, PARAPHRASE, temperature=0.8).headers["x-areion-cache"] == "miss"
    assert upstream.calls == 6


def test_invalidation_by_model_and_by_entry_is_per_tenant(server: Any) -> None:
    _, url = server
    ask(url, QUESTION, tenant="acme")
    ask(url, QUESTION, tenant="globex")
    acme = {"authorization": "Bearer acme-key"}
    globex = {"authorization": "Bearer globex-key"}
    dropped = httpx.delete(url + "/v1/cache/semantic", params={"model": "fast"}, headers=acme)
    assert dropped.status_code == 200
    assert dropped.json() == {"object": "cache.invalidation", "tier": "semantic", "deleted": 1}
    assert ask(url, PARAPHRASE, tenant="acme").headers["x-areion-cache"] == "miss"
    hit = ask(url, PARAPHRASE, tenant="globex")
    assert hit.headers["x-areion-cache"] == "hit-semantic"
    entry = hit.headers["x-areion-cache-entry"]
    # acme cannot drop globex's entry; globex can.
    assert httpx.delete(f"{url}/v1/cache/semantic/{entry}", headers=acme).status_code == 404
    assert httpx.delete(f"{url}/v1/cache/semantic/{entry}", headers=globex).status_code == 200
    assert ask(url, PARAPHRASE, tenant="globex").headers["x-areion-cache"] == "miss"
    # Only entries older than an hour: none yet.
    old = httpx.delete(url + "/v1/cache/semantic", params={"older_than_s": 3600}, headers=acme)
    assert old.json()["deleted"] == 0


def test_feedback_on_a_wrong_hit_stops_that_hit(server: Any) -> None:
    _, url = server
    ask(url, QUESTION)
    hit = ask(url, PARAPHRASE)
    assert hit.headers["x-areion-cache"] == "hit-semantic"
    judged = httpx.post(
        url + "/v1/cache/semantic/feedback",
        json={"request_id": hit.headers["x-request-id"], "correct": False},
        headers={"authorization": "Bearer acme-key"},
    )
    assert judged.status_code == 200
    assert judged.json()["threshold"] > float(hit.headers["x-areion-cache-score"])
    assert ask(url, PARAPHRASE).headers["x-areion-cache"] == "miss"
    # Another tenant cannot judge acme's hits.
    other = httpx.post(
        url + "/v1/cache/semantic/feedback",
        json={"request_id": hit.headers["x-request-id"], "correct": True},
        headers={"authorization": "Bearer globex-key"},
    )
    assert other.status_code == 404


def test_a_client_request_id_cannot_collide_across_tenants(upstream: Any, tmp_path: Path) -> None:
    _, url = upstream
    shared = {"x-request-id": "req-chosen-by-the-client"}
    with serve_app(create_app(Runtime(_config(url, tmp_path)))) as base:
        hits = {}
        for tenant in ("acme", "globex"):  # globex sends acme's id, after acme
            ask(base, QUESTION, tenant=tenant)
            hits[tenant] = ask(base, PARAPHRASE, tenant=tenant, extra_headers=shared)
            assert hits[tenant].headers["x-areion-cache"] == "hit-semantic"
            assert hits[tenant].headers["x-client-request-id"] == shared["x-request-id"]
        ids = {tenant: hit.headers["x-request-id"] for tenant, hit in hits.items()}
        assert ids["acme"] != ids["globex"] and shared["x-request-id"] not in ids.values()
        judged = httpx.post(
            base + "/v1/cache/semantic/feedback",
            json={"request_id": ids["acme"], "correct": False},
            headers={"authorization": "Bearer acme-key"},
        )
        assert judged.status_code == 200
        assert judged.json()["entry"] == int(hits["acme"].headers["x-areion-cache-entry"])
    # The server has stopped, its ledger written: Areion's id finds the client's.
    with contextlib.closing(sqlite3.connect(tmp_path / "cache.db")) as db:
        rows = db.execute(
            "SELECT tenant, client_request_id FROM ledger WHERE request_id = ?", (ids["acme"],)
        ).fetchall()
    assert rows == [("acme", shared["x-request-id"])]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "param"),
    [
        ("DELETE", "/v1/cache/semantic", {"params": {"older_than_s": "soon"}}, 400, "older_than_s"),
        ("DELETE", "/v1/cache/semantic", {"params": {"older_than_s": "-1"}}, 400, "older_than_s"),
        ("DELETE", "/v1/cache/semantic/abc", {}, 400, "entry"),
        ("DELETE", "/v1/cache/semantic/12345", {}, 404, "entry"),
        ("POST", "/v1/cache/semantic/feedback", {"content": b"{"}, 400, None),
        ("POST", "/v1/cache/semantic/feedback", {"json": {"request_id": "x"}}, 400, "correct"),
        ("POST", "/v1/cache/semantic/feedback", {"json": {"request_id": "x", "correct": True}},
         404, "request_id"),
    ],
)  # fmt: skip
def test_bad_cache_requests_get_clear_errors(
    server: Any, method: str, path: str, kwargs: dict[str, Any], status: int, param: str | None
) -> None:
    _, url = server
    response = httpx.request(
        method, url + path, headers={"authorization": "Bearer acme-key"}, **kwargs
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"]
    assert error["param"] == param


def test_cache_api_says_when_the_tier_is_off(upstream: Any, tmp_path: Path) -> None:
    _, url = upstream
    with serve_app(create_app(Runtime(_config(url, tmp_path, semantic=False)))) as base:
        response = httpx.delete(
            base + "/v1/cache/semantic", headers={"authorization": "Bearer acme-key"}
        )
    assert response.status_code == 404
    assert "cache.semantic.enabled" in response.json()["error"]["message"]
