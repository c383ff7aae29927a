"""Priority lanes (`areion.control.lanes`): caps, priority, fair share, shedding, no leaks."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from areion.control.lanes import LaneLimits, Lanes, OverloadedError, Slot, lane_of
from areion.errors import LimitError, RequestError, UpstreamError
from areion.pipeline import Call, Result
from areion.streaming import ChatStream
from areion.types import ChatRequest, ChatResponse, Choice, Message, StreamChunk
from tests.support import run_virtual

_ids = itertools.count()


def new_call(tenant: str = "acme", priority: str | None = None, model: str = "m") -> Call:
    call = Call(
        request=ChatRequest(model=model, messages=[Message(role="user", content="hi")]),
        tenant=tenant,
        request_id=f"{tenant}-{priority or 'interactive'}-{next(_ids)}",
        started=time.perf_counter(),
    )
    if priority is not None:
        call.annotations["priority"] = priority
    return call


def answer() -> ChatResponse:
    return ChatResponse(
        id="chatcmpl-1",
        model="m",
        created=0,
        choices=[Choice(message=Message(role="assistant", content="ok"))],
    )


class Backend:
    """A terminal whose calls run until the test finishes them, oldest first."""

    def __init__(self) -> None:
        self.entered: list[Call] = []
        self.running: list[asyncio.Future[None]] = []
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, call: Call) -> Result:
        self.entered.append(call)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        done = asyncio.get_running_loop().create_future()
        self.running.append(done)
        try:
            await done
        finally:
            self.in_flight -= 1
        return answer()

    def finish_one(self) -> None:
        self.running.pop(0).set_result(None)

    def order(self) -> list[str]:
        return [call.request_id for call in self.entered]


async def settle() -> None:
    """Let every ready task run until nothing changes (no wall-clock waiting)."""
    for _ in range(20):
        await asyncio.sleep(0)


def spawn(lanes: Lanes, backend: Backend, call: Call) -> asyncio.Task[Result]:
    return asyncio.create_task(lanes.handle(call, backend))


async def drain(lanes: Lanes, backend: Backend, tasks: list[asyncio.Task[Result]]) -> None:
    """Finish calls one at a time until every task is done."""
    await settle()
    while not all(task.done() for task in tasks):
        if backend.running:
            backend.finish_one()
        await settle()


# -- caps and priority ------------------------------------------------------------


async def test_a_group_never_runs_more_calls_than_its_capacity() -> None:
    lanes, backend = Lanes({"m": 3}), Backend()
    tasks = [spawn(lanes, backend, new_call()) for _ in range(10)]
    await settle()
    assert backend.in_flight == 3
    assert lanes.stats("m").queued_interactive == 7
    await drain(lanes, backend, tasks)
    assert backend.peak == 3
    assert all(isinstance(task.result(), ChatResponse) for task in tasks)
    stats = lanes.stats("m")
    assert (stats.in_flight, stats.queued_interactive) == (0, 0)


async def test_a_free_slot_is_taken_without_waiting() -> None:
    lanes = Lanes({"m": 2})
    slot = await lanes.acquire("m", "acme")
    assert slot.waited_s == 0.0 and lanes.stats("m").in_flight == 1
    slot.release()
    slot.release()  # idempotent
    assert lanes.stats("m").in_flight == 0


async def test_groups_without_a_capacity_are_not_limited() -> None:
    lanes, backend = Lanes({"m": 1}), Backend()
    tasks = [spawn(lanes, backend, new_call(model="other")) for _ in range(5)]
    await settle()
    assert backend.in_flight == 5
    await drain(lanes, backend, tasks)
    unlimited = await lanes.acquire("other", "acme", "batch")
    unlimited.release()
    assert "other" not in lanes and "m" in lanes


async def test_interactive_is_served_before_batch_that_waited_longer() -> None:
    lanes, backend = Lanes({"m": 1}), Backend()
    tasks = [spawn(lanes, backend, new_call(priority="interactive"))]
    await settle()
    tasks += [spawn(lanes, backend, new_call(tenant="b", priority="batch")) for _ in range(2)]
    await settle()
    tasks += [spawn(lanes, backend, new_call(tenant="i")) for _ in range(2)]
    await drain(lanes, backend, tasks)
    lanes_served = [call.tenant for call in backend.entered[1:]]
    assert lanes_served == ["i", "i", "b", "b"]


async def test_batch_every_gives_batch_a_share_while_interactive_waits() -> None:
    lanes, backend = Lanes({"m": 1}, batch_every=2), Backend()
    tasks = [spawn(lanes, backend, new_call())]
    await settle()
    tasks += [spawn(lanes, backend, new_call(tenant="b", priority="batch")) for _ in range(3)]
    tasks += [spawn(lanes, backend, new_call(tenant="i")) for _ in range(6)]
    await drain(lanes, backend, tasks)
    assert [call.tenant for call in backend.entered[1:]] == list("iibiibiib")


async def test_batch_leaves_the_interactive_reserve_free() -> None:
    lanes, backend = Lanes({"m": 4}, interactive_reserve=0.25), Backend()
    assert lanes.stats("m").batch_limit == 3
    tasks = [spawn(lanes, backend, new_call(priority="batch")) for _ in range(5)]
    await settle()
    assert backend.in_flight == 3 and lanes.stats("m").queued_batch == 2
    tasks.append(spawn(lanes, backend, new_call(tenant="i")))
    await settle()
    assert backend.in_flight == 4 and backend.entered[-1].tenant == "i"  # no wait
    await drain(lanes, backend, tasks)


# -- fair share ---------------------------------------------------------------------


async def test_a_tenant_with_few_calls_is_not_queued_behind_a_flood() -> None:
    lanes, backend = Lanes({"m": 1}), Backend()
    tasks = [spawn(lanes, backend, new_call(tenant="warmup"))]
    await settle()
    tasks += [spawn(lanes, backend, new_call(tenant="a", priority="batch")) for _ in range(100)]
    await settle()
    tasks += [spawn(lanes, backend, new_call(tenant="b", priority="batch")) for _ in range(5)]
    await drain(lanes, backend, tasks)
    served = [call.tenant for call in backend.entered[1:]]
    b_positions = [i for i, tenant in enumerate(served) if tenant == "b"]
    assert len(served) == 105
    # Alternating with a: b's five are done within the first ten grants, not after 100.
    assert max(b_positions) < 10


async def test_tenant_weights_divide_the_grants() -> None:
    lanes, backend = Lanes({"m": 1}, weights={"gold": 3.0}), Backend()
    tasks = [spawn(lanes, backend, new_call(tenant="warmup"))]
    await settle()
    for _ in range(40):
        tasks.append(spawn(lanes, backend, new_call(tenant="gold", priority="batch")))
        tasks.append(spawn(lanes, backend, new_call(tenant="tin", priority="batch")))
    await drain(lanes, backend, tasks)
    first = [call.tenant for call in backend.entered[1:41]]
    assert first.count("gold") == 30 and first.count("tin") == 10


# -- shedding ---------------------------------------------------------------------


async def test_a_full_batch_lane_refuses_at_once_with_a_usable_retry_after() -> None:
    lanes = Lanes({"m": 1}, batch=LaneLimits(max_queued=2, max_wait_s=None))
    backend = Backend()
    tasks = [spawn(lanes, backend, new_call())]
    await settle()
    backend.finish_one()  # one measured call: the slot-holding estimate is now real
    await settle()
    tasks.append(spawn(lanes, backend, new_call()))
    tasks += [spawn(lanes, backend, new_call(priority="batch")) for _ in range(2)]
    await settle()
    with pytest.raises(OverloadedError) as refused:
        await lanes.handle(new_call(priority="batch"), backend)
    error = refused.value
    assert isinstance(error, LimitError) and error.status == 503
    assert (error.lane, error.reason) == ("batch", "queue_full")
    service = lanes.stats("m").service_s
    # Two batch calls queued and one running ahead: about three slot-holding times.
    assert error.retry_after == pytest.approx(3 * service)
    assert error.retry_after is not None and 0 < error.retry_after < math.inf
    assert "at capacity" in error.message and "retry after" in error.message
    await drain(lanes, backend, tasks)


async def test_an_interactive_arrival_displaces_the_newest_batch_waiter() -> None:
    lanes = Lanes(
        {"m": 1},
        interactive=LaneLimits(max_queued=2, max_wait_s=None),
        batch=LaneLimits(max_queued=10, max_wait_s=None),
        max_queued=3,
    )
    backend = Backend()
    tasks = [spawn(lanes, backend, new_call())]
    await settle()
    old = spawn(lanes, backend, new_call(tenant="b", priority="batch"))
    await settle()
    new = spawn(lanes, backend, new_call(tenant="b", priority="batch"))
    tasks.append(spawn(lanes, backend, new_call(tenant="i")))
    await settle()
    tasks.append(spawn(lanes, backend, new_call(tenant="i")))  # group full: batch must go
    await settle()
    assert new.done() and isinstance(new.exception(), OverloadedError)
    displaced = new.exception()
    assert isinstance(displaced, OverloadedError) and displaced.reason == "displaced"
    assert not old.done()
    # The interactive lane itself is full now: only then is interactive refused.
    with pytest.raises(OverloadedError) as refused:
        await lanes.handle(new_call(tenant="i"), backend)
    assert (refused.value.lane, refused.value.reason) == ("interactive", "queue_full")
    await drain(lanes, backend, [*tasks, old])
    assert isinstance(old.result(), ChatResponse)
    assert lanes.stats("m").shed == {("batch", "displaced"): 1, ("interactive", "queue_full"): 1}


async def test_a_full_batch_lane_sheds_the_flooding_tenant_not_the_newcomer() -> None:
    lanes = Lanes({"m": 1}, batch=LaneLimits(max_queued=4, max_wait_s=None))
    backend = Backend()
    tasks = [spawn(lanes, backend, new_call())]
    await settle()
    flood = [spawn(lanes, backend, new_call(tenant="a", priority="batch")) for _ in range(4)]
    await settle()
    with pytest.raises(OverloadedError):  # a's fifth: a is the one over its share
        await lanes.handle(new_call(tenant="a", priority="batch"), backend)
    newcomer = spawn(lanes, backend, new_call(tenant="b", priority="batch"))
    await settle()
    assert not newcomer.done()
    assert flood[-1].done() and isinstance(flood[-1].exception(), OverloadedError)
    await drain(lanes, backend, [*tasks, *flood[:-1], newcomer])
    assert isinstance(newcomer.result(), ChatResponse)


async def test_a_waiter_past_max_wait_is_refused() -> None:
    lanes = Lanes({"m": 1}, batch=LaneLimits(max_queued=10, max_wait_s=0.01))
    held = await lanes.acquire("m", "acme")
    with pytest.raises(OverloadedError) as refused:
        await lanes.acquire("m", "acme", "batch")
    assert refused.value.reason == "timeout"
    assert lanes.stats("m").queued_batch == 0
    held.release()
    assert lanes.stats("m").in_flight == 0


# -- no leaks ---------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    lanes, backend = Lanes({"m": 1}), Backend()
    tasks = [spawn(lanes, backend, new_call())]
    await settle()
    leaving = spawn(lanes, backend, new_call(tenant="gone"))
    staying = spawn(lanes, backend, new_call(tenant="stays"))
    await settle()
    leaving.cancel()
    await settle()
    assert lanes.stats("m").queued_interactive == 1
    await drain(lanes, backend, [*tasks, staying])
    assert [call.tenant for call in backend.entered] == ["acme", "stays"]
    assert lanes.stats("m").in_flight == 0


async def test_a_slot_granted_to_a_cancelled_waiter_passes_to_the_next() -> None:
    lanes = Lanes({"m": 1})
    held = await lanes.acquire("m", "acme")
    first = asyncio.create_task(lanes.acquire("m", "first"))
    second = asyncio.create_task(lanes.acquire("m", "second"))
    await settle()
    held.release()  # granted to `first`, whose task has not run yet...
    first.cancel()  # ...and leaves before it can use the slot
    await settle()
    assert first.cancelled()
    slot: Slot = await second
    assert lanes.stats("m").in_flight == 1
    slot.release()
    assert lanes.stats("m").in_flight == 0


async def test_a_stream_holds_its_slot_until_it_ends() -> None:
    lanes = Lanes({"m": 1})

    async def chunks(fail: bool) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(id="c", model="m", created=0, content="a")
        if fail:
            raise UpstreamError("connection reset")
        yield StreamChunk(id="c", model="m", created=0, content="b", finish_reason="stop")

    def streaming(fail: bool = False) -> Backend:
        class Streaming(Backend):
            async def __call__(self, call: Call) -> Result:
                return ChatStream(
                    chunks(fail),
                    model="m",
                    deployment="d",
                    upstream_model="m",
                    request_id=call.request_id,
                    started=call.started,
                )

        return Streaming()

    stream = await lanes.handle(new_call(), streaming())
    assert isinstance(stream, ChatStream) and lanes.stats("m").in_flight == 1
    assert [chunk.content async for chunk in stream] == ["a", "b"]
    assert lanes.stats("m").in_flight == 0

    stream = await lanes.handle(new_call(), streaming())
    assert isinstance(stream, ChatStream)
    await stream.aclose()  # the client left early
    assert lanes.stats("m").in_flight == 0

    stream = await lanes.handle(new_call(), streaming(fail=True))
    assert isinstance(stream, ChatStream)
    with pytest.raises(UpstreamError):
        async for _ in stream:
            pass
    assert lanes.stats("m").in_flight == 0


async def test_errors_and_cancellation_of_the_call_release_the_slot() -> None:
    lanes = Lanes({"m": 1})

    async def failing(call: Call) -> Result:
        raise UpstreamError("boom")

    with pytest.raises(UpstreamError):
        await lanes.handle(new_call(), failing)
    assert lanes.stats("m").in_flight == 0

    backend = Backend()
    running = spawn(lanes, backend, new_call())
    await settle()
    assert lanes.stats("m").in_flight == 1
    running.cancel()  # the client disconnected mid-call
    await settle()
    assert lanes.stats("m").in_flight == 0


# -- overload -----------------------------------------------------------------------


def test_under_2x_overload_interactive_completes_while_batch_queues_or_is_shed() -> None:
    # On virtual time: arrivals and service take exactly what they say, so the offered
    # load is twice the capacity however busy the machine running the test is.
    run_virtual(_overload())


async def _overload() -> None:
    capacity, service_s = 4, 0.02
    lanes = Lanes(
        {"m": capacity},
        batch=LaneLimits(max_queued=6, max_wait_s=None),
        interactive_reserve=0.25,
        clock=asyncio.get_running_loop().time,
    )
    rng = random.Random(7)

    async def model(call: Call) -> Result:
        await asyncio.sleep(service_s * rng.uniform(0.5, 1.5))
        return answer()

    outcomes: dict[str, list[str]] = {"interactive": [], "batch": []}
    waits: dict[str, list[float]] = {"interactive": [], "batch": []}

    async def one(priority: str) -> None:
        call = new_call(tenant=rng.choice("abc"), priority=priority)
        try:
            result = await lanes.handle(call, model)
        except OverloadedError:
            outcomes[priority].append("shed")
        else:
            outcomes[priority].append("ok")
            waits[priority].append(float(result.info.get("queue_wait_s", 0.0)))

    # Offered load: twice what the group serves; a quarter of it interactive.
    per_arrival = service_s / (2 * capacity)
    tasks = []
    for i in range(240):
        tasks.append(asyncio.create_task(one("interactive" if i % 4 == 0 else "batch")))
        await asyncio.sleep(per_arrival)
    await asyncio.gather(*tasks)

    assert outcomes["interactive"] == ["ok"] * 60
    assert len(outcomes["batch"]) == 180
    assert outcomes["batch"].count("shed") > 0
    mean = {lane: sum(w) / max(1, len(w)) for lane, w in waits.items()}
    assert mean["interactive"] < mean["batch"]
    stats = lanes.stats("m")
    assert (stats.in_flight, stats.queued_interactive, stats.queued_batch) == (0, 0, 0)


# -- the rest -----------------------------------------------------------------------


def test_lane_of_priorities() -> None:
    assert lane_of(None) == "interactive"
    assert lane_of("critical") == "interactive"
    assert lane_of("batch") == "batch"
    with pytest.raises(RequestError) as bad:
        lane_of("urgent")
    assert bad.value.param == "x-areion-priority"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Lanes({"m": 0})
    with pytest.raises(ValueError, match="interactive_reserve"):
        Lanes({"m": 1}, interactive_reserve=1.0)
    with pytest.raises(ValueError, match="weight"):
        Lanes({"m": 1}, weights={"a": 0.0})


async def test_queue_wait_depth_and_shedding_are_exported() -> None:
    registry = CollectorRegistry()
    lanes = Lanes({"m": 1}, batch=LaneLimits(max_queued=1, max_wait_s=None), registry=registry)
    held = await lanes.acquire("m", "acme")
    waiting = asyncio.create_task(lanes.acquire("m", "acme", "batch"))
    await settle()
    with pytest.raises(OverloadedError):
        await lanes.acquire("m", "acme", "batch")
    text = generate_latest(registry).decode()
    assert 'areion_lane_queued{lane="batch",model="m"} 1.0' in text
    assert 'areion_lane_in_flight{lane="interactive",model="m"} 1.0' in text
    assert 'areion_lane_shed_total{lane="batch",model="m",reason="queue_full"} 1.0' in text
    held.release()
    (await waiting).release()
    text = generate_latest(registry).decode()
    assert 'areion_lane_queue_wait_seconds_count{lane="interactive",model="m"} 1.0' in text
    assert 'areion_lane_queue_wait_seconds_count{lane="batch",model="m"} 1.0' in text
    assert 'areion_lane_queue_wait_seconds_bucket{lane="interactive",le="0.001",model="m"} 1.0' in (
        text
    )
    assert 'areion_lane_capacity{model="m"} 1.0' in text


async def test_a_group_without_a_cap_is_counted_but_never_queued() -> None:
    registry = CollectorRegistry()
    lanes, backend = Lanes({"m": None}, registry=registry), Backend()
    tasks = [spawn(lanes, backend, new_call(priority=p)) for p in ("batch", None, None)]
    await settle()
    assert backend.in_flight == 3  # nothing waits
    text = generate_latest(registry).decode()
    assert 'areion_lane_in_flight{lane="interactive",model="m"} 2.0' in text
    assert 'areion_lane_in_flight{lane="batch",model="m"} 1.0' in text
    assert 'areion_lane_queued{lane="interactive",model="m"} 0.0' in text
    assert "areion_lane_capacity{" not in text  # no cap to report
    assert "m" not in lanes
    await drain(lanes, backend, tasks)
    text = generate_latest(registry).decode()
    assert 'areion_lane_in_flight{lane="interactive",model="m"} 0.0' in text
    assert 'areion_lane_in_flight{lane="batch",model="m"} 0.0' in text
