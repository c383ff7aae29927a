"""The USD cost of a call's usage."""

from __future__ import annotations

import pytest

from areion.pricing import Price, cost, default_price, round_usd, usd_text
from areion.types import Usage

GPT_4O = Price(input=2.50, output=10.00, cached_input=1.25)


def _approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-15)


def test_uncached_call() -> None:
    usage = Usage(prompt_tokens=1_000, completion_tokens=500)
    # 1000 * 2.50/1M + 500 * 10.00/1M
    assert cost(usage, GPT_4O) == _approx(0.0025 + 0.005)


def test_cached_tokens_are_billed_at_the_cached_rate() -> None:
    usage = Usage(prompt_tokens=10_000, completion_tokens=200, cached_tokens=8_000)
    # 2000 uncached at 2.50, 8000 cached at 1.25, 200 output at 10.00 (per 1M)
    expected = (2_000 * 2.50 + 8_000 * 1.25 + 200 * 10.00) / 1_000_000
    assert expected == _approx(0.017)
    assert cost(usage, GPT_4O) == _approx(0.017)


def test_cache_makes_the_same_call_cheaper() -> None:
    cold = Usage(prompt_tokens=10_000, completion_tokens=200)
    warm = Usage(prompt_tokens=10_000, completion_tokens=200, cached_tokens=8_000)
    assert cost(cold, GPT_4O) - cost(warm, GPT_4O) == _approx(8_000 * (2.50 - 1.25) / 1e6)


def test_no_cached_rate_bills_cached_tokens_as_input() -> None:
    price = Price(input=10.00, output=30.00)
    cached = Usage(prompt_tokens=4_000, completion_tokens=1_000, cached_tokens=3_000)
    uncached = Usage(prompt_tokens=4_000, completion_tokens=1_000)
    assert cost(cached, price) == _approx((4_000 * 10.00 + 1_000 * 30.00) / 1e6)
    assert cost(cached, price) == cost(uncached, price)


def test_free_cached_rate() -> None:
    price = Price(input=1.00, output=2.00, cached_input=0.0)
    usage = Usage(prompt_tokens=1_000, completion_tokens=0, cached_tokens=1_000)
    assert cost(usage, price) == 0.0


def test_cached_tokens_above_prompt_tokens_are_clamped() -> None:
    # A provider that reports more cached than prompt tokens must not yield a
    # negative uncached count (which would lower the bill below the cached price).
    usage = Usage(prompt_tokens=1_000, completion_tokens=100, cached_tokens=5_000)
    expected = (1_000 * 1.25 + 100 * 10.00) / 1_000_000
    assert cost(usage, GPT_4O) == _approx(expected)
    full_hit = Usage(prompt_tokens=1_000, completion_tokens=100, cached_tokens=1_000)
    assert cost(usage, GPT_4O) == cost(full_hit, GPT_4O)


def test_reasoning_tokens_are_billed_as_output_once() -> None:
    # reasoning_tokens are part of completion_tokens, not on top of them
    plain = Usage(prompt_tokens=100, completion_tokens=1_000)
    thinking = Usage(prompt_tokens=100, completion_tokens=1_000, reasoning_tokens=800)
    assert cost(thinking, GPT_4O) == cost(plain, GPT_4O)
    assert cost(thinking, GPT_4O) == _approx((100 * 2.50 + 1_000 * 10.00) / 1e6)


def test_zero_usage_costs_nothing() -> None:
    assert cost(Usage(), GPT_4O) == 0.0


def test_default_price_of_known_and_unknown_models() -> None:
    assert default_price("gpt-4o-mini") == Price(input=0.15, output=0.60, cached_input=0.075)
    assert default_price("sim-strong").output == 10.00
    unknown = default_price("my-local-llama")
    assert cost(Usage(prompt_tokens=10**6, completion_tokens=10**6), unknown) == 0.0


def test_money_is_shown_rounded_and_as_plain_decimals() -> None:
    total = 0.0
    for _ in range(3):
        total += (100 * 0.15 + 20 * 0.60) / 1e6
    assert total == 8.099999999999999e-05
    assert round_usd(total) == 8.1e-05
    assert usd_text(total) == "0.000081"
    assert usd_text(0.0) == "0" and usd_text(12.5) == "12.5"
    assert usd_text(1.6e-10) == "0.0000000002"  # the smallest amount shown
