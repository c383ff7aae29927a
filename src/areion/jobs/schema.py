"""The job queue's tables, in SQLite's and PostgreSQL's dialects.

The SQLite store creates them with its other tables on open (`sqlite_schema.TABLES`);
the PostgreSQL store in a migration of its own (`postgres_schema.MIGRATIONS`). A
batch's lines are rows of their own, so a line is answered by one update that only
a pending line and the batch's current fence let through; the line keeps the JSONL
line it ends with in the output or error file, which are its lines concatenated.
"""

from __future__ import annotations

__all__ = ["BATCH_COLUMNS", "FILE_COLUMNS", "POSTGRES_TABLES", "SQLITE_TABLES"]

FILE_COLUMNS = "file_id, tenant, purpose, filename, bytes, created, lines, batch_id"

BATCH_COLUMNS = (
    "batch_id, tenant, key, endpoint, input_file_id, completion_window, metadata, status, "
    "total, completed, failed, created, expires_at, in_progress_at, finalizing_at, "
    "completed_at, cancelling_at, cancelled_at, failed_at, not_before, deadline, schedule, "
    "native, owner, lease_until, fence"
)


def _tables(*, blob: str, real: str, bigint: str) -> str:
    return f"""
-- Files of the Files API. An upload keeps its bytes; a batch's output and error files
-- keep none: their content is the batch's ended lines (job_lines.output).
CREATE TABLE IF NOT EXISTS job_files (
    file_id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL,
    purpose TEXT NOT NULL,            -- batch | batch_output | batch_error
    filename TEXT NOT NULL,
    bytes {bigint} NOT NULL,
    created {real} NOT NULL,
    lines INTEGER NOT NULL,
    batch_id TEXT,                    -- an output or error file's batch
    content {blob}                    -- an upload's bytes
);
CREATE INDEX IF NOT EXISTS job_files_tenant ON job_files (tenant, created);

CREATE TABLE IF NOT EXISTS job_batches (
    batch_id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL,
    key TEXT,                         -- the label of the key that made it
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,                    -- JSON object
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    completed INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    created {real} NOT NULL,
    expires_at {real} NOT NULL,
    in_progress_at {real},
    finalizing_at {real},
    completed_at {real},
    cancelling_at {real},
    cancelled_at {real},
    failed_at {real},
    not_before {real} NOT NULL,       -- no worker starts it earlier (its window's slot)
    deadline {real},
    schedule TEXT NOT NULL,           -- JSON: why it starts when it does
    native TEXT NOT NULL,             -- JSON: the provider's batch, if sent to one
    owner TEXT,                       -- the worker holding its lease
    lease_until {real} NOT NULL,
    fence {bigint} NOT NULL           -- the latest lease's fencing token
);
CREATE INDEX IF NOT EXISTS job_batches_tenant ON job_batches (tenant, created);
CREATE INDEX IF NOT EXISTS job_batches_ready ON job_batches (status, not_before);

CREATE TABLE IF NOT EXISTS job_lines (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,               -- JSON: the request
    status TEXT NOT NULL,             -- pending | done | failed | cancelled
    output TEXT,                      -- the JSONL line it ends with (output or error file)
    PRIMARY KEY (batch_id, idx),
    UNIQUE (batch_id, custom_id)
);
"""


SQLITE_TABLES = _tables(blob="BLOB", real="REAL", bigint="INTEGER")
POSTGRES_TABLES = _tables(blob="bytea", real="double precision", bigint="bigint")
