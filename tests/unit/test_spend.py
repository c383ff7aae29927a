"""A budgeted stream's `OutputGuard`, against a real `Hold` over `MemoryCounters`."""

from __future__ import annotations

import calendar
import functools

import pytest

from areion.config import TenantConfig
from areion.control.budgets import Windows
from areion.control.holds import Hold
from areion.gateway.spend import OutputGuard
from areion.pricing import Price
from areion.store.counters import BudgetState, MemoryCounters
from areion.types import StreamChunk

NOON = calendar.timegm((2025, 1, 31, 12, 0, 0))
PRICE = Price(input=0.0, output=1_000_000.0)  # $1 per output token: easy sums


async def hold(budget: float, reserved: float, *, cap: int | None = None) -> Hold:
    counters = MemoryCounters()
    windows = Windows([TenantConfig(name="acme", budget_usd_per_day=budget)]).of("acme", NOON)
    for window in windows:
        await counters.seed(window.key, 0.0)
    ok, _ = await counters.reserve([w.reservation(reserved) for w in windows])
    assert ok

    async def reserve(usd: float, held: float) -> tuple[bool, list[BudgetState]]:
        return await counters.reserve([w.reservation(usd) for w in windows])

    return Hold(
        counters,
        windows,
        reserve=reserve,
        reserved=reserved,
        prompt_tokens=0,
        output_tokens=int(reserved),
        max_output_tokens=cap,
        clock=functools.partial(float, NOON),
    )


def word(text: str = " word") -> StreamChunk:
    return StreamChunk(id="c", model="m", created=0, content=text)


async def read(guard: OutputGuard, words: int) -> int:
    """Feed `words` one-token chunks as the gateway does; how many were read."""
    for read in range(1, words + 1):
        if guard.passes(word()) and not await guard.extend():
            return read
    return words


async def test_a_stream_is_covered_as_it_grows_while_the_budget_allows() -> None:
    h = await hold(budget=1000, reserved=10)
    claim = h.claim()
    assert await claim.cover(10)
    guard = OutputGuard(claim, PRICE, prompt_tokens=0, cap=None)
    assert guard.covered == 10
    assert await read(guard, 500) == 500
    assert h.reserved >= 500 and h.claimed == claim.amount


async def test_a_stream_stops_before_it_can_outgrow_the_budget() -> None:
    h = await hold(budget=100, reserved=10)
    claim = h.claim()
    assert await claim.cover(10)
    guard = OutputGuard(claim, PRICE, prompt_tokens=0, cap=None)
    stopped = await read(guard, 5000)
    assert stopped < 100  # never read past what the budget covers
    assert h.reserved <= 100


async def test_max_tokens_covered_needs_no_more_budget_and_stops_an_upstream_ignoring_it() -> None:
    h = await hold(budget=60, reserved=50, cap=50)
    claim = h.claim()
    assert await claim.cover(50)
    guard = OutputGuard(claim, PRICE, prompt_tokens=0, cap=50)
    assert await read(guard, 50) == 50  # within max_tokens: read without asking for more
    h2 = await hold(budget=1000, reserved=50, cap=50)
    claim2 = h2.claim()
    assert await claim2.cover(50)
    guard2 = OutputGuard(claim2, PRICE, prompt_tokens=0, cap=50)
    stopped = await read(guard2, 5000)
    assert 50 < stopped <= 50 * 1.25 + 16 and guard2.past_cap


async def test_a_failed_attempt_gives_its_cover_back() -> None:
    h = await hold(budget=100, reserved=30)
    claim = h.claim()
    assert await claim.cover(30)
    await claim.release()
    assert h.reserved == pytest.approx(0) and h.claimed == pytest.approx(0)
    assert await claim.cover(90)  # the fallback may have what the first try held
    assert not await h.claim().cover(20)
