"""The `Counters` contract, run against `MemoryCounters` and `RedisCounters` alike:
token buckets with refill, debt, all-or-nothing takes and reservations, settle, seed."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import AsyncIterator

import pytest

from areion.config import LimitsConfig, TenantConfig
from areion.control import Admission, PriceBound
from areion.errors import BudgetExceededError
from areion.pipeline import Call, Result
from areion.store.counters import Counters, MemoryCounters, Reservation, Settle, Take
from areion.types import ChatRequest, ChatResponse, Choice, Message, Usage
from tests.support import REDIS_URL, eventually, prefixed, require_redis


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters()
        return
    require_redis()
    from areion.store.redis import RedisShared

    shared = RedisShared(prefixed(REDIS_URL))
    try:
        yield shared.counters
    finally:
        await shared.delete_all()
        await shared.aclose()


async def spent(counters: Counters, key: str) -> float:
    value = counters.spent(key)  # type: ignore[attr-defined]
    return value if isinstance(value, float) else float(await value)


def take(amount: float, per_minute: int = 60, key: str = "b") -> Take:
    return Take(key=key, amount=amount, rate=per_minute / 60, burst=per_minute)


async def test_a_bucket_starts_full_and_refills_at_its_rate(counters: Counters) -> None:
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


async def test_a_take_is_all_or_nothing_over_its_buckets(counters: Counters) -> None:
    assert (await counters.take([take(50, key="a")], now=0.0))[0]
    ok, states = await counters.take([take(5, key="b"), take(20, key="a")], now=0.0)
    assert not ok
    assert states[0].retry_after == 0 and states[1].retry_after == pytest.approx(10.0)
    assert [s.remaining for s in states] == [60, 10]
    ok, states = await counters.take([take(60, key="b")], now=0.0)
    assert ok  # the refused take left "b" untouched


async def test_give_refunds_up_to_the_burst_and_charges_into_debt(counters: Counters) -> None:
    await counters.take([take(40, per_minute=600)], now=0.0)
    await counters.give(take(40, per_minute=600), 1000, now=0.0)
    ok, [state] = await counters.take([take(0, per_minute=600)], now=0.0)
    assert state.remaining == 600
    await counters.give(take(0, per_minute=600), -900, now=0.0)  # usage beyond the estimate
    ok, [state] = await counters.take([take(10, per_minute=600)], now=0.0)
    assert not ok and state.remaining == -300
    assert state.retry_after == pytest.approx(31.0)  # (10 + 300) tokens at 10 per second
    assert state.reset == pytest.approx(90.0)
    # The debt is paid back by the refill: 31 s later the take fits.
    ok, [state] = await counters.take([take(10, per_minute=600)], now=31.0)
    assert ok and state.remaining == pytest.approx(0.0)


async def test_a_give_to_an_unknown_bucket_changes_nothing(counters: Counters) -> None:
    # A give follows a take; a bucket unknown by then was forgotten (a restarted Redis),
    # and the next take starts it.
    await counters.give(take(0), -30, now=5.0)
    _, [state] = await counters.take([take(0)], now=5.0)
    assert state.remaining == 60


async def test_a_clock_behind_refills_nothing_twice(counters: Counters) -> None:
    # Replica A (clock at 100) empties the bucket; replica B's clock says 90.
    assert (await counters.take([take(60)], now=100.0))[0]
    ok, [state] = await counters.take([take(1)], now=90.0)
    assert not ok and state.remaining == 0  # B refills nothing: its time is before A's
    await counters.give(take(0), 0, now=95.0)  # nor does a give move the time back
    # At 101 one second has passed since A's take, whoever looks.
    ok, [state] = await counters.take([take(1)], now=101.0)
    assert ok and state.remaining == pytest.approx(0.0)
    ok, _ = await counters.take([take(1)], now=100.5)
    assert not ok


async def test_exact_arithmetic_on_awkward_numbers(counters: Counters) -> None:
    # Values survive the trip to Redis and back bit for bit.
    awkward = Take(key="x", amount=0.1, rate=1 / 3, burst=7.7)
    states = []
    for now in (1.0, 1.1, 1.3, 2.9):
        states.append((await counters.take([awkward], now=now))[1][0])
    memory = MemoryCounters()
    expected = [(await memory.take([awkward], now=now))[1][0] for now in (1.0, 1.1, 1.3, 2.9)]
    assert states == expected


async def test_reservations_never_exceed_the_limit_and_settle_to_real_spend(
    counters: Counters,
) -> None:
    window = Reservation(key="w", amount=0.3, limit=1.0)
    await counters.seed("w", 0.0)
    results = [(await counters.reserve([window]))[0] for _ in range(4)]
    assert results == [True, True, True, False]
    await counters.settle("w", 0.3, 0.1)  # a call that cost less than its estimate
    ok, [state] = await counters.reserve([window])
    assert ok and state.spent == pytest.approx(0.1) and state.reserved == pytest.approx(0.9)
    await counters.settle("w", 5.0, 0.0)  # releasing more than is held leaves none held
    ok, [state] = await counters.reserve([Reservation(key="w", amount=0.0, limit=1.0)])
    assert state.reserved == 0.0


async def test_a_reservation_is_all_or_nothing_over_its_windows(counters: Counters) -> None:
    await counters.seed("day", 0.0)
    await counters.seed("month", 19.9)
    ok, states = await counters.reserve(
        [
            Reservation(key="day", amount=0.2, limit=1.0),
            Reservation(key="month", amount=0.2, limit=20),
        ]
    )
    assert not ok
    assert [(s.spent, s.reserved) for s in states] == [(0.0, 0.0), (19.9, 0.0)]
    ok, [day] = await counters.reserve([Reservation(key="day", amount=1.0, limit=1.0)])
    assert ok and day.reserved == 1.0  # the refused reservation held nothing
    await counters.seed("month", 0.0)  # a known window is not reset by a late seed
    assert await spent(counters, "month") == pytest.approx(19.9)


async def test_an_unknown_window_reserves_nothing_until_it_is_seeded(
    counters: Counters,
) -> None:
    # A window never seeded (or forgotten by a restarted Redis) must not start at zero:
    # it says it is unknown, and takes neither a reservation nor a settlement.
    await counters.seed("known", 0.2)
    ok, states = await counters.reserve(
        [
            Reservation(key="known", amount=0.1, limit=1.0),
            Reservation(key="new", amount=0.1, limit=1.0),
        ]
    )
    assert not ok and [s.known for s in states] == [True, False]
    assert states[0].reserved == 0.0  # nothing held in the known one either
    await counters.settle("new", 0.1, 0.25)  # dropped: the ledger will seed it
    assert await spent(counters, "new") == 0.0
    await counters.seed("new", 0.5)
    ok, states = await counters.reserve([Reservation(key="new", amount=0.5, limit=1.0)])
    assert ok and (states[0].spent, states[0].reserved, states[0].known) == (0.5, 0.5, True)
    await counters.seed("new", 3.0)  # a known window is not reset by a late seed
    assert await spent(counters, "new") == 0.5


async def test_admit_takes_and_reserves_both_or_neither(counters: Counters) -> None:
    await counters.seed("day", 0.5)
    rpm, day = take(1, key="rpm"), Reservation(key="day", amount=0.3, limit=1.0)
    admit = await counters.admit([rpm], [day], now=0.0)
    assert admit.done and admit.buckets[0].remaining == 59
    assert (admit.budgets[0].spent, admit.budgets[0].reserved) == (0.5, 0.3)
    # The window cannot hold a second 0.3: nothing is taken from the bucket either.
    admit = await counters.admit([rpm], [day], now=0.0)
    assert admit.taken and not admit.reserved and not admit.done
    assert admit.buckets[0].remaining == 59 and admit.budgets[0].reserved == 0.3
    _, [bucket] = await counters.take([take(0, key="rpm")], now=0.0)
    assert bucket.remaining == 59
    # The bucket cannot give 60: nothing is reserved either.
    admit = await counters.admit(
        [take(60, key="rpm")], [Reservation(key="day", amount=0.1, limit=1.0)], now=0.0
    )
    assert not admit.taken and admit.reserved and not admit.done
    assert admit.buckets[0].retry_after == pytest.approx(1.0)
    _, [window] = await counters.reserve([Reservation(key="day", amount=0.0, limit=1.0)])
    assert window.reserved == 0.3
    # An unknown window says so, and nothing is taken.
    admit = await counters.admit([rpm], [Reservation(key="new", amount=0.1, limit=1.0)], now=0.0)
    assert admit.taken and not admit.reserved and not admit.budgets[0].known
    # Takes alone and reservations alone are `take` and `reserve`.
    assert (await counters.admit([rpm], [], now=0.0)).done
    assert (await counters.admit([], [Reservation(key="day", amount=0.1, limit=1.0)], 0.0)).done
    _, [bucket] = await counters.take([take(0, key="rpm")], now=0.0)
    assert bucket.remaining == 58


async def test_release_gives_back_and_settles_in_one_step(counters: Counters) -> None:
    await counters.seed("day", 0.0)
    await counters.seed("month", 2.0)
    tpm = take(500, per_minute=1000, key="tpm")
    windows = [Reservation(key=k, amount=0.4, limit=10.0) for k in ("day", "month")]
    assert (await counters.admit([tpm], windows, now=0.0)).done
    # The call used 120 of its 500 tokens and cost $0.1 of its $0.4.
    await release(
        counters,
        [(tpm, 380), (take(0, key="never-taken"), 5)],
        [
            Settle(key="day", reserved=0.4, spent=0.1),
            Settle(key="month", reserved=0.4, spent=0.1),
            Settle(key="unknown", reserved=0.4, spent=0.1),
        ],
    )
    _, [bucket] = await counters.take([take(0, per_minute=1000, key="tpm")], now=0.0)
    assert bucket.remaining == 880
    _, states = await counters.reserve(
        [Reservation(key=k, amount=0.0, limit=10.0) for k in ("day", "month")]
    )
    assert [(s.spent, s.reserved) for s in states] == [
        (pytest.approx(0.1), 0.0),
        (pytest.approx(2.1), 0.0),
    ]
    assert await spent(counters, "unknown") == 0.0  # dropped: the ledger will seed it
    await release(counters, [], [])  # nothing to do is fine


async def test_a_release_comes_before_what_is_called_after_it(counters: Counters) -> None:
    # Its acknowledgement may come later, but the next call's admission already finds
    # the tokens given back and the budget released.
    await counters.seed("day", 0.0)
    tpm = take(60, key="tpm")
    day = Reservation(key="day", amount=1.0, limit=1.0)
    assert (await counters.admit([tpm], [day], now=0.0)).done
    pending = counters.release([(tpm, 60)], [Settle(key="day", reserved=1.0, spent=0.0)], 0.0)
    assert (await counters.admit([tpm], [day], now=0.0)).done
    if pending is not None:
        await pending


async def release(
    counters: Counters, gives: list[tuple[Take, float]], settles: list[Settle]
) -> None:
    pending = counters.release(gives, settles, now=0.0)
    if pending is not None:
        await pending


async def test_admission_over_the_counters_refuses_what_does_not_fit(counters: Counters) -> None:
    acme = TenantConfig(name="acme", budget_usd_per_day=1.0)
    noon = calendar.timegm((2025, 1, 31, 12, 0, 0))

    async def spend_since(since: float) -> dict[str, float]:
        return {"acme": 0.9995}

    admission = Admission(
        counters,
        keys=[],
        tenants=[acme],
        limits=LimitsConfig(default_max_tokens=100, budget_wait_s=0.0),
        prices={"fast": PriceBound(1.0, 2.0)},  # 100 output tokens: $0.0002
        spend_since=spend_since,
        clock=lambda: noon,
    )
    release = asyncio.Event()
    answering: list[Call] = []
    refused: list[BudgetExceededError] = []

    async def answer(call: Call) -> Result:
        answering.append(call)
        await release.wait()
        call.annotations["hold"].book(0.00003)
        return ChatResponse(
            id="x",
            model="m",
            created=0,
            choices=[Choice(message=Message(role="assistant", content="ok"))],
            usage=Usage(prompt_tokens=10, completion_tokens=10),
            deployment="fast/m",
            cost_usd=0.00003,
        )

    async def attempt() -> None:
        request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
        try:
            await admission.handle(
                Call(request=request, tenant="acme", request_id="r", started=0.0), answer
            )
        except BudgetExceededError as error:
            refused.append(error)

    calls = asyncio.gather(*(attempt() for _ in range(5)))

    async def all_decided() -> bool:
        return len(answering) + len(refused) == 5

    await eventually(all_decided)
    release.set()
    await calls
    # $0.0005 left today: two reservations of ~$0.0002 fit, the third does not.
    assert len(answering) == 2 and len(refused) == 3 and refused[0].budget == "day"
    assert await spent(counters, "usd:day:acme:2025-01-31") == pytest.approx(0.9995 + 0.00006)
