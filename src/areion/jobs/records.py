"""The durable records of the job queue: uploaded files, batches and their lines.

A batch is a job: its lines are stored with it when it is created, each line is
answered (or fails) exactly once, and its answer is stored in the same transaction as
the ledger rows it booked, so a worker killed at any moment has booked exactly the
lines whose answers are stored. A worker holds a batch by its lease; every write it
makes carries the lease's fencing token, and a write with a token older than the
batch's is refused (the batch was taken over).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BATCH_ENDPOINTS",
    "RUNS_ENDPOINT",
    "TERMINAL",
    "BatchRecord",
    "BatchStatus",
    "DeferredRun",
    "FilePurpose",
    "FileRecord",
    "LineRecord",
    "LineStatus",
]

FilePurpose = Literal["batch", "batch_output", "batch_error"]
BatchStatus = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
]
LineStatus = Literal["pending", "done", "failed", "cancelled"]

# What a batch line may ask for (OpenAI's `endpoint`); the others are refused with 400.
BATCH_ENDPOINTS = ("/v1/chat/completions",)
RUNS_ENDPOINT = "/v1/runs"
"""The endpoint of a deferred agent run's job: one line, the run."""

# A batch in one of these moves no more.
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(slots=True, kw_only=True)
class FileRecord:
    """A file of the Files API: an uploaded batch input, or a batch's output or errors."""

    file_id: str
    """The file's id (`file-...`), unique across tenants."""
    tenant: str
    """Who owns the file; no other tenant can see it."""
    purpose: FilePurpose
    """`batch` (an upload), `batch_output` or `batch_error` (made from a batch's lines)."""
    filename: str
    """The name it was uploaded with (or `<batch>_output.jsonl`)."""
    bytes: int
    """Its size."""
    created: float
    """Unix time it was made."""
    lines: int = 0
    """How many JSONL lines it holds."""
    batch_id: str | None = None
    """The batch an output or error file belongs to (its content is that batch's lines)."""


@dataclass(slots=True, kw_only=True)
class BatchRecord:
    """A batch job: what it asks, where it is, and who holds it."""

    batch_id: str
    """The batch's id (`batch_...`), unique across tenants."""
    tenant: str
    """Who owns the batch, and pays for its lines."""
    key: str | None = None
    """The label of the API key that created it: its limits and model list apply."""
    endpoint: str
    """The endpoint every line asks (`/v1/chat/completions`)."""
    input_file_id: str
    """The uploaded file the lines came from."""
    completion_window: str = "24h"
    """The time the batch has to finish, as the client gave it."""
    metadata: dict[str, str] | None = None
    """The client's metadata, returned as given."""
    status: BatchStatus = "validating"
    """Where the batch is."""
    total: int = 0
    """Its lines."""
    completed: int = 0
    """Lines answered (2xx)."""
    failed: int = 0
    """Lines that ended in an error."""
    created: float = 0.0
    """Unix time it was created."""
    expires_at: float = 0.0
    """Unix time its completion window ends."""
    in_progress_at: float | None = None
    """When a worker first took it."""
    finalizing_at: float | None = None
    """When its last line ended."""
    completed_at: float | None = None
    """When it completed."""
    cancelling_at: float | None = None
    """When its cancellation was asked."""
    cancelled_at: float | None = None
    """When it stopped, cancelled."""
    failed_at: float | None = None
    """When it failed as a whole."""
    not_before: float = 0.0
    """Unix time before which no worker starts it (its window's chosen slot)."""
    deadline: float | None = None
    """Unix time by which it should be done (a window is never waited for past it)."""
    schedule: dict[str, Any] = field(default_factory=dict)
    """Why it starts when it does: the scheduler's choice and the slots it weighed."""
    native: dict[str, Any] = field(default_factory=dict)
    """The provider's own batch, when the lines were sent to one (deployment, its ids)."""
    owner: str | None = None
    """The worker holding its lease, if any."""
    lease_until: float = 0.0
    """Unix time the holder's lease runs out; another worker may take it over then."""
    fence: int = 0
    """The fencing token of the latest lease: a write with an older one is refused."""


@dataclass(slots=True, kw_only=True)
class LineRecord:
    """One request of a batch and, once it has ended, its answer."""

    batch_id: str
    """The batch the line belongs to."""
    index: int
    """Its position in the input file (0-based)."""
    custom_id: str
    """The client's id of the line, unique within the batch."""
    body: dict[str, Any]
    """The request body (a chat completion request)."""
    status: LineStatus = "pending"
    """`pending` until answered (`done`) or ended in an error (`failed`)."""
    output: str | None = None
    """The line of the output (done) or error (failed) file it ended with: JSONL, no
    newline."""


@dataclass(slots=True, kw_only=True)
class DeferredRun:
    """An agent run put off until its window: a job of one line, the run."""

    run_id: str
    """The id the run will have (its tenant's)."""
    job_id: str
    """The job that starts it (a batch of endpoint `/v1/runs`, in `GET /v1/batches`)."""
    not_before: float
    """Unix time it becomes due."""
    schedule: dict[str, Any]
    """Why then."""
