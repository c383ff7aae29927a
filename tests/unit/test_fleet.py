"""`Fleet`: what one replica learns of a deployment reaches the others (two replicas
here share one `LocalShared`, as replicas share Redis)."""

from __future__ import annotations

import asyncio

import pytest

from areion.config import parse_config
from areion.errors import ProviderUnavailableError
from areion.gateway.deployments import Deployment, build_groups
from areion.gateway.fleet import Fleet
from areion.gateway.resilience import BreakerState
from areion.store.shared import LocalShared
from areion.telemetry.metrics import Metrics

CONFIG = parse_config(
    {
        "models": [{"name": "fast", "provider": "sim", "model": "sim-fast", "max_concurrency": 2}],
        "breaker": {"failure_threshold": 2, "reset_timeout": 30},
    }
)


class Clocks:
    """Two clocks a replica reads: wall (Unix) and monotonic, moved together."""

    def __init__(self, wall: float, monotonic: float) -> None:
        self.now_wall, self.now_monotonic = wall, monotonic

    def wall(self) -> float:
        return self.now_wall

    def monotonic(self) -> float:
        return self.now_monotonic


def replica(shared: LocalShared, clocks: Clocks) -> tuple[Fleet, Deployment]:
    groups = build_groups(CONFIG, Metrics())
    deployments = {d.id: d for g in groups.values() for d in g.deployments}
    fleet = Fleet(shared, deployments, wall=clocks.wall, monotonic=clocks.monotonic)
    return fleet, next(iter(deployments.values()))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_breaker_opened_by_one_replica_opens_on_the_others_until_the_same_moment() -> None:
    shared = LocalShared()
    # Same wall clock, monotonic clocks that started at other times.
    _one, mine = replica(shared, Clocks(wall=1000.0, monotonic=50.0))
    _two, theirs = replica(shared, Clocks(wall=1000.0, monotonic=9000.0))
    mine.breaker.record_failure(50.0)
    mine.breaker.record_failure(50.0)
    await settle()
    assert mine.breaker.state is BreakerState.OPEN
    assert theirs.breaker.state is BreakerState.OPEN
    assert not theirs.breaker.available(9000.0 + 29.9)
    assert theirs.breaker.available(9000.0 + 30.0)  # 30 s after it opened, for both
    assert mine.breaker.acquire(80.0)  # the probe
    mine.breaker.record_success()
    await settle()
    assert theirs.breaker.state is BreakerState.CLOSED


async def test_a_cooldown_reaches_the_others() -> None:
    shared = LocalShared()
    one, mine = replica(shared, Clocks(wall=1000.0, monotonic=50.0))
    _two, theirs = replica(shared, Clocks(wall=1000.0, monotonic=9000.0))
    mine.cooldown_until = 50.0 + 5.0
    one.cooled(mine)
    await settle()
    assert theirs.cooldown_until == pytest.approx(9005.0)


async def test_a_concurrency_cap_holds_over_all_replicas() -> None:
    shared = LocalShared()
    clocks = Clocks(wall=1000.0, monotonic=50.0)
    one, mine = replica(shared, clocks)
    two, theirs = replica(shared, clocks)
    first = await one.take_slot(mine, deadline=60.0)
    await two.take_slot(theirs, deadline=60.0)
    clocks.now_monotonic = 61.0  # past the deadline: no waiting
    with pytest.raises(ProviderUnavailableError, match="all its 2 slots"):
        await two.take_slot(theirs, deadline=60.0)
    await one.give_slot(mine, first)
    assert await two.take_slot(theirs, deadline=60.0)
