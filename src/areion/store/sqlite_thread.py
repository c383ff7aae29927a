"""A thread that owns one SQLite connection and serves jobs from the event loop.

sqlite3 blocks, so statements never run on the event loop. Callers put a job
on a queue and await a future. The thread blocks on the queue (an idle thread
answers a lone job at once, with no timer), then drains every job already
waiting and handles them together; `Writer` commits the writes among them as
one transaction.

Futures are resolved with one `call_soon_threadsafe` per batch and event loop,
not one per job: each such call wakes the loop through its self-pipe, and each
is a GIL hand-off between the thread and the loop.

Under load a writer holds a batch of writes a moment for those about to arrive
(`Pacer`, group commit as PostgreSQL's `commit_delay` does it): a transaction's
fixed costs (the thread's wake-up, the pages it writes, the loop's wake-up) are
then shared by several writes, not paid by each.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["DbThread", "Job", "Pacer", "Part", "ReadWork"]

T = TypeVar("T")

Part = tuple[int, Any]
"""One fragment of a write: (kind, JSON bytes), or (CACHE, (key, value, expires))."""

ReadWork = Callable[[sqlite3.Connection], Any]

# A batch bigger than this leaves the rest of the queue to the next one, which
# bounds the size of one statement's parameters and of one batch's latency.
_MAX_BATCH_JOBS = 2048
_MAX_BATCH_BYTES = 32 << 20


class Job:
    """One caller's write or read, and then its outcome."""

    __slots__ = ("error", "future", "loop", "parts", "read", "result", "size")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        *,
        parts: Sequence[Part] = (),
        read: ReadWork | None = None,
        size: int = 0,
    ) -> None:
        self.loop = loop
        self.future = future
        self.parts = parts
        self.read = read
        self.size = size
        self.result: Any = None
        self.error: BaseException | None = None

    def run_read(self, db: sqlite3.Connection) -> None:
        assert self.read is not None
        try:
            self.result = self.read(db)
        except Exception as exc:
            self.error = exc


class Pacer:
    """Whether a batch of writes just taken waits `delay` seconds for more.

    It waits only while writes arrive faster than one per `delay` (smoothed over the
    last batches), so that at least one more is expected to share the transaction; a
    batch with a read in it is never held. Each held write waits at most `delay` more,
    and only under load."""

    __slots__ = ("_clock", "_last", "_rate", "_sleep", "delay")

    def __init__(
        self,
        delay: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.delay = delay
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None  # when the last batch was taken
        self._rate = 0.0  # writes a second, smoothed

    def hold(self, jobs: Sequence[Job]) -> bool:
        """Wait, on the thread, if more writes are due to join the batch `jobs`;
        whether it waited."""
        if self._rate * self.delay < 1.0 or any(job.read is not None for job in jobs):
            return False
        self._sleep(self.delay)
        return True

    def taken(self, jobs: Sequence[Job]) -> None:
        """Count a batch, as it is handled: its writes since the last batch's."""
        now = self._clock()
        if self._last is not None:
            writes = sum(job.read is None for job in jobs)
            # Every job is in one batch, and the intervals between batches tile time;
            # an interval weighs by its length, so the rate is that of the last ~50 ms.
            elapsed = max(now - self._last, 1e-6)
            weight = 1.0 - math.exp(-elapsed / _MEMORY_S)
            self._rate += weight * (writes / elapsed - self._rate)
        self._last = now


_MEMORY_S = 0.05  # how far back the rate looks (the time constant of its average)


class DbThread:
    """Runs jobs on one connection, on one daemon thread started on first use."""

    name = "areion-sqlite"

    def __init__(self, path: str, *, pacer: Pacer | None = None) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._carry: Job | None = None
        self._pacer = pacer

    # -- event-loop side ------------------------------------------------------------

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """The result of `work(connection)`, run on the thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit(Job(loop, future, read=work))
        return await future

    async def stop(self) -> None:
        """Finish the queued jobs, close the connection, end the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _submit(self, job: Job) -> None:
        if self._thread is None:
            # A daemon: a store nobody closed must not hang the interpreter's exit.
            # Nothing acknowledged is lost by that, since a writer answers a caller
            # only after its transaction commits.
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put(job)

    # -- the thread -----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _handle(self, jobs: list[Job]) -> None:
        """Set each job's result or error."""
        try:
            db = self._connect()
        except Exception as exc:
            for job in jobs:
                job.error = exc
            return
        for job in jobs:
            job.run_read(db)

    def _close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _main(self) -> None:
        try:
            while True:
                jobs, stop = self._take()
                if jobs:
                    try:
                        self._handle(jobs)
                    except Exception as exc:  # a bug must not leave callers waiting forever
                        for job in jobs:
                            job.error = exc
                    _resolve(jobs)
                if stop:
                    return
        finally:
            self._close()

    def _take(self) -> tuple[list[Job], bool]:
        """Block for one job, then drain whatever else is already waiting (held a
        moment for more, under load: `Pacer`)."""
        first = self._carry or self._queue.get()
        self._carry = None
        if first is None:
            return [], True
        jobs = [first]
        stop = self._drain(jobs)
        if self._pacer is not None:
            room = self._carry is None and len(jobs) < _MAX_BATCH_JOBS
            if not stop and room and self._pacer.hold(jobs):
                stop = self._drain(jobs)
            self._pacer.taken(jobs)
        return jobs, stop

    def _drain(self, jobs: list[Job]) -> bool:
        """Add the jobs waiting to `jobs`, within the batch's bounds; whether the thread
        is to stop after them."""
        size = sum(job.size for job in jobs)
        while len(jobs) < _MAX_BATCH_JOBS:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return True
            if size + job.size > _MAX_BATCH_BYTES:
                self._carry = job
                break
            jobs.append(job)
            size += job.size
        return False


def _resolve(jobs: list[Job]) -> None:
    """Hand each caller its outcome, with one wake-up per event loop."""
    first = jobs[0].loop
    if all(job.loop is first for job in jobs):
        _wake(first, jobs)
        return
    per_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    for job in jobs:
        per_loop.setdefault(job.loop, []).append(job)
    for loop, mine in per_loop.items():
        _wake(loop, mine)


def _wake(loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
    # A loop closed while its caller waited has nobody left to answer.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, jobs)


def _settle(jobs: list[Job]) -> None:
    for job in jobs:
        if job.future.done():  # the caller was cancelled; a write still landed
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)
