"""The job queue in the PostgreSQL store: shared by every replica's workers.

A worker claims a batch with `FOR UPDATE SKIP LOCKED`, so two replicas claiming at
once take two batches (or one takes it and the other finds none). A line's end and
the ledger rows of its call are one transaction on one pooled connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from areion.jobs.records import BatchRecord, FileRecord, LineRecord
from areion.jobs.schema import BATCH_COLUMNS, FILE_COLUMNS
from areion.jobs.sqlite import batch_from_row, batch_row
from areion.store.postgres import PostgresStore, _ledger_row
from areion.store.postgres_pool import Connection
from areion.store.postgres_schema import LEDGER_COLUMNS
from areion.types import LedgerEntry

__all__ = ["PostgresQueue"]

_LIVE = "('validating', 'in_progress', 'finalizing', 'cancelling')"

_CLAIM = f"""
UPDATE job_batches SET
    owner = $1, lease_until = $2 + $3, fence = fence + 1,
    status = CASE status WHEN 'validating' THEN 'in_progress' ELSE status END,
    in_progress_at = CASE WHEN status = 'validating' THEN $2 ELSE in_progress_at END
WHERE batch_id = (
    SELECT batch_id FROM job_batches
    WHERE status IN {_LIVE} AND not_before <= $2 AND lease_until <= $2
    ORDER BY not_before, created LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING {BATCH_COLUMNS}
"""

_END_LINE = """
UPDATE job_lines SET status = $3, output = $4
WHERE batch_id = $1 AND idx = $2 AND status = 'pending'
  AND EXISTS (SELECT 1 FROM job_batches WHERE batch_id = $1 AND fence = $5 FOR UPDATE)
"""

_OUTPUT = """
SELECT string_agg(output || chr(10), '' ORDER BY idx) FROM job_lines
WHERE batch_id = $1 AND status = $2
"""


def _file(row: Sequence[Any]) -> FileRecord:
    (file_id, tenant, purpose, filename, size, created, lines, batch_id) = row
    return FileRecord(
        file_id=file_id, tenant=tenant, purpose=purpose, filename=filename, bytes=size,
        created=created, lines=lines, batch_id=batch_id,
    )  # fmt: skip


def _marks(count: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


class PostgresQueue:
    """`JobQueue` over a `PostgresStore`."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.clock = store._clock

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        return await self.store._fetchrow(sql, *args, again=False)

    async def put_file(self, record: FileRecord, content: bytes) -> None:
        await self._fetchrow(
            f"INSERT INTO job_files ({FILE_COLUMNS}, content) VALUES ({_marks(9)})",
            record.file_id, record.tenant, record.purpose, record.filename, record.bytes,
            record.created, record.lines, record.batch_id, content,
        )  # fmt: skip

    async def get_file(self, tenant: str, file_id: str) -> FileRecord | None:
        row = await self.store._fetchrow(
            f"SELECT {FILE_COLUMNS} FROM job_files WHERE file_id = $1 AND tenant = $2",
            file_id,
            tenant,
        )
        return None if row is None else _file(tuple(row))

    async def list_files(
        self, tenant: str, *, purpose: str | None = None, limit: int = 100
    ) -> list[FileRecord]:
        rows = await self.store._fetch(
            f"SELECT {FILE_COLUMNS} FROM job_files WHERE tenant = $1 "
            "AND ($2::text IS NULL OR purpose = $2) ORDER BY created DESC, file_id DESC LIMIT $3",
            tenant,
            purpose,
            limit,
        )
        return [_file(tuple(row)) for row in rows]

    async def file_content(self, tenant: str, file_id: str) -> bytes | None:
        row = await self.store._fetchrow(
            "SELECT purpose, batch_id, content FROM job_files WHERE file_id = $1 AND tenant = $2",
            file_id,
            tenant,
        )
        if row is None:
            return None
        purpose, batch_id, content = tuple(row)
        if purpose == "batch":
            return bytes(content)
        status = "done" if purpose == "batch_output" else "failed"
        text = await self.store._fetchval(_OUTPUT, batch_id, status)
        return (text or "").encode()

    async def create_batch(self, batch: BatchRecord, lines: Sequence[LineRecord]) -> None:
        row = batch_row(batch)
        rows = [
            (line.batch_id, line.index, line.custom_id, orjson.dumps(line.body).decode(),
             line.status, line.output)
            for line in lines
        ]  # fmt: skip

        async def insert(connection: Connection) -> None:
            async with connection.transaction():
                await connection.execute(
                    f"INSERT INTO job_batches ({BATCH_COLUMNS}) VALUES ({_marks(26)})", *row
                )
                await connection.executemany(
                    "INSERT INTO job_lines (batch_id, idx, custom_id, body, status, output) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    rows,
                )

        await self.store._connector.run(insert)

    async def get_batch(self, tenant: str | None, batch_id: str) -> BatchRecord | None:
        row = await self.store._fetchrow(
            f"SELECT {BATCH_COLUMNS} FROM job_batches "
            "WHERE batch_id = $1 AND ($2::text IS NULL OR tenant = $2)",
            batch_id,
            tenant,
        )
        return None if row is None else batch_from_row(tuple(row))

    async def list_batches(
        self, tenant: str | None, *, after: str | None = None, limit: int = 20
    ) -> list[BatchRecord]:
        rows = await self.store._fetch(
            f"SELECT {BATCH_COLUMNS} FROM job_batches "
            "WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR "
            "(created, batch_id) < (SELECT created, batch_id FROM job_batches "
            "WHERE batch_id = $2)) ORDER BY created DESC, batch_id DESC LIMIT $3",
            tenant,
            after,
            limit,
        )
        return [batch_from_row(tuple(row)) for row in rows]

    async def cancel_batch(self, tenant: str | None, batch_id: str) -> BatchRecord | None:
        now = self.clock()

        async def cancel(connection: Connection) -> Any:
            async with connection.transaction():
                await connection.execute(
                    "UPDATE job_batches SET status = 'cancelling', cancelling_at = $3, "
                    "not_before = 0 WHERE batch_id = $1 AND ($2::text IS NULL OR tenant = $2) "
                    f"AND status IN {_LIVE} AND status != 'cancelling'",
                    batch_id,
                    tenant,
                    now,
                )
                return await connection.fetchrow(
                    f"SELECT {BATCH_COLUMNS} FROM job_batches "
                    "WHERE batch_id = $1 AND ($2::text IS NULL OR tenant = $2)",
                    batch_id,
                    tenant,
                )

        row = await self.store._connector.run(cancel)
        return None if row is None else batch_from_row(tuple(row))

    async def set_native(self, batch_id: str, fence: int, native: dict[str, object]) -> bool:
        row = await self._fetchrow(
            "UPDATE job_batches SET native = $1 WHERE batch_id = $2 AND fence = $3 RETURNING true",
            orjson.dumps(native).decode(),
            batch_id,
            fence,
        )
        return row is not None

    async def claim(self, owner: str, *, ttl: float) -> BatchRecord | None:
        row = await self._fetchrow(_CLAIM, owner, self.clock(), ttl)
        return None if row is None else batch_from_row(tuple(row))

    async def renew(self, batch_id: str, fence: int, *, ttl: float) -> BatchRecord | None:
        row = await self._fetchrow(
            f"UPDATE job_batches SET lease_until = $1 WHERE batch_id = $2 AND fence = $3 "
            f"RETURNING {BATCH_COLUMNS}",
            self.clock() + ttl,
            batch_id,
            fence,
        )
        return None if row is None else batch_from_row(tuple(row))

    async def release(self, batch_id: str, fence: int) -> None:
        await self._fetchrow(
            "UPDATE job_batches SET owner = NULL, lease_until = 0 "
            "WHERE batch_id = $1 AND fence = $2",
            batch_id,
            fence,
        )

    async def pending_lines(self, batch_id: str, *, limit: int = 1000) -> list[LineRecord]:
        rows = await self.store._fetch(
            "SELECT idx, custom_id, body FROM job_lines "
            "WHERE batch_id = $1 AND status = 'pending' ORDER BY idx LIMIT $2",
            batch_id,
            limit,
        )
        return [
            LineRecord(batch_id=batch_id, index=idx, custom_id=custom_id, body=orjson.loads(body))
            for idx, custom_id, body in (tuple(row) for row in rows)
        ]

    async def end_line(
        self, line: LineRecord, fence: int, entries: Sequence[LedgerEntry] = ()
    ) -> bool:
        (ended,) = await self.end_lines([(line, entries)], fence)
        return ended

    async def end_lines(
        self, lines: Sequence[tuple[LineRecord, Sequence[LedgerEntry]]], fence: int
    ) -> list[bool]:
        async def end(connection: Connection) -> list[bool]:
            ended: list[bool] = []
            rows: list[tuple[Any, ...]] = []
            async with connection.transaction():
                for line, entries in lines:
                    status = await connection.execute(
                        _END_LINE, line.batch_id, line.index, line.status, line.output, fence
                    )
                    ok = not status.endswith(" 0")
                    ended.append(ok)
                    if not ok:
                        continue
                    await connection.execute(
                        "UPDATE job_batches SET completed = completed + $1, "
                        "failed = failed + $2 WHERE batch_id = $3",
                        int(line.status == "done"),
                        int(line.status == "failed"),
                        line.batch_id,
                    )
                    rows.extend(_ledger_row(entry) for entry in entries)
                if rows:
                    await connection.executemany(
                        f"INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES ({_marks(len(rows[0]))})",
                        rows,
                    )
            return ended

        return await self.store._connector.run(end)

    async def finish(self, batch_id: str, fence: int, status: str) -> BatchRecord | None:
        now = self.clock()
        stamp = {
            "completed": "completed_at",
            "cancelled": "cancelled_at",
            "failed": "failed_at",
            "expired": "failed_at",
        }[status]

        async def end(connection: Connection) -> Any:
            async with connection.transaction():
                row = await connection.fetchrow(
                    f"UPDATE job_batches SET status = $1, {stamp} = $2, "
                    "finalizing_at = coalesce(finalizing_at, $2), owner = NULL, "
                    f"lease_until = 0 WHERE batch_id = $3 AND fence = $4 "
                    f"RETURNING {BATCH_COLUMNS}",
                    status,
                    now,
                    batch_id,
                    fence,
                )
                if row is None:
                    return None
                batch = batch_from_row(tuple(row))
                await connection.execute(
                    "UPDATE job_lines SET status = 'cancelled' "
                    "WHERE batch_id = $1 AND status = 'pending'",
                    batch_id,
                )
                for purpose, kind in (("batch_output", "done"), ("batch_error", "failed")):
                    count, size = await connection.fetchrow(
                        "SELECT count(*), coalesce(sum(octet_length(output) + 1), 0) "
                        "FROM job_lines WHERE batch_id = $1 AND status = $2",
                        batch_id,
                        kind,
                    )  # type: ignore[misc]  # an aggregate: always one row
                    if count:
                        name = "output" if kind == "done" else "errors"
                        await connection.execute(
                            f"INSERT INTO job_files ({FILE_COLUMNS}) VALUES ({_marks(8)}) "
                            "ON CONFLICT DO NOTHING",
                            f"file-{batch_id}-{name}", batch.tenant, purpose,
                            f"{batch_id}_{name}.jsonl", int(size), now, count, batch_id,
                        )  # fmt: skip
                return row

        row = await self.store._connector.run(end)
        return None if row is None else batch_from_row(tuple(row))
