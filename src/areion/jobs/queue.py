"""The job queue's seam: files, batches and their lines, kept in the store.

`open_queue(store)` gives the queue over the runtime's store: SQLite for one
machine, PostgreSQL for replicas (a worker on any of them may take a batch over).
Workers hold a batch by a lease (`claim`, `renew`); every write a worker makes for
the batch carries the lease's fencing token, and is refused once another worker has
taken the batch over (its token is newer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from areion.errors import ConfigError
from areion.jobs.records import BatchRecord, FileRecord, LineRecord
from areion.store.base import Store
from areion.types import LedgerEntry

__all__ = ["JobQueue", "open_queue"]


@runtime_checkable
class JobQueue(Protocol):
    """Durable batches every worker of one store shares."""

    clock: Callable[[], float]
    """Unix time, as leases and windows read it (the store's clock)."""

    async def put_file(self, record: FileRecord, content: bytes) -> None:
        """Store an uploaded file."""
        ...

    async def get_file(self, tenant: str, file_id: str) -> FileRecord | None:
        """`tenant`'s file of that id; None if it has none (whoever else has)."""
        ...

    async def list_files(
        self, tenant: str, *, purpose: str | None = None, limit: int = 100
    ) -> list[FileRecord]:
        """`tenant`'s files, newest first, of one purpose if given."""
        ...

    async def file_content(self, tenant: str, file_id: str) -> bytes | None:
        """The bytes of `tenant`'s file (an output or error file: its batch's lines)."""
        ...

    async def create_batch(self, batch: BatchRecord, lines: Sequence[LineRecord]) -> None:
        """Store a batch with all its lines, in one transaction."""
        ...

    async def get_batch(self, tenant: str | None, batch_id: str) -> BatchRecord | None:
        """`tenant`'s batch of that id (any tenant's for None: an operator's read)."""
        ...

    async def list_batches(
        self, tenant: str | None, *, after: str | None = None, limit: int = 20
    ) -> list[BatchRecord]:
        """Batches, newest first, those older than batch `after` if given."""
        ...

    async def cancel_batch(self, tenant: str | None, batch_id: str) -> BatchRecord | None:
        """Ask a batch to stop (`cancelling`; a worker ends it `cancelled`); None if the
        tenant has no such batch. A batch already ended is returned as it is."""
        ...

    async def set_native(self, batch_id: str, fence: int, native: dict[str, object]) -> bool:
        """Remember the provider's batch the lines were sent to; False if fenced out."""
        ...

    async def claim(self, owner: str, *, ttl: float) -> BatchRecord | None:
        """Lease the oldest batch due to run (its slot has come, no live lease) to
        `owner` for `ttl` seconds, with a new fencing token; None if none is due."""
        ...

    async def renew(self, batch_id: str, fence: int, *, ttl: float) -> BatchRecord | None:
        """Extend the lease of fence `fence`; the batch as it is now, or None if the
        batch was taken over (the holder must stop)."""
        ...

    async def release(self, batch_id: str, fence: int) -> None:
        """Give up the lease now (a worker shutting down), so another takes it at once."""
        ...

    async def pending_lines(self, batch_id: str, *, limit: int = 1000) -> list[LineRecord]:
        """Lines not yet ended, in file order."""
        ...

    async def end_line(
        self, line: LineRecord, fence: int, entries: Sequence[LedgerEntry] = ()
    ) -> bool:
        """In one transaction: end a pending line with its output (`line.status`,
        `line.output`), count it in the batch, and write the ledger rows its call
        booked. False, and nothing written, if the line had already ended or the
        batch was taken over: a line is answered and booked exactly once."""
        ...

    async def end_lines(
        self, lines: Sequence[tuple[LineRecord, Sequence[LedgerEntry]]], fence: int
    ) -> list[bool]:
        """`end_line` for several lines (with their rows) in one transaction: whether
        each was ended."""
        ...

    async def finish(self, batch_id: str, fence: int, status: str) -> BatchRecord | None:
        """End a batch (completed, cancelled, failed, expired): pending lines are
        cancelled, the output and error files made; None if fenced out."""
        ...


def open_queue(store: Store) -> JobQueue:
    """The job queue kept in `store`."""
    from areion.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from areion.jobs.sqlite import SQLiteQueue

        return SQLiteQueue(store)
    try:
        from areion.store.postgres import PostgresStore
    except ModuleNotFoundError:  # no asyncpg: the store cannot be PostgreSQL
        PostgresStore = None  # type: ignore[assignment,misc]
    if PostgresStore is not None and isinstance(store, PostgresStore):
        from areion.jobs.postgres import PostgresQueue

        return PostgresQueue(store)
    raise ConfigError(
        f"batches need a SQLite or PostgreSQL store; {type(store).__name__} keeps no job queue"
    )
