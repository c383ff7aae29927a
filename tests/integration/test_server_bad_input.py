"""Whatever a client sends, the server answers 4xx with an OpenAI error body, never 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.support import serve_app

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "robot", 3])},
        optional={
            "content": json_values,
            "tool_calls": json_values,
            "name": json_values,
            "tool_call_id": json_values,
        },
    ),
    max_size=3,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["fast", "nope", "", 7, None]),
        "messages": messages | json_values,
        "stream": json_values,
        "temperature": json_values,
        "max_tokens": json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "stop": json_values,
        "n": json_values,
        "stream_options": json_values,
    },
)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    config = parse_config(
        {
            "models": [
                {"name": "fast", "provider": "sim", "model": "sim-fast", "time_scale": 0.001}
            ],
            "store": "sqlite:///:memory:",
        }
    )
    with serve_app(create_app(Runtime(config))) as base:
        yield base


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_random_bodies_never_produce_a_server_error(url: str, body: dict[str, Any]) -> None:
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"]


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
    ],
)
def test_garbage_bytes_are_400(url: str, raw: bytes) -> None:
    response = httpx.post(url + "/v1/chat/completions", content=raw, timeout=10)
    assert response.status_code == 400, response.text
