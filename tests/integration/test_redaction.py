"""Upstream text that echoes credentials never reaches a tenant or a log verbatim.

The upstream here is a real local server that, like some real ones, reflects the
credential it was sent into its error bodies and its mid-stream error events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.support import serve_app

TENANT_KEY = "tenant-key-0123456789abcdef"
OPENAI_KEY = "sk-upstream-SECRET-0123456789"
ANTHROPIC_KEY = "anthropic-SECRET-abcdef012345"
HEADER_SECRET = "plain-header-secret"  # not key-shaped: only the config says it is one
STRANGER = "sk-someone-elses-key-0123456789"  # key-shaped, though never configured


def _echo(request: Request) -> str:
    sent = request.headers.get("authorization") or request.headers.get("x-api-key") or ""
    return f"bad key: {sent} (x-org: {request.headers.get('x-org', '')}; tried {STRANGER})"


async def _openai(request: Request) -> Response:
    body = orjson.loads(await request.body())
    if not body.get("stream"):
        error = {"error": {"message": _echo(request), "type": "invalid_request_error"}}
        return Response(orjson.dumps(error), status_code=401, media_type="application/json")

    async def events() -> Any:
        chunk = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: " + orjson.dumps({"error": {"message": _echo(request)}}) + b"\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _anthropic(request: Request) -> Response:
    body = orjson.loads(await request.body())
    if not body.get("stream"):
        message = _echo(request)
        error = {"type": "error", "error": {"type": "authentication_error", "message": message}}
        return Response(orjson.dumps(error), status_code=401, media_type="application/json")

    async def events() -> Any:
        start = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}
        error = {"type": "error", "error": {"type": "overloaded_error", "message": _echo(request)}}
        for event in (start, error):
            yield f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def areion(caplog: pytest.LogCaptureFixture) -> Iterator[str]:
    caplog.set_level(logging.DEBUG)
    upstream = Starlette(
        routes=[
            Route("/v1/chat/completions", _openai, methods=["POST"]),
            Route("/v1/messages", _anthropic, methods=["POST"]),
        ]
    )
    with serve_app(upstream) as url:
        config = parse_config(
            {
                "models": [
                    {
                        "name": "gpt",
                        "provider": "openai",
                        "base_url": url + "/v1",
                        "api_key": OPENAI_KEY,
                        "headers": {"x-org": HEADER_SECRET},
                    },
                    {
                        "name": "claude",
                        "provider": "anthropic",
                        "base_url": url,
                        "api_key": ANTHROPIC_KEY,
                        "headers": {"x-org": HEADER_SECRET},
                    },
                ],
                "store": "sqlite:///:memory:",
                "retry": {"max_attempts": 1},
                "auth": {"keys": [{"key": TENANT_KEY, "tenant": "acme"}]},
            }
        )
        with serve_app(create_app(Runtime(config))) as areion_url:
            yield areion_url


def _assert_clean(text: str) -> None:
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, HEADER_SECRET, STRANGER, "SECRET"):
        assert secret not in text


@pytest.mark.parametrize("model", ["gpt", "claude"])
async def test_an_upstream_error_that_echoes_the_key_is_redacted(
    areion: str, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=areion) as http:
        r = await http.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {TENANT_KEY}"}
        )
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert "rejected Areion's credentials" in message and "[redacted]" in message
    _assert_clean(r.text)
    _assert_clean(caplog.text)


@pytest.mark.parametrize("model", ["gpt", "claude"])
async def test_a_mid_stream_error_that_echoes_the_key_is_redacted(
    areion: str, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(base_url=areion) as http:
        r = await http.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {TENANT_KEY}"}
        )
    assert r.status_code == 200
    assert "mid-stream" in r.text and "[redacted]" in r.text
    _assert_clean(r.text)
    _assert_clean(caplog.text)
