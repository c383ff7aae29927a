"""The job queue in the SQLite store: its tables beside the ledger, in the same file.

Writes run on the store's writer connection (`SQLiteStore._apply`), so a line's end
and the ledger rows of its call are one transaction: the ledger rows go through the
store's own batch statement (`WRITE_BATCH`), so they are written exactly as every
other row is. Reads run on the store's reader connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from areion.jobs.records import BatchRecord, FileRecord, LineRecord
from areion.jobs.schema import BATCH_COLUMNS, FILE_COLUMNS
from areion.store.sqlite import SQLiteStore, _ledger_rows
from areion.store.sqlite_schema import JSON_KINDS, LEDGER, WRITE_BATCH
from areion.types import LedgerEntry

__all__ = ["SQLiteQueue"]

T = TypeVar("T")

_LIVE = "('validating', 'in_progress', 'finalizing', 'cancelling')"

_CLAIM = f"""
UPDATE job_batches SET
    owner = ?1, lease_until = ?2 + ?3, fence = fence + 1,
    status = CASE status WHEN 'validating' THEN 'in_progress' ELSE status END,
    in_progress_at = CASE WHEN status = 'validating' THEN ?2 ELSE in_progress_at END
WHERE batch_id = (
    SELECT batch_id FROM job_batches
    WHERE status IN {_LIVE} AND not_before <= ?2 AND lease_until <= ?2
    ORDER BY not_before, created LIMIT 1)
RETURNING {BATCH_COLUMNS}
"""

_END_LINE = """
UPDATE job_lines SET status = ?3, output = ?4
WHERE batch_id = ?1 AND idx = ?2 AND status = 'pending'
  AND EXISTS (SELECT 1 FROM job_batches WHERE batch_id = ?1 AND fence = ?5)
"""

# The files' content: the batch's lines that ended so, in file order.
_OUTPUT = """
SELECT group_concat(output || char(10), '') FROM (
    SELECT output FROM job_lines WHERE batch_id = ? AND status = ? ORDER BY idx)
"""


def _file(row: Sequence[Any]) -> FileRecord:
    (file_id, tenant, purpose, filename, size, created, lines, batch_id) = row
    return FileRecord(
        file_id=file_id, tenant=tenant, purpose=purpose, filename=filename, bytes=size,
        created=created, lines=lines, batch_id=batch_id,
    )  # fmt: skip


def batch_from_row(row: Sequence[Any]) -> BatchRecord:
    """A `job_batches` row (its columns in `BATCH_COLUMNS` order) as a record."""
    names = [name.strip() for name in BATCH_COLUMNS.split(",")]
    values = dict(zip(names, row, strict=True))
    for name in ("metadata", "schedule", "native"):
        if values[name] is not None:
            values[name] = orjson.loads(values[name])
    values["schedule"] = values["schedule"] or {}
    values["native"] = values["native"] or {}
    return BatchRecord(**values)


def batch_row(batch: BatchRecord) -> tuple[Any, ...]:
    """A record as the values of a `job_batches` row, in `BATCH_COLUMNS` order."""
    return (
        batch.batch_id, batch.tenant, batch.key, batch.endpoint, batch.input_file_id,
        batch.completion_window,
        None if batch.metadata is None else orjson.dumps(batch.metadata).decode(),
        batch.status, batch.total, batch.completed, batch.failed, batch.created,
        batch.expires_at, batch.in_progress_at, batch.finalizing_at, batch.completed_at,
        batch.cancelling_at, batch.cancelled_at, batch.failed_at, batch.not_before,
        batch.deadline, orjson.dumps(batch.schedule).decode(),
        orjson.dumps(batch.native).decode(), batch.owner, batch.lease_until, batch.fence,
    )  # fmt: skip


def _transaction(work: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """`work` in one transaction (the writer connection is in autocommit mode)."""

    def run(db: sqlite3.Connection) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    return run


class SQLiteQueue:
    """`JobQueue` over a `SQLiteStore`."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.clock = store._clock  # the store's: a test's manual clock moves both

    async def put_file(self, record: FileRecord, content: bytes) -> None:
        row = (
            record.file_id, record.tenant, record.purpose, record.filename, record.bytes,
            record.created, record.lines, record.batch_id, content,
        )  # fmt: skip

        def insert(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT INTO job_files ({FILE_COLUMNS}, content) VALUES ({_marks(9)})", row)

        await self.store._apply(insert)

    async def get_file(self, tenant: str, file_id: str) -> FileRecord | None:
        def read(db: sqlite3.Connection) -> Any:
            return db.execute(
                f"SELECT {FILE_COLUMNS} FROM job_files WHERE file_id = ? AND tenant = ?",
                (file_id, tenant),
            ).fetchone()

        row = await self.store._read(read)
        return None if row is None else _file(row)

    async def list_files(
        self, tenant: str, *, purpose: str | None = None, limit: int = 100
    ) -> list[FileRecord]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                f"SELECT {FILE_COLUMNS} FROM job_files WHERE tenant = ?1 "
                "AND (?2 IS NULL OR purpose = ?2) ORDER BY created DESC, file_id DESC LIMIT ?3",
                (tenant, purpose, limit),
            ).fetchall()

        return [_file(row) for row in await self.store._read(read)]

    async def file_content(self, tenant: str, file_id: str) -> bytes | None:
        def read(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(
                "SELECT purpose, batch_id, content FROM job_files WHERE file_id = ? AND tenant = ?",
                (file_id, tenant),
            ).fetchone()
            if row is None:
                return None
            purpose, batch_id, content = row
            if purpose == "batch":
                return bytes(content)
            status = "done" if purpose == "batch_output" else "failed"
            (text,) = db.execute(_OUTPUT, (batch_id, status)).fetchone()
            return (text or "").encode()

        return await self.store._read(read)

    async def create_batch(self, batch: BatchRecord, lines: Sequence[LineRecord]) -> None:
        row = batch_row(batch)
        rows = [
            (line.batch_id, line.index, line.custom_id, orjson.dumps(line.body).decode(),
             line.status, line.output)
            for line in lines
        ]  # fmt: skip

        def insert(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT INTO job_batches ({BATCH_COLUMNS}) VALUES ({_marks(26)})", row)
            db.executemany(
                "INSERT INTO job_lines (batch_id, idx, custom_id, body, status, output) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self.store._apply(_transaction(insert))

    async def get_batch(self, tenant: str | None, batch_id: str) -> BatchRecord | None:
        def read(db: sqlite3.Connection) -> Any:
            return db.execute(
                f"SELECT {BATCH_COLUMNS} FROM job_batches "
                "WHERE batch_id = ?1 AND (?2 IS NULL OR tenant = ?2)",
                (batch_id, tenant),
            ).fetchone()

        row = await self.store._read(read)
        return None if row is None else batch_from_row(row)

    async def list_batches(
        self, tenant: str | None, *, after: str | None = None, limit: int = 20
    ) -> list[BatchRecord]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                f"SELECT {BATCH_COLUMNS} FROM job_batches AS b "
                "WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR (created, batch_id) < "
                "(SELECT created, batch_id FROM job_batches WHERE batch_id = ?2)) "
                "ORDER BY created DESC, batch_id DESC LIMIT ?3",
                (tenant, after, limit),
            ).fetchall()

        return [batch_from_row(row) for row in await self.store._read(read)]

    async def cancel_batch(self, tenant: str | None, batch_id: str) -> BatchRecord | None:
        now = self.clock()

        def cancel(db: sqlite3.Connection) -> Any:
            # A batch waiting for its window is due at once: a worker ends it cancelled.
            db.execute(
                f"UPDATE job_batches SET status = 'cancelling', cancelling_at = ?3, "
                f"not_before = 0 WHERE batch_id = ?1 AND (?2 IS NULL OR tenant = ?2) "
                f"AND status IN {_LIVE} AND status != 'cancelling'",
                (batch_id, tenant, now),
            )
            return db.execute(
                f"SELECT {BATCH_COLUMNS} FROM job_batches "
                "WHERE batch_id = ?1 AND (?2 IS NULL OR tenant = ?2)",
                (batch_id, tenant),
            ).fetchone()

        row = await self.store._apply(_transaction(cancel))
        return None if row is None else batch_from_row(row)

    async def set_native(self, batch_id: str, fence: int, native: dict[str, object]) -> bool:
        def update(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE job_batches SET native = ? WHERE batch_id = ? AND fence = ?",
                (orjson.dumps(native).decode(), batch_id, fence),
            ).rowcount

        return bool(await self.store._apply(update))

    async def claim(self, owner: str, *, ttl: float) -> BatchRecord | None:
        now = self.clock()

        def take(db: sqlite3.Connection) -> Any:
            return db.execute(_CLAIM, (owner, now, ttl)).fetchone()

        row = await self.store._apply(take)
        return None if row is None else batch_from_row(row)

    async def renew(self, batch_id: str, fence: int, *, ttl: float) -> BatchRecord | None:
        now = self.clock()

        def extend(db: sqlite3.Connection) -> Any:
            return db.execute(
                f"UPDATE job_batches SET lease_until = ? WHERE batch_id = ? AND fence = ? "
                f"RETURNING {BATCH_COLUMNS}",
                (now + ttl, batch_id, fence),
            ).fetchone()

        row = await self.store._apply(extend)
        return None if row is None else batch_from_row(row)

    async def release(self, batch_id: str, fence: int) -> None:
        def drop(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE job_batches SET owner = NULL, lease_until = 0 "
                "WHERE batch_id = ? AND fence = ?",
                (batch_id, fence),
            )

        await self.store._apply(drop)

    async def pending_lines(self, batch_id: str, *, limit: int = 1000) -> list[LineRecord]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT idx, custom_id, body FROM job_lines "
                "WHERE batch_id = ? AND status = 'pending' ORDER BY idx LIMIT ?",
                (batch_id, limit),
            ).fetchall()

        return [
            LineRecord(batch_id=batch_id, index=idx, custom_id=custom_id, body=orjson.loads(body))
            for idx, custom_id, body in await self.store._read(read)
        ]

    async def end_line(
        self, line: LineRecord, fence: int, entries: Sequence[LedgerEntry] = ()
    ) -> bool:
        (ended,) = await self.end_lines([(line, entries)], fence)
        return ended

    async def end_lines(
        self, lines: Sequence[tuple[LineRecord, Sequence[LedgerEntry]]], fence: int
    ) -> list[bool]:
        work = [
            (
                (line.batch_id, line.index, line.status, line.output, fence),
                line.batch_id,
                int(line.status == "done"),
                int(line.status == "failed"),
                _ledger_rows(entries) if entries else None,
            )
            for line, entries in lines
        ]

        def end(db: sqlite3.Connection) -> list[bool]:
            ended: list[bool] = []
            rows: list[bytes] = []
            counts: dict[str, list[int]] = {}
            for args, batch_id, done, failed, ledger in work:
                ok = bool(db.execute(_END_LINE, args).rowcount)
                ended.append(ok)
                if ok:
                    count = counts.setdefault(batch_id, [0, 0])
                    count[0] += done
                    count[1] += failed
                    if ledger is not None:
                        rows.append(ledger)
            for batch_id, (done, failed) in counts.items():
                db.execute(
                    "UPDATE job_batches SET completed = completed + ?, failed = failed + ? "
                    "WHERE batch_id = ?",
                    (done, failed, batch_id),
                )
            if rows:
                params: list[Any] = [None] * (JSON_KINDS + 3)
                params[LEDGER] = b"[" + b",".join(rows) + b"]"
                db.execute(WRITE_BATCH, params)
            return ended

        return await self.store._apply(_transaction(end))

    async def finish(self, batch_id: str, fence: int, status: str) -> BatchRecord | None:
        now = self.clock()
        stamp = {
            "completed": "completed_at",
            "cancelled": "cancelled_at",
            "failed": "failed_at",
            "expired": "failed_at",
        }[status]

        def end(db: sqlite3.Connection) -> Any:
            row = db.execute(
                f"UPDATE job_batches SET status = ?, {stamp} = ?, "
                "finalizing_at = COALESCE(finalizing_at, ?), owner = NULL, lease_until = 0 "
                f"WHERE batch_id = ? AND fence = ? RETURNING {BATCH_COLUMNS}",
                (status, now, now, batch_id, fence),
            ).fetchone()
            if row is None:
                return None
            batch = batch_from_row(row)
            db.execute(
                "UPDATE job_lines SET status = 'cancelled' "
                "WHERE batch_id = ? AND status = 'pending'",
                (batch_id,),
            )
            for purpose, kind in (("batch_output", "done"), ("batch_error", "failed")):
                count, size = db.execute(
                    "SELECT count(*), COALESCE(sum(length(CAST(output AS BLOB)) + 1), 0) "
                    "FROM job_lines WHERE batch_id = ? AND status = ?",
                    (batch_id, kind),
                ).fetchone()
                if count:
                    name = "output" if kind == "done" else "errors"
                    db.execute(
                        f"INSERT OR IGNORE INTO job_files ({FILE_COLUMNS}) VALUES ({_marks(8)})",
                        (f"file-{batch_id}-{name}", batch.tenant, purpose,
                         f"{batch_id}_{name}.jsonl", size, now, count, batch_id),
                    )  # fmt: skip
            return row

        row = await self.store._apply(_transaction(end))
        return None if row is None else batch_from_row(row)


def _marks(count: int) -> str:
    return ", ".join("?" * count)
