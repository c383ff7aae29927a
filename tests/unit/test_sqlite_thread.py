"""The SQLite thread's batches: group commit under load (`Pacer`)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
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


class _PacedThread:
    """A recording thread whose pacer has seen `writes` writes every `every` seconds,
    and whose sleep says when it starts and ends only when released."""

    def __init__(self, *, writes: int, every: float) -> None:
        self.started, self.released = threading.Event(), threading.Event()
        clock = _Clock()
        pacer = Pacer(0.001, clock=clock, sleep=self._sleep)
        _paced(pacer, clock, batches=200, writes=writes, every=every)
        self.thread = _Recorder(pacer)

    def _sleep(self, seconds: float) -> None:
        self.started.set()
        assert self.released.wait(10)


async def test_a_held_write_is_committed_with_those_that_arrive_while_it_waits() -> None:
    paced = _PacedThread(writes=4, every=0.001)
    thread = paced.thread

    first = await _submit(thread, "a")
    assert await asyncio.to_thread(paced.started.wait, 10)  # the thread holds "a"
    later = [await _submit(thread, name) for name in ("b", "c")]
    paced.released.set()
    await asyncio.gather(first, *later)
    assert thread.batches == [["a", "b", "c"]]
    await thread.stop()


async def test_a_write_at_a_low_rate_is_handled_at_once() -> None:
    paced = _PacedThread(writes=1, every=0.05)
    thread = paced.thread

    await (await _submit(thread, "a"))
    await (await _submit(thread, "b"))
    assert thread.batches == [["a"], ["b"]]
    assert not paced.started.is_set()
    await thread.stop()
