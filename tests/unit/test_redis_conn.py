"""The Redis URL (`RedisOptions.from_url`): Areion's parameters, redis-py's, and errors."""

from __future__ import annotations

import pytest

from areion.errors import ConfigError
from areion.store.redis_conn import RedisOptions


def test_defaults_and_areion_parameters() -> None:
    options = RedisOptions.from_url("redis://10.0.0.5:6380/2")
    assert (options.prefix, options.timeout_s, options.connect_timeout_s) == ("areion:", 1.0, 0.5)
    assert options.where == "10.0.0.5:6380/2"
    options = RedisOptions.from_url(
        "redis://:secret@cache/1?prefix=prod:eu:&timeout=0.75&connect_timeout=0.25&health_check_interval=5"
    )
    assert (options.prefix, options.timeout_s, options.connect_timeout_s) == (
        "prod:eu:",
        0.75,
        0.25,
    )
    # redis-py gets the rest; a message shows where Redis is, never the password.
    assert options.url == "redis://:secret@cache/1?health_check_interval=5"
    assert options.where == "cache:6379/1"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://localhost:6379", "unsupported URL scheme 'http'"),
        ("redis://localhost?timeout=soon", "invalid parameter"),
        ("redis://localhost?timeout=0", "must be > 0"),
    ],
)
def test_a_wrong_url_says_what_is_wrong(url: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        RedisOptions.from_url(url)
