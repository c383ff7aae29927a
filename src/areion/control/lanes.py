"""Priority lanes: per-model-group concurrency caps, bounded queues, fair sharing.

Each model group has a capacity (calls in flight at once, usually the sum of its
deployments' `max_concurrency`). A call takes a slot for as long as it runs (a
stream until it ends) and gives it back on every path out: an answer, an error,
a cancellation. While a slot is free and nobody waits, admission is a few integer
operations and no await.

When the group is full a call waits in its lane:

- `interactive` (the default) is always served before `batch` (strict priority).
  `batch_every=N` lets batch take at least one grant in N+1 while both lanes wait,
  so batch is slowed, never starved; 0 (the default) is strict priority.
- `batch` never holds the last `interactive_reserve` share of the slots, so an
  interactive call finds a slot free even when batch fills the group.
- Within a lane, tenants share by weight (start-time fair queueing): each waiter is
  tagged `max(lane clock, its tenant's last tag) + 1/weight` on arrival, and the
  smallest tag is served first. A tenant with 100 queued calls does not push a
  tenant with 5 behind all of them.

Queues are bounded. A lane that is full, or a group whose `max_queued` (both lanes)
is reached, sheds batch first: the batch waiter with the largest tag (the newest
call of the tenant furthest over its share) is refused, or the arrival itself if
its tag would be larger. Interactive is refused only when its own lane is full. A
waiter that waits longer than its lane's `max_wait_s` is refused too. A refusal is
an `OverloadedError` (HTTP 503) whose `retry_after` estimates when the queue ahead
will have drained: calls queued ahead x the recent slot-holding time / slots.

Lanes live on one event loop; nothing awaits between a check and its update, so
no lock is needed. Metrics are read at scrape time from plain counters, so the
hot path pays nothing for them. A group without a cap is counted too (its calls in
flight per lane, a few integer operations a call; it never queues), so the queue
depth and in-flight gauges cover every model group.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from areion.errors import LimitError, RequestError
from areion.pipeline import Call, EmbeddingCall, EmbeddingHandler, Handler, Result
from areion.streaming import ChatStream
from areion.types import EmbeddingResponse

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_INTERACTIVE",
    "LaneLimits",
    "LaneStats",
    "Lanes",
    "OverloadedError",
    "Priority",
    "ShedReason",
    "Slot",
    "lane_of",
]

Priority = Literal["interactive", "batch"]
"""A lane. `critical` (a routing tier) rides in the interactive lane."""
ShedReason = Literal["queue_full", "displaced", "timeout"]
"""Why a call was refused: its lane was full on arrival, a more deserving call took
its place in the queue, or it waited longer than its lane's `max_wait_s`."""

_LANES: dict[str, Priority] = {
    "interactive": "interactive",
    "critical": "interactive",
    "batch": "batch",
}
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SERVICE_GUESS_S = 1.0  # slot-holding time assumed before any call has finished
_EWMA = 0.1  # weight of the newest slot-holding time in the running estimate


@dataclass(slots=True, frozen=True, kw_only=True)
class LaneLimits:
    """How much one lane of one model group may queue."""

    max_queued: int | None
    """Calls waiting at most; None: unbounded."""
    max_wait_s: float | None
    """The longest a call waits for a slot before it is refused; None: no limit."""


DEFAULT_INTERACTIVE = LaneLimits(max_queued=1000, max_wait_s=30.0)
"""A person is waiting: a short queue, refused after 30 s rather than left hanging."""
DEFAULT_BATCH = LaneLimits(max_queued=10_000, max_wait_s=600.0)
"""Nobody is watching: a long queue, within the OpenAI SDK's default 600 s timeout."""


class OverloadedError(LimitError):
    """The model group is at capacity and this call's lane cannot queue it; retry later.

    Batch is refused before interactive; `retry_after` is when the queue ahead of
    the call should have drained.
    """

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(
        self, message: str, *, lane: Priority, reason: ShedReason, retry_after: float
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.lane: Priority = lane
        """The lane the call waited in, or would have."""
        self.reason: ShedReason = reason
        """Why it was refused."""


def lane_of(priority: object) -> Priority:
    """The lane of a priority (`interactive`, `critical` or `batch`; None: interactive)."""
    if priority is None:
        return "interactive"
    lane = _LANES.get(priority) if isinstance(priority, str) else None
    if lane is None:
        raise RequestError(
            f"priority '{priority}' is not one of: interactive, batch, critical",
            param="x-areion-priority",
        )
    return lane


@dataclass(slots=True, frozen=True, kw_only=True)
class LaneStats:
    """A model group's lanes at one moment."""

    capacity: int
    """Slots in all."""
    batch_limit: int
    """Slots batch may hold at once."""
    in_flight: int
    """Slots held (both lanes)."""
    batch_in_flight: int
    """Slots held by batch calls."""
    queued_interactive: int
    queued_batch: int
    service_s: float
    """The running estimate of how long a call holds its slot."""
    shed: Mapping[tuple[Priority, ShedReason], int]
    """Calls refused so far, by lane and reason."""


class Slot:
    """A held place in a model group; `release()` gives it back (idempotent)."""

    __slots__ = ("_group", "_released", "_started", "lane", "waited_s")

    def __init__(
        self, group: _Group | None, lane: Priority, started: float, waited_s: float
    ) -> None:
        self._group = group  # None: a group without a capacity
        self._started = started
        self._released = False
        self.lane: Priority = lane
        """The lane it was granted in."""
        self.waited_s = waited_s
        """Seconds the call queued for it (0.0: admitted at once)."""

    def release(self) -> None:
        """Give the slot back; the next waiter, if any, gets it now."""
        if self._released:
            return
        self._released = True
        if self._group is not None:
            self._group.release(self)

    def finish(self, stream: ChatStream, error: BaseException | None) -> None:
        """`ChatStream.on_finish` callback: release when the stream ends, fails or closes."""
        del stream, error
        self.release()


class _Waiter:
    __slots__ = ("enqueued", "future", "lane", "live", "seq", "tag", "tenant", "timer")

    def __init__(
        self,
        future: asyncio.Future[Slot],
        tenant: str,
        lane: Priority,
        tag: float,
        seq: int,
        enqueued: float,
    ) -> None:
        self.future = future
        self.tenant = tenant
        self.lane: Priority = lane
        self.tag = tag
        self.seq = seq
        self.enqueued = enqueued
        self.live = True  # still counted in its lane's queue
        self.timer: asyncio.TimerHandle | None = None


class _Lane:
    """One lane's waiters, served by smallest start tag (weighted fair queueing)."""

    __slots__ = ("_finish", "_heap", "_seq", "_vclock", "limits", "name", "queued")

    def __init__(self, name: Priority, limits: LaneLimits) -> None:
        self.name: Priority = name
        self.limits = limits
        self.queued = 0
        self._heap: list[tuple[float, int, _Waiter]] = []
        self._vclock = 0.0  # the tag of the waiter served last
        self._finish: dict[str, float] = {}  # each tenant's next start tag
        self._seq = 0

    def tag_for(self, tenant: str) -> float:
        """The start tag an arrival of `tenant` would get now."""
        return max(self._vclock, self._finish.get(tenant, 0.0))

    def push(self, waiter: _Waiter, weight: float) -> None:
        self._finish[waiter.tenant] = waiter.tag + 1.0 / weight
        heapq.heappush(self._heap, (waiter.tag, waiter.seq, waiter))
        self.queued += 1

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def pop(self) -> _Waiter | None:
        """The live waiter with the smallest tag, taken off the queue."""
        while self._heap:  # re-read: unlink() may replace or clear the heap
            tag, _, waiter = heapq.heappop(self._heap)
            if not waiter.live:
                continue
            if waiter.future.done():  # cancelled, not yet unlinked by its task
                self.unlink(waiter)
                continue
            self._vclock = max(self._vclock, tag)
            self.unlink(waiter)
            return waiter
        return None

    def newest(self) -> _Waiter | None:
        """The live waiter with the largest tag: the first to shed."""
        live = [entry for entry in self._heap if entry[2].live]
        if not live:
            return None
        return max(live, key=lambda entry: (entry[0], entry[1]))[2]

    def unlink(self, waiter: _Waiter) -> None:
        """Stop counting `waiter` (it stays in the heap until popped or compacted)."""
        if not waiter.live:
            return
        waiter.live = False
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        self.queued -= 1
        if self.queued == 0:
            # No backlog: nobody carries credit or debt into the next busy period.
            self._heap.clear()
            self._finish.clear()
        elif len(self._heap) > 2 * self.queued + 64:
            self._heap = [entry for entry in self._heap if entry[2].live]
            heapq.heapify(self._heap)
            self._finish = {t: f for t, f in self._finish.items() if f > self._vclock}


class _Group:
    """The slots and lanes of one model group."""

    def __init__(
        self,
        name: str,
        capacity: int | None,
        *,
        batch_limit: int,
        interactive: LaneLimits,
        batch: LaneLimits,
        max_queued: int | None,
        batch_every: int,
        weights: Mapping[str, float],
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.clock = clock
        self.limited = capacity is not None
        """False: a group only counted, never queued (no cap)."""
        self.capacity = capacity if capacity is not None else sys.maxsize
        self.batch_limit = batch_limit
        self.max_queued = max_queued
        self.batch_every = batch_every
        self.weights = weights
        self.active = 0
        self.batch_active = 0
        self.interactive = _Lane("interactive", interactive)
        self.batch = _Lane("batch", batch)
        self.since_batch = 0  # interactive grants while batch waited
        self.service_s = _SERVICE_GUESS_S
        self._measured = False
        # Read by the collector at scrape time.
        self.immediate: dict[Priority, int] = {"interactive": 0, "batch": 0}
        # Queued calls' waits per bucket of _WAIT_BUCKETS, and a last one for longer waits.
        self.waits: dict[Priority, list[int]] = {
            "interactive": [0] * (len(_WAIT_BUCKETS) + 1),
            "batch": [0] * (len(_WAIT_BUCKETS) + 1),
        }
        self.queued_count: dict[Priority, int] = {"interactive": 0, "batch": 0}
        self.wait_sum: dict[Priority, float] = {"interactive": 0.0, "batch": 0.0}
        self.shed: dict[tuple[Priority, ShedReason], int] = {}

    # -- admission ----------------------------------------------------------------

    def try_acquire(self, lane: Priority) -> Slot | None:
        """A slot at once if one is free and nobody in the lane or above waits, else None."""
        if self.active >= self.capacity or self.interactive.queued:
            return None
        if lane == "batch":
            if self.batch_active >= self.batch_limit or self.batch.queued:
                return None
            self.batch_active += 1
        self.active += 1
        self.immediate[lane] += 1
        return Slot(self, lane, self.clock() if self.limited else 0.0, 0.0)

    async def wait(self, tenant: str, lane: Priority) -> Slot:
        """Queue for a slot; raises `OverloadedError` if the call is shed."""
        queue = self.interactive if lane == "interactive" else self.batch
        tag = queue.tag_for(tenant)
        self._make_room(queue, tag)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), tenant, lane, tag, queue.next_seq(), self.clock())
        queue.push(waiter, self.weights.get(tenant, 1.0))
        if queue.limits.max_wait_s is not None:
            waiter.timer = loop.call_later(queue.limits.max_wait_s, self._expire, waiter)
        self._dispatch()  # batch may be queued behind its limit while a slot is free
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled():
                if future.exception() is None:  # granted, but the caller left: pass it on
                    future.result().release()
            else:
                queue.unlink(waiter)
            raise

    def _make_room(self, queue: _Lane, tag: float) -> None:
        """Refuse the arrival, or shed a batch waiter for it, if its queue is full."""
        lane_full = queue.limits.max_queued is not None and queue.queued >= queue.limits.max_queued
        group_full = (
            self.max_queued is not None
            and self.interactive.queued + self.batch.queued >= self.max_queued
        )
        if queue.name == "interactive":
            if lane_full:
                raise self._refusal(queue.name, "queue_full")
            if group_full:
                victim = self.batch.newest()
                if victim is None:
                    raise self._refusal(queue.name, "queue_full")
                self._shed(victim, "displaced")
            return
        if lane_full or group_full:
            victim = self.batch.newest()
            if victim is None or victim.tag <= tag:
                raise self._refusal("batch", "queue_full")
            self._shed(victim, "displaced")

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.live and not waiter.future.done():
            self._shed(waiter, "timeout")

    def _shed(self, waiter: _Waiter, reason: ShedReason) -> None:
        queue = self.interactive if waiter.lane == "interactive" else self.batch
        queue.unlink(waiter)
        waiter.future.set_exception(self._refusal(waiter.lane, reason))

    def _refusal(self, lane: Priority, reason: ShedReason) -> OverloadedError:
        key = (lane, reason)
        self.shed[key] = self.shed.get(key, 0) + 1
        why = {
            "queue_full": "its queue is full",
            "displaced": "a call with a better claim to the queue took its place",
            "timeout": "it waited longer than the lane's max_wait_s",
        }[reason]
        retry_after = self.retry_after(lane)
        return OverloadedError(
            f"model '{self.name}' is at capacity ({self.capacity} calls in flight) and this "
            f"{lane} call was refused: {why}; retry after {retry_after:.1f} s"
            + (", or send it as batch off-peak" if lane == "batch" else ""),
            lane=lane,
            reason=reason,
            retry_after=retry_after,
        )

    def retry_after(self, lane: Priority) -> float:
        """Seconds until the calls queued ahead of a new `lane` arrival should be served."""
        ahead = self.interactive.queued
        slots = self.capacity
        if lane == "batch":
            ahead += self.batch.queued
            slots = max(1, self.batch_limit)
        return self.service_s * (ahead + 1) / slots

    # -- grants -------------------------------------------------------------------

    def release(self, slot: Slot) -> None:
        self.active -= 1
        if slot.lane == "batch":
            self.batch_active -= 1
        if not self.limited:
            return  # nobody ever waits: no service time to estimate
        held = self.clock() - slot._started
        if self._measured:
            self.service_s += _EWMA * (held - self.service_s)
        else:
            self.service_s, self._measured = held, True
        if self.interactive.queued or self.batch.queued:
            self._dispatch()

    def _dispatch(self) -> None:
        """Grant free slots to waiters: interactive first, batch within its limit."""
        while self.active < self.capacity:
            batch_ok = self.batch.queued > 0 and self.batch_active < self.batch_limit
            if self.interactive.queued and not (
                batch_ok and self.batch_every and self.since_batch >= self.batch_every
            ):
                queue = self.interactive
            elif batch_ok:
                queue = self.batch
            else:
                return
            waiter = queue.pop()
            if waiter is None:
                continue  # only cancelled waiters were left; the counts are now right
            if queue is self.batch:
                self.batch_active += 1
                self.since_batch = 0
            elif self.batch.queued:
                self.since_batch += 1
            self.active += 1
            now = self.clock()
            waited = now - waiter.enqueued
            self.queued_count[waiter.lane] += 1
            self.wait_sum[waiter.lane] += waited
            self.waits[waiter.lane][bisect.bisect_left(_WAIT_BUCKETS, waited)] += 1
            waiter.future.set_result(Slot(self, waiter.lane, now, waited))

    def stats(self) -> LaneStats:
        return LaneStats(
            capacity=self.capacity,
            batch_limit=self.batch_limit,
            in_flight=self.active,
            batch_in_flight=self.batch_active,
            queued_interactive=self.interactive.queued,
            queued_batch=self.batch.queued,
            service_s=self.service_s,
            shed=dict(self.shed),
        )


class Lanes:
    """Concurrency caps and priority lanes for the model groups of one runtime.

    Use it as the request-path stage right before the gateway (`handle`), or take
    slots directly with `acquire()` / `slot()`. Groups absent from `capacities`
    are not limited.
    """

    def __init__(
        self,
        capacities: Mapping[str, int | None],
        *,
        interactive: LaneLimits = DEFAULT_INTERACTIVE,
        batch: LaneLimits = DEFAULT_BATCH,
        max_queued: int | None = None,
        interactive_reserve: float = 0.25,
        batch_every: int = 0,
        weights: Mapping[str, float] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Lanes for the model groups in `capacities` (calls in flight at once, per group;
        None: not capped, only counted for the gauges).

        `interactive`, `batch`: each lane's queue bounds (per group). `max_queued`: both
        lanes together, per group; an interactive arrival that finds it reached displaces
        a batch waiter.
        `interactive_reserve`: the share of each group's slots batch may not hold
        (rounded up; batch keeps at least one slot). `batch_every`: while both lanes
        wait, batch gets at least one grant after this many interactive grants (0:
        strict priority). `weights`: each tenant's share within a lane (default 1).
        `registry`: where to export the lane metrics. `clock`: what waits and service
        times are measured by (the max_wait_s timers are the event loop's); a test's
        virtual time, say.
        """
        if not 0.0 <= interactive_reserve < 1.0:
            raise ValueError("interactive_reserve must be in [0, 1)")
        if batch_every < 0:
            raise ValueError("batch_every must be >= 0")
        self._weights = dict(weights or {})
        for tenant, weight in self._weights.items():
            if not weight > 0:
                raise ValueError(f"weight of tenant '{tenant}' must be > 0")
        self._groups: dict[str, _Group] = {}
        for name, capacity in capacities.items():
            if capacity is not None and capacity < 1:
                raise ValueError(f"capacity of model group '{name}' must be >= 1")
            batch_limit = sys.maxsize
            if capacity is not None:
                batch_limit = max(1, capacity - math.ceil(capacity * interactive_reserve))
            self._groups[name] = _Group(
                name,
                capacity,
                batch_limit=batch_limit,
                interactive=interactive,
                batch=batch,
                max_queued=max_queued,
                batch_every=batch_every,
                weights=self._weights,
                clock=clock,
            )
        if registry is not None:
            registry.register(_Collector(self._groups))

    def __contains__(self, group: str) -> bool:
        """Whether `group`'s concurrency is capped."""
        state = self._groups.get(group)
        return state is not None and state.limited

    async def acquire(self, group: str, tenant: str, priority: Priority = "interactive") -> Slot:
        """A slot in `group` for `tenant`, at once if one is free, else after queueing.

        Raises `OverloadedError` if the call is shed. The caller must `release()` the
        slot. For a group without a capacity the slot is unlimited.
        """
        state = self._groups.get(group)
        if state is None:
            return Slot(None, priority, 0.0, 0.0)
        slot = state.try_acquire(priority)
        if slot is None:
            slot = await state.wait(tenant, priority)
        return slot

    @asynccontextmanager
    async def slot(
        self, group: str, tenant: str, priority: Priority = "interactive"
    ) -> AsyncIterator[Slot]:
        """`acquire()` as a context: the slot is released however the block ends."""
        held = await self.acquire(group, tenant, priority)
        try:
            yield held
        finally:
            held.release()

    async def handle(self, call: Call, call_next: Handler) -> Result:
        """The stage: hold a slot of `call.request.model` until the answer is complete.

        The lane is `call.annotations["priority"]` (absent: interactive). A stream
        keeps its slot until it ends, fails or is closed.
        """
        state = self._groups.get(call.request.model)
        if state is None:
            return await call_next(call)
        lane = lane_of(call.annotations.get("priority"))
        slot = state.try_acquire(lane)
        if slot is None:
            slot = await state.wait(call.tenant, lane)
        try:
            result = await call_next(call)
        except BaseException:
            slot.release()
            raise
        if slot.waited_s:
            result.info["queue_wait_s"] = slot.waited_s
        if isinstance(result, ChatStream):
            result.on_finish(slot.finish)
        else:
            slot.release()
        return result

    async def handle_embedding(
        self, call: EmbeddingCall, call_next: EmbeddingHandler
    ) -> EmbeddingResponse:
        """The stage for an embeddings call: a slot of its group while it is answered."""
        priority = lane_of(call.annotations.get("priority"))
        async with self.slot(call.request.model, call.tenant, priority) as slot:
            response = await call_next(call)
        if slot.waited_s:
            response.info["queue_wait_s"] = slot.waited_s
        return response

    def stats(self, group: str) -> LaneStats:
        """The state of `group`'s lanes (KeyError if it is not a model group; a group
        without a cap has the capacity `sys.maxsize`)."""
        return self._groups[group].stats()


class _Collector:
    """Exports the lanes' counters at scrape time."""

    def __init__(self, groups: Mapping[str, _Group]) -> None:
        self._groups = groups

    def collect(self) -> Iterable[Metric]:
        wait = HistogramMetricFamily(
            "areion_lane_queue_wait_seconds",
            "Time a call waited for a slot of its model group (0 when admitted at once).",
            labels=("model", "lane"),
        )
        queued = GaugeMetricFamily(
            "areion_lane_queued", "Calls waiting for a slot.", labels=("model", "lane")
        )
        in_flight = GaugeMetricFamily(
            "areion_lane_in_flight", "Slots held.", labels=("model", "lane")
        )
        capacity = GaugeMetricFamily(
            "areion_lane_capacity", "Slots of the model group.", labels=("model",)
        )
        shed = CounterMetricFamily(
            "areion_lane_shed",
            "Calls refused with 503 because the model group was overloaded.",
            labels=("model", "lane", "reason"),
        )
        for name, group in self._groups.items():
            if group.limited:
                capacity.add_metric([name], group.capacity)
            for queue in (group.interactive, group.batch):
                lane = queue.name
                queued.add_metric([name, lane], queue.queued)
                held = group.batch_active if lane == "batch" else group.active - group.batch_active
                in_flight.add_metric([name, lane], held)
                immediate = group.immediate[lane]
                cumulative = immediate
                buckets: list[tuple[str, float]] = []
                for bound, count in zip(_WAIT_BUCKETS, group.waits[lane], strict=False):
                    cumulative += count
                    buckets.append((repr(bound), cumulative))
                buckets.append(("+Inf", immediate + group.queued_count[lane]))
                wait.add_metric([name, lane], buckets, group.wait_sum[lane])
            for (lane, reason), count in group.shed.items():
                shed.add_metric([name, lane, reason], count)
        return [wait, queued, in_flight, capacity, shed]
