"""Fixtures for the tests that need a real Redis (tests/support.py has the helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import REDIS_URL, prefixed, require_redis


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The test Redis's URL with a key prefix of this test's own; its keys are deleted
    after the test."""
    require_redis()
    url = prefixed(REDIS_URL)
    yield url
    from areion.store.redis import RedisShared

    cleaner = RedisShared(url)
    try:
        await cleaner.delete_all()
    finally:
        await cleaner.aclose()
