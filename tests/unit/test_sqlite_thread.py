"""The SQLite thread's batches: group commit under load (`Pacer`)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from areion.store.sqlite_thread import DbThread, Job, Pacer


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _write() -> Job:
    return Job(asyncio.get_running_loop(), asyncio.get_running_loop().create_future())


def _read() -> Job:
    loop = asyncio.get_running_loop()
    return Job(loop, loop.create_future(), read=lambda db: None)


def _paced(pacer: Pacer, clock: _Clock, *, batches: int, writes: int, every: float) -> None:
    """`batches` batches of `writes` writes taken `every` seconds apart."""
    for _ in range(batches):
        clock.now += every
        pacer.taken([_write() for _ in range(writes)])


async def test_writes_are_held_only_while_they_arrive_faster_than_one_per_delay() -> None:
    clock, slept = _Clock(), []
    pacer = Pacer(0.001, clock=clock, sleep=slept.append)
    assert not pacer.hold([_write()])  # nothing seen yet: a lone write goes at once

    _paced(pacer, clock, batches=200, writes=1, every=0.002)  # 500 writes a second
    assert not pacer.hold([_write()])
    assert slept == []

    _paced(pacer, clock, batches=200, writes=3, every=0.001)  # 3,000 a second
    assert pacer.hold([_write()])
    assert slept == [0.001]

    # A batch with a read in it is not held: the read's caller would wait for nothing.
    assert not pacer.hold([_write(), _read()])

    # The load stops: one batch after a quiet second is enough to stop holding.
    _paced(pacer, clock, batches=1, writes=1, every=1.0)
    assert not pacer.hold([_write()])
    assert slept == [0.001]


class _Recorder(DbThread):
    """Handles nothing, only records each batch it is given."""

    def __init__(self, pacer: Pacer) -> None:
        super().__init__(":memory:", pacer=pacer)
        self.batches: list[list[str]] = []

    def _open(self) -> sqlite3.Connection:
        return sqlite3.connect(":memory:", check_same_thread=False)

    def _handle(self, jobs: list[Job]) -> None:
        self.batches.append([job.parts[0][1] for job in jobs])


async def _submit(thread: DbThread, name: str) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    thread._submit(Job(loop, future, parts=[(0, name)]))
    return future


def _blocking_sleep() -> tuple[Callable[[float], None], threading.Event, threading.Event]:
    """A sleep that says when it starts and ends only when released."""
    started, released = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        started.set()
        assert released.wait(10)

    return sleep, started, released


async def test_a_held_write_is_committed_with_those_that_arrive_while_it_waits() -> None:
    clock = _Clock()
    sleep, started, released = _blocking_sleep()
    pacer = Pacer(0.001, clock=clock, sleep=sleep)
    _paced(pacer, clock, batches=200, writes=4, every=0.001)
    thread = _Recorder(pacer)

    first = await _submit(thread, "a")
    assert await asyncio.to_thread(started.wait, 10)  # the thread holds "a"
    later = [await _submit(thread, name) for name in ("b", "c")]
    released.set()
    await asyncio.gather(first, *later)
    assert thread.batches == [["a", "b", "c"]]
    await thread.stop()


async def test_a_write_at_a_low_rate_is_handled_at_once() -> None:
    clock = _Clock()
    sleep, started, _ = _blocking_sleep()
    pacer = Pacer(0.001, clock=clock, sleep=sleep)
    _paced(pacer, clock, batches=20, writes=1, every=0.05)
    thread = _Recorder(pacer)

    await (await _submit(thread, "a"))
    await (await _submit(thread, "b"))
    assert thread.batches == [["a"], ["b"]]
    assert not started.is_set()
    await thread.stop()
