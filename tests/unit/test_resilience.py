"""The circuit breaker's state machine and retry backoff, with explicit clocks; call
deadlines."""

from __future__ import annotations

import asyncio
import random
import statistics

import pytest

from areion.gateway.resilience import BreakerState, CircuitBreaker, Deadline, backoff_delay


def _breaker(threshold: int = 3, reset: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=threshold, reset_timeout=reset)


def _open(breaker: CircuitBreaker, now: float) -> None:
    for _ in range(breaker.threshold):
        breaker.record_failure(now)
    assert breaker.state is BreakerState.OPEN


# --- circuit breaker --------------------------------------------------------------


def test_new_breaker_lets_every_call_through() -> None:
    breaker = _breaker()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.available(0.0)
    assert all(breaker.acquire(0.0) for _ in range(100))
    assert breaker.retry_in(0.0) == 0.0


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = _breaker(threshold=3)
    breaker.record_failure(1.0)
    breaker.record_failure(1.1)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire(1.2)
    breaker.record_failure(1.2)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.available(1.3)
    assert not breaker.acquire(1.3)


def test_a_success_resets_the_failure_count() -> None:
    breaker = _breaker(threshold=3)
    breaker.record_failure(1.0)
    breaker.record_failure(2.0)
    breaker.record_success()
    breaker.record_failure(3.0)
    breaker.record_failure(4.0)
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(5.0)
    assert breaker.state is BreakerState.OPEN


def test_open_refuses_until_reset_timeout() -> None:
    breaker = _breaker(reset=10.0)
    _open(breaker, now=100.0)
    for now in (100.0, 105.0, 109.999):
        assert not breaker.available(now)
        assert not breaker.acquire(now)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in(100.0) == pytest.approx(10.0)
    assert breaker.retry_in(104.0) == pytest.approx(6.0)
    assert breaker.retry_in(110.0) == 0.0
    assert breaker.retry_in(500.0) == 0.0
    assert breaker.available(110.0)


def test_exactly_one_caller_gets_the_half_open_probe() -> None:
    breaker = _breaker(reset=10.0)
    _open(breaker, now=0.0)
    grants = [breaker.acquire(10.0 + i * 0.001) for i in range(50)]
    assert grants == [True] + [False] * 49
    assert breaker.state is BreakerState.HALF_OPEN
    # while the probe is out, nobody else is offered the deployment
    assert not breaker.available(11.0)


def test_probe_success_closes() -> None:
    breaker = _breaker(threshold=2, reset=10.0)
    _open(breaker, now=0.0)
    assert breaker.acquire(10.0)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.acquire(10.0) for _ in range(5))
    # the count starts afresh: one failure does not re-open
    breaker.record_failure(11.0)
    assert breaker.state is BreakerState.CLOSED


def test_probe_failure_reopens_with_a_fresh_timeout() -> None:
    breaker = _breaker(threshold=5, reset=10.0)
    _open(breaker, now=0.0)
    assert breaker.acquire(12.0)
    breaker.record_failure(15.0)  # one failure is enough in half-open
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in(15.0) == pytest.approx(10.0)
    assert not breaker.acquire(24.9)
    assert breaker.acquire(25.0)
    assert not breaker.acquire(25.0)


def test_release_frees_the_probe_for_another_caller() -> None:
    breaker = _breaker(reset=10.0)
    _open(breaker, now=0.0)
    assert breaker.acquire(10.0)
    assert not breaker.acquire(10.5)
    breaker.release()  # the probe was cancelled: no verdict
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.available(10.6)
    assert breaker.acquire(10.6)
    assert not breaker.acquire(10.7)


def test_release_in_closed_state_changes_nothing() -> None:
    breaker = _breaker(threshold=2)
    breaker.record_failure(0.0)
    breaker.release()
    breaker.record_failure(0.1)
    assert breaker.state is BreakerState.OPEN


# --- backoff ----------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 8, 15])
def test_backoff_stays_within_full_jitter_bounds(attempt: int) -> None:
    rng = random.Random(attempt)
    base, cap = 0.05, 2.0
    ceiling = min(cap, base * 2**attempt)
    draws = [backoff_delay(attempt, base=base, cap=cap, rng=rng) for _ in range(2_000)]
    assert all(0.0 <= d <= ceiling for d in draws)
    # full jitter: the draws spread over the whole interval, not a fixed delay
    assert min(draws) < 0.1 * ceiling
    assert max(draws) > 0.9 * ceiling


def test_backoff_grows_with_the_attempt_until_the_cap() -> None:
    rng = random.Random(42)
    base, cap = 0.05, 2.0
    means = [
        statistics.fmean(backoff_delay(a, base=base, cap=cap, rng=rng) for _ in range(2_000))
        for a in range(7)
    ]
    # the ceilings are 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0 (capped): means near half
    assert means == sorted(means)
    assert means[0] == pytest.approx(0.025, rel=0.1)
    assert means[5] == pytest.approx(0.8, rel=0.1)
    assert means[6] == pytest.approx(1.0, rel=0.1)


def test_backoff_is_reproducible_with_a_seed() -> None:
    first = [backoff_delay(3, base=0.1, cap=5, rng=random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1


def test_zero_base_means_no_wait() -> None:
    rng = random.Random(0)
    assert all(backoff_delay(a, base=0.0, cap=2.0, rng=rng) == 0.0 for a in range(10))


# --- Deadline ----------------------------------------------------------------------------


async def test_a_deadline_that_passes_cancels_the_work_and_says_it_was_its_own() -> None:
    deadline = Deadline(0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(30)
    assert deadline.end()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # taken back: the task goes on
    assert not deadline.end()  # once
    await asyncio.sleep(0)


async def test_a_deadline_ended_in_time_never_fires() -> None:
    deadline = Deadline(0.02)
    assert not deadline.end()
    await asyncio.sleep(0.1)  # would be cancelled, had the timer been left


async def test_a_cancellation_from_elsewhere_is_not_the_deadlines() -> None:
    async def guarded() -> str:
        deadline = Deadline(30)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError as error:
            return "timed out" if deadline.caused(error) else "cancelled"
        finally:
            deadline.end()
        return "done"

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "cancelled"


async def test_a_deadline_and_another_cancellation_together_propagate_the_other() -> None:
    async def guarded() -> str:
        deadline = Deadline(0.01)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # the deadline has fired by now: cancelled twice
            return "?"
        finally:
            raised_by_deadline = deadline.end()
            assert not raised_by_deadline
        return "done"

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)
    task.cancel()  # cancelled from outside first; the deadline fires while it is handled
    with pytest.raises(asyncio.CancelledError):
        await task
