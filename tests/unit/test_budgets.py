"""Budget windows, reservations (`MemoryCounters.reserve/settle/seed`) and admission."""

from __future__ import annotations

import asyncio
import calendar

import pytest

from areion import Runtime
from areion.config import LimitsConfig, TenantConfig, parse_config
from areion.control import Admission, PriceBound
from areion.control.admission import SpendSince
from areion.control.budgets import Windows, price_bound
from areion.errors import BudgetExceededError
from areion.pipeline import Call, Handler, Result
from areion.pricing import Price
from areion.store.counters import MemoryCounters
from areion.types import ChatRequest, ChatResponse, Choice, Message, Usage

CANDIDATES = {
    "small": {"input": 1.0, "output": 2.0},
    "medium": {"input": 3.0, "output": 5.0},
    "strong": {"input": 10.0, "output": 30.0},
}
ACME = TenantConfig(name="acme", budget_usd_per_day=1.0, budget_usd_per_month=20.0)
JAN_31_NOON = calendar.timegm((2025, 1, 31, 12, 0, 0))


def test_windows_are_utc_days_and_months() -> None:
    day, month = Windows([ACME]).of("acme", JAN_31_NOON)
    assert (day.key, day.ends) == (
        "usd:day:acme:2025-01-31",
        calendar.timegm((2025, 2, 1, 0, 0, 0)),
    )
    assert (month.key, month.ends) == ("usd:month:acme:2025-01", day.ends)
    assert Windows.start(month) == calendar.timegm((2025, 1, 1, 0, 0, 0))
    assert Windows.start(day) == calendar.timegm((2025, 1, 31, 0, 0, 0))
    december = Windows([ACME]).of("acme", calendar.timegm((2024, 12, 31, 23, 0, 0)))[1]
    assert december.ends == calendar.timegm((2025, 1, 1, 0, 0, 0))
    assert Windows([ACME]).of("other", JAN_31_NOON) == ()


def test_price_bound_takes_the_dearest_input_and_output() -> None:
    bound = price_bound([Price(input=1.0, output=8.0), Price(input=3.0, output=4.0)])
    assert bound == PriceBound(3.0, 8.0)
    assert bound.cost(1000, 500) == pytest.approx((3000 + 4000) / 1e6)


def _admission(
    counters: MemoryCounters, spend_since: SpendSince | None = None, *, wait_s: float = 0.0
) -> Admission:
    return Admission(
        counters,
        keys=[],
        tenants=[ACME],
        limits=LimitsConfig(default_max_tokens=100, budget_wait_s=wait_s),
        prices={"fast": PriceBound(1.0, 2.0)},  # 100 output tokens: $0.0002
        spend_since=spend_since,
        clock=lambda: JAN_31_NOON,
    )


def _booking(cost: float, release: asyncio.Event | None = None) -> Handler:
    """A terminal that answers for `cost` and books it as accounting would."""

    async def answer(call: Call) -> Result:
        if release is not None:
            await release.wait()
        else:
            await asyncio.sleep(0.01)
        call.annotations["hold"].book(cost)
        return ChatResponse(
            id="x",
            model="m",
            created=0,
            choices=[Choice(message=Message(role="assistant", content="ok"))],
            usage=Usage(prompt_tokens=10, completion_tokens=10),
            deployment="fast/m",
            cost_usd=cost,
        )

    return answer


def _call() -> Call:
    request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
    return Call(request=request, tenant="acme", request_id="r", started=0.0)


async def test_admission_refuses_what_does_not_fit_and_seeds_from_the_ledger() -> None:
    counters = MemoryCounters()
    asked: list[float] = []

    async def spend_since(since: float) -> dict[str, float]:
        asked.append(since)
        return {"acme": 0.9995}

    admission = _admission(counters, spend_since)
    calls = 0
    booking = _booking(0.00003)

    async def answer(call: Call) -> Result:
        nonlocal calls
        calls += 1
        return await booking(call)

    outcomes = await asyncio.gather(
        *(admission.handle(_call(), answer) for _ in range(5)), return_exceptions=True
    )
    # $0.0005 left today: two reservations of ~$0.0002 fit, the third does not.
    assert calls == 2
    refused = [o for o in outcomes if isinstance(o, BudgetExceededError)]
    assert len(refused) == 3 and refused[0].budget == "day"
    # Only the calls in flight stood in the way: the error says so, and to retry soon.
    assert "reserved by calls in flight" in refused[0].message
    assert "budget per day (2025-01-31)" in refused[0].message
    assert refused[0].retry_after is not None and refused[0].retry_after <= 5
    assert counters.spent("usd:day:acme:2025-01-31") == pytest.approx(0.9995 + 0.00006)
    assert sorted(set(asked)) == [
        calendar.timegm((2025, 1, 1, 0, 0, 0)),
        calendar.timegm((2025, 1, 31, 0, 0, 0)),
    ]


async def test_a_call_waits_for_budget_held_by_calls_in_flight() -> None:
    counters = MemoryCounters()

    async def spend_since(since: float) -> dict[str, float]:
        return {"acme": 0.9995}

    admission = _admission(counters, spend_since, wait_s=30.0)
    release = asyncio.Event()
    first = [asyncio.create_task(admission.handle(_call(), _booking(0.00003, release)))]
    first.append(asyncio.create_task(admission.handle(_call(), _booking(0.00003, release))))
    for _ in range(5):
        await asyncio.sleep(0)
    # Two calls hold $0.0004 of the $0.0005 left; a third must wait, not be refused.
    third = asyncio.create_task(admission.handle(_call(), _booking(0.00003)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not third.done()
    release.set()
    await asyncio.gather(*first)
    assert isinstance(await third, ChatResponse)
    assert counters.spent("usd:day:acme:2025-01-31") == pytest.approx(0.9995 + 0.00009)


async def test_a_call_past_the_budget_is_refused_at_once_with_the_renewal_time() -> None:
    counters = MemoryCounters()

    async def spend_since(since: float) -> dict[str, float]:
        return {"acme": 0.99995}  # less than one call's estimate left

    admission = _admission(counters, spend_since, wait_s=30.0)
    with pytest.raises(BudgetExceededError, match=r"renews in 12\.0 h") as caught:
        await admission.handle(_call(), _booking(0.00003))
    assert caught.value.retry_after == pytest.approx(12 * 3600)


async def test_a_per_request_cap_refuses_before_anything_is_taken() -> None:
    tenant = TenantConfig(name="acme", max_usd_per_request=0.0001, max_tokens_per_request=500)
    admission = Admission(
        MemoryCounters(),
        keys=[],
        tenants=[tenant],
        limits=LimitsConfig(),
        prices={"fast": PriceBound(1.0, 2.0)},
    )
    request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])

    async def never(call: Call) -> Result:
        raise AssertionError("a refused call must not reach the model")

    with pytest.raises(BudgetExceededError, match="max_tokens_per_request") as caught:
        await admission.handle(
            Call(request=request, tenant="acme", request_id="r", started=0), never
        )
    assert caught.value.budget == "request" and caught.value.status == 402
    request.max_tokens = 400
    with pytest.raises(BudgetExceededError, match="max_usd_per_request"):
        await admission.handle(
            Call(request=request, tenant="acme", request_id="r", started=0), never
        )


async def test_a_cascade_reserves_every_attempt_it_may_make() -> None:
    models = [
        {"name": name, "provider": "sim", "model": "sim-fast", "price": price}
        for name, price in CANDIDATES.items()
    ]
    config = parse_config(
        {
            "models": models,
            "store": "sqlite:///:memory:",
            "routes": [
                {
                    "name": "careful",
                    "policy": "cascade",
                    "candidates": ["small", "medium", "strong"],
                },
                {"name": "pick", "policy": "rules", "candidates": ["small", "strong"]},
            ],
            "auth": {"tenants": [{"name": "acme", "budget_usd_per_day": 1.0}]},
        }
    )
    async with Runtime(config) as runtime:
        # Small and medium at once, then perhaps strong: all three may be billed.
        assert runtime.admission.policy(None, "acme", "careful").price == PriceBound(14.0, 37.0)
        # A route that sends a call to one candidate: the dearest of them.
        assert runtime.admission.policy(None, "acme", "pick").price == PriceBound(10.0, 30.0)
