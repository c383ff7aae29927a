"""Two `RedisShared` instances on one prefix, as two replicas: one limit, one budget,
one slot cap, exclusive leases, load and notices across them; keys that expire."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from areion.store.counters import Reservation, Take
from areion.store.redis import RedisShared
from tests.support import eventually, prefixed


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[RedisShared, RedisShared]]:
    a, b = RedisShared(redis_url), RedisShared(redis_url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_one_rate_limit_and_one_budget_hold_across_replicas(
    replicas: tuple[RedisShared, RedisShared],
) -> None:
    a, b = replicas
    # 50 requests a minute, refilling slower than the test can run into.
    rpm = Take(key="rpm:tenant:acme", amount=1, rate=50 / 60, burst=50)
    window = Reservation(key="usd:day:acme:2025-01-31", amount=1 / 32, limit=1.0)

    async def take(replica: RedisShared) -> bool:
        return (await replica.counters.take([rpm], now=1000.0))[0]

    async def reserve(replica: RedisShared) -> bool:
        return (await replica.counters.reserve([window]))[0]

    both = [a, b] * 100
    await a.counters.seed(window.key, 0.0)
    taken = await asyncio.gather(*(take(r) for r in both))
    reserved = await asyncio.gather(*(reserve(r) for r in both))
    assert sum(taken) == 50  # not 50 per replica
    assert sum(reserved) == 32
    # Each replica settles its half at a lower real cost: the budget sees all of it.
    await asyncio.gather(*(r.counters.settle(window.key, 1 / 32, 1 / 64) for r in [a, b] * 16))
    _, [state] = await b.counters.reserve([Reservation(key=window.key, amount=0, limit=1)])
    assert (state.spent, state.reserved) == (0.5, 0.0)


async def test_a_lease_is_exclusive_across_replicas(
    replicas: tuple[RedisShared, RedisShared],
) -> None:
    a, b = replicas
    owners = [
        (replica, f"{name}-{i}")
        for (replica, name), i in itertools.product([(a, "a"), (b, "b")], range(10))
    ]
    grants = await asyncio.gather(
        *(replica.acquire_lease("run:acme:r1", owner=owner, ttl_s=30) for replica, owner in owners)
    )
    winners = [owner for (_, owner), fence in zip(owners, grants, strict=True) if fence]
    assert len(winners) == 1
    first = next(fence for fence in grants if fence)
    holder = a if winners[0].startswith("a") else b
    other = b if holder is a else a
    assert not await other.renew_lease("run:acme:r1", owner="someone", ttl_s=30)
    await holder.release_lease("run:acme:r1", owner=winners[0])
    second = await other.acquire_lease("run:acme:r1", owner="taker", ttl_s=0.05)
    assert second is not None and second > first

    # The taker dies: its lease expires, and the first replica takes the run back.
    async def taken_back() -> bool:
        return await holder.acquire_lease("run:acme:r1", owner="back", ttl_s=30) is not None

    await eventually(taken_back)
    third = await holder.acquire_lease("run:acme:r1", owner="back", ttl_s=30)
    assert third is not None and third > second
    assert not await other.renew_lease("run:acme:r1", owner="taker", ttl_s=30)


async def test_a_fence_grows_even_when_redis_forgot_the_key(
    replicas: tuple[RedisShared, RedisShared],
) -> None:
    a, b = replicas
    fences = [await a.acquire_lease("run:x", owner="a", ttl_s=30) for _ in range(5)]
    await b.delete_all()  # what a Redis restart without persistence does
    after = await b.acquire_lease("run:x", owner="b", ttl_s=30)
    assert after is not None and all(f is not None and after > f for f in fences)


async def test_a_slot_cap_holds_across_replicas(replicas: tuple[RedisShared, RedisShared]) -> None:
    a, b = replicas
    holders = [(r, f"call-{i}") for i, r in enumerate([a, b] * 10)]
    taken = await asyncio.gather(
        *(r.acquire_slot("gpu/a", limit=3, holder=h, ttl_s=30) for r, h in holders)
    )
    assert sum(taken) == 3
    holding = [(r, h) for (r, h), ok in zip(holders, taken, strict=True) if ok]
    released_by, released = holding[0]
    await (b if released_by is a else a).release_slot("gpu/a", holder=released)
    assert await a.acquire_slot("gpu/a", limit=3, holder="late", ttl_s=30)
    assert not await b.acquire_slot("gpu/a", limit=3, holder="later", ttl_s=30)


async def test_load_is_seen_by_the_other_replica_and_fades(
    replicas: tuple[RedisShared, RedisShared],
) -> None:
    a, b = replicas
    await a.report_load("replica-a", {"fast/1": 4, "fast/2": 1}, ttl_s=60)
    await b.report_load("replica-b", {"fast/1": 2}, ttl_s=60)
    assert await b.load(excluding="replica-b") == {"fast/1": 4, "fast/2": 1}
    assert await a.load(excluding="replica-a") == {"fast/1": 2}
    # A report replaces the last one.
    await a.report_load("replica-a", {"fast/2": 7}, ttl_s=60)
    assert await b.load(excluding="replica-b") == {"fast/2": 7}
    assert await b.load(excluding="nobody") == {"fast/1": 2, "fast/2": 7}
    await a.report_load("replica-a", {"fast/2": 7}, ttl_s=0.05)  # then replica-a dies

    async def faded() -> bool:
        return await b.load(excluding="replica-b") == {}

    await eventually(faded)


async def test_a_notice_published_by_one_replica_is_handled_by_the_other(
    replicas: tuple[RedisShared, RedisShared],
) -> None:
    a, b = replicas
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    a.subscribe("breakers", got_a.append)
    b.subscribe("breakers", got_b.append)
    await b.listening()  # b is subscribed before a publishes
    await a.publish("breakers", b"open fast/1")

    async def both() -> bool:
        return got_a == got_b == [b"open fast/1"]

    await eventually(both)


async def test_prefixes_keep_deployments_apart(redis_url: str) -> None:
    mine = RedisShared(redis_url)
    other = RedisShared(prefixed(redis_url.split("?")[0]))
    try:
        take = Take(key="rpm:t", amount=1, rate=1 / 60, burst=1)
        assert (await mine.counters.take([take], now=0.0))[0]
        assert (await other.counters.take([take], now=0.0))[0]  # a bucket of its own
        assert await mine.acquire_lease("run", owner="a", ttl_s=30) is not None
        assert await other.acquire_lease("run", owner="b", ttl_s=30) is not None
    finally:
        await other.delete_all()
        await other.aclose()
        await mine.aclose()


async def test_keys_expire_when_idle(replicas: tuple[RedisShared, RedisShared]) -> None:
    a, _ = replicas
    prefix = a.options.prefix
    # 60 a minute, 30 taken: full again in 30 s (plus the margin for clock skew).
    await a.counters.take([Take(key="rpm:k", amount=30, rate=1, burst=60)], now=0.0)
    await a.counters.seed("usd:day:t:2025-01-31", 0.0)
    await a.counters.reserve([Reservation(key="usd:day:t:2025-01-31", amount=1, limit=2)])
    await a.acquire_slot("d", limit=1, holder="h", ttl_s=20)
    await a.acquire_lease("run", owner="o", ttl_s=15)
    await a.report_load("r", {"d": 1}, ttl_s=12)

    async def ttl(key: str) -> float:
        return float(await a._pipe.call("PTTL", prefix + key)) / 1000

    assert 30 < await ttl("bucket:rpm:k") <= 35
    assert 39 * 86_400 < await ttl("budget:usd:day:t:2025-01-31") <= 40 * 86_400
    assert 0 < await ttl("slots:d") <= 20
    assert 0 < await ttl("lease:run") <= 15
    assert 0 < await ttl("load:r") <= 12 and 0 < await ttl("loads") <= 12
    assert 86_000 < await ttl("fence:run") <= 86_400


async def test_a_channel_subscribed_while_listening_joins_the_live_connection(
    replicas: tuple[RedisShared, RedisShared],
) -> None:
    a, b = replicas
    first: list[bytes] = []
    later: list[bytes] = []
    b.subscribe("cache", first.append)
    await b.listening()
    b.subscribe("plans", later.append)  # the listener is connected: added to it
    await b.listening()
    await a.publish("plans", b"drop plan 3")
    await a.publish("cache", b"drop entry 9")

    async def both() -> bool:
        return first == [b"drop entry 9"] and later == [b"drop plan 3"]

    await eventually(both)
