"""`areion_desired_replicas`: how many replicas the load of the next minutes needs.

    desired = ceil(forecast arrival rate x p95 service time / target_concurrency_per_replica)

clamped to [min_replicas, max_replicas], and never below what is in flight now:
ceil(in flight / target), and at least 1 while any call is in flight (an autoscaler
reading 0 would scale to zero under a running call).

`ScalingSignal` is the first stage of the request path: it counts each arrival in its
minute (one dict increment), and times each call until its answer is complete (a
stream: until it ends). In the background it adds its counts to the store every
`flush_s` and reads back every replica's, so each replica forecasts from the
arrivals of all of them, and a restarted one still knows the daily profile. The
gauge is computed at scrape time by a collector on the runtime's registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import GaugeMetricFamily

from areion.config import ScalingConfig
from areion.pipeline import Call, EmbeddingCall, EmbeddingHandler, Handler, Result
from areion.store import Store
from areion.streaming import ChatStream
from areion.telemetry.forecast import BUCKET_S, ArrivalForecaster, Forecast, bucket_of
from areion.types import EmbeddingResponse

__all__ = ["DesiredReplicas", "ScalingSignal", "ServiceTimes"]

log = logging.getLogger("areion.scaling")

# Minutes read back from the store on every sync: other replicas' counts of the last
# minutes land up to one flush later than ours.
_REREAD_S = 10 * BUCKET_S


class ServiceTimes:
    """The durations of this replica's latest calls, and their p95."""

    def __init__(self, *, size: int = 1024, default_s: float = 1.0) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.default_s = default_s
        """What `p95` is before any call has finished."""

    def add(self, seconds: float) -> None:
        self._samples.append(max(0.0, seconds))

    def __len__(self) -> int:
        return len(self._samples)

    def p95(self) -> float:
        """The 95th percentile of the kept durations (nearest rank)."""
        if not self._samples:
            return self.default_s
        ordered = sorted(self._samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(slots=True, kw_only=True)
class DesiredReplicas:
    """The signal and what it was computed from."""

    replicas: int
    """How many replicas to run."""
    forecast: Forecast
    """The arrival rate expected over the horizon."""
    service_time_s: float
    """The p95 service time used."""
    in_flight: int
    """Calls in flight (this replica's, plus others' upstream calls in distributed mode)."""


class ScalingSignal:
    """The arrival-counting stage, its store sync, and the scaling gauges."""

    def __init__(
        self,
        config: ScalingConfig,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        elsewhere: Callable[[], int] | None = None,
    ) -> None:
        """`clock`: Unix time (arrival minutes, the profile's wall clock, durations).
        `elsewhere`: calls other replicas have in flight, as far as this one knows."""
        self.config = config
        self.store = store
        self.clock = clock
        self.elsewhere = elsewhere
        self.forecaster = ArrivalForecaster(
            history_days=config.history_days, timezone=config.timezone
        )
        self.times = ServiceTimes(default_s=config.service_time_s)
        self.in_flight = 0
        """This replica's calls between arrival and complete answer."""
        # Arrivals not yet added to the store; then those being added.
        self._pending: dict[int, int] = {}
        self._sending: dict[int, int] = {}
        self._loaded = False
        # One sync at a time: the background loop's and a caller's (aclose, a test).
        self._syncing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._warned = 0.0

    # -- the stage ------------------------------------------------------------------

    def arrive(self, count: int = 1) -> float:
        """Count `count` arrivals now (the stage counts each call; a replay counts a
        minute's at once); returns the clock's time."""
        now = self.clock()
        start = int(now // BUCKET_S) * BUCKET_S
        self._pending[start] = self._pending.get(start, 0) + count
        return now

    def _done(self, started: float, error: BaseException | None) -> None:
        self.in_flight -= 1
        # A refusal (4xx: limits, budgets, bad requests) took no serving time worth
        # counting; an upstream failure (5xx, timeouts) did.
        if error is None or getattr(error, "status", 500) >= 500:
            self.times.add(self.clock() - started)

    async def handle(self, call: Call, call_next: Handler) -> Result:
        """Count the arrival; time the call until its answer is complete."""
        started = self.arrive()
        self.in_flight += 1
        try:
            result = await call_next(call)
        except BaseException as error:
            self._done(started, error)
            raise
        if isinstance(result, ChatStream):
            result.on_finish(lambda _stream, error: self._done(started, error))
        else:
            self._done(started, None)
        return result

    async def handle_embedding(
        self, call: EmbeddingCall, call_next: EmbeddingHandler
    ) -> EmbeddingResponse:
        """The same for an embeddings call."""
        started = self.arrive()
        self.in_flight += 1
        try:
            response = await call_next(call)
        except BaseException as error:
            self._done(started, error)
            raise
        self._done(started, None)
        return response

    # -- the signal -----------------------------------------------------------------

    def _unsent(self) -> dict[int, int]:
        unsent = dict(self._pending)
        for start, count in self._sending.items():
            unsent[start] = unsent.get(start, 0) + count
        return unsent

    def desired(self) -> DesiredReplicas:
        """The signal now."""
        config = self.config
        forecast = self.forecaster.forecast(self.clock(), config.horizon_s, extra=self._unsent())
        service = self.times.p95()
        in_flight = self.in_flight + (self.elsewhere() if self.elsewhere is not None else 0)
        target = config.target_concurrency_per_replica
        # A hair under an integer is that integer: 24 calls / 8 per replica is 3, not 4.
        replicas = max(
            math.ceil(forecast.rate * service / target - 1e-9),
            math.ceil(in_flight / target - 1e-9),
        )
        replicas = min(replicas, config.max_replicas)
        replicas = max(replicas, config.min_replicas, 1 if in_flight > 0 else 0)
        return DesiredReplicas(
            replicas=replicas, forecast=forecast, service_time_s=service, in_flight=in_flight
        )

    def register(self, registry: CollectorRegistry) -> None:
        """Export the gauges on `registry`, computed at each scrape."""
        registry.register(_Collector(self))

    # -- the store ------------------------------------------------------------------

    async def load(self) -> None:
        """Read the last `history_days` (and the day before, for the first hours of
        the profile's earliest day) of every replica's arrivals."""
        since = bucket_of(self.clock()) - (self.config.history_days + 1) * 86_400
        self.forecaster.replace(await self.store.arrivals(since=since), since=since)
        self._loaded = True

    async def sync(self) -> None:
        """Add this replica's counts to the store; read back everyone's recent minutes.

        Counts the store did not take are kept for the next sync."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        if not self._loaded:
            await self.load()
        now = self.clock()
        forget = bucket_of(now) - (self.config.history_days + 1) * 86_400
        self._sending, self._pending = self._pending, {}
        try:
            await self.store.add_arrivals(self._sending, forget_before=forget)
        except BaseException:
            for start, count in self._sending.items():
                self._pending[start] = self._pending.get(start, 0) + count
            self._sending = {}
            raise
        since = bucket_of(now) - _REREAD_S
        fresh = await self.store.arrivals(since=since)
        self._sending = {}
        self.forecaster.replace(fresh, since=since)
        self.forecaster.forget(forget)

    def start(self) -> None:
        """Sync every `flush_s` in the background (in the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception as error:  # the store is down: keep counting, try again
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    log.warning("scaling: arrivals could not be synced with the store: %s", error)
            await asyncio.sleep(self.config.flush_s)

    async def aclose(self) -> None:
        """Stop syncing; hand what was counted to the store."""
        if self._task is not None:
            self._task.cancel()
            # A task of another event loop (the runtime was used from several) cannot
            # be awaited here; cancelled, it ends when that loop next runs.
            if self._task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._pending or self._sending:
            try:
                await self.sync()
            except Exception as error:
                log.warning("scaling: the last arrivals could not be stored: %s", error)


class _Collector:
    """Exports the signal at scrape time."""

    def __init__(self, signal: ScalingSignal) -> None:
        self._signal = signal

    def collect(self) -> Iterable[Metric]:
        found = self._signal.desired()
        desired = GaugeMetricFamily(
            "areion_desired_replicas",
            "Replicas the forecast load of the next scaling.horizon_s needs: forecast "
            "arrival rate x p95 service time / target concurrency per replica, within "
            "[min_replicas, max_replicas], never 0 while calls are in flight.",
            value=found.replicas,
        )
        rate = GaugeMetricFamily(
            "areion_arrival_rate_forecast",
            "Peak arrival rate (requests per second, every replica's) expected over the "
            "scaling horizon.",
            value=found.forecast.rate,
        )
        service = GaugeMetricFamily(
            "areion_service_time_p95_seconds",
            "p95 of this replica's latest calls' durations, as the scaling signal uses it.",
            value=found.service_time_s,
        )
        return [desired, rate, service]
