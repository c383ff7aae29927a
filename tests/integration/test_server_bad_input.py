"""Whatever a client sends, the server answers 4xx with an OpenAI error body, never 500,
and the connection it came on stays usable."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import ScriptedUpstream
from tests.support import serve_app

KEY = "sk-acme-test-key-0123456789"
ADMIN_KEY = "sk-admin-test-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
HI = [{"role": "user", "content": "hi"}]


def _config(upstream: str, tmp_path: Path, **extra: Any) -> Any:
    return parse_config(
        {
            "models": [
                {"name": "fast", "provider": "openai", "model": "m", "base_url": upstream + "/v1"}
            ],
            "store": f"sqlite:///{tmp_path / 'areion.db'}",
            "auth": {"keys": [{"key": KEY, "tenant": "acme"}], "admin_keys": [ADMIN_KEY]},
            "agents": [{"name": "echo", "path": "tests.agents_fixture:make_echo"}],
            **extra,
        }
    )


async def _boom(request: Request) -> Response:
    raise RuntimeError("a bug, not the client's fault")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Areion in front of a real OpenAI-compatible upstream over loopback: what the
    server sends upstream is serialized, as in production (the sim provider is not)."""
    upstream = ScriptedUpstream()
    with serve_app(upstream.app) as upstream_url:
        app = create_app(Runtime(_config(upstream_url, tmp_path_factory.mktemp("bad"))))
        # A handler with a bug: what a client sees of an error that is the server's.
        app.router.routes.append(Route("/v1/boom", _boom, methods=["GET"]))
        with serve_app(app) as base:
            yield base


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def _post(url: str, path: str, body: Any, headers: dict[str, str] = AUTH) -> httpx.Response:
    # json.dumps, not httpx's json=: it writes integers of any size, NaN and Infinity
    return httpx.post(url + path, content=json.dumps(body), headers=headers, timeout=30)


# --- integers beyond 64 bits ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 18446744073709551617}, "seed"),
        ({"logit_bias": {"50256": 2**64}}, "logit_bias.50256"),
        ({"max_tokens": 2**64}, "max_tokens"),
    ],
)
def test_chat_integers_beyond_64_bits_are_400_naming_the_field(
    url: str, fields: dict[str, Any], param: str
) -> None:
    response = _post(url, "/v1/chat/completions", {"model": "fast", "messages": HI, **fields})
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["param"] == param and f"'{param}'" in error["message"]


def test_admin_rpm_beyond_64_bits_is_400(url: str) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    response = _post(url, "/v1/admin/keys", {"tenant": "t", "rpm": 2**64}, admin)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "rpm"


def _finished_run(url: str) -> str:
    response = _post(url, "/v1/runs", {"agent": "echo", "input": "hi", "wait": True})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_run_max_steps_beyond_64_bits_is_400(url: str) -> None:
    run_id = _finished_run(url)
    response = _post(url, f"/v1/runs/{run_id}/resume", {"max_steps": 2**64, "wait": True})
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "max_steps"


@pytest.mark.parametrize("after", [str(2**64), str(-(2**63))])
def test_events_after_an_impossible_id_is_400_before_the_stream(url: str, after: str) -> None:
    run_id = _finished_run(url)
    events = f"{url}/v1/runs/{run_id}/events"
    response = httpx.get(events, params={"after": after}, headers=AUTH, timeout=30)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "after"
    resumed = httpx.get(events, headers={**AUTH, "last-event-id": "0"}, timeout=30)
    assert resumed.status_code == 200
    assert "id: 0\n" not in resumed.text and "id: 1\n" in resumed.text


def test_cache_entry_that_is_a_superscript_digit_is_400(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the semantic extra: pip install -e '.[dev]'")
    upstream = ScriptedUpstream()
    with serve_app(upstream.app) as upstream_url:
        config = _config(upstream_url, tmp_path, cache={"semantic": {"enabled": True}})
        with serve_app(create_app(Runtime(config))) as base:
            response = httpx.delete(base + "/v1/cache/semantic/%C2%B2", headers=AUTH)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "entry"


# --- loose validation -----------------------------------------------------------------

CALLED = {
    "role": "assistant",
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
}


ANSWER = {"role": "tool", "tool_call_id": "c1", "content": "14C"}
NO_ID = {"role": "tool", "content": "14C"}
UNTYPED = {"role": "user", "content": [{"text": "hi"}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [*HI, CALLED, NO_ID]}, "messages[2].tool_call_id"),
        ({"messages": [ANSWER]}, "messages[0].role"),
        ({"messages": [UNTYPED]}, "messages[0].content[0].type"),
        ({"messages": HI, "max_tokens": "10"}, "max_tokens"),
        ({"messages": HI, "max_tokens": True}, "max_tokens"),
        ({"messages": HI, "stream": "yes"}, "stream"),
        ({"messages": ["hi"]}, "messages[0]"),
    ],
)
def test_loose_bodies_are_400_naming_the_field(url: str, body: dict[str, Any], param: str) -> None:
    response = _post(url, "/v1/chat/completions", {"model": "fast", **body})
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["param"] == param and f"'{param}'" in error["message"]


def test_nan_in_a_pass_through_field_is_400_not_forwarded_as_null(url: str) -> None:
    raw = b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "seed": NaN}'
    response = httpx.post(url + "/v1/chat/completions", content=raw, headers=AUTH)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "seed"


@pytest.mark.parametrize("raw", [b"[]", b'[{"agent": "echo", "input": "hi"}]'])
def test_a_runs_body_that_is_not_an_object_says_so(url: str, raw: bytes) -> None:
    response = httpx.post(url + "/v1/runs", content=raw, headers=AUTH)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert "must be a JSON object" in error["message"] and "None" not in error["message"]


LONG = "m" * 1_000_000


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/chat/completions", {"model": LONG, "messages": HI}, 404),
        ("/v1/runs", {"agent": LONG, "input": "hi"}, 400),
        (f"/v1/runs/{LONG[:50_000]}/approve", {"call_id": "c1"}, 404),
    ],
)
def test_a_huge_name_is_echoed_clipped(url: str, path: str, body: Any, status: int) -> None:
    response = _post(url, path, body)
    assert response.status_code == status
    assert len(_error(response)["message"]) < 1000


# --- the connection after an error ---------------------------------------------------


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)


def _exchange(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request on `connection`, which must still be the same open socket after it."""
    socket_before = connection.sock
    connection.request(method, path, body=body, headers=AUTH)
    response = connection.getresponse()
    data = response.read()
    assert not response.will_close, f"the server closed the connection after {response.status}"
    assert socket_before is None or connection.sock is socket_before
    return response.status, data


def test_a_500_leaves_the_connection_usable(url: str) -> None:
    connection = _connection(url)
    status, data = _exchange(connection, "GET", "/v1/boom")
    assert status == 500
    assert json.loads(data)["error"]["type"] == "server_error"
    assert _exchange(connection, "GET", "/healthz")[0] == 200
    body = json.dumps({"model": "fast", "messages": HI, "seed": 2**64}).encode()
    assert _exchange(connection, "POST", "/v1/chat/completions", body)[0] == 400
    body = json.dumps({"model": "fast", "messages": HI}).encode()
    assert _exchange(connection, "POST", "/v1/chat/completions", body)[0] == 200
    connection.close()


def test_a_bug_on_the_chat_route_is_a_500_on_a_connection_that_stays_usable(
    tmp_path: Path,
) -> None:
    """The chat route answers its own unexpected errors, as `_Contain` does for the
    others: a logged 500 in OpenAI's shape, and the connection goes on."""
    upstream = ScriptedUpstream()
    with serve_app(upstream.app) as upstream_url:
        runtime = Runtime(_config(upstream_url, tmp_path))
        answer = runtime.answer

        async def buggy(request: Any, options: Any) -> Any:
            if request.user == "trip":
                raise RuntimeError("a bug, not the client's fault")
            return await answer(request, options)

        runtime.answer = buggy  # type: ignore[method-assign]
        with serve_app(create_app(runtime)) as base:
            connection = _connection(base)
            body = json.dumps({"model": "fast", "messages": HI, "user": "trip"}).encode()
            status, data = _exchange(connection, "POST", "/v1/chat/completions", body)
            assert status == 500
            error = json.loads(data)["error"]
            assert (error["type"], error["code"]) == ("server_error", "internal_error")
            assert "a bug" not in error["message"]
            body = json.dumps({"model": "fast", "messages": HI}).encode()
            assert _exchange(connection, "POST", "/v1/chat/completions", body)[0] == 200
            connection.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff",
        b"[]",
        b"null",
        b'"x"',
        b"{",
        b"1e999999",
        b'{"model": "fast", "messages": [{"role": "user"}]' * 1000,
        b"[" * 100_000,
        b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "n": ' + b"9" * 5000,
    ],
)
def test_garbage_bytes_are_400(url: str, raw: bytes) -> None:
    response = httpx.post(url + "/v1/chat/completions", content=raw, headers=AUTH, timeout=10)
    assert response.status_code == 400, response.text
    _error(response)


# --- generated bodies -----------------------------------------------------------------

huge_integers = st.integers(min_value=2**63 - 2, max_value=2**80) | st.integers(
    min_value=-(2**80), max_value=-(2**63) + 1
)
numbers = st.integers() | huge_integers | st.floats()  # floats include NaN and infinities
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
content_parts = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["text", "image_url", "", 3]),
            "text": st.text(max_size=12) | json_values,
            "image_url": json_values,
        },
    ),
    max_size=3,
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["c1", "c2"]) | json_values,
            "type": st.just("function") | json_values,
            "function": st.fixed_dictionaries(
                {"name": st.just("f") | json_values, "arguments": st.just("{}") | json_values}
            ),
        }
    ),
    max_size=2,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "user", "assistant", "system", "tool", "robot", 3])},
        optional={
            "content": st.text(max_size=30) | content_parts | json_values,
            "tool_calls": tool_calls | json_values,
            "name": st.text(max_size=8) | json_values,
            "tool_call_id": st.sampled_from(["c1", "c2"]) | json_values,
            "extra": json_values,
        },
    ),
    max_size=4,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.just("function") | json_values,
            "function": st.fixed_dictionaries(
                {"name": st.just("f") | json_values}, optional={"parameters": json_values}
            ),
        }
    ),
    max_size=2,
)
# A body right but for one field, which gets as far as the upstream when it is valid.
one_odd_field = st.builds(
    lambda base, name, value: {**base, name: value},
    st.fixed_dictionaries(
        {"model": st.just("fast"), "messages": st.just(HI) | st.just([*HI, CALLED, ANSWER])},
        optional={"stream": st.booleans(), "temperature": st.sampled_from([0, 0.7])},
    ),
    st.sampled_from(
        ["seed", "logit_bias", "response_format", "metadata", "max_tokens", "n", "top_p", "stop"]
    ),
    numbers | json_values,
)
anything = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["fast", "fast", "nope", "", 7, None, "x" * 300]),
        "messages": messages | json_values,
    },
    optional={
        "stream": st.booleans() | json_values,
        "max_tokens": numbers | json_values,
        "temperature": numbers | json_values,
        "top_p": numbers,
        "n": numbers,
        "seed": numbers,
        "logit_bias": st.dictionaries(st.text(max_size=6), numbers, max_size=3) | json_values,
        "tools": tools | json_values,
        "tool_choice": st.sampled_from(["auto", "none"]) | json_values,
        "stop": json_values,
        "stream_options": json_values,
        "response_format": json_values,
        "metadata": json_values,
    },
)
bodies = one_odd_field | anything


@pytest.fixture(scope="module")
def connection(url: str) -> Iterator[http.client.HTTPConnection]:
    """One keep-alive connection for every generated body: a reset shows."""
    kept = _connection(url)
    yield kept
    kept.close()


@settings(
    max_examples=2000,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=bodies)
def test_generated_bodies_never_break_the_server(
    connection: http.client.HTTPConnection, body: dict[str, Any]
) -> None:
    status, data = _exchange(connection, "POST", "/v1/chat/completions", json.dumps(body).encode())
    event(f"status {status}")  # --hypothesis-show-statistics: how many got through
    assert status < 500, data
    if status >= 400:
        error = json.loads(data)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"] and error["type"]
