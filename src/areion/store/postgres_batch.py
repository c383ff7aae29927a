"""The PostgreSQL store's group commit.

Writes (ledger rows, checkpoints, tool-call records, turns...) queue here; one task
sends them: whatever arrived while a batch was in flight goes into the next one, as
ONE call of `areion_write` (one round trip, one transaction, one WAL flush), so N
concurrent callers awaiting their writes share commits instead of taking a pooled
connection each. If a batch fails on a bad write (a fenced or stale checkpoint),
it is replayed one write at a time, so only the bad write's caller gets the error;
if PostgreSQL is down, every caller of the batch hears so at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from areion.store.postgres_pool import Connection, Connector
from areion.store.postgres_schema import WRITE

__all__ = [
    "CACHE",
    "CALLS",
    "CLOSING",
    "EVENTS",
    "LEDGER",
    "MESSAGES",
    "NEW_RUNS",
    "RUNS",
    "SUMMARIES",
    "TURNS",
    "Batcher",
    "Write",
]

# Kinds of row, in the order of `areion_write`'s arrays.
NEW_RUNS = 0  # areion_run_row without pos: create_run, a plain INSERT
RUNS = 1  # areion_run_row without pos: a checkpoint's run row (and its fence)
MESSAGES = 2  # (tenant, run_id, seq, message JSON)
EVENTS = 3  # (tenant, run_id, event JSON): numbered after the run's last event
CALLS = 4  # a tool-call row without pos: insert or replace
TURNS = 5
SUMMARIES = 6
LEDGER = 7
CLOSING = 8  # a ledger row whose figures close the open row of its request
CACHE = 9  # (key, value, expires)
_KINDS = 10
# Kinds whose rows get their position in the batch appended: the order writes of one
# run or key arrived in (see areion_write).
_POSITIONED = frozenset((NEW_RUNS, RUNS, EVENTS, CALLS, CACHE))

Write = dict[int, list[tuple[Any, ...]]]
"""One caller's rows, by kind: they land together or not at all."""

# Writes per batch at most, so one statement stays well within the command timeout.
MAX_BATCH = 1000


class Batcher:
    """Group commit of `Write`s through one `Connector`."""

    def __init__(self, connector: Connector, *, clock: Callable[[], float]) -> None:
        self._connector = connector
        self._clock = clock  # when tool-cache values are swept as expired
        self._queue: list[tuple[Write, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def write(self, write: Write) -> None:
        """Commit one write; returns once it is durable."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is not loop:
            await self._apply([write])  # another loop (a flush at exit): on its own
            return
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((write, future))
        if task is None or task.done():
            self._task = loop.create_task(self._drain())
        await future

    async def aclose(self) -> None:
        """Wait for the writes already queued."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(task)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                await self._commit(batch)
            except BaseException as exc:  # cancelled with the loop: nobody is left waiting
                for _, future in batch:
                    _settle(future, exc)
                raise

    async def _commit(self, batch: list[tuple[Write, asyncio.Future[None]]]) -> None:
        try:
            await self._apply([write for write, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or not isinstance(exc, asyncpg.PostgresError):
                # The database is down or misconfigured: every writer hears it now.
                for _, future in batch:
                    _settle(future, exc)
                return
            # A bad write (the database refused it) spoilt the batch: replay it one
            # write at a time.
            for write, future in batch:
                try:
                    await self._apply([write])
                except Exception as one:
                    _settle(future, one)
                else:
                    _settle(future, None)
            return
        for _, future in batch:
            _settle(future, None)

    async def _apply(self, writes: Sequence[Write]) -> None:
        """One `areion_write` call holding `writes`; sent again if its connection was
        lost, which its batch id makes safe (applied at most once)."""
        args = _arguments(writes, uuid.uuid4(), self._clock())

        async def send(connection: Connection) -> None:
            await connection.fetchval(WRITE, *args)

        await self._connector.run(send, again=True)


def _arguments(writes: Sequence[Write], batch: uuid.UUID, now: float) -> list[Any]:
    rows: list[list[tuple[Any, ...]]] = [[] for _ in range(_KINDS)]
    position = 0
    for write in writes:
        for kind, kind_rows in write.items():
            if kind in _POSITIONED:
                for row in kind_rows:
                    rows[kind].append((*row, position))
                    position += 1
            else:
                rows[kind].extend(kind_rows)
    # An empty kind is NULL: the function skips it without a statement.
    return [batch, now, *(kind_rows or None for kind_rows in rows)]


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done() or future.get_loop().is_closed():
        return
    if error is None:
        future.set_result(None)
    elif isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)
