"""The `Shared` contract, run against `LocalShared` and `RedisShared` alike: every
operation as one replica sees it (tests/integration/test_redis_shared.py has two)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from areion.errors import ConfigError
from areion.store.counters import Counters, Take
from areion.store.shared import LocalShared, Shared, open_shared
from tests.support import REDIS_URL, eventually, prefixed, require_redis


@pytest.fixture(params=["local", "redis"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    if request.param == "local":
        local = open_shared(None)
        yield local
        await local.aclose()
        return
    require_redis()
    from areion.store.redis import RedisShared

    redis = open_shared(prefixed(REDIS_URL))
    assert isinstance(redis, RedisShared)
    try:
        yield redis
    finally:
        await redis.delete_all()
        await redis.aclose()


async def test_it_is_a_shared_with_counters(shared: Shared) -> None:
    assert isinstance(shared, Shared)
    assert isinstance(shared.counters, Counters)
    ok, [state] = await shared.counters.take([Take(key="k", amount=1, rate=1, burst=3)], now=10.0)
    assert ok and state.remaining == 2


async def test_a_message_reaches_every_handler_of_its_channel_only(shared: Shared) -> None:
    first: list[bytes] = []
    second: list[bytes] = []
    other: list[bytes] = []
    shared.subscribe("cache", first.append)
    shared.subscribe("cache", second.append)
    shared.subscribe("breakers", other.append)
    await shared.publish("cache", b"drop entry 7")
    await shared.publish("cache", b"\x00binary\xff")

    async def delivered() -> bool:
        return len(first) == 2 and len(second) == 2

    await eventually(delivered)
    assert first == second == [b"drop entry 7", b"\x00binary\xff"]  # in order, as bytes
    assert other == []


async def test_a_handler_sees_only_what_is_published_after_it_subscribed(shared: Shared) -> None:
    early: list[bytes] = []
    late: list[bytes] = []
    shared.subscribe("notices", early.append)
    await shared.publish("notices", b"one")

    async def got_one() -> bool:
        return early == [b"one"]

    await eventually(got_one)
    shared.subscribe("notices", late.append)
    await shared.publish("notices", b"two")

    async def got_two() -> bool:
        return early == [b"one", b"two"] and late == [b"two"]

    await eventually(got_two)


async def test_a_failing_handler_does_not_stop_the_others(shared: Shared) -> None:
    got: list[bytes] = []

    def broken(message: bytes) -> None:
        raise RuntimeError("handler bug")

    shared.subscribe("c", broken)
    shared.subscribe("c", got.append)
    if isinstance(shared, LocalShared):
        # In memory, publish calls the handlers itself: the error reaches the publisher.
        with pytest.raises(RuntimeError):
            await shared.publish("c", b"x")
        return
    await shared.publish("c", b"x")
    await shared.publish("c", b"y")

    async def both() -> bool:
        return got == [b"x", b"y"]

    await eventually(both)


async def test_a_replica_does_not_count_its_own_load(shared: Shared) -> None:
    await shared.report_load("me", {"fast/a": 3}, ttl_s=30)
    assert await shared.load(excluding="me") == {}


async def test_slots_cap_holders_and_free_on_release(shared: Shared) -> None:
    taken = [
        await shared.acquire_slot("fast/a", limit=2, holder=h, ttl_s=30) for h in ("x", "y", "z")
    ]
    assert taken == [True, True, False]
    # A holder asking again keeps its one slot (it does not take a second).
    assert await shared.acquire_slot("fast/a", limit=2, holder="x", ttl_s=30)
    assert not await shared.acquire_slot("fast/a", limit=2, holder="z", ttl_s=30)
    # Each deployment has slots of its own.
    assert await shared.acquire_slot("fast/b", limit=1, holder="z", ttl_s=30)
    await shared.release_slot("fast/a", holder="x")
    await shared.release_slot("fast/a", holder="nobody")  # nothing to give back: no harm
    assert await shared.acquire_slot("fast/a", limit=2, holder="z", ttl_s=30)
    assert not await shared.acquire_slot("fast/a", limit=2, holder="w", ttl_s=30)


async def test_a_slot_not_released_frees_itself_after_its_ttl(shared: Shared) -> None:
    assert await shared.acquire_slot("fast/a", limit=1, holder="dead", ttl_s=0.05)
    assert await shared.acquire_slot("fast/b", limit=1, holder="alive", ttl_s=60)

    async def freed() -> bool:
        return await shared.acquire_slot("fast/a", limit=1, holder="next", ttl_s=60)

    await eventually(freed)
    assert not await shared.acquire_slot("fast/b", limit=1, holder="other", ttl_s=60)


async def test_a_lease_is_exclusive_and_its_fences_grow(shared: Shared) -> None:
    first = await shared.acquire_lease("run:acme:1", owner="a", ttl_s=30)
    assert first is not None
    assert await shared.acquire_lease("run:acme:1", owner="b", ttl_s=30) is None
    again = await shared.acquire_lease("run:acme:1", owner="a", ttl_s=30)  # its owner: yes
    assert again is not None and again > first
    assert await shared.renew_lease("run:acme:1", owner="a", ttl_s=30)
    assert not await shared.renew_lease("run:acme:1", owner="b", ttl_s=30)
    await shared.release_lease("run:acme:1", owner="b")  # not b's: nothing happens
    assert await shared.acquire_lease("run:acme:1", owner="b", ttl_s=30) is None
    # Another key is another lease.
    assert await shared.acquire_lease("run:acme:2", owner="b", ttl_s=30) is not None
    await shared.release_lease("run:acme:1", owner="a")
    taken_over = await shared.acquire_lease("run:acme:1", owner="b", ttl_s=30)
    assert taken_over is not None and taken_over > again
    assert not await shared.renew_lease("run:acme:1", owner="a", ttl_s=30)


async def test_an_expired_lease_is_lost_and_can_be_taken(shared: Shared) -> None:
    first = await shared.acquire_lease("run:1", owner="a", ttl_s=0.05)
    assert first is not None

    async def taken() -> bool:
        return await shared.acquire_lease("run:1", owner="b", ttl_s=30) is not None

    await eventually(taken)
    assert not await shared.renew_lease("run:1", owner="a", ttl_s=30)
    later = await shared.acquire_lease("run:1", owner="b", ttl_s=30)
    assert later is not None and later > first


def test_open_shared_names_what_it_supports() -> None:
    assert isinstance(open_shared(None), LocalShared)
    with pytest.raises(ConfigError, match="redis://"):
        open_shared("memcached://127.0.0.1")
