"""`redact`: credentials out of upstream text, ordinary error text left alone."""

from __future__ import annotations

import pytest

from areion.redact import redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("bad key: Bearer sk-upstream-SECRET", "sk-upstream-SECRET"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "eyJhbGciOiJIUzI1NiJ9"),
        ('{"x-api-key": "hunter2hunter2"}', "hunter2hunter2"),
        ("api_key=abcd&model=x", "abcd"),
        ("Incorrect API key provided: sk-proj-abc1234567.", "sk-proj-abc1234567"),
        ("invalid token 9f8a7b6c5d4e3f2a1b0c", "9f8a7b6c5d4e3f2a1b0c"),
        ("session_secret: Zm9vYmFyYmF6cXV4MTIz", "Zm9vYmFyYmF6cXV4MTIz"),
        ("cannot reach http://bob:pa55word@proxy:3128", "pa55word"),
        ("key AKIAABCDEFGHIJKLMNOP is unknown", "AKIAABCDEFGHIJKLMNOP"),
        ("areion key ak-Zx9_abcdefghijklmnop", "ak-Zx9_abcdefghijklmnop"),
    ],
)
def test_key_like_text_is_masked(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "[redacted]" in redact(text)


def test_configured_secrets_are_masked_whatever_their_shape() -> None:
    text = "org plain-header-secret and plain-header-secret-2 rejected"
    out = redact(text, ["plain-header-secret", "plain-header-secret-2", "ab"])
    assert out == "org [redacted] and [redacted] rejected"


@pytest.mark.parametrize(
    "text",
    [
        "This model's maximum context length is 8192 tokens.",
        "the token budget is spent; check your key",
        "The model `gpt-4o-mini` does not exist or you do not have access to it.",
        "Rate limit reached for requests per min (RPM): Limit 500, Used 500",
    ],
)
def test_ordinary_error_text_is_left_alone(text: str) -> None:
    assert redact(text) == text
