"""When Redis is down: `BackendUnavailableError` within about a second for every
operation, never a raw redis or socket error; once it is back (restarted empty, on the
same port), counters, scripts, notices and leases work again without a restart."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable

import pytest

from areion.errors import BackendUnavailableError, ConfigError
from areion.store.counters import Reservation, Take
from areion.store.redis import RedisShared
from areion.store.shared import open_shared
from tests.support import PrivateRedis, eventually, free_port, prefixed

TAKE = Take(key="rpm:tenant:acme", amount=1, rate=1, burst=10)


def operations(shared: RedisShared) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every operation of the Shared protocol (and ping), ready to call."""
    counters = shared.counters
    return {
        "take": lambda: counters.take([TAKE], now=0.0),
        "give": lambda: counters.give(TAKE, 1, now=0.0),
        "reserve": lambda: counters.reserve([Reservation(key="w", amount=1, limit=5)]),
        "settle": lambda: counters.settle("w", 1, 0.5),
        "seed": lambda: counters.seed("w", 0.5),
        "publish": lambda: shared.publish("c", b"x"),
        "report_load": lambda: shared.report_load("r", {"d": 1}, ttl_s=5),
        "load": lambda: shared.load(excluding="r"),
        "acquire_slot": lambda: shared.acquire_slot("d", limit=1, holder="h", ttl_s=5),
        "release_slot": lambda: shared.release_slot("d", holder="h"),
        "acquire_lease": lambda: shared.acquire_lease("run", owner="o", ttl_s=5),
        "renew_lease": lambda: shared.renew_lease("run", owner="o", ttl_s=5),
        "release_lease": lambda: shared.release_lease("run", owner="o"),
        "ping": shared.ping,
        "listening": shared.listening,
    }


async def assert_all_unavailable(shared: RedisShared, where: str) -> None:
    shared.subscribe("c", lambda message: None)
    for name, operation in operations(shared).items():
        with pytest.raises(BackendUnavailableError) as refused:
            await operation()
        error = refused.value
        assert error.backend == "redis" and error.status == 503, name
        assert f"the limit store (Redis at {where}) is down" in error.message, name


async def test_a_closed_port_refuses_every_operation_at_once() -> None:
    port = free_port()  # nothing listens there
    shared = RedisShared(f"redis://127.0.0.1:{port}/0?prefix=t:")
    try:
        async with asyncio.timeout(60):  # would hang without the bounds
            await assert_all_unavailable(shared, f"127.0.0.1:{port}/0")
    finally:
        await shared.aclose()


async def test_a_redis_that_never_answers_times_out() -> None:
    # The kernel accepts the connection (backlog); nobody ever reads or answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        shared = RedisShared(f"redis://127.0.0.1:{port}/0?timeout=0.1&connect_timeout=0.1")
        try:
            async with asyncio.timeout(60):
                await assert_all_unavailable(shared, f"127.0.0.1:{port}/0")
        finally:
            await shared.aclose()


async def test_a_frozen_redis_times_out_then_answers_again() -> None:
    with PrivateRedis() as redis:
        shared = RedisShared(prefixed(redis.url) + "&timeout=0.2")
        try:
            assert (await shared.counters.take([TAKE], now=0.0))[0]
            redis.pause()  # connected, and nothing answers
            try:
                with pytest.raises(BackendUnavailableError, match=r"no reply within 0\.2s"):
                    await shared.counters.take([TAKE], now=0.0)
            finally:
                redis.resume()
            ok, [state] = await shared.counters.take([TAKE], now=0.0)
            # The timed-out take reached Redis before it froze: it may have run, or not.
            assert ok and state.remaining in (7, 8)
        finally:
            await shared.aclose()


async def test_after_a_restart_everything_works_again() -> None:
    with PrivateRedis() as redis:
        url = prefixed(redis.url)
        shared, other = RedisShared(url), RedisShared(url)
        got: list[bytes] = []
        shared.subscribe("breakers", got.append)
        try:
            assert (await shared.counters.take([TAKE], now=0.0))[0]
            before = await shared.acquire_lease("run", owner="a", ttl_s=60)
            assert before is not None
            await shared.listening()
            await other.publish("breakers", b"before")

            async def got_before() -> bool:
                return got == [b"before"]

            await eventually(got_before)

            redis.kill()
            await assert_all_unavailable(other, f"127.0.0.1:{redis.port}/0")
            redis.start()  # empty: no keys, no scripts

            # Counters: scripts are loaded again (NOSCRIPT). The bucket Redis forgot starts
            # as if emptied at the restart (at 100): refilled by 1 a second since, not full.
            ok, _ = await shared.counters.take([TAKE], now=100.0)
            assert not ok
            ok, [state] = await shared.counters.take([TAKE], now=103.0)
            assert ok and state.remaining == pytest.approx(2.0)
            # Leases: the old one is gone and the new fence is still higher.
            after = await other.acquire_lease("run", owner="b", ttl_s=60)
            assert after is not None and after > before

            # Notices: the listener has connected and subscribed again by itself.
            async def resubscribed() -> bool:
                try:
                    await shared.listening()
                except BackendUnavailableError:
                    return False
                return True

            await eventually(resubscribed)
            await other.publish("breakers", b"after")

            async def got_after() -> bool:
                return got == [b"before", b"after"]

            await eventually(got_after)
        finally:
            await shared.aclose()
            await other.aclose()


async def test_without_the_redis_package_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name == "redis" or name.startswith(("redis.", "areion.store.redis")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # what import finds when it is missing
    with pytest.raises(ConfigError, match=r"pip install 'areion\[redis\]'"):
        open_shared("redis://127.0.0.1:6379/0")
