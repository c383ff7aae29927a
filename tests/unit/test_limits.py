"""Token buckets (`MemoryCounters.take/give`) and the rate-limit headers and errors."""

from __future__ import annotations

import pytest

from areion.control.limits import RateLimit, RateReport, refusal
from areion.store.counters import MemoryCounters, Take

RPM = RateLimit(scope="key 'web'", kind="requests", per_minute=60, bucket="rpm:key:web")
TPM = RateLimit(scope="tenant 'acme'", kind="tokens", per_minute=600, bucket="tpm:tenant:acme")


def take(amount: float, per_minute: int = 60, key: str = "b") -> Take:
    return Take(key=key, amount=amount, rate=per_minute / 60, burst=per_minute)


async def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    counters = MemoryCounters()
    for _ in range(60):
        ok, _ = await counters.take([take(1)], now=100.0)
        assert ok
    ok, [state] = await counters.take([take(1)], now=100.0)
    assert not ok and state.retry_after == pytest.approx(1.0)
    ok, [state] = await counters.take([take(1)], now=100.5)
    assert not ok and state.retry_after == pytest.approx(0.5)
    ok, [state] = await counters.take([take(1)], now=101.0)
    assert ok and state.remaining == pytest.approx(0.0)
    assert state.reset == pytest.approx(60.0)  # a minute to be full again
    # Never more than the burst, however long it rests.
    ok, [state] = await counters.take([take(1)], now=10_000.0)
    assert ok and state.remaining == 59


async def test_a_take_is_all_or_nothing_over_its_buckets() -> None:
    counters = MemoryCounters()
    assert (await counters.take([take(50, key="a")], now=0.0))[0]
    ok, states = await counters.take([take(5, key="b"), take(20, key="a")], now=0.0)
    assert not ok
    assert states[0].retry_after == 0 and states[1].retry_after == pytest.approx(10.0)
    ok, states = await counters.take([take(60, key="b")], now=0.0)
    assert ok  # the refused take left "b" untouched


async def test_give_refunds_up_to_the_burst_and_charges_into_debt() -> None:
    counters = MemoryCounters()
    await counters.take([take(40, per_minute=600)], now=0.0)
    await counters.give(take(40, per_minute=600), 1000, now=0.0)
    ok, [state] = await counters.take([take(0, per_minute=600)], now=0.0)
    assert state.remaining == 600
    await counters.give(take(0, per_minute=600), -900, now=0.0)  # usage beyond the estimate
    ok, [state] = await counters.take([take(10, per_minute=600)], now=0.0)
    assert not ok and state.remaining == -300
    assert state.retry_after == pytest.approx(31.0)  # (10 + 300) tokens at 10 per second


def test_headers_report_the_tightest_limit_of_each_kind() -> None:
    from areion.store.counters import BucketState

    wide = RateLimit(scope="model 'fast'", kind="tokens", per_minute=60_000, bucket="tpm:m")
    report = RateReport(
        [RPM, TPM, wide],
        [
            BucketState(remaining=59.0, retry_after=0, reset=1.0),
            BucketState(remaining=100.4, retry_after=0, reset=50.0),
            BucketState(remaining=1000.0, retry_after=0, reset=59.0),
        ],
    )
    assert report.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "50s",
    }


def test_a_refusal_names_the_limit_and_when_to_retry() -> None:
    from areion.store.counters import BucketState

    report = RateReport(
        [RPM, TPM],
        [
            BucketState(remaining=10.0, retry_after=0.0, reset=50.0),
            BucketState(remaining=5.0, retry_after=2.25, reset=59.5),
        ],
    )
    error = refusal(report, [1, 27.5])
    assert error.status == 429 and error.type == "tokens" and error.code == "rate_limit_exceeded"
    assert error.message == (
        "Rate limit reached for tenant 'acme' on tokens per minute (TPM): limit 600, "
        "requested 28. Please try again in 2.25s."
    )
    assert error.headers["retry-after"] == "3" and error.headers["retry-after-ms"] == "2250"
    assert error.retry_after == 2.25
