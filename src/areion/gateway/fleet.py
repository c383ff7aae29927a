"""Deployments as every replica sees them: health, load and capped slots, through `Shared`.

Each replica keeps its own breakers, 429 cooldowns and counts of calls in flight, on
the hot path, with no round trip. What one replica learns is told to the others:

- a breaker that opens (or closes after a good probe) is announced on the
  `deployments` channel, and every replica opens (or closes) its own until the same
  moment, so a dead deployment is not retried by each replica in turn;
- a 429's Retry-After is announced the same way;
- every `report_every_s` each replica reports its calls in flight per deployment and
  reads the others' (`Deployment.remote_outstanding`), which balancing counts;
- a deployment with `max_concurrency` takes one of its slots in `Shared` for each
  call, so the cap holds over all replicas together, not per replica.

Times travel as Unix time and are turned into each replica's monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

from areion.errors import ProviderUnavailableError
from areion.gateway.deployments import Deployment
from areion.gateway.resilience import BreakerState, CircuitBreaker
from areion.store.shared import Shared

__all__ = ["Fleet"]

log = logging.getLogger(__name__)

_CHANNEL = "deployments"
# A slot lease outlives the longest call it may cover; a dead replica's slots free
# themselves after this at the latest.
_SLOT_MARGIN_S = 10.0
_SLOT_POLL_S = 0.02


class Fleet:
    """Shares the deployments' health and load with the other replicas."""

    def __init__(
        self,
        shared: Shared,
        deployments: dict[str, Deployment],
        *,
        report_every_s: float = 0.25,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._deployments = deployments
        self._report_every_s = report_every_s
        self._wall = wall
        self._monotonic = monotonic
        self.replica = "replica-" + os.urandom(6).hex()
        """This process among the replicas (its load reports and slots name it)."""
        self._holders = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reporter: asyncio.Task[None] | None = None
        for deployment in deployments.values():
            deployment.breaker.on_change = self._changed_by(deployment)
        shared.subscribe(_CHANNEL, self._notice)

    def start(self) -> None:
        """Begin reporting and reading load (in the running event loop)."""
        if self._reporter is None:
            self._reporter = asyncio.get_running_loop().create_task(self._report())

    # -- health ---------------------------------------------------------------------------

    def _changed_by(self, deployment: Deployment) -> Callable[[CircuitBreaker], None]:
        def changed(breaker: CircuitBreaker) -> None:
            notice: dict[str, Any] = {"deployment": deployment.id}
            if breaker.state is BreakerState.OPEN:
                notice["open_until"] = self._to_wall(breaker.opens_again_at)
            else:
                notice["closed"] = True
            self._announce(notice)

        return changed

    def cooled(self, deployment: Deployment) -> None:
        """Tell the others of a deployment's 429 cooldown (already set here)."""
        self._announce(
            {"deployment": deployment.id, "cool_until": self._to_wall(deployment.cooldown_until)}
        )

    def _announce(self, notice: dict[str, Any]) -> None:
        notice["from"] = self.replica
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._publish(orjson.dumps(notice)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, message: bytes) -> None:
        try:
            await self._shared.publish(_CHANNEL, message)
        except Exception:  # each replica still learns by itself, only later
            log.warning("could not tell other replicas of a deployment's state", exc_info=True)

    def _notice(self, message: bytes) -> None:
        try:
            notice = orjson.loads(message)
            if notice.get("from") == self.replica:
                return
            deployment = self._deployments.get(notice["deployment"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if deployment is None:
            return  # configured differently here: nothing to apply it to
        if "open_until" in notice:
            deployment.breaker.force_open(self._to_monotonic(float(notice["open_until"])))
        elif notice.get("closed"):
            deployment.breaker.force_close()
        elif "cool_until" in notice:
            until = self._to_monotonic(float(notice["cool_until"]))
            deployment.cooldown_until = max(deployment.cooldown_until, until)

    def _to_wall(self, monotonic: float) -> float:
        return self._wall() + (monotonic - self._monotonic())

    def _to_monotonic(self, wall: float) -> float:
        return self._monotonic() + (wall - self._wall())

    # -- load ---------------------------------------------------------------------------

    async def _report(self) -> None:
        ttl = max(2.0, 8 * self._report_every_s)
        while True:
            try:
                mine = {d.id: d.outstanding for d in self._deployments.values()}
                await self._shared.report_load(self.replica, mine, ttl)
                others = await self._shared.load(excluding=self.replica)
                for deployment in self._deployments.values():
                    deployment.remote_outstanding = others.get(deployment.id, 0)
            except Exception:  # balancing goes on with what this replica knows
                log.warning("could not share load with other replicas", exc_info=True)
            await asyncio.sleep(self._report_every_s)

    # -- capped slots ---------------------------------------------------------------------

    async def take_slot(self, deployment: Deployment, deadline: float) -> str:
        """One of `deployment`'s `max_concurrency` slots, over every replica: its holder
        name, to give back with `give_slot`. Waits for one until `deadline` (monotonic)."""
        limit = deployment.config.max_concurrency
        assert limit is not None
        holder = f"{self.replica}:{next(self._holders)}"
        ttl = min(deployment.config.total_timeout, 3600.0) + _SLOT_MARGIN_S
        while not await self._shared.acquire_slot(
            deployment.id, limit=limit, holder=holder, ttl_s=ttl
        ):
            if self._monotonic() >= deadline:
                raise ProviderUnavailableError(
                    f"deployment {deployment.id} has all its {limit} slots (max_concurrency) "
                    "taken by calls of this and other replicas",
                    retry_after=1.0,
                )
            await asyncio.sleep(_SLOT_POLL_S)
        return holder

    async def give_slot(self, deployment: Deployment, holder: str) -> None:
        try:
            await self._shared.release_slot(deployment.id, holder=holder)
        except Exception:  # it frees itself when its lease runs out
            log.warning("could not give back a slot of %s", deployment.id, exc_info=True)

    async def aclose(self) -> None:
        for task in (self._reporter, *self._tasks):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
