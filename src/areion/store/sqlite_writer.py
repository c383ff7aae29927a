"""The SQLite store's writer thread: group commit.

Writes that arrive while a transaction is in progress wait in the queue and all
go into the next one. A batch is applied as one statement (see `sqlite_schema`);
if that fails, the batch is replayed one write at a time, each in its own
SAVEPOINT inside one transaction, so only the faulty write's caller gets the
error and the others still commit. Reads queued here (the schema check before
the first read, an in-memory database's reads) run after the batch commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from areion.store.rollups import ROLLUP_VALUES, rolled_up
from areion.store.sqlite_checkpointer import WRITER_AUTOCHECKPOINT_PAGES, Checkpointer
from areion.store.sqlite_schema import (
    BATCH_VIEW,
    CACHE,
    CLOSE_LEDGER,
    CLOSING_AT,
    CLOSING_ROLLED_AT,
    JSON_KINDS,
    LEDGER,
    LEDGER_CLOSE,
    LEDGER_CLOSINGS,
    LEDGER_ROLLED_AT,
    LEDGER_ROWS,
    LEDGER_VALUES,
    OPENED_AT,
    TABLES,
    WRITE_BATCH,
    migrate,
)
from areion.store.sqlite_thread import DbThread, Job, Pacer, Part

__all__ = ["Writer"]

T = TypeVar("T")

# Under load, how long a batch of writes waits for those about to arrive (`Pacer`). At
# 64 concurrent chat calls it took commits from ~5 calls' rows each to ~9, and the
# server's CPU per call down ~12% (`bench/hot_path.py`: 230 vs 262 us), for at most
# 1 ms more before each answer; 2 ms saved ~3% more for 1 ms more.
COMMIT_DELAY_S = 0.001


class Writer(DbThread):
    """Owns the read-write connection, the schema and the WAL's checkpointer."""

    name = "areion-sqlite-writer"

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, pacer=Pacer(COMMIT_DELAY_S))
        self._checkpointer: Checkpointer | None = None
        self._clock = clock  # when cache entries are swept as expired

    async def write(self, parts: Sequence[Part], size: int) -> None:
        """Commit one write; returns once it is durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._submit(Job(loop, future, parts=parts, size=size))
        await future

    async def apply(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the read-write connection, between batches, in autocommit mode.

        For rare writes that need SQL of their own (API keys) rather than the batch
        view: each statement of `work` is its own transaction."""
        return await self.read(work)

    # -- the thread -----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            _set_wal(db)
            # NORMAL in WAL mode survives a process crash (kill -9): a commit is in
            # the OS's page cache when it returns. Only an OS crash or power loss can
            # lose the last transactions, the trade every WAL deployment makes; FULL
            # would fsync on every commit.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            # Event numbering sorts, and a batch that reads a table it inserts into
            # is materialized first: both stay in memory. A larger page cache keeps
            # the indexes of many live runs hot.
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("PRAGMA cache_size=-65536")
            # The ledger table must have its newer columns before the batch view's
            # trigger, which names them, is created.
            db.executescript(TABLES)
            migrate(db)
            db.executescript(BATCH_VIEW)
            if self.path != ":memory:":
                db.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
                self._checkpointer = Checkpointer(self.path)
        except BaseException:
            db.close()
            raise
        return db

    def _close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        super()._close()

    def _handle(self, jobs: list[Job]) -> None:
        writes = [job for job in jobs if job.read is None]
        if writes:
            self._commit(writes)
        reads = [job for job in jobs if job.read is not None]
        if reads:
            super()._handle(reads)

    def _commit(self, writes: list[Job]) -> None:
        try:
            db = self._connect()
            ledger = _ledger_only(writes)
            if ledger is not None:
                _write_ledger(db, *ledger)
            else:
                # One statement, in autocommit mode: the batch's whole transaction.
                db.execute(WRITE_BATCH, _merge(writes, self._clock()))
        except Exception as exc:
            if len(writes) == 1:
                writes[0].error = exc
            else:
                self._commit_one_by_one(writes)
            return
        self._written()

    def _commit_one_by_one(self, writes: list[Job]) -> None:
        """Replay a failed batch with a SAVEPOINT per write: only bad writes fail."""
        try:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                for job in writes:
                    db.execute("SAVEPOINT one_write")
                    try:
                        db.execute(WRITE_BATCH, _merge([job], self._clock()))
                    except Exception as exc:
                        db.execute("ROLLBACK TO one_write")
                        job.error = exc
                    db.execute("RELEASE one_write")
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except Exception as exc:
            # The transaction itself failed (disk full, a lock held past busy_timeout):
            # nothing of the batch landed, and every caller hears why.
            for job in writes:
                job.error = exc
            return
        self._written()

    def _written(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.written()


def _set_wal(db: sqlite3.Connection, *, within_s: float = 10.0) -> None:
    """Put the database in WAL mode. Processes opening a new file at once contend for it,
    and SQLite may answer "locked" here without waiting out its busy timeout: retry."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # the writer thread's own time: nothing else waits on it


def _ledger_only(
    writes: Sequence[Job],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] | None:
    """The ledger rows and closings of a batch that writes nothing else, else None."""
    rows: list[tuple[Any, ...]] = []
    closings: list[tuple[Any, ...]] = []
    for job in writes:
        for kind, payload in job.parts:
            if kind == LEDGER_ROWS:
                rows += payload
            elif kind == LEDGER_CLOSINGS:
                closings += payload
            else:
                return None
    return rows, closings


def _write_ledger(
    db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], closings: Sequence[tuple[Any, ...]]
) -> None:
    """Ledger rows, closings and what they change in the rollups, in one transaction,
    all bound as parameters: the rows in multi-row inserts (32, 16... 1 rows), the
    closings after them (`CLOSE_LEDGER`: the open rows each closes are read, then take
    its figures), then the rollups, summed here (`rolled_up`; 16, 8... 1 rollup rows a
    statement): the open rows' figures out, their closings' in, then the new rows'."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for piece in _pieces(rows, LEDGER_VALUES):
            db.execute(LEDGER_VALUES[len(piece)], tuple(itertools.chain.from_iterable(piece)))
        closed: list[tuple[Any, ...]] = []
        for piece in _pieces(closings, CLOSE_LEDGER):
            params = tuple(closing[i] for closing in piece for i in CLOSING_AT)
            select, update = CLOSE_LEDGER[len(piece)]
            found = db.execute(select, params).fetchall()
            if found:
                closed += found
                db.execute(update, params)
        changes = rolled_up(rows, LEDGER_ROLLED_AT)
        if closed:
            # The open rows' figures out before the closings' in, as the batch view
            # trades them; one statement may change a rollup row more than once (SQLite's
            # upsert takes a statement's rows one by one, in order).
            changes = [
                *rolled_up(closed, OPENED_AT, taken=True),
                *rolled_up(closed, CLOSING_ROLLED_AT),
                *changes,
            ]
        for piece in _pieces(changes, ROLLUP_VALUES):
            db.execute(ROLLUP_VALUES[len(piece)], tuple(itertools.chain.from_iterable(piece)))
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _pieces(rows: Sequence[T], sizes: Iterable[int]) -> Iterator[Sequence[T]]:
    """`rows` in pieces of the `sizes` there are statements for (largest first, down to
    1): as many of the largest as they fill, then of the next..."""
    at = 0
    for size in sizes:
        while len(rows) - at >= size:
            yield rows[at : at + size]
            at += size


def _merge(writes: Sequence[Job], now: float) -> list[Any]:
    """The WRITE_BATCH parameters of some writes: one JSON array per kind; cache entries
    that expired by `now` are swept."""
    buckets: list[list[bytes]] = [[] for _ in range(JSON_KINDS)]
    cache_rows: list[tuple[str, int, int, float]] = []
    blobs: list[bytes] = []
    offset = 1  # substr() counts from 1
    for job in writes:
        for kind, payload in job.parts:
            if kind == CACHE:
                key, value, expires = payload
                cache_rows.append((key, offset, len(value), expires))
                blobs.append(value)
                offset += len(value)
            elif kind == LEDGER_ROWS:  # in a batch with other writes: as JSON
                buckets[LEDGER].append(orjson.dumps(payload)[1:-1])
            elif kind == LEDGER_CLOSINGS:
                buckets[LEDGER_CLOSE].append(orjson.dumps(payload)[1:-1])
            else:
                buckets[kind].append(payload)
    params: list[Any] = [b"[" + b",".join(b) + b"]" if b else None for b in buckets]
    if cache_rows:
        params += [orjson.dumps(cache_rows), b"".join(blobs), now]
    else:
        params += [None, None, None]
    return params
