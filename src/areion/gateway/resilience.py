"""Retry timing, call deadlines and the per-deployment circuit breaker."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from enum import Enum

__all__ = ["BreakerState", "CircuitBreaker", "Deadline", "backoff_delay"]


class Deadline:
    """What `asyncio.timeout` does for the task that makes it, without its async context
    manager: a timer that cancels the task after `seconds`, and `end()` to say, once
    the guarded work is over, whether a cancellation was that timer's. In Python 3.11
    `asyncio.timeout` costs a chat call ~27k instructions of the event loop, 4% of it
    (`bench/hot_path.py --callgrind`); this, a timer and two calls.

        deadline = Deadline(5.0)
        try:
            return await work()
        except asyncio.CancelledError as error:
            if deadline.caused(error):
                raise TimeoutError from None
            raise
        finally:
            deadline.end()
    """

    __slots__ = ("_cancelling", "_fired", "_task", "_timer")

    def __init__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a Deadline must be made inside a task")
        self._task = task
        self._cancelling = task.cancelling()  # cancellations asked for before this one
        self._fired = False
        self._timer: asyncio.TimerHandle | None = loop.call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._fired = True
        self._task.cancel()

    def end(self) -> bool:
        """Stop the timer (again: no-op). True if it fired and the task's cancellation
        is its own alone (taken back, as `asyncio.timeout` takes it back); False if it
        did not fire, or if the task was also cancelled by someone else."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
            return False
        if not self._fired:
            return False
        self._fired = False  # taken back once
        return self._task.uncancel() <= self._cancelling

    def caused(self, error: BaseException) -> bool:
        """`end()`, and whether `error`, raised by the guarded work, is this deadline's
        cancellation (and no one else's)."""
        return self.end() and isinstance(error, asyncio.CancelledError)


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter (AWS architecture blog, 2015).

    Full jitter spreads retries of many clients that failed together, so they do
    not hit the recovering deployment in lockstep.
    """
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops sending calls to a deployment that keeps failing, then probes it.

    closed -> open after `failure_threshold` consecutive failures; open -> half-open
    once `reset_timeout` has passed, letting exactly one probe call through; the
    probe's success closes the breaker, its failure opens it for another period.
    """

    __slots__ = (
        "_failures",
        "_opened_at",
        "_probe_in_flight",
        "on_change",
        "reset_timeout",
        "state",
        "threshold",
    )

    def __init__(self, *, failure_threshold: int, reset_timeout: float) -> None:
        self.threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.on_change: Callable[[CircuitBreaker], None] | None = None
        """Called when calls here open or close the breaker (other replicas are told)."""

    def available(self, now: float) -> bool:
        """Whether a call may be sent now (without claiming the half-open probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now >= self._opened_at + self.reset_timeout
        return not self._probe_in_flight

    def acquire(self, now: float) -> bool:
        """Claim the right to send one call; in half-open only one caller gets it."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now < self._opened_at + self.reset_timeout:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def release(self) -> None:
        """Give back a probe that ended without a verdict (cancelled, or a caller error)."""
        self._probe_in_flight = False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            if self.on_change is not None:
                self.on_change(self)

    def record_failure(self, now: float) -> None:
        self._probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        self._failures += 1
        if self._failures >= self.threshold:
            self._open(now)

    def retry_in(self, now: float) -> float:
        """Seconds until the breaker lets a probe through (0 when it does now)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.reset_timeout - now)
        return 0.0

    @property
    def opens_again_at(self) -> float:
        """While open: the `now` (monotonic) at which a probe may go through."""
        return self._opened_at + self.reset_timeout

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        if self.on_change is not None:
            self.on_change(self)

    def force_open(self, until: float) -> None:
        """Open until `until` (monotonic), as another replica's breaker did; not reported
        back. An earlier reopening than this breaker's own is not taken."""
        if self.state is BreakerState.OPEN and self.opens_again_at >= until:
            return
        self.state = BreakerState.OPEN
        self._opened_at = until - self.reset_timeout
        self._probe_in_flight = False

    def force_close(self) -> None:
        """Close, as another replica's probe found the deployment healthy; not reported back."""
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._probe_in_flight = False
